package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"
)

// Precedence: flags > EIDEFS_* environment > eidefs.toml > defaults. The
// environment variables cover the scalar keys people set per run.
var envKeys = map[string]string{
	"name":      "EIDEFS_NAME",
	"listen":    "EIDEFS_LISTEN",    // comma-separated
	"advertise": "EIDEFS_ADVERTISE", // comma-separated
	"log_level": "EIDEFS_LOG_LEVEL",
	"max_value": "EIDEFS_MAX_VALUE",
}

// applyEnv overrides c with EIDEFS_* variables and reports which keys they set.
func applyEnv(c *Config) (map[string]bool, error) {
	set := map[string]bool{}
	for k, env := range envKeys {
		v, ok := os.LookupEnv(env)
		if !ok {
			continue
		}
		set[k] = true
		switch k {
		case "name":
			c.Name = v
		case "listen":
			c.Listen = splitList(v)
		case "advertise":
			c.Advertise = splitList(v)
		case "log_level":
			c.LogLevel = v
		case "max_value":
			if _, err := parseSize(v); err != nil {
				return nil, fmt.Errorf("%s: %v", env, err)
			}
			c.MaxValue = v
		}
	}
	return set, nil
}

// splitList splits a comma-separated environment value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, a := range strings.Split(v, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

func newConfigCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "config",
		Short: "Print the effective configuration and where each value comes from",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir := g.dataDir()
			path := filepath.Join(dir, configFile)
			cfg, err := loadConfig(path)
			if err != nil {
				return err
			}
			defined := map[string]bool{}
			if b, err := os.ReadFile(path); err == nil {
				var raw map[string]any
				if md, err := toml.Decode(string(b), &raw); err == nil {
					for _, k := range md.Keys() {
						defined[k.String()] = true
					}
				}
			}
			env, err := applyEnv(&cfg)
			if err != nil {
				return err
			}
			source := func(key string) string {
				switch {
				case env[key]:
					return "environment " + envKeys[key]
				case defined[key]:
					return "file " + path
				}
				return "default"
			}
			out := cmd.OutOrStdout()
			line := func(key string, value any) {
				var v string
				switch x := value.(type) {
				case string:
					v = strconv.Quote(x)
				case []string:
					q := make([]string, len(x))
					for i, e := range x {
						q[i] = strconv.Quote(e)
					}
					v = "[" + strings.Join(q, ", ") + "]"
				default:
					v = fmt.Sprint(x)
				}
				fmt.Fprintf(out, "%-22s %-40s # %s\n", key+" =", v, source(key))
			}
			line("name", cfg.Name)
			line("listen", cfg.Listen)
			line("advertise", cfg.Advertise)
			line("log_level", cfg.LogLevel)
			line("log_format", cfg.LogFormat)
			line("max_value", cfg.MaxValue)
			line("local_only", cfg.LocalOnly)
			line("passthrough", cfg.Passthrough)
			line("passthrough_writes", cfg.PassthroughWrites)
			line("cache.entry_timeout", cfg.Cache.Entry.String())
			line("cache.attr_timeout", cfg.Cache.Attr.String())
			line("sync.periodic", cfg.Sync.Periodic.String())
			line("sync.retry", cfg.Sync.Retry.String())
			line("sync.retry_cap", cfg.Sync.RetryCap.String())
			line("sync.health", cfg.Sync.Health.String())
			line("sync.wait_timeout", cfg.Sync.WaitTimeout.String())
			for _, p := range cfg.Peers {
				fmt.Fprintf(out, "%-22s %-40s # file %s\n", "peers =", fmt.Sprintf("%s %s %v", p.Name, p.Key, p.Addresses), path)
			}
			fmt.Fprintf(out, "# data directory: %s; flags (mount/serve --listen) override all of the above\n", dir)
			return nil
		},
	}
}
