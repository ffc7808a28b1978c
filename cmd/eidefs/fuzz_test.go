package main

import (
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/eidefs/eidefs/engine"
)

// The configuration file is user input; loading it must fail with a message
// naming the place, never panic. A copy of the seeds below is committed under
// testdata/fuzz; TestFuzzSeedCorpus holds it to them, and
//
//	go test -run TestFuzzSeedCorpus ./cmd/eidefs -write-seeds
//
// rewrites it.

var writeSeeds = flag.Bool("write-seeds", false, "rewrite the fuzz seed corpus under testdata/fuzz")

type configSeed struct{ name, text string }

// configSeeds are the shipped example and the file `eidefs init` writes, a file
// using every section, and files broken in each way loadConfig reports.
func configSeeds() []configSeed {
	peer := engine.IdentityFromPrivate(ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))).Public().String()
	// The file init writes, with this machine's name replaced so the seed is the same everywhere.
	initial := strings.Replace(initialConfig(), fmt.Sprintf("name = %q", defaultConfig().Name), `name = "host"`, 1)
	full := fmt.Sprintf(`name = "laptop"
listen = ["0.0.0.0:7400", "[::]:7400"]
log_level = "debug"
log_format = "json"
max_value = "1GiB"
local_only = ["*.tmp"]
metrics_addr = "127.0.0.1:9400"

[cache]
entry_timeout = "500ms"
attr_timeout = "2s"

[sync]
periodic = "10m"
retry = "1s"
retry_cap = "1h"
health = "30s"
wait_timeout = "5m"

[[peers]]
key = %q
name = "desk"
addresses = ["192.0.2.1:7400"]
`, peer)
	return []configSeed{
		{"example", exampleConfig},
		{"initial", initial},
		{"full", full},
		{"empty", ""},
		{"unterminated-string", "name = \"laptop\nlisten = []\n"},
		{"bad-table", "[sync\nperiodic = \"1m\"\n"},
		{"duplicate-key", "name = \"a\"\nname = \"b\"\n"},
		{"unknown-key", "name = \"a\"\n[sync]\nperiodc = \"1m\"\n"},
		{"wrong-type", "name = 7\n"},
		{"bad-duration", "[cache]\nentry_timeout = \"soon\"\n"},
		{"bad-size", "max_value = \"lots\"\n"},
		{"huge-size", "max_value = \"9223372036854775807GiB\"\n"},
		{"bad-log-format", "log_format = \"xml\"\n"},
		{"bad-peer-key", "[[peers]]\nkey = \"ed25519:nope\"\n"},
		{"nul-byte", "name = \"a\x00\"\n"},
		{"bom", "\xef\xbb\xbfname = \"a\"\n"},
	}
}

// exampleConfig is eidefs.toml.example, read once: every key with its default.
var exampleConfig = func() string {
	b, err := os.ReadFile(filepath.Join("..", "..", "eidefs.toml.example"))
	if err != nil {
		panic(fmt.Sprintf("reading the example configuration: %v", err))
	}
	return string(b)
}()

// positioned matches loadConfig's "file:line:column: message" errors.
var positioned = regexp.MustCompile(`^(.*):(\d+):(\d+): `)

// FuzzLoadConfig: loadConfig's parsing never panics; its errors start with the file's path,
// and when the TOML itself is malformed, with a line (within the file) and a
// column. A configuration it accepts is usable: its log format is known, its
// value limit is a positive size and its peer keys parse.
func FuzzLoadConfig(f *testing.F) {
	for _, s := range configSeeds() {
		f.Add(s.text)
	}
	const path = "/data/eidefs.toml" // named in errors only
	f.Fuzz(func(t *testing.T, text string) {
		c, err := parseConfig(path, []byte(text))
		if err != nil {
			checkConfigError(t, path, text, err)
			return
		}
		if c.LogFormat != "text" && c.LogFormat != "json" {
			t.Fatalf("accepted log_format %q", c.LogFormat)
		}
		if n, err := parseSize(c.MaxValue); err != nil || n <= 0 {
			t.Fatalf("accepted max_value %q: %d, %v", c.MaxValue, n, err)
		}
		for _, p := range c.Peers {
			if _, err := engine.ParsePublicKey(p.Key); err != nil {
				t.Fatalf("accepted peer key %q: %v", p.Key, err)
			}
		}
	})
}

func checkConfigError(t *testing.T, path, text string, err error) {
	msg := err.Error()
	if !strings.HasPrefix(msg, path+":") {
		t.Fatalf("error does not start with the file's path: %v", err)
	}
	var pe toml.ParseError
	if _, perr := toml.Decode(text, &map[string]any{}); !errors.As(perr, &pe) {
		return // well-formed TOML that does not fit the configuration
	}
	m := positioned.FindStringSubmatch(msg)
	if m == nil || m[1] != path {
		t.Fatalf("malformed TOML, but the error has no line and column: %v", err)
	}
	line, _ := strconv.Atoi(m[2])
	col, _ := strconv.Atoi(m[3])
	if lines := strings.Count(text, "\n") + 1; line < 1 || line > lines || col < 1 {
		t.Fatalf("error at %d:%d, outside the %d-line file: %v", line, col, lines, err)
	}
}

// TestFuzzSeedCorpus checks that the committed corpus is exactly the seeds, or
// with -write-seeds rewrites it.
func TestFuzzSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzLoadConfig")
	if *writeSeeds {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range configSeeds() {
		path := filepath.Join(dir, "seed-"+s.name)
		want := fmt.Appendf([]byte("go test fuzz v1\n"), "string(%q)\n", s.text)
		if *writeSeeds {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != string(want) {
			t.Errorf("%s is missing or out of date (%v): go test -run TestFuzzSeedCorpus ./cmd/eidefs -write-seeds", path, err)
		}
	}
}
