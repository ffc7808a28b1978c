package integration

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSyncStatusFiles reads <mnt>/.sync/status and .sync/peers with plain tools and
// checks them against the truth, and that .sync refuses writes.
func TestSyncStatusFiles(t *testing.T) {
	a := newSyncNode(t, "a", syncOpts{})
	b := newSyncNode(t, "b", syncOpts{})
	a.Mount.mustSh(t, `mkdir "$MNT/notes" "$MNT/notes/todo"`)
	join(t, b, share(t, a, "notes", "--write"))
	writeFile(t, a.Path("notes", "todo", "x"), "hi\n")
	waitContent(t, 2*time.Second, b.Path("notes", "todo", "x"), "hi\n")

	keyOf := func(n *syncNode) string {
		for _, l := range strings.Split(mustCLI(t, n.Data, "status"), "\n") {
			if k, ok := strings.CutPrefix(l, "key: "); ok {
				return k
			}
		}
		t.Fatalf("no key in status of %s", n.Name)
		return ""
	}
	status := readFile(t, a.Path(".sync", "status"))
	fields := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(status), "\n") {
		k, v, _ := strings.Cut(l, ": ")
		fields[k] = v
	}
	for k, want := range map[string]string{"key": keyOf(a), "name": "a", "listen": a.Addr, "databases": "1", "peers_active": "1", "peers_inactive": "0"} {
		if fields[k] != want {
			t.Errorf(".sync/status %s = %q, want %q\n%s", k, fields[k], want, status)
		}
	}
	var js map[string]any
	if err := json.Unmarshal([]byte(readFile(t, a.Path(".sync", "status.json"))), &js); err != nil || js["key"] != keyOf(a) || js["peers_active"] != 1.0 {
		t.Errorf("status.json: %v %v", js, err)
	}
	requireTools(t, "jq")
	if got := strings.TrimSpace(mustSh(t, a.Mount.Dir, `jq -r '.key + " " + (.peers_active|tostring)' .sync/status.json`)); got != keyOf(a)+" 1" {
		t.Errorf("jq on status.json: %q", got)
	}
	if got := strings.TrimSpace(mustSh(t, a.Mount.Dir, `jq -r '.[0].stores[0]' notes/.sync/log.json`)); got != "todo" {
		t.Errorf("jq on log.json: newest entry's first store %q, want todo", got)
	}
	// A directory per peer: info, addresses, status, databases, cursor, metadata, history.
	if got := names(t, a.Path(".sync", "peers")); len(got) != 1 || got[0] != "b" {
		t.Errorf("ls .sync/peers = %v, want [b]", got)
	}
	if got := names(t, a.Path(".sync", "peers", "b")); strings.Join(got, " ") != "addresses cursor databases history info metadata status" {
		t.Errorf("ls .sync/peers/b = %v", got)
	}
	info := mustSh(t, a.Mount.Dir, `grep '^key: ' .sync/peers/b/info | cut -d' ' -f2`)
	if strings.TrimSpace(info) != keyOf(b) {
		t.Errorf(".sync/peers/b/info key = %q, want %q", info, keyOf(b))
	}
	if got := strings.TrimSpace(readFile(t, a.Path(".sync", "peers", "b", "status"))); got != "active" {
		t.Errorf(".sync/peers/b/status = %q", got)
	}
	if got := strings.TrimSpace(readFile(t, a.Path(".sync", "peers", "b", "addresses"))); got != b.Addr {
		t.Errorf(".sync/peers/b/addresses = %q, want %q", got, b.Addr)
	}
	if got := strings.Fields(readFile(t, a.Path(".sync", "peers", "b", "databases"))); len(got) != 3 || got[0] != "notes" || got[2] != "write" {
		t.Errorf(".sync/peers/b/databases = %q", got)
	}
	// The size at stat is the size read (tail -f, wc and cat rely on it).
	fi, err := os.Stat(a.Path(".sync", "status"))
	if err != nil || fi.Size() != int64(len(readFile(t, a.Path(".sync", "status")))) {
		t.Errorf("stat size %v vs read size: %v", fi.Size(), err)
	}
	// Per database: who syncs it, with the cursor (the last synced tip = A's tip).
	mustCLI(t, a.Data, "sync")
	tip := strings.TrimSpace(readFile(t, a.Path("notes", ".sync", "tips")))
	dbPeers := strings.Fields(readFile(t, a.Path("notes", ".sync", "peers")))
	if len(dbPeers) < 5 || dbPeers[0] != "b" || dbPeers[1] != keyOf(b) || dbPeers[3] != tip {
		t.Errorf("notes/.sync/peers: %q, want b, its key, status, cursor %s", dbPeers, tip)
	}
	cursor := strings.Fields(readFile(t, a.Path(".sync", "peers", "b", "cursor")))
	if len(cursor) != 5 || cursor[0] != "notes" || cursor[1] != tip {
		t.Errorf(".sync/peers/b/cursor = %q, want notes %s …", cursor, tip)
	}
	meta := readFile(t, a.Path(".sync", "peers", "b", "metadata"))
	if !strings.HasPrefix(meta, "notes successful=") || !strings.Contains(meta, "success_rate=1.000") {
		t.Errorf(".sync/peers/b/metadata = %q", meta)
	}
	if h := readFile(t, a.Path(".sync", "peers", "b", "history")); !strings.Contains(h, " b notes ok ") {
		t.Errorf(".sync/peers/b/history = %q", h)
	}
	// log.json is the twin of log.
	var log []struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(readFile(t, a.Path("notes", ".sync", "log.json"))), &log); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(readFile(t, a.Path("notes", ".sync", "log"))), "\n")
	if len(log) != len(lines) || log[0].ID != strings.Fields(lines[0])[0] {
		t.Errorf("log.json has %d entries (first %v), log %d lines", len(log), log[0], len(lines))
	}
	expectErrno(t, "write to .sync/status", os.WriteFile(a.Path(".sync", "status"), []byte("x"), 0o644), syscall.EROFS)
	expectErrno(t, "create in .sync", os.WriteFile(a.Path(".sync", "new"), []byte("x"), 0o644), syscall.EROFS)
}

