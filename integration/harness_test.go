// Package integration builds the eidefs binary, mounts it for real in a separate
// process and drives the mount from this process with shell tools and syscalls.
//
// Serving and accessing a FUSE mount in one process is where deadlocks hide, so the
// filesystem always runs in the built binary; every mount is unmounted in t.Cleanup,
// also when a test fails, and a watchdog kills a mount that hangs so that a red run
// never leaves a dead mount behind.
//
// Run as root with /dev/fuse, or with fusermount3 (package fuse3); under -race
// the binary is built with -race too. Environment and flags:
//
//	CI=1                  missing FUSE or tools (vim, rsync) fail the tests instead of skipping them
//	EIDEFS_TEST_BINARY=P  test the binary P instead of building ./cmd/eidefs
//	-v                    also stream the mount processes' output
//	-seed=N -ops=N        TestModel's random seed (printed by the test) and length
//	-check-every=N        TestModel compares whole trees every N operations
//	-names=a,b,x~         TestModel's file names
package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var (
	// eidefsBin is the binary under test; binDir holds it under the name "eidefs"
	// and is put first in PATH for shell scripts.
	eidefsBin string
	binDir    string
	// raceEnabled is set by race_test.go under -race: the binary is then built with
	// -race too, so a data race in the server fails the test that triggered it.
	raceEnabled bool
)

const (
	readyTimeout    = 10 * time.Second // for a mount to appear in /proc/mounts
	stopTimeout     = 10 * time.Second // for the process to exit after SIGTERM
	commandTimeout  = 60 * time.Second // for one sh or cli call
	defaultWatchdog = 2 * time.Minute  // a mount running longer than this is killed
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 2
	}
	root := filepath.Dir(wd) // integration/ is one level below the module root
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		fmt.Fprintf(os.Stderr, "integration: no go.mod in %s: run the tests from the integration directory (go test ./integration)\n", root)
		return 2
	}
	tmp, err := os.MkdirTemp("", "eidefs-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 2
	}
	defer os.RemoveAll(tmp)
	binDir = filepath.Join(tmp, "bin")
	if err := os.Mkdir(binDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 2
	}
	eidefsBin = filepath.Join(binDir, "eidefs")
	if prebuilt := os.Getenv("EIDEFS_TEST_BINARY"); prebuilt != "" {
		abs, err := filepath.Abs(prebuilt)
		if err == nil {
			err = os.Symlink(abs, eidefsBin)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "integration: EIDEFS_TEST_BINARY:", err)
			return 2
		}
	} else {
		args := []string{"build", "-o", eidefsBin}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./cmd/eidefs")...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "integration: go %s: %v\n%s", strings.Join(cmd.Args[1:], " "), err, out)
			return 1
		}
	}
	disarm := armDeadline()
	code := m.Run()
	disarm()
	if n := killLiveMounts("left mounted after the tests"); n > 0 && code == 0 {
		code = 1
	}
	return code
}

// armDeadline kills every live mount shortly before `go test -timeout` would panic:
// the panic skips t.Cleanup, and a dead FUSE mount would outlive the run.
func armDeadline() (disarm func()) {
	f := flag.Lookup("test.timeout")
	if f == nil {
		return func() {}
	}
	timeout, _ := f.Value.(flag.Getter).Get().(time.Duration)
	if timeout <= 30*time.Second {
		return func() {}
	}
	timer := time.AfterFunc(timeout-15*time.Second, func() {
		killLiveMounts("about to hit the -timeout of " + timeout.String())
	})
	return func() { timer.Stop() }
}

// live holds the mounts whose process has not been stopped yet.
var live struct {
	sync.Mutex
	mounts map[*Mount]bool // guarded by the mutex
}

func killLiveMounts(why string) int {
	live.Lock()
	var ms []*Mount
	for m := range live.mounts {
		ms = append(ms, m)
	}
	live.Unlock()
	for _, m := range ms {
		fmt.Fprintf(os.Stderr, "integration: %s: killing eidefs mount at %s\n", why, m.Dir)
		m.watchdog.Store(true)
		m.kill()
	}
	return len(ms)
}

