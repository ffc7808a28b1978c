package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// node is one eidefs process with a mount, restarted on the same data directory,
// mount point, listen address and metrics address after every stop.
type node struct {
	name    string
	bin     string
	data    string // data directory
	mnt     string // mount point (symlinks resolved, as /proc/mounts shows it)
	addr    string // 127.0.0.1:port for QUIC, the same across restarts
	metrics string // 127.0.0.1:port for /metrics
	key     string // device key, ed25519:…
	logPath string
	pidPath string // the running process's pid, for soak.sh's cleanup

	// up is true while the mount is live and not being stopped; load goroutines
	// only start an operation on a node that is up.
	up atomic.Bool
	// epoch counts stops: an operation that saw another epoch when it ended
	// overlapped a stop, so its failure is expected.
	epoch atomic.Int64
	// inflight counts writer operations under way, so a kill can hit one.
	inflight atomic.Int32
	// hotMu gives the node's writers and readers turns on each hot key.
	hotMu [hotKeys]sync.Mutex

	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd has exited
	exitErr  error         // cmd.Wait's result, valid once exited is closed
	lifetime int           // 1 for the first process, 2 after the first restart, …
}

// freeAddr picks a free port on 127.0.0.1 for network ("udp" or "tcp"); the port
// is kept for the node's whole life so peers find it again after a restart.
func freeAddr(network string) (string, error) {
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		defer c.Close()
		return c.LocalAddr().String(), nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// newNode initialises DIR/name (data) and DIR/name-mnt (mount point) and writes the
// node's eidefs.toml: its name, log level warn and the short sync intervals.
func newNode(bin, dir, name string, syncConf map[string]string, passWrites bool) (*node, error) {
	n := &node{name: name, bin: bin, data: filepath.Join(dir, name), logPath: filepath.Join(dir, name+".log"),
		pidPath: filepath.Join(dir, name+".pid")}
	var err error
	if n.addr, err = freeAddr("udp"); err != nil {
		return nil, fmt.Errorf("node %s: listen address: %w", name, err)
	}
	if n.metrics, err = freeAddr("tcp"); err != nil {
		return nil, fmt.Errorf("node %s: metrics address: %w", name, err)
	}
	mnt := filepath.Join(dir, name+"-mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	if n.mnt, err = filepath.EvalSymlinks(mnt); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	out, err := exec.Command(bin, "--data", n.data, "init").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("node %s: eidefs init: %v: %s", name, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if k, ok := strings.CutPrefix(line, "device key: "); ok {
			n.key = strings.TrimSpace(k)
		}
	}
	if n.key == "" {
		return nil, fmt.Errorf("node %s: eidefs init printed no device key: %s", name, out)
	}
	if err := n.writeConfig(syncConf, passWrites); err != nil {
		return nil, fmt.Errorf("node %s: %w", name, err)
	}
	return n, nil
}

// writeConfig rewrites the top-level name and log_level of the eidefs.toml init
// wrote, sets passthrough_writes to passWrites, and appends a [sync] table
// (init writes none).
func (n *node) writeConfig(syncConf map[string]string, passWrites bool) error {
	path := filepath.Join(n.data, "eidefs.toml")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var out []string
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		if strings.HasPrefix(line, "name =") || strings.HasPrefix(line, "log_level =") || strings.HasPrefix(line, "passthrough_writes =") || strings.HasPrefix(line, "[") {
			if strings.HasPrefix(line, "[") {
				return fmt.Errorf("%s already has a table (%s); expected only top-level keys", path, line)
			}
			continue
		}
		out = append(out, line)
	}
	out = append(out, fmt.Sprintf("name = %q", n.name), `log_level = "warn"`)
	out = append(out, fmt.Sprintf("passthrough_writes = %v", passWrites))
	out = append(out, "", "[sync]")
	for _, k := range []string{"periodic", "retry", "retry_cap", "health"} {
		if v := syncConf[k]; v != "" {
			out = append(out, fmt.Sprintf("%s = %q", k, v))
		}
	}
	return os.WriteFile(path, []byte(strings.Join(out, "\n")+"\n"), 0o644)
}

// isMounted reports whether dir is a mount point in /proc/mounts (a dead mount
// left by a killed node counts too).
func isMounted(dir string) bool {
	f, err := os.Open("/proc/mounts")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fields := strings.Fields(s.Text()); len(fields) > 1 && fields[1] == dir {
			return true
		}
	}
	return false
}

