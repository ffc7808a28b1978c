package integration

// Harness for the sync tests: nodes that listen for peers on 127.0.0.1, with or
// without a mount, stopped and restarted on the same data directory, mount point
// and address.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// syncOpts configures a sync node. Empty durations keep eidefs's defaults.
type syncOpts struct {
	Serve    bool   // `eidefs serve` instead of `eidefs mount`
	Periodic string // [sync] periodic, e.g. "2s"
	Retry    string // [sync] retry
	RetryCap string // [sync] retry_cap
	Health   string // [sync] health
	Wait     string // [sync] wait_timeout
}

// syncNode is one eidefs node listening for peers at Addr. Its process (a *Mount,
// whose Dir is empty for serve) is nil while the node is stopped.
type syncNode struct {
	*Mount
	Name  string
	Data  string
	Dir   string // mount point ("" for serve)
	Addr  string // 127.0.0.1:port, the same across restarts
	serve bool
	key   string
}

// freeUDPAddr picks a free UDP port on 127.0.0.1.
func freeUDPAddr(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// newSyncNode initialises a data directory named name (name = in eidefs.toml), writes
// the [sync] intervals and starts the node.
func newSyncNode(t *testing.T, name string, o syncOpts) *syncNode {
	t.Helper()
	if !o.Serve {
		requireFUSE(t)
	}
	base := t.TempDir()
	n := &syncNode{Name: name, Data: filepath.Join(base, name+"-data"), Addr: freeUDPAddr(t), serve: o.Serve}
	mustCLI(t, n.Data, "init")
	setConfig(t, n.Data, map[string]string{"name": fmt.Sprintf("%q", name)})
	var table strings.Builder
	for _, kv := range [][2]string{{"periodic", o.Periodic}, {"retry", o.Retry}, {"retry_cap", o.RetryCap}, {"health", o.Health}, {"wait_timeout", o.Wait}} {
		if kv[1] != "" {
			fmt.Fprintf(&table, "%s = %q\n", kv[0], kv[1])
		}
	}
	if table.Len() > 0 {
		path := filepath.Join(n.Data, "eidefs.toml")
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteString("\n[sync]\n" + table.String())
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !o.Serve {
		dir := filepath.Join(base, name+"-mnt")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		real, err := filepath.EvalSymlinks(dir)
		if err != nil {
			t.Fatal(err)
		}
		n.Dir = real
	}
	n.key = nodeKey(t, n.Data) // before the start: the CLI opens the data directory itself
	n.start(t)
	return n
}

// Path joins elements onto the mount point (also while the node is stopped).
func (n *syncNode) Path(elem ...string) string {
	return filepath.Join(append([]string{n.Dir}, elem...)...)
}

// Key is the node's device key, ed25519:….
func (n *syncNode) Key() string { return n.key }

// start runs `eidefs --data D mount DIR --listen ADDR` (or serve) and waits until
// the mount is live (serve: until the control socket answers).
func (n *syncNode) start(t *testing.T) {
	t.Helper()
	if n.Mount != nil {
		t.Fatalf("node %s is already running", n.Name)
	}
	args := []string{"--data", n.Data, "mount", n.Dir, "--listen", n.Addr}
	if n.serve {
		args = []string{"--data", n.Data, "serve", "--listen", n.Addr}
	}
	n.Mount = startEidefs(t, n.Name, n.Data, n.Dir, args)
}

// stop stops the node with SIGINT (the way Ctrl-C does) and checks a clean exit.
func (n *syncNode) stop(t *testing.T) {
	t.Helper()
	if n.Mount == nil {
		t.Fatalf("node %s is not running", n.Name)
	}
	n.Mount.StopWith(t, syscall.SIGINT)
	n.Mount = nil
}

// startEidefs starts a long-running eidefs process (mount or serve) the way mount
// does in harness_test.go, with the same cleanup, watchdog and bookkeeping; dir is
// the mount point, empty for serve.
func startEidefs(t *testing.T, name, data, dir string, args []string) *Mount {
	t.Helper()
	if dir != "" && isMounted(dir) {
		t.Fatalf("%s is already mounted", dir)
	}
	m := &Mount{Data: data, Dir: dir, output: &lockedBuffer{}, exited: make(chan struct{})}
	var out io.Writer = m.output
	if testing.Verbose() {
		out = io.MultiWriter(m.output, &prefixWriter{w: os.Stderr, prefix: "[" + t.Name() + " " + name + "] "})
	}
	m.cmd = exec.Command(eidefsBin, args...)
	m.cmd.Stdout, m.cmd.Stderr = out, out
	m.cmd.Env = testEnv()
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("starting eidefs %s: %v", strings.Join(args, " "), err)
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
	t.Cleanup(func() {
		m.Stop(t)
		if t.Failed() && !testing.Verbose() {
			t.Logf("eidefs %s (%s) output:\n%s", name, strings.Join(args[2:], " "), m.output)
		}
	})
	go func() {
		select {
		case <-m.exited:
		case <-time.After(defaultWatchdog):
			fmt.Fprintf(os.Stderr, "integration: %s: watchdog: eidefs %s still running after %v (hung?), killing it\n", t.Name(), name, defaultWatchdog)
			m.watchdog.Store(true)
			m.kill()
		}
	}()

	ready := func() bool {
		if dir != "" {
			return isMounted(dir)
		}
		c, err := net.Dial("unix", filepath.Join(data, "control.sock"))
		if err == nil {
			c.Close()
		}
		return err == nil
	}
	deadline := time.Now().Add(readyTimeout)
	for !ready() {
		select {
		case <-m.exited:
			t.Fatalf("eidefs %s exited before it was ready (%v); output:\n%s", strings.Join(args, " "), m.exitErr, m.output)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("eidefs %s: not ready after %v; output:\n%s", strings.Join(args, " "), readyTimeout, m.output)
		}
	}
	return m
}

// share runs `eidefs db share DB [flags]` on n and returns the ticket.
func share(t *testing.T, n *syncNode, db string, flags ...string) string {
	t.Helper()
	out := strings.TrimSpace(mustCLI(t, n.Data, append([]string{"db", "share", db}, flags...)...))
	if !strings.HasPrefix(out, "eidefs1:") || strings.ContainsAny(out, " \n") {
		t.Fatalf("eidefs db share %s %v printed %q, want one eidefs1:… ticket", db, flags, out)
	}
	return out
}

// join runs `eidefs db join TICKET` on n.
func join(t *testing.T, n *syncNode, ticket string) {
	t.Helper()
	out := mustCLI(t, n.Data, "db", "join", ticket)
	if !strings.HasPrefix(out, "joined ") {
		t.Errorf("eidefs db join printed %q, want joined …", out)
	}
}

// peerJSON is one element of `eidefs peer list --json`.
type peerJSON struct {
	Key       json.RawMessage `json:"key"`
	Name      string          `json:"name"`
	Addresses []string        `json:"addresses"`
	Status    string          `json:"status"`
	LastSync  time.Time       `json:"last_sync"`
	LastError string          `json:"last_error"`
	Rejected  uint64          `json:"rejected_entries"`
}

// KeyString is the key as the JSON carries it when it is a string ("" otherwise).
func (p peerJSON) KeyString() string {
	var s string
	if json.Unmarshal(p.Key, &s) != nil {
		return ""
	}
	return s
}

func peerList(t *testing.T, data string) []peerJSON {
	t.Helper()
	out := mustCLI(t, data, "peer", "list", "--json")
	var ps []peerJSON
	if err := json.Unmarshal([]byte(out), &ps); err != nil {
		t.Fatalf("eidefs peer list --json: %v\n%s", err, out)
	}
	return ps
}

// dbJSON is one element of `eidefs db list --json`.
type dbJSON struct {
	Name    string   `json:"name"`
	ID      string   `json:"id"`
	Entries uint64   `json:"entries"`
	Tips    []string `json:"tips"`
}

func dbList(t *testing.T, data string) []dbJSON {
	t.Helper()
	out := mustCLI(t, data, "db", "list", "--json")
	var ds []dbJSON
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		t.Fatalf("eidefs db list --json: %v\n%s", err, out)
	}
	return ds
}

// tips reads MNT/db/.sync/tips (sorted) on a mounted node, and the tips in
// `eidefs db list --json` otherwise.
func tips(t *testing.T, n *syncNode, db string) []string {
	t.Helper()
	var out []string
	if n.Mount != nil && n.Dir != "" {
		b, err := os.ReadFile(n.Path(db, ".sync", "tips"))
		if err != nil {
			t.Fatalf("node %s: %v", n.Name, err)
		}
		out = strings.Fields(string(b))
	} else {
		for _, d := range dbList(t, n.Data) {
			if d.Name == db {
				out = d.Tips
			}
		}
	}
	slices.Sort(out)
	return out
}

// waitFor polls cond every few milliseconds until it holds or timeout passes; it
// returns how long that took, and fails the test with cond's last message on
// timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	sleep := time.Millisecond
	for {
		ok, msg := cond()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not after %v: %s", what, timeout, msg)
		}
		time.Sleep(sleep)
		sleep = min(2*sleep, 50*time.Millisecond)
	}
}

