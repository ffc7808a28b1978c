// Command fsbench runs a few filesystem workloads in several directories
// side by side (typically: the native disk, go-fuse's loopback example and
// an eidefs mount) and prints a markdown table plus one machine-readable
// "RESULT workload target seconds" line per measurement.
//
// Usage:
//
//	fsbench -target native=/tmp/a -target loopback=/mnt/lb [-target eidefs=/mnt/e/x]
//	        [-files 2000] [-bigsize 64MiB] [-lskeys 10000] [-greps 10000]
//	        [-only small,big,ls,grep] [-runs 3]
//
// Every workload works in a fresh subdirectory of each target, removed
// afterwards. Each timed workload runs -runs times; the median is reported.
// A failure in one target is reported in its cell and does not stop the
// other targets. Page caches are never dropped, so read numbers include
// whatever the kernel (or the FUSE server) keeps cached.
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

// target is one directory under test.
type target struct {
	name string
	dir  string
}

type targetList []target

func (t *targetList) String() string {
	parts := make([]string, len(*t))
	for i, x := range *t {
		parts[i] = x.name + "=" + x.dir
	}
	return strings.Join(parts, ",")
}

func (t *targetList) Set(s string) error {
	name, dir, ok := strings.Cut(s, "=")
	if !ok || name == "" || dir == "" {
		return fmt.Errorf("want name=DIR, got %q", s)
	}
	// Names end up as columns and in RESULT lines, so keep them one token.
	if strings.ContainsAny(name, " \t|") {
		return fmt.Errorf("target name %q must not contain spaces or '|'", name)
	}
	for _, x := range *t {
		if x.name == name {
			return fmt.Errorf("duplicate target name %q", name)
		}
	}
	*t = append(*t, target{name: name, dir: dir})
	return nil
}

// config holds the parsed command line.
type config struct {
	files   int
	bigSize int64
	lsKeys  int
	greps   int
	runs    int
	timeout time.Duration
}

const (
	smallFileSize = 100     // bytes per small file
	chunkSize     = 1 << 20 // big-file I/O unit
	needle        = "needle"
	needleEvery   = 10 // every 10th grep file contains the needle
)

// cell is the outcome of one workload on one target.
type cell struct {
	secs float64 // median seconds; valid when err == nil
	err  error
}

// row is one line of the result table.
type row struct {
	workload string
	cells    []cell // indexed like the target list
}

func main() {
	var targets targetList
	var cfg config
	var bigSize, only string
	flag.Var(&targets, "target", "name=DIR to benchmark (repeatable; a target named \"loopback\" is the ratio baseline)")
	flag.IntVar(&cfg.files, "files", 2000, "number of files in the small-file lifecycle workload")
	flag.StringVar(&bigSize, "bigsize", "64MiB", "size of the sequential big file (e.g. 64MiB, 1GiB, 4096)")
	flag.IntVar(&cfg.lsKeys, "lskeys", 10000, "number of files in the directory listed by ls -l")
	flag.IntVar(&cfg.greps, "greps", 10000, "number of files searched by grep -r")
	flag.IntVar(&cfg.runs, "runs", 3, "timed repetitions per workload (median is reported)")
	flag.DurationVar(&cfg.timeout, "timeout", 5*time.Minute, "timeout for each ls/grep invocation")
	flag.StringVar(&only, "only", "small,big,ls,grep", "comma-separated workloads to run")
	flag.Parse()

	if len(targets) == 0 || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: fsbench -target name=DIR [-target name=DIR ...] [flags]")
		flag.PrintDefaults()
		os.Exit(2)
	}
	var err error
	if cfg.bigSize, err = parseSize(bigSize); err != nil {
		fatalf("-bigsize: %v", err)
	}
	if cfg.files <= 0 || cfg.lsKeys <= 0 || cfg.greps <= 0 || cfg.runs <= 0 || cfg.bigSize <= 0 {
		fatalf("-files, -bigsize, -lskeys, -greps and -runs must be positive")
	}
	selected := map[string]bool{}
	for _, w := range strings.Split(only, ",") {
		w = strings.TrimSpace(w)
		switch w {
		case "small", "big", "ls", "grep":
			selected[w] = true
		case "":
		default:
			fatalf("-only: unknown workload %q (want small, big, ls, grep)", w)
		}
	}
	for _, t := range targets {
		if fi, err := os.Stat(t.dir); err != nil || !fi.IsDir() {
			// Not fatal: the target's cells will carry the error.
			fmt.Fprintf(os.Stderr, "warning: target %s: %s is not a usable directory (%v)\n", t.name, t.dir, err)
		}
	}

	printHeader(targets, cfg)

	var rows []row
	if selected["small"] {
		rows = append(rows, runSmall(targets, cfg)...)
	}
	if selected["big"] {
		rows = append(rows, runBig(targets, cfg)...)
	}
	if selected["ls"] {
		rows = append(rows, runLs(targets, cfg))
	}
	if selected["grep"] {
		rows = append(rows, runGrep(targets, cfg))
	}

	printTable(targets, rows)
	printResults(targets, rows)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "fsbench: "+format+"\n", args...)
	os.Exit(2)
}

