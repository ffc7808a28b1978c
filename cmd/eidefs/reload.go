package main

import (
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/fs"
	"github.com/eidefs/eidefs/netsync"
	"github.com/fsnotify/fsnotify"
)

// watchConfig reloads eidefs.toml when it changes (fsnotify on the data directory,
// so editors that save by rename are seen too): log level, peers and local-only
// patterns take effect at once. A file that does not load is reported with its line
// and column, and the running configuration is kept. fsys may be nil (serve).
func watchConfig(n *node, log *slog.Logger, fsys *fs.FS) (stop func()) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.Warn("configuration will not be reloaded", "err", err)
		return func() {}
	}
	if err := w.Add(n.dir); err != nil {
		log.Warn("configuration will not be reloaded", "err", err)
		w.Close()
		return func() {}
	}
	path := filepath.Join(n.dir, configFile)
	current := n.cfg // the watcher's own copy: n.cfg is read elsewhere and not changed
	done := make(chan struct{})
	go func() {
		defer close(done)
		var settle <-chan time.Time
		for {
			select {
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if filepath.Clean(ev.Name) == path && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
					settle = time.After(100 * time.Millisecond) // editors write in steps
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn("watching the configuration", "err", err)
			case <-settle:
				settle = nil
				if cfg, ok := reloadConfig(n, log, fsys, path, current); ok {
					current = cfg
				}
			}
		}
	}()
	return func() { w.Close(); <-done }
}

func reloadConfig(n *node, log *slog.Logger, fsys *fs.FS, path string, old Config) (Config, bool) {
	cfg, err := loadConfig(path)
	if err == nil {
		_, err = applyEnv(&cfg) // the environment still wins over the file
	}
	if err != nil {
		log.Error("configuration not reloaded; the running one is kept", "err", err)
		return old, false
	}
	if cfg.LogLevel != old.LogLevel {
		setLogLevel(cfg.LogLevel)
	}
	for _, p := range cfg.Peers {
		k, _ := engine.ParsePublicKey(p.Key)
		changed := true
		for _, q := range old.Peers {
			if q.Key == p.Key && q.Name == p.Name && slices.Equal(q.Addresses, p.Addresses) {
				changed = false
			}
		}
		if changed && n.sync != nil {
			n.sync.SetPeer(k, p.Name, p.Addresses)
		}
	}
	if fsys != nil && !slices.Equal(cfg.LocalOnly, old.LocalOnly) {
		fsys.SetLocalOnly(cfg.LocalOnly)
	}
	if cfg.Sync != old.Sync && n.sync != nil {
		n.sync.SetIntervals(netsync.Intervals{Periodic: cfg.Sync.Periodic.Duration, Retry: cfg.Sync.Retry.Duration,
			RetryCap: cfg.Sync.RetryCap.Duration, Health: cfg.Sync.Health.Duration})
	}
	if cfg.MaxValue != old.MaxValue || cfg.Cache != old.Cache || !slices.Equal(cfg.Listen, old.Listen) || cfg.MetricsAddr != old.MetricsAddr || cfg.Passthrough != old.Passthrough {
		log.Info("configuration reloaded; listen, max_value, metrics_addr, passthrough, passthrough_writes and [cache] take effect at the next start")
	}
	log.Info("configuration reloaded", "file", path, "log_level", cfg.LogLevel, "peers", len(cfg.Peers))
	return cfg, true
}
