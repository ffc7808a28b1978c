package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/fs"
	"github.com/eidefs/eidefs/kv"
	"github.com/eidefs/eidefs/netsync"
)

const (
	keyFile    = "device.key"
	configFile = "eidefs.toml"
	storeDir   = "db"
	blobDir    = "blobs"
)

func defaultDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "eidefs")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "eidefs")
	}
	return ".eidefs"
}

func (g *globals) dataDir() string {
	switch {
	case g.data != "":
		return g.data
	case os.Getenv("EIDEFS_DATA") != "":
		return os.Getenv("EIDEFS_DATA")
	}
	return defaultDataDir()
}

// initDataDir creates the data directory, device key and config if missing. It
// reports whether it created anything.
func initDataDir(dir string) (bool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, fmt.Errorf("creating data directory: %w", err)
	}
	created := false
	kp := filepath.Join(dir, keyFile)
	if _, err := os.Stat(kp); errors.Is(err, os.ErrNotExist) {
		if err := engine.SaveIdentity(engine.NewIdentity(), kp); err != nil {
			return false, err
		}
		created = true
	}
	cp := filepath.Join(dir, configFile)
	if _, err := os.Stat(cp); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(cp, []byte(initialConfig()), 0o600); err != nil {
			return false, fmt.Errorf("writing %s: %w", cp, err)
		}
		created = true
	}
	return created, nil
}

func initialConfig() string {
	c := defaultConfig()
	return fmt.Sprintf(`# eidefs configuration; every key and its default is in eidefs.toml.example.
name = %q
listen = []
log_level = "info"
max_value = "64MiB"
`, c.Name)
}

// node is an opened data directory.
type node struct {
	dir  string
	cfg  Config
	kv   *kv.DB
	inst *engine.Instance
	sync *netsync.Node // running sync engine (mount, serve), or nil

	observe fs.Observer // FUSE request metrics, when metrics are served

	mu       sync.Mutex // guards mountDir and unmount
	mountDir string     // where a running mount is
	unmount  func()     // ends a running mount
}

func openNode(g *globals) (*node, error) {
	dir := g.dataDir()
	if _, err := initDataDir(dir); err != nil {
		return nil, err
	}
	cfg, err := loadConfig(filepath.Join(dir, configFile))
	if err != nil {
		return nil, err
	}
	if _, err := applyEnv(&cfg); err != nil {
		return nil, err
	}
	id, err := engine.LoadIdentity(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, err
	}
	store, err := kv.Open(filepath.Join(dir, storeDir))
	if err != nil {
		return nil, err
	}
	maxValue, _ := parseSize(cfg.MaxValue)
	inst, err := engine.Open(store, engine.Options{Identity: id, MaxValue: maxValue, BlobDir: filepath.Join(dir, blobDir)})
	if err != nil {
		store.Close()
		return nil, err
	}
	return &node{dir: dir, cfg: cfg, kv: store, inst: inst}, nil
}

func (n *node) Close() error {
	n.inst.Close()
	return n.kv.Close()
}

// userMessage turns an error into what the user reads: the one place that maps
// engine and store errors to advice.
func userMessage(err error) string {
	switch {
	case errors.Is(err, kv.ErrInUse):
		return err.Error() + " (a running `eidefs mount` or `eidefs serve` holds it; stop it first)"
	case errors.Is(err, engine.ErrUnknownDatabase):
		return err.Error() + " (see `eidefs db list`)"
	case errors.Is(err, engine.ErrNotAuthorized):
		return err.Error() + " (ask an admin of the database for write access: `eidefs db grant`)"
	case errors.Is(err, netsync.ErrNotAuthorized):
		return err.Error() + " (the peer has not granted this node's key access: ask its owner for a ticket, `eidefs db share`)"
	case errors.Is(err, netsync.ErrUnreachable):
		return err.Error() + " (is the peer running with --listen, and is the address right?)"
	}
	return err.Error()
}