// requireFUSE skips (or, under CI, fails) a test that cannot mount.
func requireFUSE(t *testing.T) {
	t.Helper()
	missing := ""
	if _, err := os.Stat("/dev/fuse"); err != nil {
		missing = "/dev/fuse is missing"
	} else if os.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			missing = "not root and fusermount3 is not installed (package fuse3)"
		}
	}
	if missing != "" {
		unavailable(t, "FUSE: "+missing)
	}
}

// requireTools skips (or, under CI, fails) a test that needs programs not installed.
func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			unavailable(t, tool+" is not installed")
		}
	}
}

func unavailable(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("needed by this test under CI: %s", what)
	}
	t.Skipf("skipped: %s (with CI set this fails instead)", what)
}

// mountOpts configures mount. The zero value mounts a fresh data directory (not
// initialised first: mount must auto-init) on a fresh empty directory.
type mountOpts struct {
	Data     string            // data directory to reuse, e.g. for a remount
	Dir      string            // mount point to reuse
	Config   map[string]string // eidefs.toml keys set before mounting, values as TOML (`"1MiB"`)
	Watchdog time.Duration     // kill the mount if it still runs after this; default 2 min
}

// Mount is a running `eidefs --data Data mount Dir`.
type Mount struct {
	Data string // data directory
	Dir  string // mount point, symlinks resolved (as /proc/mounts shows it)

	cmd      *exec.Cmd
	output   *lockedBuffer // stdout and stderr of the process
	exited   chan struct{} // closed once the process has exited and exitErr is set
	exitErr  error
	stop     sync.Once
	watchdog atomic.Bool // the watchdog (or the -timeout guard) killed the process
	panicked sync.Once   // reports a request that panicked, once
}

// panicLogged is what the mount logs when a filesystem request panics (it fails
// with EIO and the mount goes on): a test that saw one fails, whatever it asserted.
const panicLogged = "filesystem request panicked"

// mount starts eidefs mount in the foreground and waits until the mount is live.
// It always unmounts in t.Cleanup.
func mount(t *testing.T, opts mountOpts) *Mount {
	t.Helper()
	requireFUSE(t)
	data := opts.Data
	if data == "" {
		data = filepath.Join(t.TempDir(), "data")
	}
	dir := opts.Dir
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "mnt")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if len(opts.Config) > 0 {
		mustCLI(t, data, "init")
		setConfig(t, data, opts.Config)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	if isMounted(real) {
		t.Fatalf("%s is already mounted", real)
	}
	m := &Mount{Data: data, Dir: real, output: &lockedBuffer{}, exited: make(chan struct{})}
	var out io.Writer = m.output
	if testing.Verbose() {
		out = io.MultiWriter(m.output, &prefixWriter{w: os.Stderr, prefix: "[" + t.Name() + " eidefs] "})
	}
	m.cmd = exec.Command(eidefsBin, "--data", data, "mount", real)
	m.cmd.Stdout, m.cmd.Stderr = out, out
	m.cmd.Env = testEnv()
	// If this test process dies (a crash, or the -timeout panic that skips cleanups),
	// the server gets SIGTERM and unmounts instead of leaving a dead mount behind.
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("starting eidefs mount: %v", err)
	}
	go func() {
		m.exitErr = m.cmd.Wait()
		close(m.exited)
	}()
	live.Lock()
	if live.mounts == nil {
		live.mounts = map[*Mount]bool{}
	}
	live.mounts[m] = true
	live.Unlock()
	t.Cleanup(func() { m.cleanup(t) })

	watchdog := opts.Watchdog
	if watchdog == 0 {
		watchdog = defaultWatchdog
	}
	go func() {
		select {
		case <-m.exited:
		case <-time.After(watchdog):
			fmt.Fprintf(os.Stderr, "integration: %s: watchdog: mount at %s still running after %v (hung?), killing it\n", t.Name(), m.Dir, watchdog)
			m.watchdog.Store(true)
			m.kill()
		}
	}()

	deadline := time.Now().Add(readyTimeout)
	for !isMounted(real) {
		select {
		case <-m.exited:
			t.Fatalf("eidefs mount %s exited before the mount was live (%v); output:\n%s", real, m.exitErr, m.output)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("eidefs mount %s: not in /proc/mounts after %v; output:\n%s", real, readyTimeout, m.output)
		}
	}
	return m
}

