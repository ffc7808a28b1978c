package integration

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	modelOps   = flag.Int("ops", 2000, "TestModel: number of random operations")
	modelSeed  = flag.Uint64("seed", 0, "TestModel: random seed (0: from the clock); printed by the test")
	modelCheck = flag.Int("check-every", 50, "TestModel: compare the whole trees every N operations")
	modelNames = flag.String("names", "a,b,c,d,e,x~", "TestModel: comma-separated file names to build paths from; x~ is a local-only (scratch) name")
)

// TestModel applies the same random file operations to a store directory in the
// mount and to a directory on the local disk, from this process with raw
// syscalls, and requires the same result: the errno of every step, the bytes
// read, and every -check-every operations the whole trees. Names come from a small
// alphabet so that collisions and refusals happen all the time. Left out: what
// eidefs documents as different (chmod to a new mode, hard links, symlinks,
// device nodes, and with passthrough on, a reader of a large file opened before a
// writer keeping the version it opened: the mount runs with passthrough = false,
// and fs TestLargeReadsPassThrough checks that case).
//
// Reproduce a failure with the seed it prints:
//
//	go test ./integration -run TestModel -v -seed=N [-ops=M]
func TestModel(t *testing.T) {
	runModel(t, map[string]string{"passthrough": "false"})
}

// TestModelPassedWrites is TestModel with the default configuration, where the
// kernel writes files created on the mount and files opened by a single writer
// (passthrough_writes) and reads large stored files (passthrough). Few of its
// files grow past 64 KiB, where a reader opened before a writer keeps the version
// it opened (see TestModel).
func TestModelPassedWrites(t *testing.T) {
	runModel(t, nil)
}

