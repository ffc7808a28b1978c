package integration

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eidefs/eidefs/engine"
)

// blobFiles lists the blob files of a data directory (values over 64 KiB).
func blobFiles(t *testing.T, data string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(data, "blobs", "??", "*"))
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// expectBlobs checks that data holds want blob files, waiting up to 5 s: a large
// file the kernel wrote (passthrough_writes) is committed just after its last
// writer's release, a moment after close(2) returned.
func expectBlobs(t *testing.T, data string, want int, what string) {
	t.Helper()
	got := blobFiles(t, data)
	for end := time.Now().Add(5 * time.Second); len(got) != want && time.Now().Before(end); got = blobFiles(t, data) {
		time.Sleep(5 * time.Millisecond)
	}
	if len(got) != want {
		t.Errorf("%s: %d blob files, want %d: %v", what, len(got), want, got)
	}
	checkBlobs(t, data)
}

// checkBlobs checks that every blob file holds the bytes its name is the hash of:
// nothing wrote to a blob after it was made.
func checkBlobs(t *testing.T, data string) {
	t.Helper()
	for _, p := range blobFiles(t, data) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if sum := engine.BlobSum(b); hex.EncodeToString(sum[:]) != filepath.Base(p) {
			t.Errorf("blob file %s holds other bytes (%d) than its name says", p, len(b))
		}
	}
}

// TestLargeFiles: files over 64 KiB (kept as blobs) through the shell tools:
// cp, cmp, partial reads (head, tail, dd skip), mv of a file and of a directory
// (moved by reference: no new blob), >>, truncate down across the 64 KiB line,
// sed -i, kill -9 right after the close, remount, and the CLI after unmount.
func TestLargeFiles(t *testing.T) {
	m := mount(t, mountOpts{})
	newStore(t, m, "notes", "files")
	local := t.TempDir()
	env := append(m.env(), "L="+local)
	run := func(script string) string {
		t.Helper()
		return mustSh(t, m.Path("notes", "files"), script, env...)
	}
	run(`head -c 20000000 /dev/urandom > "$L/big" && cp "$L/big" big && cmp "$L/big" big`)
	expectBlobs(t, m.Data, 1, "after cp of a 20 MB file")
	run(`[ "$(head -c 100 big | od -An -tx1)" = "$(head -c 100 "$L/big" | od -An -tx1)" ]`)
	run(`[ "$(tail -c 1000 big | od -An -tx1)" = "$(tail -c 1000 "$L/big" | od -An -tx1)" ]`)
	run(`dd if=big bs=4096 skip=3000 count=7 status=none > "$L/mid.got" && dd if="$L/big" bs=4096 skip=3000 count=7 status=none > "$L/mid.want" && cmp "$L/mid.got" "$L/mid.want"`)
	run(`[ "$(stat -c %s big)" = 20000000 ] && [ "$(du -b big | cut -f1)" = 20000000 ]`)

	run(`mv big moved && cmp "$L/big" moved && ! test -e big`)
	expectBlobs(t, m.Data, 1, "after mv (a rename moves the value by reference)")
	run(`mkdir d && cp "$L/big" d/one && mv d d2 && cmp "$L/big" d2/one`)
	expectBlobs(t, m.Data, 1, "after mv of a directory holding the same bytes")

	run(`head -c 300000 /dev/urandom > "$L/more" && cat "$L/more" >> moved && cat "$L/big" "$L/more" > "$L/both" && cmp "$L/both" moved`)
	run(`truncate -s 100000 moved && head -c 100000 "$L/both" > "$L/t1" && cmp "$L/t1" moved`)
	run(`truncate -s 1000 moved && head -c 1000 "$L/both" > "$L/t2" && cmp "$L/t2" moved`)
	run(`seq 1 40000 > "$L/text" && cp "$L/text" text && sed -i s/7/seven/g text && sed s/7/seven/g "$L/text" > "$L/text2" && cmp "$L/text2" text`)

	// kill -9 right after the close: the file is there after a remount.
	run(`head -c 5000000 /dev/urandom > "$L/crash" && cp "$L/crash" crash`)
	m.Kill(t)
	m = mount(t, mountOpts{Data: m.Data, Dir: m.Dir})
	env = append(m.env(), "L="+local)
	run(`cmp "$L/crash" crash && cmp "$L/big" d2/one && cmp "$L/t2" moved && cmp "$L/text2" text`)
	m.Stop(t)
	got := mustCLI(t, m.Data, "get", "notes", "files", "crash")
	want, _ := os.ReadFile(filepath.Join(local, "crash"))
	if got != string(want) {
		t.Errorf("eidefs get after unmount: %d bytes, want the %d written", len(got), len(want))
	}
}

