package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
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

func expectBlobs(t *testing.T, data string, want int, what string) {
	t.Helper()
	if got := blobFiles(t, data); len(got) != want {
		t.Errorf("%s: %d blob files, want %d: %v", what, len(got), want, got)
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