func runModel(t *testing.T, config map[string]string) {
	seed := *modelSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (reproduce: go test ./integration -run '%s$' -v -seed=%d -ops=%d)", seed, t.Name(), seed, *modelOps)
	old := syscall.Umask(0o022) // files 0644 and dirs 0755 on disk too, as eidefs shows them
	defer syscall.Umask(old)

	m := mount(t, mountOpts{Watchdog: defaultWatchdog + time.Duration(*modelOps)*30*time.Millisecond,
		Config: config})
	md := &model{
		t:     t,
		seed:  seed,
		rnd:   rand.New(rand.NewPCG(seed, 0x5eed)),
		names: strings.Split(*modelNames, ","),
		real:  &world{root: newStore(t, m, "notes", "model")},
		ref:   &world{root: filepath.Join(t.TempDir(), "model")},
	}
	if err := os.Mkdir(md.ref.root, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range md.real.fds {
		md.real.fds[i], md.ref.fds[i] = -1, -1
	}
	// Registered after mount, so it runs before the unmount: open descriptors would
	// keep the mount busy.
	t.Cleanup(func() { md.real.closeAll(); md.ref.closeAll() })

	start := time.Now()
	for i := 1; i <= *modelOps; i++ {
		md.step(i)
		if i%*modelCheck == 0 || i == *modelOps {
			md.compareTrees(i, nil)
		}
	}
	// Close what is still open, then the trees must be equal and survive a remount
	// (local-only scratch names need not survive it).
	for slot := range md.ref.fds {
		if md.ref.fds[slot] >= 0 {
			md.do(*modelOps+1+slot, op{kind: "hclose", slot: slot})
		}
	}
	md.compareTrees(*modelOps, nil)
	t.Logf("%d operations in %v; %s", *modelOps, time.Since(start).Round(time.Millisecond), md.stats())
	m2 := remount(t, m)
	md.real.root = m2.Path("notes", "model")
	md.compareTrees(*modelOps, isLocalOnlyPath)
}

// isLocalOnlyPath reports whether a path has a component matching the local-only
// pattern *~ (the only one among the default -names).
func isLocalOnlyPath(p string) bool {
	for _, c := range strings.Split(p, "/") {
		if strings.HasSuffix(c, "~") {
			return true
		}
	}
	return false
}

const slots = 3 // open handles kept across operations

type world struct {
	root string
	fds  [slots]int // -1: slot empty
}

func (w *world) closeAll() {
	for i, fd := range w.fds {
		if fd >= 0 {
			syscall.Close(fd)
			w.fds[i] = -1
		}
	}
}

type op struct {
	kind  string
	path  string
	path2 string
	flags int
	data  []byte
	off   int64
	slot  int
}

func (o op) String() string {
	s := o.kind + " " + o.path
	if o.path2 != "" {
		s += " → " + o.path2
	}
	if strings.HasPrefix(o.kind, "h") {
		s = fmt.Sprintf("%s [%d]", o.kind, o.slot)
		if o.kind == "hopen" {
			s += " " + o.path
		}
	}
	if o.flags != 0 || o.kind == "hopen" {
		s += " " + flagString(o.flags)
	}
	if o.data != nil {
		s += fmt.Sprintf(" %d bytes", len(o.data))
	}
	switch o.kind {
	case "hread":
		s += fmt.Sprintf(" up to %d bytes", o.off)
	case "pwrite", "hpwrite", "hpread":
		s += fmt.Sprintf(" @%d", o.off)
	case "truncate", "hftruncate":
		s += fmt.Sprintf(" to %d", o.off)
	}
	return s
}

func flagString(f int) string {
	var parts []string
	switch f & syscall.O_ACCMODE {
	case syscall.O_RDONLY:
		parts = append(parts, "O_RDONLY")
	case syscall.O_WRONLY:
		parts = append(parts, "O_WRONLY")
	case syscall.O_RDWR:
		parts = append(parts, "O_RDWR")
	}
	for _, fl := range []struct {
		bit  int
		name string
	}{{syscall.O_CREAT, "O_CREAT"}, {syscall.O_EXCL, "O_EXCL"}, {syscall.O_TRUNC, "O_TRUNC"}, {syscall.O_APPEND, "O_APPEND"}, {syscall.O_DIRECTORY, "O_DIRECTORY"}} {
		if f&fl.bit != 0 {
			parts = append(parts, fl.name)
		}
	}
	return strings.Join(parts, "|")
}

// outcome is what one world did with one op: the errno of each step and what
// was read or stat'ed.
type outcome struct {
	errs []syscall.Errno
	out  string
}

func (o outcome) String() string {
	var es []string
	for _, e := range o.errs {
		es = append(es, errName(e))
	}
	s := "[" + strings.Join(es, " ") + "]"
	if o.out != "" {
		s += " " + trunc([]byte(o.out))
	}
	return s
}

// short is String for the history: at most 40 bytes of what was read.
func (o outcome) short() string {
	if len(o.out) <= 40 {
		return o.String()
	}
	c := o
	c.out = ""
	return fmt.Sprintf("%v %q… (%d bytes)", c, o.out[:40], len(o.out))
}

func (o outcome) equal(p outcome) bool {
	if len(o.errs) != len(p.errs) || o.out != p.out {
		return false
	}
	for i := range o.errs {
		if o.errs[i] != p.errs[i] {
			return false
		}
	}
	return true
}

type model struct {
	t            *testing.T
	seed         uint64
	rnd          *rand.Rand
	names        []string
	real, ref    *world
	history      []string // the last operations, for failure messages
	kinds        map[string]int
	refusals     int
	refusedKinds map[string]int
}

func (md *model) stats() string {
	return fmt.Sprintf("%d operations refused alike (an errno), op mix %v refused %v", md.refusals, md.kinds, md.refusedKinds)
}

// randPath picks an existing path, a new name in an existing directory, or a
// random path (which often runs through a file or a missing directory). Existing
// paths come from the disk's tree, so a seed always gives the same operations.
func (md *model) randPath() string {
	var files, dirs []string
	dirs = append(dirs, "")
	filepath.WalkDir(md.ref.root, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == md.ref.root {
			return nil
		}
		rel, _ := filepath.Rel(md.ref.root, p)
		if d.IsDir() {
			dirs = append(dirs, rel)
		} else {
			files = append(files, rel)
		}
		return nil
	})
	name := md.names[md.rnd.IntN(len(md.names))]
	switch r := md.rnd.IntN(10); {
	case r < 3 && len(files) > 0:
		return files[md.rnd.IntN(len(files))]
	case r < 4 && len(dirs) > 1:
		return dirs[1+md.rnd.IntN(len(dirs)-1)]
	case r < 8:
		return filepath.Join(dirs[md.rnd.IntN(len(dirs))], name)
	}
	parts := make([]string, 1+md.rnd.IntN(3))
	for i := range parts {
		parts[i] = md.names[md.rnd.IntN(len(md.names))]
	}
	return strings.Join(parts, "/")
}

func (md *model) randData() []byte {
	n := md.rnd.IntN(200)
	switch md.rnd.IntN(10) {
	case 0:
		n = 0
	case 1:
		n = md.rnd.IntN(20000)
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a' + byte(md.rnd.IntN(26))
	}
	return b
}

// weights of the operations.
var opWeights = []struct {
	kind   string
	weight int
}{
	{"write", 14}, {"append", 6}, {"pwrite", 6}, {"truncate", 5}, {"rename", 10},
	{"unlink", 8}, {"mkdir", 4}, {"rmdir", 4}, {"read", 10}, {"stat", 5}, {"readdir", 4},
	{"hopen", 5}, {"hwrite", 3}, {"hpwrite", 2}, {"hread", 3}, {"hftruncate", 1}, {"hfsync", 1},
	{"hfstat", 1}, {"hclose", 3},
}