// TestLargeFileSync: a 12 MB file written on A shows on B byte for byte; B's
// overwrite shows on A; a join clones a database holding one.
func TestLargeFileSync(t *testing.T) {
	a := newSyncNode(t, "a", syncOpts{})
	b := newSyncNode(t, "b", syncOpts{})
	newStore(t, a.Mount, "notes", "files")
	local := t.TempDir()
	mustSh(t, a.Path("notes", "files"), `head -c 3000000 /dev/urandom > "$L/first" && cp "$L/first" first`, "L="+local)
	join(t, b, share(t, a, "notes", "--write"))
	same := func(n *syncNode, name, localName string) func() (bool, string) {
		return func() (bool, string) {
			_, errOut, code := sh(t, n.Path("notes", "files"), fmt.Sprintf(`cmp "$L/%s" %s`, localName, name), "L="+local)
			return code == 0, errOut
		}
	}
	waitFor(t, 5*time.Second, "the joined clone's 3 MB file on B", same(b, "first", "first"))
	mustSh(t, a.Path("notes", "files"), `head -c 12000000 /dev/urandom > "$L/big" && cp "$L/big" big`, "L="+local)
	d := waitFor(t, 10*time.Second, "A's 12 MB file on B", same(b, "big", "big"))
	t.Logf("12 MB file visible on B %v after cp on A returned", d.Round(time.Millisecond))
	mustSh(t, b.Path("notes", "files"), `head -c 7000000 /dev/urandom > "$L/big2" && cp "$L/big2" big`, "L="+local)
	waitFor(t, 10*time.Second, "B's overwrite on A", same(a, "big", "big2"))
	expectBlobs(t, a.Data, 3, "A")
	expectBlobs(t, b.Data, 3, "B")
}