// parseSize accepts plain bytes or a K/M/G suffix (KiB/MiB/GiB, KB/MB/GB
// and K/M/G are all treated as powers of 1024).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	upper := strings.ToUpper(s)
	for _, suf := range []struct {
		s string
		m int64
	}{
		{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30},
		{"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30},
	} {
		if strings.HasSuffix(upper, suf.s) {
			mult = suf.m
			s = s[:len(s)-len(suf.s)]
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad size %q", s)
	}
	return n * mult, nil
}

func printHeader(targets targetList, cfg config) {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Printf("# fsbench %s\n\n", time.Now().Format(time.RFC3339))
	fmt.Printf("- cpus: %d, kernel: %s, go: %s\n", runtime.NumCPU(), strings.TrimSpace(string(kernel)), runtime.Version())
	for _, t := range targets {
		fmt.Printf("- target %s: %s\n", t.name, t.dir)
	}
	fmt.Printf("- small: %d files x %d B; big: %d MiB in %d MiB chunks; ls -l: %d files; grep -r: %d files (1 in %d matches)\n",
		cfg.files, smallFileSize, cfg.bigSize>>20, chunkSize>>20, cfg.lsKeys, cfg.greps, needleEvery)
	fmt.Printf("- each cell: median of %d runs; caches are NOT dropped between write and read (reads may be served from cache)\n\n", cfg.runs)
}

// workdirs creates one fresh subdirectory per target. A target whose
// subdirectory cannot be created gets an error instead (and an empty dir).
func workdirs(targets targetList, prefix string) ([]string, []error) {
	dirs := make([]string, len(targets))
	errs := make([]error, len(targets))
	for i, t := range targets {
		d, err := os.MkdirTemp(t.dir, "fsbench-"+prefix+"-")
		if err != nil {
			errs[i] = fmt.Errorf("mkdir: %w", err)
			continue
		}
		dirs[i] = d
	}
	return dirs, errs
}

// cleanup removes the per-target subdirectories; failures only warn,
// because the measurement itself already happened.
func cleanup(targets targetList, dirs []string) {
	for i, d := range dirs {
		if d == "" {
			continue
		}
		if err := os.RemoveAll(d); err != nil {
			fmt.Fprintf(os.Stderr, "warning: %s: cleanup %s: %v\n", targets[i].name, d, err)
		}
	}
}

// rounds runs fn cfg.runs times for each target whose setup succeeded.
// Repetitions are interleaved across targets (run 1 on every target, then
// run 2, ...) so slow drift on the machine affects all columns alike.
// fn returns one duration per phase; the median of each phase is kept.
// The first error of a target stops that target's repetitions.
func rounds(targets targetList, label string, runs, phases int, errs []error, fn func(i, rep int) ([]time.Duration, error)) [][]cell {
	samples := make([][][]float64, len(targets)) // [target][phase][rep]
	for i := range samples {
		samples[i] = make([][]float64, phases)
	}
	for rep := 0; rep < runs; rep++ {
		for i, t := range targets {
			if errs[i] != nil {
				continue
			}
			ds, err := fn(i, rep)
			if err != nil {
				errs[i] = err
				fmt.Fprintf(os.Stderr, "%-12s %-10s run %d: ERROR %v\n", label, t.name, rep+1, err)
				continue
			}
			var parts []string
			for p, d := range ds {
				samples[i][p] = append(samples[i][p], d.Seconds())
				parts = append(parts, fmt.Sprintf("%.3fs", d.Seconds()))
			}
			fmt.Fprintf(os.Stderr, "%-12s %-10s run %d: %s\n", label, t.name, rep+1, strings.Join(parts, " "))
		}
	}
	out := make([][]cell, phases) // [phase][target]
	for p := range out {
		out[p] = make([]cell, len(targets))
		for i := range targets {
			if errs[i] != nil {
				out[p][i] = cell{err: errs[i]}
			} else {
				out[p][i] = cell{secs: median(samples[i][p])}
			}
		}
	}
	return out
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// payload returns n bytes of printable filler ending in a newline.
func payload(n int, withNeedle bool) []byte {
	b := bytes.Repeat([]byte("x"), n)
	if withNeedle {
		copy(b[10:], needle)
	}
	b[n-1] = '\n'
	return b
}

// writeFile is the create+write+close sequence used by the small-file
// workloads; O_EXCL makes sure we really create a new file.
func writeFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// runSmall: create+write+close N files, read them all, delete them all.
func runSmall(targets targetList, cfg config) []row {
	dirs, errs := workdirs(targets, "small")
	defer cleanup(targets, dirs)
	data := payload(smallFileSize, false)
	res := rounds(targets, "small", cfg.runs, 4, errs, func(i, rep int) ([]time.Duration, error) {
		// A fresh directory per repetition, so each run starts empty.
		d := filepath.Join(dirs[i], fmt.Sprintf("run%d", rep))
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, err
		}
		names := make([]string, cfg.files)
		for k := range names {
			names[k] = filepath.Join(d, fmt.Sprintf("f%06d", k))
		}

		t0 := time.Now()
		for _, n := range names {
			if err := writeFile(n, data); err != nil {
				return nil, fmt.Errorf("create: %w", err)
			}
		}
		t1 := time.Now()
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err != nil {
				return nil, fmt.Errorf("read: %w", err)
			}
			if len(b) != len(data) {
				return nil, fmt.Errorf("read %s: got %d bytes, want %d", n, len(b), len(data))
			}
		}
		t2 := time.Now()
		for _, n := range names {
			if err := os.Remove(n); err != nil {
				return nil, fmt.Errorf("delete: %w", err)
			}
		}
		t3 := time.Now()
		if err := os.Remove(d); err != nil {
			return nil, fmt.Errorf("rmdir: %w", err)
		}
		return []time.Duration{t1.Sub(t0), t2.Sub(t1), t3.Sub(t2), t3.Sub(t0)}, nil
	})
	return []row{
		{"small-create", res[0]},
		{"small-read", res[1]},
		{"small-delete", res[2]},
		{"small-total", res[3]},
	}
}

