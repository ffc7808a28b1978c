package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fuzzTargets are eidefs's fuzz targets: the decoders of what peers and users
// send. Their seed corpora run with every `go test`; TestFuzzShort fuzzes them.
var fuzzTargets = []struct{ pkg, name string }{
	{"./engine", "FuzzDecodeEntry"},
	{"./engine", "FuzzApplyEntry"},
	{"./engine", "FuzzDecodeVersionVector"},
	{"./netsync", "FuzzReadFrame"},
	{"./netsync", "FuzzServe"},
	{"./netsync", "FuzzParseTicket"},
	{"./cmd/eidefs", "FuzzLoadConfig"},
}

// fuzzTime is how long TestFuzzShort fuzzes each target, and why.
func fuzzTime(t *testing.T) (time.Duration, string) {
	if v := os.Getenv("EIDEFS_FUZZTIME"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("EIDEFS_FUZZTIME=%q: want a duration such as 30s", v)
		}
		return d, "EIDEFS_FUZZTIME"
	}
	if os.Getenv("CI") == "true" {
		return 20 * time.Second, "CI=true; set EIDEFS_FUZZTIME for another time"
	}
	return 2 * time.Second, "a local run; set EIDEFS_FUZZTIME (e.g. 30s) or CI=true to fuzz for longer"
}

// TestFuzzShort fuzzes each target in turn, as a `go test -fuzz` subprocess
// (fuzzing takes one package and one target at a time). A failing target fails
// the test with the subprocess's output and the crasher it wrote under the
// package's testdata/fuzz, which then reproduces with plain `go test`.
//
// -fuzzminimizetime 100x keeps a short run fuzzing: Go otherwise spends up to a
// minute minimizing each new interesting input, most of a 20 s run.
func TestFuzzShort(t *testing.T) {
	d, why := fuzzTime(t)
	t.Logf("fuzzing each of %d targets for %v (%s)", len(fuzzTargets), d, why)
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to fuzz: %v", err)
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(wd)
	for _, tg := range fuzzTargets {
		t.Run(tg.name, func(t *testing.T) {
			ctx, cancel := context.WithDeadline(context.Background(), fuzzDeadline(t, d))
			defer cancel()
			cmd := exec.CommandContext(ctx, goBin, "test", "-run", "^$", "-fuzz", "^"+tg.name+"$",
				"-fuzztime", d.String(), "-fuzzminimizetime", "100x", "-parallel", "1", tg.pkg)
			cmd.Dir = root
			// On timeout, kill the fuzz workers too, not just the go command.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
			cmd.WaitDelay = 10 * time.Second
			out, err := cmd.CombinedOutput()
			if err != nil && coordinatorRace(out) {
				t.Logf("%s: Go's fuzz coordinator failed the run at the end of -fuzztime with a bare "+
					"\"context deadline exceeded\" and no failing input (golang/go#75804, fixed in Go 1.27); "+
					"not a finding: %s", tg.name, lastProgress(out))
				return
			}
			if err != nil {
				t.Fatalf("go %s: %v%s\n%s", strings.Join(cmd.Args[1:], " "), err, crasher(tg.pkg, out), out)
			}
			if !strings.Contains(string(out), "fuzz: elapsed:") {
				t.Fatalf("go %s did not fuzz:\n%s", strings.Join(cmd.Args[1:], " "), out)
			}
			t.Logf("%s: %s", tg.name, lastProgress(out))
		})
	}
}

// fuzzDeadline bounds one fuzz run: the fuzzing plus building the instrumented
// test binary, and never past this test binary's own -timeout.
func fuzzDeadline(t *testing.T, d time.Duration) time.Time {
	dl := time.Now().Add(d + 5*time.Minute)
	if td, ok := t.Deadline(); ok && td.Add(-30*time.Second).Before(dl) {
		dl = td.Add(-30 * time.Second)
	}
	return dl
}

var (
	crasherLine  = regexp.MustCompile(`Failing input written to (\S+)`)
	seedFailure  = regexp.MustCompile(`failure while testing seed corpus entry: (\S+)`)
	progressLine = regexp.MustCompile(`(?m)^fuzz: elapsed: .*$`)
	bareDeadline = regexp.MustCompile(`(?m)^--- FAIL: \S+ \([^)]*\)\n\s+context deadline exceeded$`)
)

// coordinatorRace reports whether a failed run is the Go fuzz coordinator's own
// race at the end of -fuzztime rather than a finding: every finding (a failed
// check, a panic, a hang caught by a target's watchdog) writes a failing input.
func coordinatorRace(out []byte) bool {
	return bareDeadline.Match(out) && crasher("", out) == "" && !strings.Contains(string(out), "panic:")
}

// crasher names the failing input of a failed fuzz run, if any: one it wrote, or
// a seed (a corpus file or an f.Add) that failed before fuzzing began.
func crasher(pkg string, out []byte) string {
	if m := crasherLine.FindSubmatch(out); m != nil {
		return "; failing input: " + filepath.Join(pkg, string(m[1]))
	}
	if m := seedFailure.FindSubmatch(out); m != nil {
		if name := string(m[1]); strings.Contains(name, "/seed#") {
			return "; failing input: " + name + ", an f.Add seed in " + pkg
		}
		return "; failing input: " + filepath.Join(pkg, "testdata", "fuzz", string(m[1]))
	}
	return ""
}

// lastProgress is the fuzzer's final progress line: elapsed time and executions,
// or, in a run too short to get past it, how far it replayed the corpus.
func lastProgress(out []byte) string {
	all := progressLine.FindAll(out, -1)
	if len(all) == 0 {
		return "no progress reported"
	}
	return string(all[len(all)-1])
}