// fuseMounted reports whether dir is a live eidefs FUSE mount: listed in
// /proc/mounts and answering stat.
func fuseMounted(dir string) bool {
	if !isMounted(dir) {
		return false
	}
	_, err := os.Stat(filepath.Join(dir, ".sync"))
	return err == nil
}

// start runs `eidefs mount` and waits until the mount answers. A dead mount left by
// a killed process is the new process's to clean up (eidefs mount does that).
func (n *node) start(timeout time.Duration) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		return fmt.Errorf("node %s is already running", n.name)
	}
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	n.lifetime++
	fmt.Fprintf(logf, "==== soak: start #%d at %s\n", n.lifetime, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(n.bin, "--data", n.data, "mount", n.mnt, "--listen", n.addr, "--metrics-addr", n.metrics)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group (a Ctrl-C of the terminal reaches soak, which stops the
	// nodes in order); SIGTERM if soak itself dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("node %s: starting eidefs mount: %w", n.name, err)
	}
	exited := make(chan struct{})
	n.cmd, n.exited = cmd, exited
	go func() {
		err := cmd.Wait()
		n.mu.Lock()
		n.exitErr = err
		n.mu.Unlock()
		close(exited)
	}()
	if err := os.WriteFile(n.pidPath, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for !fuseMounted(n.mnt) {
		select {
		case <-exited:
			n.cmd = nil
			return fmt.Errorf("node %s (start #%d) exited before its mount was ready: %v; log: %s", n.name, n.lifetime, n.exitErr, tail(n.logPath, 10))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s (start #%d): mount not ready after %v; log: %s", n.name, n.lifetime, timeout, tail(n.logPath, 10))
		}
	}
	n.up.Store(true)
	return nil
}

// stopResult is what one stop of a node observed.
type stopResult struct {
	took    time.Duration
	exitErr error // the process's exit status (nil: exit 0)
	forced  bool  // SIGTERM was not enough within the timeout; SIGKILL followed
	// hung: the process outlived SIGKILL by the timeout, until its FUSE connection
	// was aborted; stacks are its threads' kernel stacks and those of this
	// process's threads waiting on FUSE at that moment.
	hung   bool
	stacks string
}

// stop marks the node down and ends its process with sig (SIGKILL or SIGTERM),
// escalating to SIGKILL when SIGTERM has not ended it within timeout. A process
// that outlives SIGKILL by timeout has a thread stuck in the kernel (one seen:
// a FUSE invalidation waiting for a directory lock held by a request to this very
// server, which no thread is left to answer); stop then records the stacks and
// aborts the mount's FUSE connection (umount -f), which frees it.
func (n *node) stop(sig syscall.Signal, timeout time.Duration) (stopResult, error) {
	n.up.Store(false)
	n.epoch.Add(1)
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return stopResult{}, fmt.Errorf("node %s is not running", n.name)
	}
	exitedWithin := func(d time.Duration) bool {
		select {
		case <-exited:
			return true
		case <-time.After(d):
			return false
		}
	}
	start := time.Now()
	var res stopResult
	cmd.Process.Signal(sig)
	if !exitedWithin(timeout) {
		if sig != syscall.SIGKILL {
			res.forced = true
			cmd.Process.Kill()
		}
		if sig == syscall.SIGKILL || !exitedWithin(timeout) {
			res.hung = true
			res.stacks = stuckStacks(cmd.Process.Pid)
			logf("node %s (pid %d) still there %v after SIGKILL; aborting its FUSE connection; stacks:\n%s",
				n.name, cmd.Process.Pid, time.Since(start).Round(time.Second), res.stacks)
			syscall.Unmount(n.mnt, syscall.MNT_FORCE) // aborts the connection, even when the unmount itself is refused
			if !exitedWithin(timeout) {
				return res, fmt.Errorf("node %s (pid %d) did not exit after SIGKILL nor after its FUSE connection was aborted; stacks:\n%s",
					n.name, cmd.Process.Pid, res.stacks)
			}
		}
	}
	res.took = time.Since(start)
	n.mu.Lock()
	res.exitErr = n.exitErr
	n.cmd = nil
	n.mu.Unlock()
	os.Remove(n.pidPath)
	return res, nil
}

// stuckStacks describes the kernel stacks of pid's threads that are not yet dead
// and of this process's threads waiting in FUSE: function names, innermost first.
func stuckStacks(pid int) string {
	var out []string
	describe := func(dir, who string, only func(stack string) bool) {
		tasks, _ := filepath.Glob(filepath.Join(dir, "task", "*"))
		for _, t := range tasks {
			stat, _ := os.ReadFile(filepath.Join(t, "stat"))
			state := "?"
			if i := strings.LastIndexByte(string(stat), ')'); i >= 0 {
				if f := strings.Fields(string(stat[i+1:])); len(f) > 0 {
					state = f[0]
				}
			}
			b, _ := os.ReadFile(filepath.Join(t, "stack"))
			if state == "Z" || !only(string(b)) {
				continue
			}
			var fns []string
			for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				if f := strings.Fields(line); len(f) > 1 {
					fn, _, _ := strings.Cut(f[1], "+")
					fns = append(fns, fn)
				}
			}
			out = append(out, fmt.Sprintf("  %s thread %s (%s): %s", who, filepath.Base(t), state, strings.Join(fns[:min(len(fns), 8)], " < ")))
		}
	}
	describe(fmt.Sprintf("/proc/%d", pid), "node", func(string) bool { return true })
	describe("/proc/self", "soak", func(stack string) bool { return strings.Contains(stack, "fuse") })
	return strings.Join(out, "\n")
}

