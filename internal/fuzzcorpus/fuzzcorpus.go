// Package fuzzcorpus writes and reads the seed files the fuzz tests commit under
// testdata/fuzz/FuzzX/: one-argument files of Go's fuzz corpus format, named
// seed-NAME so that inputs the fuzzer saved next to them are left alone.
package fuzzcorpus

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

const header = "go test fuzz v1\n"

// Seed is one input of a one-argument fuzz target: a []byte or a string.
type Seed struct {
	Name string
	Arg  any
}

// Path is where seed name of the target whose corpus is dir lives.
func Path(dir, name string) string { return filepath.Join(dir, "seed-"+name) }

// File is the corpus file holding arg.
func File(arg any) []byte {
	b := []byte(header)
	switch a := arg.(type) {
	case []byte:
		return fmt.Appendf(b, "[]byte(%q)\n", a)
	case string:
		return fmt.Appendf(b, "string(%q)\n", a)
	}
	panic(fmt.Sprintf("fuzzcorpus: no corpus encoding for %T", arg))
}

// Rewrite replaces the seed files in dir with seeds.
func Rewrite(dir string, seeds []Seed) error {
	old, err := filepath.Glob(Path(dir, "*"))
	if err != nil {
		return err
	}
	for _, p := range old {
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, s := range seeds {
		if err := os.WriteFile(Path(dir, s.Name), File(s.Arg), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// ReadBytes reads a seed file holding one []byte.
func ReadBytes(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	arg, ok := strings.CutPrefix(string(b), header)
	arg, ok2 := strings.CutPrefix(strings.TrimSpace(arg), "[]byte(")
	arg, ok3 := strings.CutSuffix(arg, ")")
	if !ok || !ok2 || !ok3 {
		return nil, fmt.Errorf("%s: not a one-[]byte fuzz corpus file", path)
	}
	s, err := strconv.Unquote(arg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return []byte(s), nil
}
