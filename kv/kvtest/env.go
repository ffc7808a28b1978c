package kvtest

import (
	"os"
	"strconv"
	"testing"
)

// EnvInt returns the integer in the environment variable name, or def when it is
// unset: how the power-cut tests are made longer (EIDEFS_POWERCUT_CUTS).
func EnvInt(t testing.TB, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, s, err)
	}
	return n
}