func (md *model) randOp() op {
	total := 0
	for _, w := range opWeights {
		total += w.weight
	}
	r := md.rnd.IntN(total)
	kind := ""
	for _, w := range opWeights {
		if r < w.weight {
			kind = w.kind
			break
		}
		r -= w.weight
	}
	o := op{kind: kind, path: md.randPath(), slot: md.rnd.IntN(slots)}
	switch kind {
	case "write":
		o.flags = []int{syscall.O_WRONLY, syscall.O_RDWR}[md.rnd.IntN(2)] | syscall.O_CREAT | syscall.O_TRUNC
		if md.rnd.IntN(5) == 0 {
			o.flags |= syscall.O_EXCL
		}
		o.data = md.randData()
	case "append":
		o.flags = syscall.O_WRONLY | syscall.O_APPEND
		if md.rnd.IntN(2) == 0 {
			o.flags |= syscall.O_CREAT
		}
		o.data = md.randData()
	case "pwrite", "hpwrite":
		if kind == "pwrite" {
			o.flags = []int{syscall.O_WRONLY, syscall.O_RDWR, syscall.O_WRONLY | syscall.O_CREAT}[md.rnd.IntN(3)]
		}
		o.data = md.randData()
		o.off = int64(md.rnd.IntN(3000))
	case "truncate", "hftruncate":
		o.off = int64(md.rnd.IntN(3000))
		if md.rnd.IntN(3) == 0 {
			o.off = int64(md.rnd.IntN(10))
		}
	case "rename":
		o.path2 = md.randPath()
	case "hopen":
		o.flags = []int{syscall.O_RDONLY, syscall.O_WRONLY, syscall.O_RDWR, syscall.O_RDWR}[md.rnd.IntN(4)]
		for _, bit := range []int{syscall.O_CREAT, syscall.O_TRUNC, syscall.O_APPEND, syscall.O_EXCL} {
			if md.rnd.IntN(4) == 0 {
				o.flags |= bit
			}
		}
	case "hwrite":
		o.data = md.randData()
	case "hread":
		o.off = int64(1 + md.rnd.IntN(500)) // bytes to read
		if md.rnd.IntN(2) == 0 {
			o.kind = "hpread"
			o.off = int64(md.rnd.IntN(3000))
		}
	}
	return o
}

func (md *model) step(i int) {
	o := md.randOp()
	open := md.ref.fds[o.slot] >= 0
	switch {
	case o.kind == "hopen" && open:
		o = op{kind: "hclose", slot: o.slot}
	case strings.HasPrefix(o.kind, "h") && o.kind != "hopen" && !open:
		o = op{kind: "hopen", path: o.path, slot: o.slot, flags: syscall.O_RDWR | syscall.O_CREAT}
	}
	md.do(i, o)
}

// do applies o to both worlds and stops the test at the first difference.
func (md *model) do(i int, o op) {
	got := md.real.apply(o)
	want := md.ref.apply(o)
	if md.kinds == nil {
		md.kinds = map[string]int{}
		md.refusedKinds = map[string]int{}
	}
	md.kinds[o.kind]++
	line := fmt.Sprintf("#%d %v: %s", i, o, want.short())
	md.history = append(md.history, line)
	if len(md.history) > 100 {
		md.history = md.history[1:]
	}
	if !got.equal(want) {
		md.fail(i, fmt.Sprintf("%v:\n  eidefs: %v\n  disk:   %v", o, got, want))
	}
	for _, e := range want.errs {
		if e != 0 {
			md.refusals++
			md.refusedKinds[o.kind+":"+errName(e)]++
			break
		}
	}
}

func (md *model) fail(i int, msg string) {
	md.t.Helper()
	md.real.closeAll()
	md.ref.closeAll()
	md.t.Fatalf("operation #%d differs (seed %d; reproduce with -run '%s$' -seed=%d -ops=%d): %s\nlast operations (with the disk's result):\n  %s",
		i, md.seed, md.t.Name(), md.seed, i, msg, strings.Join(md.history, "\n  "))
}

// compareTrees compares the two trees; skip, if set, leaves paths out.
func (md *model) compareTrees(i int, skip func(string) bool) {
	md.t.Helper()
	want := snapshot(md.t, md.ref.root)
	got, err := readTree(md.real.root)
	if err != nil {
		md.fail(i, fmt.Sprintf("reading the tree in the mount: %v", err))
	}
	if skip != nil {
		for p := range got {
			if skip(p) {
				delete(got, p)
			}
		}
		for p := range want {
			if skip(p) {
				delete(want, p)
			}
		}
	}
	if d := diffSnapshots(want, got); len(d) > 0 {
		what := "after operation"
		if skip != nil {
			what = "after remount, operation"
		}
		md.fail(i, fmt.Sprintf("trees differ %s %d (want = disk, got = eidefs):\n  %s", what, i, strings.Join(d, "\n  ")))
	}
}