// remount stops m cleanly and mounts the same data directory on the same mount point.
func remount(t *testing.T, m *Mount) *Mount {
	t.Helper()
	m.Stop(t)
	return mount(t, mountOpts{Data: m.Data, Dir: m.Dir})
}

// Path joins elements onto the mount point.
func (m *Mount) Path(elem ...string) string {
	return filepath.Join(append([]string{m.Dir}, elem...)...)
}

// Stop sends SIGTERM and checks that the process unmounts and exits 0 in time.
func (m *Mount) Stop(t *testing.T) { t.Helper(); m.StopWith(t, syscall.SIGTERM) }

// StopWith is Stop with another signal (SIGINT).
func (m *Mount) StopWith(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if m.watchdog.Load() {
		t.Errorf("eidefs mount %s was killed by the watchdog: it hung or the test took too long", m.Dir)
	}
	m.stop.Do(func() {
		defer m.unregister()
		select {
		case <-m.exited:
			t.Errorf("eidefs mount %s exited by itself (%v) before it was stopped. Output:\n%s", m.Dir, m.exitErr, m.output)
			forceUnmount(m.Dir)
			return
		default:
		}
		m.cmd.Process.Signal(sig)
		select {
		case <-m.exited:
		case <-time.After(stopTimeout):
			busy := ""
			if fds := openFilesUnder(m.Dir); len(fds) > 0 {
				busy = fmt.Sprintf(" (this test process still holds descriptors in the mount, so it is busy: %s)", strings.Join(fds, ", "))
			}
			t.Errorf("eidefs mount %s: still running %v after %v%s; killing it. Output:\n%s", m.Dir, stopTimeout, sig, busy, m.output)
			m.killLocked()
			return
		}
		if m.exitErr != nil {
			t.Errorf("eidefs mount %s: after %v: %v, want exit status 0. Output:\n%s", m.Dir, sig, m.exitErr, m.output)
		}
		if isMounted(m.Dir) {
			t.Errorf("eidefs mount %s: exited after %v but the mount is still in /proc/mounts", m.Dir, sig)
			forceUnmount(m.Dir)
		}
	})
	if strings.Contains(m.output.String(), panicLogged) {
		m.panicked.Do(func() {
			t.Errorf("eidefs %s: a filesystem request panicked (the caller got EIO). Output:\n%s", m.Dir, m.output)
		})
	}
	if isMounted(m.Dir) {
		t.Fatalf("%s is still mounted", m.Dir)
	}
}

// Kill simulates a crash: SIGKILL, then a lazy unmount of the dead mount.
func (m *Mount) Kill(t *testing.T) {
	t.Helper()
	m.kill()
	if isMounted(m.Dir) {
		t.Fatalf("%s is still mounted after kill and lazy unmount", m.Dir)
	}
}

func (m *Mount) kill() {
	m.stop.Do(func() {
		defer m.unregister()
		m.killLocked()
	})
}

func (m *Mount) killLocked() {
	syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
	m.cmd.Process.Kill()
	select {
	case <-m.exited:
	case <-time.After(stopTimeout):
		fmt.Fprintf(os.Stderr, "integration: eidefs mount %s (pid %d) did not die from SIGKILL\n", m.Dir, m.cmd.Process.Pid)
	}
	if err := forceUnmount(m.Dir); err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
	}
}

func (m *Mount) unregister() {
	live.Lock()
	delete(live.mounts, m)
	live.Unlock()
}

func (m *Mount) cleanup(t *testing.T) {
	m.Stop(t)
	if t.Failed() && !testing.Verbose() {
		t.Logf("eidefs mount %s output:\n%s", m.Dir, m.output)
	}
}