// waitContent waits until path holds want and returns how long that took.
func waitContent(t *testing.T, timeout time.Duration, path, want string) time.Duration {
	t.Helper()
	return waitFor(t, timeout, "waiting for "+path, func() (bool, string) {
		b, err := os.ReadFile(path)
		if err != nil {
			return false, err.Error()
		}
		return string(b) == want, fmt.Sprintf("content %s, want %s", trunc(b), trunc([]byte(want)))
	})
}

// waitSameTips waits until every node has the same tips of db.
func waitSameTips(t *testing.T, timeout time.Duration, db string, ns ...*syncNode) time.Duration {
	t.Helper()
	return waitFor(t, timeout, "same tips of "+db+" everywhere", func() (bool, string) {
		var msg strings.Builder
		first := tips(t, ns[0], db)
		same := len(first) > 0
		for _, n := range ns {
			ts := tips(t, n, db)
			fmt.Fprintf(&msg, "\n  %s: %s", n.Name, shortIDs(ts))
			if !slices.Equal(ts, first) {
				same = false
			}
		}
		return same, msg.String()
	})
}

func shortIDs(ids []string) string {
	var s []string
	for _, id := range ids {
		s = append(s, id[:min(12, len(id))])
	}
	return "[" + strings.Join(s, " ") + "]"
}

// dbTree snapshots every store of db through n's mount (the generated .sync
// directory left out).
func dbTree(t *testing.T, n *syncNode, db string) map[string]fileInfo {
	t.Helper()
	out := map[string]fileInfo{}
	for _, store := range names(t, n.Path(db)) {
		if store == ".sync" {
			continue
		}
		out[store] = fileInfo{Dir: true, Perm: 0o755}
		for p, fi := range snapshot(t, n.Path(db, store)) {
			out[filepath.Join(store, p)] = fi
		}
	}
	return out
}

// findPeer returns the entry for key in ps.
func findPeer(ps []peerJSON, key string) (peerJSON, bool) {
	for _, p := range ps {
		if p.KeyString() == key {
			return p, true
		}
	}
	return peerJSON{}, false
}

// peerNames lists the names in ps, for messages.
func peerNames(ps []peerJSON) string {
	var s []string
	for _, p := range ps {
		s = append(s, fmt.Sprintf("%s(%s %s)", p.Name, p.KeyString(), p.Status))
	}
	return "[" + strings.Join(s, ", ") + "]"
}