// TestLargeFileHandles: what a file being written does, past the size where the
// mount keeps it in a file instead of memory, compared step by step with the same
// calls on a local file: two descriptors (one reads what the other wrote before
// any close), a sparse write far past the end, fsync, O_APPEND, ftruncate down and
// up, pwrite into the middle; after each close the key holds what a local file
// would.
func TestLargeFileHandles(t *testing.T) {
	m := mount(t, mountOpts{})
	dir := newStore(t, m, "notes", "files")
	local := t.TempDir()
	type pair struct{ m, l *os.File }
	open := func(flag int) pair {
		t.Helper()
		fm, err := os.OpenFile(filepath.Join(dir, "f"), flag, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		fl, err := os.OpenFile(filepath.Join(local, "f"), flag, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		return pair{fm, fl}
	}
	both := func(what string, p pair, fn func(f *os.File) (int, error)) {
		t.Helper()
		nm, errm := fn(p.m)
		nl, errl := fn(p.l)
		if nm != nl || (errm == nil) != (errl == nil) {
			t.Fatalf("%s: mount %d, %v; local %d, %v", what, nm, errm, nl, errl)
		}
	}
	same := func(what string) {
		t.Helper()
		want, err := os.ReadFile(filepath.Join(local, "f"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, "f"))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: the mount's file has %d bytes (%v), the local one %d; first difference at %d", what, len(got), err, len(want), firstDiff(got, want))
		}
	}
	readSame := func(what string, p pair, off int64, n int) {
		t.Helper()
		a, b := make([]byte, n), make([]byte, n)
		na, _ := p.m.ReadAt(a, off)
		nb, _ := p.l.ReadAt(b, off)
		if na != nb || !bytes.Equal(a[:na], b[:nb]) {
			t.Fatalf("%s: read %d bytes at %d: mount %d, local %d, first difference at %d", what, n, off, na, nb, firstDiff(a[:na], b[:nb]))
		}
	}
	chunk := func(n int, seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*31) ^ seed
		}
		return b
	}

	w := open(os.O_CREATE | os.O_RDWR | os.O_TRUNC)
	both("write 300 KB", w, func(f *os.File) (int, error) { return f.WriteAt(chunk(300_000, 1), 0) })
	r := open(os.O_RDONLY)
	readSame("a second descriptor before any close", r, 100_000, 150_000)
	both("sparse write at 3 MB", w, func(f *os.File) (int, error) { return f.WriteAt(chunk(5000, 2), 3_000_000) })
	readSame("the hole", r, 290_000, 100_000)
	readSame("past the hole", r, 2_999_000, 10_000)
	both("fsync", w, func(f *os.File) (int, error) { return 0, f.Sync() })
	same("after fsync")
	both("pwrite into the middle", w, func(f *os.File) (int, error) { return f.WriteAt(chunk(70_000, 3), 1_000_000) })
	readSame("the middle through the reader", r, 990_000, 90_000)
	for _, p := range []pair{w, r} {
		p.m.Close()
		p.l.Close()
	}
	same("after close")

	a := open(os.O_WRONLY | os.O_APPEND)
	both("append", a, func(f *os.File) (int, error) { return f.Write(chunk(100_000, 4)) })
	both("truncate to 70 KB", a, func(f *os.File) (int, error) { return 0, f.Truncate(70_000) })
	both("append after the truncate", a, func(f *os.File) (int, error) { return f.Write(chunk(10, 5)) })
	both("truncate up to 2 MB", a, func(f *os.File) (int, error) { return 0, f.Truncate(2 << 20) })
	a.m.Close()
	a.l.Close()
	same("after O_APPEND and ftruncate")

	// Down to a small file and back: the value leaves its blob.
	if err := os.Truncate(filepath.Join(dir, "f"), 1000); err != nil {
		t.Fatal(err)
	}
	os.Truncate(filepath.Join(local, "f"), 1000)
	same("after truncate(2) to 1000 bytes")
	m = remount(t, m)
	dir = m.Path("notes", "files")
	same("after a remount")
	checkBlobs(t, m.Data)
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestLargeFilesPassthroughSetting: with `passthrough` on (the default), on a
// kernel with FUSE passthrough (Linux 6.9 and later), the mount says it passes
// reads through, and a reader that had a large file open before `>>` keeps
// reading the version it opened while everyone else sees the append; with
// `passthrough = false` the mount says so and that reader sees the append too,
// as on a local disk.
func TestLargeFilesPassthroughSetting(t *testing.T) {
	var major, minor int
	rel := mustSh(t, "/", "uname -r")
	if _, err := fmt.Sscanf(rel, "%d.%d", &major, &minor); err != nil {
		t.Fatalf("uname -r: %q: %v", rel, err)
	}
	kernelHas := major > 6 || major == 6 && minor >= 9
	for _, on := range []bool{true, false} {
		m := mount(t, mountOpts{Config: map[string]string{"passthrough": fmt.Sprint(on)}})
		dir := newStore(t, m, "notes", "files")
		pass := on && kernelHas
		// The line is logged just after the mount appears.
		for end := time.Now().Add(5 * time.Second); !strings.Contains(m.output.String(), "msg=mounted") && time.Now().Before(end); {
			time.Sleep(10 * time.Millisecond)
		}
		if said := fmt.Sprintf("passthrough=%v", pass); !strings.Contains(m.output.String(), said) {
			t.Errorf("passthrough = %v on Linux %s: the mount's log does not say %s:\n%s", on, strings.TrimSpace(rel), said, m.output)
		}
		// A reader that opens while the writer's release is still under way
		// joins the writer's mode and sees the append; one that opens a moment
		// later passes through (tried a few times: the moment is not observable
		// from here).
		want := []string{"300009", "300009"}
		if pass {
			want[1] = "300000"
		}
		var got []string
		for try := 0; try < 10 && !slices.Equal(got, want); try++ {
			got = strings.Fields(mustSh(t, dir, `head -c 300000 /dev/urandom > f
sleep 0.1
exec 3< f
echo appended >> f
wc -c < f
wc -c <&3
rm f`))
			if !pass {
				break
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("passthrough = %v: the file and the reader opened before >> have %v bytes, want %v", on, got, want)
		}
		m.Stop(t)
	}
}

// TestPassthroughWritesDefault: with the default `passthrough_writes = true` on a
// kernel with FUSE passthrough, the mount says so; files made or overwritten by
// cp, tar, a shell redirection and >> read back whole at once and are in the
// store moments later, also after a kill -9; and a file past max_value is
// refused at its close: cp and a redirected head say "File too large", the
// name of a new file is gone, a stored file keeps its bytes, and the log names
// the file.
func TestPassthroughWritesDefault(t *testing.T) {
	m := mount(t, mountOpts{Config: map[string]string{"max_value": `"4MiB"`}})
	dir := newStore(t, m, "notes", "files")
	for end := time.Now().Add(5 * time.Second); !strings.Contains(m.output.String(), "msg=mounted") && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	rel := mustSh(t, "/", "uname -r")
	var major, minor int
	fmt.Sscanf(rel, "%d.%d", &major, &minor)
	if major > 6 || major == 6 && minor >= 9 {
		if !strings.Contains(m.output.String(), "passthrough_writes=true") {
			t.Errorf("Linux %s: the mount's log does not say passthrough_writes=true:\n%s", strings.TrimSpace(rel), m.output)
		}
	}
	local := t.TempDir()
	env := append(m.env(), "L="+local)
	run := func(script string) string {
		t.Helper()
		return mustSh(t, dir, script, env...)
	}
	run(`head -c 3000000 /dev/urandom > "$L/big" && cp "$L/big" big && cmp "$L/big" big &&
mkdir "$L/t" && head -c 200000 /dev/urandom > "$L/t/a" && echo small > "$L/t/b" && tar -C "$L" -cf "$L/t.tar" t &&
tar -xf "$L/t.tar" && cmp "$L/t/a" t/a && cmp "$L/t/b" t/b &&
cat "$L/big" "$L/big" | head -c 4194304 > exact && [ "$(stat -c %s exact)" = 4194304 ] &&
head -c 2500000 /dev/urandom > "$L/big2" && cp "$L/big2" big && cmp "$L/big2" big &&
echo tail >> big && cp "$L/big2" "$L/big3" && echo tail >> "$L/big3" && cmp "$L/big3" big`)
	for _, c := range []struct{ what, script string }{
		{"cp of a file past max_value", `head -c 5000000 /dev/urandom > "$L/huge" && cp "$L/huge" huge`},
		{"head -c 4MiB+1 > file", `head -c 4194305 /dev/zero > redirected`},
		{"cat of a file past max_value over a stored one", `cat "$L/huge" > exact`},
	} {
		if _, errOut, code := sh(t, dir, c.script, env...); code == 0 || !strings.Contains(errOut, "File too large") {
			t.Errorf("%s: exit %d %q, want File too large", c.what, code, errOut)
		}
	}
	if strings.Contains(m.output.String(), "passthrough_writes=true") {
		// Refused at the close (where writes cannot pass through, write(2) refuses
		// them as they are made, TestFileTooLarge).
		waitFor(t, 5*time.Second, "refused files gone, a stored one as it was", func() (bool, string) {
			out, errOut, code := sh(t, dir, `! test -e huge && ! test -e redirected && [ "$(stat -c %s exact)" = 4194304 ]`, env...)
			return code == 0, out + errOut
		})
		for _, name := range []string{"huge", "redirected", "exact"} {
			if !strings.Contains(m.output.String(), "path=notes/files/"+name+" ") {
				t.Errorf("the log does not name the refused file %s:\n%s", name, m.output)
			}
		}
	}
	m.Kill(t) // right after the last close: large files may still be parked
	want, _ := os.ReadFile(filepath.Join(local, "big3"))
	if got := mustCLI(t, m.Data, "get", "notes", "files", "big"); got != string(want) {
		t.Errorf("eidefs get big after kill -9: %d bytes, want %d", len(got), len(want))
	}
	if got := mustCLI(t, m.Data, "get", "notes", "files", "t", "a"); len(got) != 200000 {
		t.Errorf("eidefs get t/a after kill -9: %d bytes, want 200000", len(got))
	}
	if got := mustCLI(t, m.Data, "get", "notes", "files", "exact"); len(got) != 4194304 {
		t.Errorf("eidefs get exact after kill -9: %d bytes, want 4194304", len(got))
	}
	if _, errOut, code := cli(t, m.Data, "get", "notes", "files", "huge"); code == 0 {
		t.Errorf("eidefs get huge: a file past max_value was stored (%s)", errOut)
	}
	checkBlobs(t, m.Data)
}