// retry repeats a syscall interrupted by a signal, as the os package does.
func retry(f func() error) syscall.Errno {
	for {
		err := f()
		if e := errno(err); e != syscall.EINTR {
			return e
		}
	}
}

func (w *world) apply(o op) outcome {
	p := filepath.Join(w.root, o.path)
	var res outcome
	add := func(e syscall.Errno) bool { res.errs = append(res.errs, e); return e == 0 }
	openFile := func(flags int) (int, bool) {
		var fd int
		ok := add(retry(func() (err error) { fd, err = syscall.Open(p, flags|syscall.O_CLOEXEC, 0o644); return }))
		return fd, ok
	}
	closeFd := func(fd int) { add(errno(syscall.Close(fd))) }
	writeAll := func(fd int, b []byte, off int64, positional bool) bool {
		for len(b) > 0 {
			var n int
			e := retry(func() (err error) {
				if positional {
					n, err = syscall.Pwrite(fd, b, off)
				} else {
					n, err = syscall.Write(fd, b)
				}
				return
			})
			if e != 0 {
				return add(e)
			}
			b, off = b[n:], off+int64(n)
		}
		return add(0)
	}
	switch o.kind {
	case "write", "append":
		if fd, ok := openFile(o.flags); ok {
			writeAll(fd, o.data, 0, false)
			closeFd(fd)
		}
	case "pwrite":
		if fd, ok := openFile(o.flags); ok {
			writeAll(fd, o.data, o.off, true)
			closeFd(fd)
		}
	case "truncate":
		add(retry(func() error { return syscall.Truncate(p, o.off) }))
	case "rename":
		add(retry(func() error { return syscall.Rename(p, filepath.Join(w.root, o.path2)) }))
	case "unlink":
		add(retry(func() error { return syscall.Unlink(p) }))
	case "mkdir":
		add(retry(func() error { return syscall.Mkdir(p, 0o755) }))
	case "rmdir":
		add(retry(func() error { return syscall.Rmdir(p) }))
	case "read":
		if fd, ok := openFile(syscall.O_RDONLY); ok {
			res.out = readAll(fd, &res)
			closeFd(fd)
		}
	case "stat":
		var st syscall.Stat_t
		if add(retry(func() error { return syscall.Lstat(p, &st) })) {
			res.out = statString(&st)
		}
	case "readdir":
		es, err := os.ReadDir(p)
		if add(errno(err)) {
			var parts []string
			for _, e := range es {
				parts = append(parts, e.Name()+":"+e.Type().String())
			}
			res.out = strings.Join(parts, " ")
		}
	case "hopen":
		if fd, ok := openFile(o.flags); ok {
			w.fds[o.slot] = fd
		}
	case "hwrite":
		writeAll(w.fds[o.slot], o.data, 0, false)
	case "hpwrite":
		writeAll(w.fds[o.slot], o.data, o.off, true)
	case "hread", "hpread":
		buf := make([]byte, 500)
		var n int
		e := retry(func() (err error) {
			if o.kind == "hpread" {
				n, err = syscall.Pread(w.fds[o.slot], buf, o.off)
			} else {
				n, err = syscall.Read(w.fds[o.slot], buf[:o.off])
			}
			return
		})
		if add(e) {
			res.out = string(buf[:n])
		}
	case "hftruncate":
		add(retry(func() error { return syscall.Ftruncate(w.fds[o.slot], o.off) }))
	case "hfsync":
		add(retry(func() error { return syscall.Fsync(w.fds[o.slot]) }))
	case "hfstat":
		var st syscall.Stat_t
		if add(retry(func() error { return syscall.Fstat(w.fds[o.slot], &st) })) {
			res.out = statString(&st)
		}
	case "hclose":
		closeFd(w.fds[o.slot])
		w.fds[o.slot] = -1
	default:
		panic("unknown op " + o.kind)
	}
	return res
}

// readAll reads fd to the end, recording the errno that stopped it, if any.
func readAll(fd int, res *outcome) string {
	var out []byte
	buf := make([]byte, 8192)
	for {
		var n int
		e := retry(func() (err error) { n, err = syscall.Read(fd, buf); return })
		if e != 0 {
			res.errs = append(res.errs, e)
			return string(out)
		}
		if n == 0 {
			return string(out)
		}
		out = append(out, buf[:n]...)
	}
}

// statString is the part of a stat both worlds must agree on: type and
// permissions; size and link count of files (a directory's size and link count
// are the filesystem's own business).
func statString(st *syscall.Stat_t) string {
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		return fmt.Sprintf("dir %o", st.Mode&0o7777)
	}
	return fmt.Sprintf("mode %o size %d nlink %d", st.Mode, st.Size, st.Nlink)
}