// runBig: sequential write (1 MiB chunks, then close) and read-back of one
// file. No fsync and no cache drop: this measures the path through the
// filesystem layer, not the disk.
func runBig(targets targetList, cfg config) []row {
	dirs, errs := workdirs(targets, "big")
	defer cleanup(targets, dirs)
	chunk := make([]byte, chunkSize)
	for k := range chunk {
		chunk[k] = byte(k*7 + k>>8) // non-zero, not trivially compressible
	}
	res := rounds(targets, "big", cfg.runs, 3, errs, func(i, rep int) ([]time.Duration, error) {
		p := filepath.Join(dirs[i], fmt.Sprintf("big%d", rep))

		// Each run writes different bytes, so a store that keeps values by content
		// cannot find the file already stored.
		binary.BigEndian.PutUint64(chunk, uint64(time.Now().UnixNano()))
		t0 := time.Now()
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, fmt.Errorf("create: %w", err)
		}
		for left := cfg.bigSize; left > 0; left -= chunkSize {
			n := min(left, chunkSize)
			if _, err := f.Write(chunk[:n]); err != nil {
				f.Close()
				return nil, fmt.Errorf("write: %w", err)
			}
		}
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("close: %w", err)
		}
		t1 := time.Now()

		buf := make([]byte, chunkSize)
		readAll := func() error {
			f, err := os.Open(p)
			if err != nil {
				return fmt.Errorf("open: %w", err)
			}
			defer f.Close()
			var total int64
			for {
				n, err := f.Read(buf)
				total += int64(n)
				if err == io.EOF {
					break
				}
				if err != nil {
					return fmt.Errorf("read: %w", err)
				}
			}
			if total != cfg.bigSize {
				return fmt.Errorf("read back %d bytes, want %d", total, cfg.bigSize)
			}
			return nil
		}
		if err := readAll(); err != nil {
			return nil, err
		}
		t2 := time.Now()
		if err := readAll(); err != nil {
			return nil, err
		}
		t3 := time.Now()
		if err := os.Remove(p); err != nil {
			return nil, fmt.Errorf("delete: %w", err)
		}
		return []time.Duration{t1.Sub(t0), t2.Sub(t1), t3.Sub(t2)}, nil
	})
	return []row{{"big-write", res[0]}, {"big-read", res[1]}, {"big-reread", res[2]}}
}