// TestKeyXattrs: getfattr shows who last wrote a key, matching .sync/log.
func TestKeyXattrs(t *testing.T) {
	requireTools(t, "getfattr")
	m := mount(t, mountOpts{})
	m.mustSh(t, `mkdir -p "$MNT/notes/todo" && echo hi > "$MNT/notes/todo/milk"`)
	out := m.mustSh(t, `getfattr --absolute-names -d "$MNT/notes/todo/milk"`)
	newest := strings.Fields(strings.Split(readFile(t, m.Path("notes", ".sync", "log")), "\n")[0])
	if len(newest) != 6 || newest[5] != "todo/milk" {
		t.Errorf(".sync/log newest line %q: want the key touched, todo/milk, last", newest)
	}
	for _, want := range []string{
		`user.eidefs.entry="` + newest[0] + `"`,
		`user.eidefs.height="` + newest[1] + `"`,
		`user.eidefs.author="` + newest[3] + `"`,
		`user.eidefs.time="`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("getfattr -d: missing %s in\n%s", want, out)
		}
	}
	_, errOut, code := m.sh(t, `setfattr -n user.x -v 1 "$MNT/notes/todo/milk"`)
	if code == 0 || !strings.Contains(errOut, "Operation not supported") {
		t.Errorf("setfattr: exit %d %q, want Operation not supported", code, errOut)
	}
}

// TestEventsStream: `cat .sync/events` blocks and streams one JSON line per change,
// local and remote (with the peer as origin); several readers at once.
func TestEventsStream(t *testing.T) {
	a := newSyncNode(t, "a", syncOpts{})
	b := newSyncNode(t, "b", syncOpts{})
	a.Mount.mustSh(t, `mkdir "$MNT/notes" "$MNT/notes/todo"`)
	join(t, b, share(t, a, "notes", "--write"))
	bKey := ""
	for _, l := range strings.Split(mustCLI(t, b.Data, "status"), "\n") {
		if k, ok := strings.CutPrefix(l, "key: "); ok {
			bKey = k
		}
	}

	type reader struct {
		cmd   *exec.Cmd
		lines chan string
	}
	start := func() reader {
		cmd := exec.Command("cat", a.Path(".sync", "events"))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		r := reader{cmd: cmd, lines: make(chan string, 100)}
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				r.lines <- sc.Text()
			}
			close(r.lines)
		}()
		return r
	}
	r1, r2 := start(), start()
	time.Sleep(100 * time.Millisecond) // both subscribed before the writes

	expect := func(r reader, key, origin string) {
		t.Helper()
		deadline := time.After(3 * time.Second)
		for {
			select {
			case l, ok := <-r.lines:
				if !ok {
					t.Fatalf("events ended before %s", key)
				}
				var ev map[string]string
				if err := json.Unmarshal([]byte(l), &ev); err != nil {
					t.Fatalf("not a JSON line: %q", l)
				}
				if ev["key"] == key {
					if ev["db"] != "notes" || ev["store"] != "todo" || ev["origin"] != origin || len(ev["entry"]) != 64 {
						t.Fatalf("event for %s: %v, want origin %s", key, ev, origin)
					}
					return
				}
			case <-deadline:
				t.Fatalf("no event for %s within 3 s", key)
			}
		}
	}
	writeFile(t, a.Path("notes", "todo", "local"), "1\n")
	writeFile(t, b.Path("notes", "todo", "remote"), "2\n")
	for _, r := range []reader{r1, r2} {
		expect(r, "local", "local")
		expect(r, "remote", bKey)
	}
}