// openFilesUnder lists this process's descriptors open on paths under dir.
func openFilesUnder(dir string) []string {
	var out []string
	es, _ := os.ReadDir("/proc/self/fd")
	for _, e := range es {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(target, dir+"/") {
			out = append(out, e.Name()+" → "+target)
		}
	}
	return out
}

// isMounted reports whether dir is a mount point in /proc/mounts.
func isMounted(dir string) bool {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		panic(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 1 && unescapeMount(fields[1]) == dir {
			return true
		}
	}
	return false
}

// unescapeMount undoes the octal escapes (\040 for space …) of /proc/mounts.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// forceUnmount lazily detaches a (possibly dead) mount: umount -l as root,
// fusermount3 -uz otherwise.
func forceUnmount(dir string) error {
	if !isMounted(dir) {
		return nil
	}
	var err error
	if os.Geteuid() == 0 {
		err = syscall.Unmount(dir, syscall.MNT_DETACH)
	} else {
		var out []byte
		out, err = exec.Command("fusermount3", "-uz", dir).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%v: %s", err, out)
		}
	}
	for i := 0; i < 100 && isMounted(dir); i++ {
		time.Sleep(20 * time.Millisecond)
	}
	if isMounted(dir) {
		return fmt.Errorf("cannot unmount %s: %v", dir, err)
	}
	return nil
}

// setConfig sets top-level keys in DATA/eidefs.toml, replacing existing lines.
func setConfig(t *testing.T, data string, kv map[string]string) {
	t.Helper()
	path := filepath.Join(data, "eidefs.toml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	keys := make([]string, 0, len(kv))
	for k := range kv {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		line := k + " = " + kv[k]
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(k) + `\s*=.*$`)
		if re.MatchString(text) {
			text = re.ReplaceAllLiteralString(text, line)
		} else {
			text = line + "\n" + text // before any [table]
		}
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// testEnv is the environment of every process the tests start: messages in
// English, the binary under test first in PATH.
func testEnv(extra ...string) []string {
	env := []string{"LC_ALL=C", "LANG=C", "PATH=" + binDir + string(os.PathListSeparator) + os.Getenv("PATH")}
	if os.Getenv("GORACE") == "" {
		// A -race binary otherwise sleeps 1 s at every exit: a second per CLI call.
		env = append(env, "GORACE=atexit_sleep_ms=0")
	}
	for _, e := range os.Environ() {
		switch k, _, _ := strings.Cut(e, "="); k {
		case "LC_ALL", "LANG", "PATH", "EIDEFS_DATA", "LANGUAGE":
		default:
			env = append(env, e)
		}
	}
	return append(env, extra...)
}

// run runs a command with a timeout, killing its whole process group on expiry.
func run(t *testing.T, dir string, env []string, name string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: timed out after %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), commandTimeout, &stdout, &stderr)
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return stdout.String(), stderr.String(), code
}

// sh runs script with /bin/sh -c in dir; env adds "K=V" variables.
func sh(t *testing.T, dir, script string, env ...string) (stdout, stderr string, code int) {
	t.Helper()
	return run(t, dir, testEnv(env...), "/bin/sh", "-c", script)
}

// mustSh is sh that fails the test on a non-zero exit; it returns stdout.
func mustSh(t *testing.T, dir, script string, env ...string) string {
	t.Helper()
	out, errOut, code := sh(t, dir, script, env...)
	if code != 0 {
		t.Fatalf("sh -c %q in %s: exit %d\nstdout:\n%s\nstderr:\n%s", script, dir, code, out, errOut)
	}
	return out
}

// sh runs script in the mount point with $MNT, $DATA and $EIDEFS_DATA set.
func (m *Mount) sh(t *testing.T, script string) (string, string, int) {
	t.Helper()
	return sh(t, m.Dir, script, m.env()...)
}

func (m *Mount) mustSh(t *testing.T, script string) string {
	t.Helper()
	return mustSh(t, m.Dir, script, m.env()...)
}

func (m *Mount) env() []string {
	return []string{"MNT=" + m.Dir, "DATA=" + m.Data, "EIDEFS_DATA=" + m.Data}
}

