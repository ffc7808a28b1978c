package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/eidefs/eidefs/engine"
)

// Config is eidefs.toml. Every key, with its default, is in eidefs.toml.example.
type Config struct {
	Name   string   `toml:"name"`
	Listen []string `toml:"listen"`
	// Advertise, if set, are the addresses peers are told instead of Listen.
	Advertise []string `toml:"advertise"`
	LogLevel  string   `toml:"log_level"`
	LogFormat string   `toml:"log_format"` // text or json
	MaxValue  string   `toml:"max_value"`
	LocalOnly []string `toml:"local_only"`
	// Passthrough lets the kernel read large stored files from their blob files.
	Passthrough bool `toml:"passthrough"`
	// PassthroughWrites lets the kernel also write files created on the mount.
	PassthroughWrites bool `toml:"passthrough_writes"`
	// MetricsAddr, if set, serves Prometheus metrics at http://MetricsAddr/metrics.
	MetricsAddr string `toml:"metrics_addr"`

	Cache struct {
		Entry duration `toml:"entry_timeout"`
		Attr  duration `toml:"attr_timeout"`
	} `toml:"cache"`

	Sync struct {
		Periodic duration `toml:"periodic"`
		Retry    duration `toml:"retry"`
		RetryCap duration `toml:"retry_cap"`
		Health   duration `toml:"health"`
		// WaitTimeout bounds a read of .sync/wait/<entry>.
		WaitTimeout duration `toml:"wait_timeout"`
	} `toml:"sync"`

	Peers []PeerConfig `toml:"peers"`
}

// PeerConfig is one [[peers]] table.
type PeerConfig struct {
	Key       string   `toml:"key"`
	Name      string   `toml:"name"`
	Addresses []string `toml:"addresses"`
}

type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("bad duration %q (want e.g. 1s, 500ms)", b)
	}
	d.Duration = v
	return nil
}

func (d duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// defaultLocalOnly are editor and tool scratch files kept out of replication.
var defaultLocalOnly = []string{
	".*.sw?", ".*.sw?x", "*~", ".#*", "#*#", "4913", ".~lock.*#",
	"sed??????", ".goutputstream-*",
}

func defaultConfig() Config {
	host, _ := os.Hostname()
	c := Config{Name: host, LogLevel: "info", LogFormat: "text", MaxValue: "64MiB", LocalOnly: defaultLocalOnly, Passthrough: true, PassthroughWrites: true}
	c.Cache.Entry.Duration = time.Second
	c.Cache.Attr.Duration = time.Second
	c.Sync.Periodic.Duration = 5 * time.Minute
	c.Sync.Retry.Duration = 30 * time.Second
	c.Sync.RetryCap.Duration = 5 * time.Minute
	c.Sync.Health.Duration = time.Minute
	c.Sync.WaitTimeout.Duration = time.Minute
	return c
}

// loadConfig reads path over the defaults. Errors carry file, line and column.
func loadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return defaultConfig(), nil
	} else if err != nil {
		return defaultConfig(), err
	}
	return parseConfig(path, b)
}

// parseConfig parses b, the content of the file path, over the defaults.
func parseConfig(path string, b []byte) (Config, error) {
	c := defaultConfig()
	md, err := toml.Decode(string(b), &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return c, fmt.Errorf("%s:%d:%d: %s", path, errorLine(string(b), pe), max(pe.Position.Col, 1), pe.Message)
		}
		return c, fmt.Errorf("%s: %v", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0].String()
		line, col := findKey(string(b), und[0][len(und[0])-1])
		return c, fmt.Errorf("%s:%d:%d: unknown key %q", path, line, col, k)
	}
	for i, p := range c.Peers {
		if _, err := engine.ParsePublicKey(p.Key); err != nil {
			line, col := findKey(string(b), "key")
			return c, fmt.Errorf("%s:%d:%d: peers[%d]: %v", path, line, col, i, err)
		}
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		line, col := findKey(string(b), "log_format")
		return c, fmt.Errorf("%s:%d:%d: log_format: want text or json, not %q", path, line, col, c.LogFormat)
	}
	if _, err := parseSize(c.MaxValue); err != nil {
		line, col := findKey(string(b), "max_value")
		return c, fmt.Errorf("%s:%d:%d: max_value: %v", path, line, col, err)
	}
	return c, nil
}

// errorLine is the line of a TOML error. The toml package counts lines wrongly
// at the end of the input (line 0 for `"\` alone), but its byte offset, which
// starts after any byte order mark, is right.
func errorLine(text string, pe toml.ParseError) int {
	for _, bom := range []string{"\xef\xbb\xbf", "\xff\xfe", "\xfe\xff"} {
		if t, ok := strings.CutPrefix(text, bom); ok {
			text = t
			break
		}
	}
	start := min(max(pe.Position.Start, 0), len(text))
	return strings.Count(text[:start], "\n") + 1
}

// findKey locates the first line that assigns key, for error messages.
func findKey(text, key string) (int, int) {
	re := regexp.MustCompile(`^\s*"?` + regexp.QuoteMeta(key) + `"?\s*=`)
	for i, l := range strings.Split(text, "\n") {
		if re.MatchString(l) {
			return i + 1, strings.Index(l, key) + 1
		}
	}
	return 1, 1
}

// parseSize parses "64MiB", "1GiB", "4096" …
func parseSize(s string) (int, error) {
	units := []struct {
		suffix string
		mult   int
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"B", 1}}
	s = strings.TrimSpace(s)
	whole, mult := s, 1
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || n <= 0 || fmt.Sprint(n) != s {
		return 0, fmt.Errorf("bad size %q (want e.g. 64MiB)", s)
	}
	if n > math.MaxInt/mult {
		return 0, fmt.Errorf("size %q is too large", whole) // n * mult would wrap around
	}
	return n * mult, nil
}