// TestHistoryTailF: `tail -f .sync/history` prints a new line when a sync happens.
func TestHistoryTailF(t *testing.T) {
	requireTools(t, "tail")
	a := newSyncNode(t, "a", syncOpts{})
	b := newSyncNode(t, "b", syncOpts{})
	a.Mount.mustSh(t, `mkdir "$MNT/notes" "$MNT/notes/todo"`)
	join(t, b, share(t, a, "notes", "--write"))
	before := strings.Count(readFile(t, a.Path(".sync", "history")), "\n")

	cmd := exec.Command("tail", "-n", "0", "-f", a.Path(".sync", "history"))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	time.Sleep(200 * time.Millisecond)
	a.Mount.mustSh(t, `echo sync > "$MNT/.sync/ctl"`)
	select {
	case l := <-lines:
		if !strings.Contains(l, " b notes ok ") {
			t.Errorf("tail -f history printed %q, want a line for b notes ok", l)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("tail -f .sync/history printed nothing after eidefs sync")
	}
	if after := strings.Count(readFile(t, a.Path(".sync", "history")), "\n"); after <= before {
		t.Errorf("history lines %d → %d", before, after)
	}
}

// TestCtl: commands written to .sync/ctl run before the write returns; a bad one
// fails the write with EINVAL and the reason is readable from ctl.
func TestCtl(t *testing.T) {
	a := newSyncNode(t, "a", syncOpts{})
	b := newSyncNode(t, "b", syncOpts{})
	a.Mount.mustSh(t, `mkdir "$MNT/notes"`)
	join(t, b, share(t, a, "notes", "--write"))
	out := a.Mount.mustSh(t, `echo "sync b" > "$MNT/.sync/ctl" && cat "$MNT/.sync/ctl"`)
	if !strings.HasPrefix(out, "sync b: ok\n") || !strings.Contains(out, "b notes: ok") {
		t.Errorf("after echo sync b > ctl, ctl reads %q", out)
	}
	expectErrno(t, "bad ctl command", os.WriteFile(a.Path(".sync", "ctl"), []byte("frobnicate\n"), 0o644), syscall.EINVAL)
	if got := readFile(t, a.Path(".sync", "ctl")); !strings.Contains(got, `frobnicate: error: unknown command`) {
		t.Errorf("ctl after a bad command: %q", got)
	}
	expectErrno(t, "sync with an unknown peer", os.WriteFile(a.Path(".sync", "ctl"), []byte("sync nobody\n"), 0o644), syscall.EINVAL)
	if got := readFile(t, a.Path(".sync", "ctl")); !strings.Contains(got, "peer not found") {
		t.Errorf("ctl after sync nobody: %q", got)
	}
	expectErrno(t, "rm ctl", os.Remove(a.Path(".sync", "ctl")), syscall.EROFS)
}

// TestTimeTravel: .sync/at/<entry>/ is the tree as it was right after that entry.
func TestTimeTravel(t *testing.T) {
	m := mount(t, mountOpts{})
	m.mustSh(t, `mkdir -p "$MNT/notes/todo/sub" && echo one > "$MNT/notes/todo/k" && echo a > "$MNT/notes/todo/sub/a" && head -c 5000 /dev/urandom > "$MNT/notes/todo/big"`)
	then := snapshot(t, m.Path("notes", "todo"))
	id := strings.Fields(readFile(t, m.Path("notes", ".sync", "log")))[0]
	m.mustSh(t, `echo two > "$MNT/notes/todo/k" && rm -r "$MNT/notes/todo/sub" && echo new > "$MNT/notes/todo/n"`)
	// Snapshots are read-only (0444/0555); compare everything but the modes.
	noPerm := func(tree map[string]fileInfo) map[string]fileInfo {
		for p, fi := range tree {
			fi.Perm = 0
			tree[p] = fi
		}
		return tree
	}
	for _, prefix := range []string{id, id[:8]} {
		past := snapshot(t, m.Path("notes", ".sync", "at", prefix, "todo"))
		expectSameTree(t, noPerm(then), noPerm(past), "at/"+prefix)
	}
	if _, errOut, code := m.sh(t, `touch "$MNT/notes/.sync/at/`+id+`/todo/x"`); code == 0 || !strings.Contains(errOut, "Read-only file system") {
		t.Errorf("touch in a snapshot: exit %d %q", code, errOut)
	}
	if _, err := os.Stat(m.Path("notes", ".sync", "at", "ffffffff")); !os.IsNotExist(err) {
		t.Errorf("unknown entry prefix: %v", err)
	}
}

// TestWaitBarrier: reading .sync/wait/<entry> returns the peers holding the entry
// once one does; an entry no peer can get times out with ETIMEDOUT.
func TestWaitBarrier(t *testing.T) {
	a := newSyncNode(t, "a", syncOpts{Wait: "1s"})
	b := newSyncNode(t, "b", syncOpts{})
	a.Mount.mustSh(t, `mkdir "$MNT/notes" "$MNT/notes/todo"`)
	join(t, b, share(t, a, "notes", "--write"))
	writeFile(t, a.Path("notes", "todo", "x"), "1\n")
	id := strings.Fields(readFile(t, a.Path("notes", ".sync", "log")))[0]
	start := time.Now()
	got := readFile(t, a.Path(".sync", "wait", id[:12]))
	if f := strings.Fields(got); len(f) != 2 || f[0] != "b" {
		t.Errorf("wait/%s = %q, want b and its key", id[:12], got)
	}
	t.Logf("wait returned after %v", time.Since(start))
	// Two peers will never hold it: the barrier times out (wait_timeout = 1s here).
	if _, err := os.ReadFile(a.Path(".sync", "wait", id+"@2")); err == nil {
		t.Error("wait@2 with one peer returned")
	} else {
		expectErrno(t, "wait@2", err, syscall.ETIMEDOUT)
	}
	if _, err := os.ReadFile(a.Path(".sync", "wait", "ffffffffffff")); err == nil {
		t.Error("wait for an unknown entry returned")
	} else {
		expectErrno(t, "wait for an unknown entry", err, syscall.ENOENT)
	}
}

// TestTicketFile: <db>/.sync/ticket is a read-only ticket another node joins with;
// it stays the same until used, then a new one is shown.
func TestTicketFile(t *testing.T) {
	a := newSyncNode(t, "a", syncOpts{})
	b := newSyncNode(t, "b", syncOpts{})
	a.Mount.mustSh(t, `mkdir "$MNT/notes" "$MNT/notes/todo" && echo hi > "$MNT/notes/todo/x"`)
	tk := strings.TrimSpace(readFile(t, a.Path("notes", ".sync", "ticket")))
	if again := strings.TrimSpace(readFile(t, a.Path("notes", ".sync", "ticket"))); again != tk || !strings.HasPrefix(tk, "eidefs1:") {
		t.Fatalf("ticket %q, then %q", tk, again)
	}
	join(t, b, tk)
	expectContent(t, b.Path("notes", "todo", "x"), "hi\n")
	expectErrno(t, "write on read-only b", os.WriteFile(b.Path("notes", "todo", "y"), []byte("x"), 0o644), syscall.EACCES)
	if next := strings.TrimSpace(readFile(t, a.Path("notes", ".sync", "ticket"))); next == tk {
		t.Error("the used ticket is still shown")
	}
	status := readFile(t, a.Path(".sync", "status"))
	if !strings.Contains(status, "pending_push: 0\n") || !strings.Contains(status, "retry_queue: 0\n") {
		t.Errorf(".sync/status lacks pending_push/retry_queue:\n%s", status)
	}
}

// TestConfigReload: editing eidefs.toml of a running mount (saved by rename, as
// editors do) takes effect; a bad file is reported with line and column and the
// running configuration is kept.
func TestConfigReload(t *testing.T) {
	m := mount(t, mountOpts{})
	m.mustSh(t, `mkdir -p "$MNT/notes/todo"`)
	cfg := filepath.Join(m.Data, "eidefs.toml")
	save := func(text string) {
		tmp := cfg + ".new"
		if err := os.WriteFile(tmp, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, cfg); err != nil {
			t.Fatal(err)
		}
	}
	key := "ed25519:zu25Lil7W8EJabpr83Im23YeyyIcTiv6BWSbnjuAzhw"
	save("name = \"x\"\n[[peers]]\nkey = \"" + key + "\"\nname = \"far\"\naddresses = [\"127.0.0.1:7999\"]\n")
	waitContent(t, 3*time.Second, m.Path(".sync", "peers", "far", "addresses"), "127.0.0.1:7999\n")
	// The peer moves: the new address replaces the old one.
	save("name = \"x\"\n[[peers]]\nkey = \"" + key + "\"\nname = \"far\"\naddresses = [\"127.0.0.1:7998\"]\n")
	waitContent(t, 3*time.Second, m.Path(".sync", "peers", "far", "addresses"), "127.0.0.1:7998\n")
	// A bad file: reported with file, line and column; the running one stays.
	save("name = \"x\"\nlog_level = \"debug\"\nmax_value = \"lots\"\n")
	deadline := time.Now().Add(3 * time.Second)
	for !strings.Contains(m.output.String(), "eidefs.toml:3:1: max_value") {
		if time.Now().After(deadline) {
			t.Fatalf("no line:column report of the bad configuration in the mount's log:\n%s", m.output.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := readFile(t, m.Path(".sync", "peers", "far", "addresses")); got != "127.0.0.1:7998\n" {
		t.Errorf("after a bad file, the peer's address is %q", got)
	}
	// The log level takes effect: at "error", the next reload's info line is not logged.
	save("name = \"x\"\nlog_level = \"error\"\n")
	time.Sleep(500 * time.Millisecond)
	n := strings.Count(m.output.String(), "configuration reloaded")
	save("name = \"x\"\nlog_level = \"error\"\nlocal_only = [\"*.bak\"]\n")
	time.Sleep(500 * time.Millisecond)
	if got := strings.Count(m.output.String(), "configuration reloaded"); got != n {
		t.Errorf("at log_level error, an info line was still logged:\n%s", m.output.String())
	}
	// And the new local-only pattern is used: *.bak files stay out of the database.
	before := commits(t, m, "notes")
	writeFile(t, m.Path("notes", "todo", "x.bak"), "scratch")
	if got := commits(t, m, "notes"); got != before {
		t.Errorf("writing x.bak made %d commits; it matches the reloaded local_only", got-before)
	}
}

// TestUmountCommand: `eidefs umount DIR` ends a running mount; data written through
// a descriptor still open is committed first.
func TestUmountCommand(t *testing.T) {
	m := mount(t, mountOpts{})
	m.mustSh(t, `mkdir -p "$MNT/notes/todo"`)
	f, err := os.OpenFile(m.Path("notes", "todo", "open"), os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("not closed yet\n"); err != nil {
		t.Fatal(err)
	}
	if out := mustCLI(t, m.Data, "umount", m.Dir); !strings.Contains(out, "unmounting") {
		t.Errorf("eidefs umount: %q", out)
	}
	f.Close()
	select {
	case <-m.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("the mount did not end after eidefs umount")
	}
	m.stop.Do(func() { m.unregister() }) // it ended as it should: nothing to stop
	if m.exitErr != nil {
		t.Errorf("the mount exited with %v", m.exitErr)
	}
	if mounted(m.Dir) {
		t.Errorf("%s still mounted", m.Dir)
	}
	if got := mustCLI(t, m.Data, "get", "notes", "todo", "open"); got != "not closed yet\n" {
		t.Errorf("after umount, the open file's data: %q", got)
	}
	_, errOut, code := cli(t, m.Data, "umount", m.Dir)
	if code != 1 || !strings.Contains(errOut, "no running eidefs mount") {
		t.Errorf("umount with nothing running: exit %d %q", code, errOut)
	}
}

// TestBackgroundMount: mount --background returns once the mount is ready, or fails
// with the reason; the detached node is stopped with eidefs umount.
func TestBackgroundMount(t *testing.T) {
	requireFUSE(t)
	base := t.TempDir()
	data, dir := filepath.Join(base, "data"), filepath.Join(base, "mnt")
	os.Mkdir(dir, 0o755)
	t.Cleanup(func() {
		if mounted(dir) {
			cli(t, data, "umount", dir)
			time.Sleep(500 * time.Millisecond)
			forceUnmount(dir)
		}
	})
	out := mustCLI(t, data, "mount", dir, "--background")
	if !strings.HasPrefix(out, "mounted "+dir) || !mounted(dir) {
		t.Fatalf("mount --background: %q, mounted %v", out, mounted(dir))
	}
	mustSh(t, dir, `mkdir notes && mkdir notes/todo && echo hi > notes/todo/x && cat notes/todo/x`)
	// A second background mount of the same data directory fails in the detached
	// process; the command reports why.
	other := filepath.Join(base, "other")
	os.Mkdir(other, 0o755)
	_, errOut, code := cli(t, data, "mount", other, "--background")
	if code != 1 || !strings.Contains(errOut, "data directory is in use") || mounted(other) {
		t.Errorf("second background mount: exit %d %q, mounted %v", code, errOut, mounted(other))
	}
	mustCLI(t, data, "umount", dir)
	deadline := time.Now().Add(10 * time.Second)
	for mounted(dir) {
		if time.Now().After(deadline) {
			t.Fatal("still mounted after eidefs umount")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := mustCLI(t, data, "get", "notes", "todo", "x"); got != "hi\n" {
		t.Errorf("after the background mount: %q", got)
	}
	// A failure is reported by the command itself, with the reason.
	_, errOut, code = cli(t, data, "mount", filepath.Join(base, "missing"), "--background")
	if code != 1 || !strings.Contains(errOut, "does not exist") {
		t.Errorf("mount --background on a missing dir: exit %d %q", code, errOut)
	}
}

// TestDeadMountRecovery: after kill -9 the mount point is a dead mount ("Transport
// endpoint is not connected"); the next eidefs mount there cleans it up, says so,
// and mounts.
func TestDeadMountRecovery(t *testing.T) {
	m := mount(t, mountOpts{})
	m.mustSh(t, `mkdir -p "$MNT/notes/todo" && echo kept > "$MNT/notes/todo/k"`)
	m.stop.Do(func() {
		defer m.unregister()
		syscall.Kill(m.cmd.Process.Pid, syscall.SIGKILL)
		<-m.exited
	})
	t.Cleanup(func() { forceUnmount(m.Dir) })
	if _, err := os.Stat(m.Dir); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("after kill -9: stat %v, want ENOTCONN (a dead mount)", err)
	}
	// (The harness's mount helper refuses a directory it cannot stat: run it here.)
	var out lockedBuffer
	cmd := exec.Command(eidefsBin, "--data", m.Data, "mount", m.Dir)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(m.Path("notes", "todo", "k")); err == nil {
			if string(b) != "kept\n" {
				t.Errorf("after recovery: %q", b)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no working mount 10 s after restarting on the dead one:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(out.String(), "cleaned up a dead mount") {
		t.Errorf("no message about the dead mount:\n%s", out.String())
	}
}

// TestMetrics scrapes the Prometheus endpoint with a real HTTP GET.
func TestMetrics(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	m := mount(t, mountOpts{Config: map[string]string{"metrics_addr": strconv.Quote(addr)}})
	scrape := func() map[string]float64 {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out := map[string]float64{}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 && !strings.HasPrefix(f[0], "#") {
				v, _ := strconv.ParseFloat(f[1], 64)
				out[f[0]] = v
			}
		}
		return out
	}
	before := scrape()["eidefs_commits_total"]
	m.mustSh(t, `mkdir -p "$MNT/notes/todo" && echo a > "$MNT/notes/todo/a" && echo b > "$MNT/notes/todo/b"`)
	after := scrape()
	// root entry of notes + store + two files
	if got := after["eidefs_commits_total"] - before; got != 4 {
		t.Errorf("eidefs_commits_total rose by %v, want 4", got)
	}
	for _, name := range []string{"eidefs_databases", "eidefs_peers_active", "eidefs_push_pending", "eidefs_entries_received_total", "eidefs_entries_sent_total", `eidefs_syncs_total{result="ok"}`, "process_resident_memory_bytes",
		`eidefs_fuse_op_duration_seconds_count{op="create"}`, `eidefs_fuse_op_duration_seconds_count{op="mkdir"}`} {
		if _, ok := after[name]; !ok {
			t.Errorf("metric %s missing", name)
		}
	}
	if got := after[`eidefs_fuse_op_duration_seconds_count{op="mkdir"}`]; got != 2 {
		t.Errorf("mkdir requests counted: %v, want 2", got)
	}
	if after["eidefs_databases"] != 1 {
		t.Errorf("eidefs_databases = %v", after["eidefs_databases"])
	}
}