// cli runs eidefs --data data args....
func cli(t *testing.T, data string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return run(t, "", testEnv(), eidefsBin, append([]string{"--data", data}, args...)...)
}

// mustCLI is cli that fails the test on a non-zero exit; it returns stdout.
func mustCLI(t *testing.T, data string, args ...string) string {
	t.Helper()
	out, errOut, code := cli(t, data, args...)
	if code != 0 {
		t.Fatalf("eidefs --data %s %s: exit %d\nstdout:\n%s\nstderr:\n%s", data, strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// commits is the number of entries of database db: the lines of MNT/db/.sync/log.
func commits(t *testing.T, m *Mount, db string) int {
	t.Helper()
	b, err := os.ReadFile(m.Path(db, ".sync", "log"))
	if err != nil {
		t.Fatalf("reading .sync/log: %v", err)
	}
	return bytes.Count(b, []byte("\n"))
}

// expectCommits checks that db has grown by want entries since before.
func expectCommits(t *testing.T, m *Mount, db string, before, want int, what string) {
	t.Helper()
	got := commits(t, m, db) - before
	if got == want {
		return
	}
	// Tell a late commit (made after close returned, e.g. in RELEASE, which the
	// kernel sends asynchronously, instead of FLUSH) from a missing one.
	start := time.Now()
	for got < want && time.Since(start) < 500*time.Millisecond {
		time.Sleep(time.Millisecond)
		got = commits(t, m, db) - before
	}
	if got == want {
		t.Errorf("%s: the commit appeared in %s/.sync/log only %v after the operation returned; it must be committed before close(2) returns",
			what, db, time.Since(start).Round(time.Millisecond))
		return
	}
	t.Errorf("%s: %d new commits in %s, want %d; .sync/log:\n%s", what, got, db, want, readFile(t, m.Path(db, ".sync", "log")))
}

// expectDeferredCommits is expectCommits for an unlink, whose delete is recorded
// (kill -9 safe) when it returns and committed a few milliseconds later, together
// with the unlinks made meanwhile.
func expectDeferredCommits(t *testing.T, m *Mount, db string, before, want int, what string) {
	t.Helper()
	got := commits(t, m, db) - before
	for start := time.Now(); got < want && time.Since(start) < 5*time.Second; {
		time.Sleep(time.Millisecond)
		got = commits(t, m, db) - before
	}
	if got != want {
		t.Errorf("%s: %d new commits in %s, want %d; .sync/log:\n%s", what, got, db, want, readFile(t, m.Path(db, ".sync", "log")))
	}
}

// newStore creates database db and store in it through the mount and returns the
// store's path.
func newStore(t *testing.T, m *Mount, db, store string) string {
	t.Helper()
	for _, p := range []string{m.Path(db), m.Path(db, store)} {
		if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatalf("mkdir: %v", err)
		}
	}
	return m.Path(db, store)
}

// expectContent checks the whole content of the file at path.
func expectContent(t *testing.T, path, want string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Errorf("reading %s: %v", path, err)
	} else if string(b) != want {
		t.Errorf("%s = %s, want %s", path, trunc(b), trunc([]byte(want)))
	}
}

// trunc quotes contents for messages, shortening long ones.
func trunc(b []byte) string {
	if len(b) > 200 {
		return fmt.Sprintf("%q… (%d bytes)", b[:200], len(b))
	}
	return fmt.Sprintf("%q", b)
}

// names lists a directory, sorted.
func names(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("listing %s: %v", dir, err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// errno extracts the errno of err (0 for nil, EIO-like sentinel -1 if none).
func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return ^syscall.Errno(0)
}

// errName names an errno as the C constant, for messages.
func errName(e syscall.Errno) string {
	if e == 0 {
		return "success"
	}
	if n, ok := errnoNames[e]; ok {
		return n
	}
	return fmt.Sprintf("errno %d (%v)", int(e), e)
}

var errnoNames = map[syscall.Errno]string{
	syscall.EPERM: "EPERM", syscall.ENOENT: "ENOENT", syscall.EIO: "EIO", syscall.EBADF: "EBADF",
	syscall.EACCES: "EACCES", syscall.EBUSY: "EBUSY", syscall.EEXIST: "EEXIST", syscall.EXDEV: "EXDEV",
	syscall.ENOTDIR: "ENOTDIR", syscall.EISDIR: "EISDIR", syscall.EINVAL: "EINVAL", syscall.EFBIG: "EFBIG",
	syscall.EROFS: "EROFS", syscall.ENAMETOOLONG: "ENAMETOOLONG", syscall.ENOTEMPTY: "ENOTEMPTY",
	syscall.ENOSYS: "ENOSYS", syscall.ENOTSUP: "ENOTSUP", syscall.ENOTCONN: "ENOTCONN", syscall.EINTR: "EINTR",
	syscall.ENOSPC: "ENOSPC", syscall.ELOOP: "ELOOP", syscall.EMLINK: "EMLINK",
}

// expectErrno checks that err carries exactly the errno want (0: success).
func expectErrno(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	if got := errno(err); got != want {
		t.Errorf("%s: got %s (%v), want %s", what, errName(got), err, errName(want))
	}
}

// lockedBuffer is a bytes.Buffer safe for the process's writers and the test.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer // guarded by mu
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// prefixWriter prefixes every line, to tell the server's log apart under -v.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	mid    bool // guarded by mu: the last write did not end a line
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out bytes.Buffer
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if !p.mid {
			out.WriteString(p.prefix)
		}
		out.Write(line)
		p.mid = line[len(line)-1] != '\n'
	}
	if _, err := p.w.Write(out.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}

// fileInfo is what tree comparisons look at.
type fileInfo struct {
	Dir  bool
	Perm os.FileMode
	Size int64  // files only
	Data string // files only
}

func (f fileInfo) String() string {
	if f.Dir {
		return fmt.Sprintf("dir %v", f.Perm)
	}
	if len(f.Data) > 40 {
		return fmt.Sprintf("file %v size %d %q…", f.Perm, f.Size, f.Data[:40])
	}
	return fmt.Sprintf("file %v size %d %q", f.Perm, f.Size, f.Data)
}

// snapshot reads the tree under root: relative path → type, permissions, size and
// content. Only directories and regular files are expected.
func snapshot(t *testing.T, root string) map[string]fileInfo {
	t.Helper()
	out, err := readTree(root)
	if err != nil {
		t.Fatalf("reading tree %s: %v", root, err)
	}
	return out
}

// readTree is snapshot returning its error.
func readTree(root string) (map[string]fileInfo, error) {
	out := map[string]fileInfo{}
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if rel == "." {
			return nil
		}
		fi, err := os.Lstat(path)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			out[rel] = fileInfo{Dir: true, Perm: fi.Mode().Perm()}
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if int64(len(b)) != fi.Size() {
				return fmt.Errorf("%s: st_size %d but %d bytes read", path, fi.Size(), len(b))
			}
			out[rel] = fileInfo{Perm: fi.Mode().Perm(), Size: fi.Size(), Data: string(b)}
		default:
			return fmt.Errorf("%s: unexpected file type %v", path, fi.Mode().Type())
		}
		return nil
	})
	return out, err
}

// diffSnapshots lists the differences between two snapshots, sorted.
func diffSnapshots(want, got map[string]fileInfo) []string {
	var diffs []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: missing (want %v)", p, w))
		case g != w:
			diffs = append(diffs, fmt.Sprintf("%s: got %v, want %v", p, g, w))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: unexpected %v", p, g))
		}
	}
	slices.Sort(diffs)
	return diffs
}

// expectSameTree fails the test if the trees under want and got differ.
func expectSameTree(t *testing.T, want, got map[string]fileInfo, what string) {
	t.Helper()
	if d := diffSnapshots(want, got); len(d) > 0 {
		if len(d) > 30 {
			d = append(d[:30], fmt.Sprintf("… and %d more", len(d)-30))
		}
		t.Errorf("%s: trees differ:\n  %s", what, strings.Join(d, "\n  "))
	}
}