// populate creates n small files in dir (untimed setup for ls and grep).
// Every needleEvery-th file contains the needle when withNeedle is set.
func populate(dir string, n int, withNeedle bool) error {
	plain := payload(smallFileSize, false)
	hit := payload(smallFileSize, true)
	for k := 0; k < n; k++ {
		data := plain
		if withNeedle && k%needleEvery == 0 {
			data = hit
		}
		if err := writeFile(filepath.Join(dir, fmt.Sprintf("f%06d", k)), data); err != nil {
			return fmt.Errorf("setup: %w", err)
		}
	}
	return nil
}

// lineCounter counts output lines so the commands' work can be verified
// without keeping the output.
type lineCounter struct{ n int }

func (c *lineCounter) Write(p []byte) (int, error) {
	c.n += bytes.Count(p, []byte{'\n'})
	return len(p), nil
}

// timeCmd runs name args..., timing only the process. Stdout goes through
// a pipe into a line counter rather than to /dev/null: GNU grep detects a
// /dev/null stdout and stops at the first match, which would skip the work.
func timeCmd(timeout time.Duration, name string, args ...string) (time.Duration, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	// Fixed locale: sorting and character handling identical on every target.
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	lines := &lineCounter{}
	var stderr bytes.Buffer
	cmd.Stdout = lines
	cmd.Stderr = &stderr
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		return d, lines.n, fmt.Errorf("%s: %v %s", name, err, msg)
	}
	return d, lines.n, nil
}

// runLs times `ls -l` of a directory holding cfg.lsKeys files.
func runLs(targets targetList, cfg config) row {
	dirs, errs := workdirs(targets, "ls")
	defer cleanup(targets, dirs)
	for i := range targets {
		if errs[i] == nil {
			errs[i] = populate(dirs[i], cfg.lsKeys, false)
		}
	}
	res := rounds(targets, "ls", cfg.runs, 1, errs, func(i, rep int) ([]time.Duration, error) {
		d, n, err := timeCmd(cfg.timeout, "ls", "-l", dirs[i])
		if err != nil {
			return nil, err
		}
		// ls -l prints a "total" line plus one line per file.
		if n != cfg.lsKeys+1 {
			return nil, fmt.Errorf("ls -l printed %d lines, want %d", n, cfg.lsKeys+1)
		}
		return []time.Duration{d}, nil
	})
	return row{"ls-l", res[0]}
}

