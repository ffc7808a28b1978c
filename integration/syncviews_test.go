package integration

import (
	"fmt"
	"os"
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
	// A peer per line, awk-able: name key status last_sync addresses.
	got := strings.TrimSpace(mustSh(t, a.Mount.Dir, `awk '{print $1, $2, $3}' .sync/peers`))
	if want := fmt.Sprintf("b %s active", keyOf(b)); got != want {
		t.Errorf(".sync/peers: %q, want %q", got, want)
	}
	// The size at stat is the size read (tail -f, wc and cat rely on it).
	fi, err := os.Stat(a.Path(".sync", "status"))
	if err != nil || fi.Size() != int64(len(readFile(t, a.Path(".sync", "status")))) {
		t.Errorf("stat size %v vs read size: %v", fi.Size(), err)
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