// openFiles counts the running process's open file descriptors: goleveldb's
// table files (*.ldb, which its table cache keeps open, up to 500 by default) and
// all others.
func (n *node) openFiles() (tables, other int, err error) {
	n.mu.Lock()
	cmd := n.cmd
	n.mu.Unlock()
	if cmd == nil {
		return 0, 0, errors.New("not running")
	}
	dir := fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && strings.HasSuffix(target, ".ldb") {
			tables++
		} else {
			other++
		}
	}
	return tables, other, nil
}

// running reports whether the node's process is alive.
func (n *node) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// detachDeadMount lazily unmounts what a killed process left at the mount point.
func (n *node) detachDeadMount() error {
	if !isMounted(n.mnt) {
		return nil
	}
	if err := syscall.Unmount(n.mnt, syscall.MNT_DETACH); err == nil {
		return nil
	}
	out, err := exec.Command("fusermount3", "-uz", n.mnt).CombinedOutput()
	if err != nil {
		return fmt.Errorf("node %s: fusermount3 -uz %s: %v: %s", n.name, n.mnt, err, out)
	}
	return nil
}

// cli runs `eidefs --data DATA args…` (through the running node's control socket)
// and returns its trimmed stdout; a failure's error carries stdout and stderr
// (eidefs sync reports each peer's outcome on stdout).
func (n *node) cli(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.bin, append([]string{"--data", n.data}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("node %s: eidefs %s: %w: %s", n.name, strings.Join(args, " "), err,
			strings.TrimSpace(strings.TrimSpace(string(out))+"\n"+strings.TrimSpace(stderr.String())))
	}
	return strings.TrimSpace(string(out)), nil
}

// path is the absolute path of rel (slash-separated, relative to the database
// directory) in this node's mount.
func (n *node) path(db, rel string) string {
	return filepath.Join(n.mnt, db, filepath.FromSlash(rel))
}

// metricsClient bounds a scrape: a node that hangs must not stall the sampler.
var metricsClient = &http.Client{Timeout: 10 * time.Second}

// scrape reads the gauges named in want from the node's /metrics.
func (n *node) scrape(want ...string) (map[string]float64, error) {
	resp, err := metricsClient.Get("http://" + n.metrics + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		name, val, ok := strings.Cut(s.Text(), " ")
		if !ok {
			continue
		}
		for _, w := range want {
			if name == w {
				v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
				if err != nil {
					return nil, fmt.Errorf("metric %s: %w", name, err)
				}
				out[name] = v
			}
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	for _, w := range want {
		if _, ok := out[w]; !ok {
			return nil, fmt.Errorf("metric %s missing from /metrics", w)
		}
	}
	return out, nil
}

// tail is the last n lines of the file at path, indented, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "\n    " + strings.Join(lines, "\n    ")
}

// errExpected tells whether err on node n is explained by a stop of n that
// overlapped the operation (epoch is n.epoch when the operation began).
func (n *node) errExpected(epoch int64) bool {
	return n.epoch.Load() != epoch || !n.up.Load()
}

// isNotExist reports ENOENT (a key not replicated yet, or deleted meanwhile).
func isNotExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