// runGrep times `grep -r needle DIR` over cfg.greps files.
func runGrep(targets targetList, cfg config) row {
	dirs, errs := workdirs(targets, "grep")
	defer cleanup(targets, dirs)
	for i := range targets {
		if errs[i] == nil {
			errs[i] = populate(dirs[i], cfg.greps, true)
		}
	}
	want := (cfg.greps + needleEvery - 1) / needleEvery
	res := rounds(targets, "grep", cfg.runs, 1, errs, func(i, rep int) ([]time.Duration, error) {
		d, n, err := timeCmd(cfg.timeout, "grep", "-r", needle, dirs[i])
		if err != nil {
			return nil, err
		}
		if n != want {
			return nil, fmt.Errorf("grep -r matched %d lines, want %d", n, want)
		}
		return []time.Duration{d}, nil
	})
	return row{"grep-r", res[0]}
}

// baseline returns the index of the target named "loopback", or -1.
func baseline(targets targetList) int {
	for i, t := range targets {
		if t.name == "loopback" {
			return i
		}
	}
	return -1
}

func printTable(targets targetList, rows []row) {
	base := baseline(targets)
	hdr := []string{"workload"}
	sep := []string{"---"}
	for _, t := range targets {
		hdr = append(hdr, t.name)
		sep = append(sep, "---:")
	}
	fmt.Println("| " + strings.Join(hdr, " | ") + " |")
	fmt.Println("|" + strings.Join(sep, "|") + "|")
	for _, r := range rows {
		cols := []string{r.workload}
		for i, c := range r.cells {
			cols = append(cols, formatCell(c, i, base, r.cells))
		}
		fmt.Println("| " + strings.Join(cols, " | ") + " |")
	}
	if base >= 0 {
		fmt.Println("\nTimes are seconds (median); (N.NNx) is the time relative to the loopback column.")
	} else {
		fmt.Println("\nTimes are seconds (median).")
	}
	// Full error texts, listed once per (target, message) since a setup
	// failure repeats in every row of its workload.
	type errKey struct{ target, msg string }
	var order []errKey
	where := map[errKey][]string{}
	for _, r := range rows {
		for i, c := range r.cells {
			if c.err == nil {
				continue
			}
			k := errKey{targets[i].name, c.err.Error()}
			if _, ok := where[k]; !ok {
				order = append(order, k)
			}
			where[k] = append(where[k], r.workload)
		}
	}
	if len(order) > 0 {
		fmt.Println("\nErrors:")
		for _, k := range order {
			fmt.Printf("- %s (%s): %s\n", k.target, strings.Join(where[k], ", "), k.msg)
		}
	}
	fmt.Println()
}

func formatCell(c cell, i, base int, cells []cell) string {
	if c.err != nil {
		// The cause is at the end of a wrapped error ("mkdir ...: read-only
		// file system"); the full text is listed below the table.
		msg := c.err.Error()
		if k := strings.LastIndex(msg, ": "); k >= 0 && k+2 < len(msg) {
			msg = msg[k+2:]
		}
		if len(msg) > 40 {
			msg = msg[:40] + "..."
		}
		return "ERROR: " + strings.ReplaceAll(msg, "|", "/")
	}
	s := fmt.Sprintf("%.4f", c.secs)
	if base >= 0 && i != base && cells[base].err == nil && cells[base].secs > 0 {
		s += fmt.Sprintf(" (%.2fx)", c.secs/cells[base].secs)
	}
	return s
}

// printResults emits one grep-able line per measurement. Failed cells get
// NaN so that the number of fields stays constant.
func printResults(targets targetList, rows []row) {
	for _, r := range rows {
		for i, c := range r.cells {
			secs := math.NaN()
			if c.err == nil {
				secs = c.secs
			}
			fmt.Printf("RESULT %s %s %.6f\n", r.workload, targets[i].name, secs)
		}
	}
}
