// Command syncbench measures how fast eidefs replicates between two nodes on one
// machine. bench/sync.sh starts the nodes and runs it; it has two subcommands:
//
//	syncbench populate -data DIR [-db big] [-entries 100000] [-workers 4] [-info FILE]
//
// opens an eidefs data directory offline (no node may be running on it) with the
// engine packages and creates database -db with -entries commits, each setting one
// key, from -workers goroutines (group commit batches them). It writes a JSON
// summary (entries, bytes of entries, time) to -info.
//
//	syncbench run -a A_MNT -b B_MNT [-db notes] [-n 300] [-bulk 10000]
//	              [-eidefs BIN -ticket TICKET -d2 DIR -info FILE] [-pid name=PID ...]
//
// runs, in order:
//
//  1. latency: -n times, write a unique small value to A_MNT/DB/todo/k<i>
//     (open, write, close in this process), then poll B_MNT/DB/todo/k<i> (open +
//     read every -poll) until the content matches; close -> visible time.
//  2. bulk: write -bulk small keys to A_MNT/DB/bulk as fast as one writer can,
//     then wait until a listing of B_MNT/DB/bulk has them all; verify a sample.
//  3. bootstrap (when -ticket is set): time `BIN --data D2 db join TICKET` on a
//     fresh, unmounted data directory D2, from start to exit.
//  4. memory: VmRSS and VmHWM of every -pid.
//
// Results are printed as a markdown table and as "RESULT name value unit" lines.
// Progress goes to stderr. The standard library (plus the project's own engine and
// kv packages, for populate) is all it uses.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/kv"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "populate":
		populate(os.Args[2:])
	case "run":
		run(os.Args[2:])
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: syncbench populate -data DIR [flags] | syncbench run -a A_MNT -b B_MNT [flags]")
	os.Exit(2)
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "syncbench: "+format+"\n", args...)
	os.Exit(1)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "syncbench: "+format+"\n", args...)
}

// ---- populate ----

// bigInfo is what populate records about the database it built.
type bigInfo struct {
	DB         string  `json:"db"`
	ID         string  `json:"id"`
	Entries    uint64  `json:"entries"`     // all entries, root and settings included
	EntryBytes int64   `json:"entry_bytes"` // sum of the encoded (signed) entries
	Commits    int     `json:"commits"`     // data commits made by populate
	Seconds    float64 `json:"seconds"`     // time for the commits
}

func populate(args []string) {
	fl := flag.NewFlagSet("populate", flag.ExitOnError)
	data := fl.String("data", "", "eidefs data directory (initialised, no node running on it)")
	dbName := fl.String("db", "big", "database to create")
	store := fl.String("store", "data", "store the keys go into")
	entries := fl.Int("entries", 100_000, "commits to make, one key each")
	workers := fl.Int("workers", 4, "goroutines committing concurrently (group commit)")
	valSize := fl.Int("valsize", 32, "bytes per value")
	info := fl.String("info", "", "write a JSON summary here")
	fl.Parse(args)
	if *data == "" || *entries <= 0 || *workers <= 0 || *valSize < 0 {
		fatalf("populate: -data is required; -entries and -workers must be positive")
	}
	store0, err := kv.Open(filepath.Join(*data, "db"))
	if err != nil {
		fatalf("populate: %v", err)
	}
	id, err := engine.LoadIdentity(filepath.Join(*data, "device.key"))
	if err != nil {
		fatalf("populate: %v", err)
	}
	inst, err := engine.Open(store0, engine.Options{Identity: id, BlobDir: filepath.Join(*data, "blobs")})
	if err != nil {
		fatalf("populate: %v", err)
	}
	d, err := inst.CreateDatabase(*dbName, "syncbench bootstrap data")
	if err != nil {
		fatalf("populate: create %s: %v", *dbName, err)
	}
	start := time.Now()
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			val := make([]byte, *valSize)
			for {
				i := int(next.Add(1)) - 1
				if i >= *entries {
					return
				}
				fillValue(val, i)
				tx := d.Begin()
				tx.Store(*store).Set(fmt.Sprintf("k%06d", i), val)
				if _, err := tx.Commit(engine.Journal); err != nil {
					errOnce.Do(func() { firstErr = err })
					next.Store(int64(*entries)) // stop the others
					return
				}
				if (i+1)%20_000 == 0 {
					logf("populate: %d/%d commits", i+1, *entries)
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if firstErr != nil {
		fatalf("populate: commit: %v", firstErr)
	}
	var n uint64
	var sum int64
	if err := d.Entries(0, func(_ engine.ID, raw []byte) bool {
		n++
		sum += int64(len(raw))
		return true
	}); err != nil {
		fatalf("populate: reading entries back: %v", err)
	}
	bi := bigInfo{DB: *dbName, ID: d.ID().String(), Entries: n, EntryBytes: sum, Commits: *entries, Seconds: took.Seconds()}
	if err := inst.Close(); err != nil {
		fatalf("populate: closing instance: %v", err)
	}
	if err := store0.Close(); err != nil {
		fatalf("populate: closing store: %v", err)
	}
	logf("populate: %s: %d commits in %.2fs (%.0f/s); %d entries, %d bytes of entries",
		*dbName, *entries, took.Seconds(), float64(*entries)/took.Seconds(), n, sum)
	if *info != "" {
		b, _ := json.MarshalIndent(bi, "", "  ")
		if err := os.WriteFile(*info, append(b, '\n'), 0o644); err != nil {
			fatalf("populate: %v", err)
		}
	}
}

// fillValue writes a value that differs per key (so nothing deduplicates it).
func fillValue(b []byte, i int) {
	s := fmt.Sprintf("value %06d ", i)
	for j := range b {
		if j < len(s) {
			b[j] = s[j]
		} else {
			b[j] = 'a' + byte((i+j)%26)
		}
	}
}

// ---- run ----

type pidList []string

func (p *pidList) String() string     { return strings.Join(*p, ",") }
func (p *pidList) Set(s string) error { *p = append(*p, s); return checkPid(s) }

func checkPid(s string) error {
	name, pid, ok := strings.Cut(s, "=")
	if !ok || name == "" || strings.ContainsAny(name, " \t|") {
		return fmt.Errorf("want name=PID, got %q", s)
	}
	if _, err := strconv.Atoi(pid); err != nil {
		return fmt.Errorf("want name=PID, got %q", s)
	}
	return nil
}

type runConfig struct {
	a, b, db    string
	n           int
	poll        time.Duration
	timeout     time.Duration
	bulk        int
	bulkPoll    time.Duration
	bulkTimeout time.Duration
	sample      int
	eidefs      string
	ticket      string
	d2          string
	info        string
	joinTimeout time.Duration
	srcPid      string
	pids        pidList
}

// metric is one row of the result table and one RESULT line.
type metric struct {
	section string
	name    string  // RESULT name
	label   string  // table label
	value   float64 // NaN: not measured
	unit    string
	prec    int
	goal    string // "" = no goal
	verdict string // "met", "MISSED", ""
}

type results struct {
	metrics []metric
	notes   []string
}

func (r *results) add(m metric) { r.metrics = append(r.metrics, m) }
func (r *results) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

func run(args []string) {
	var c runConfig
	fl := flag.NewFlagSet("run", flag.ExitOnError)
	fl.StringVar(&c.a, "a", "", "mount point of node A (the writer)")
	fl.StringVar(&c.b, "b", "", "mount point of node B (joined to A's database)")
	fl.StringVar(&c.db, "db", "notes", "database shared by A and B")
	fl.IntVar(&c.n, "n", 300, "latency iterations (0 skips)")
	fl.DurationVar(&c.poll, "poll", 100*time.Microsecond, "pause between reads on B while polling (nanosleep; add ~70µs wake-up)")
	fl.DurationVar(&c.timeout, "timeout", 5*time.Second, "give up on one latency iteration after this long")
	fl.IntVar(&c.bulk, "bulk", 10_000, "keys in the bulk replication run (0 skips)")
	fl.DurationVar(&c.bulkPoll, "bulkpoll", time.Millisecond, "pause between checks on B in the bulk run")
	fl.DurationVar(&c.bulkTimeout, "bulktimeout", 2*time.Minute, "give up waiting for B in the bulk run after this long")
	fl.IntVar(&c.sample, "sample", 200, "bulk keys whose content is verified on B")
	fl.StringVar(&c.eidefs, "eidefs", "", "eidefs binary (for the bootstrap join)")
	fl.StringVar(&c.ticket, "ticket", "", "ticket of the big database to join (empty skips the bootstrap)")
	fl.StringVar(&c.d2, "d2", "", "fresh data directory for the bootstrap join")
	fl.StringVar(&c.info, "info", "", "populate's JSON summary of the big database")
	fl.DurationVar(&c.joinTimeout, "jointimeout", 3*time.Minute, "kill the join after this long")
	fl.StringVar(&c.srcPid, "srcpid", "", "pid of the node serving the big database (its CPU time during the join is reported)")
	fl.Var(&c.pids, "pid", "name=PID of a node process whose memory is reported (repeatable)")
	fl.Parse(args)
	if c.a == "" || c.b == "" || fl.NArg() != 0 {
		fatalf("run: -a and -b are required")
	}
	if c.ticket != "" && (c.eidefs == "" || c.d2 == "") {
		fatalf("run: -ticket needs -eidefs and -d2")
	}

	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Printf("# syncbench %s\n\n", time.Now().Format(time.RFC3339))
	fmt.Printf("- cpus: %d, kernel: %s, go: %s\n", runtime.NumCPU(), strings.TrimSpace(string(kernel)), runtime.Version())
	fmt.Printf("- load average at start: %s\n", loadavg())
	fmt.Printf("- nodes A (%s) and B (%s) on 127.0.0.1, database %q\n", c.a, c.b, c.db)
	fmt.Printf("- latency: %d iterations, poll every %v (+wake-up), timeout %v; bulk: %d keys; bootstrap: %s\n\n",
		c.n, c.poll, c.timeout, c.bulk, map[bool]string{true: "joined from a fresh node", false: "skipped"}[c.ticket != ""])

	var r results
	if c.n > 0 {
		runLatency(&c, &r)
	}
	if c.bulk > 0 {
		runBulk(&c, &r)
	}
	if c.ticket != "" {
		runBootstrap(&c, &r)
	}
	runMemory(&c, &r)
	r.note("load average at the end: %s (other work on the machine shares its CPUs with the nodes)", loadavg())

	printTable(&r)
	printResults(&r)
}

// pause sleeps d with nanosleep(2): time.Sleep rounds short sleeps up to about a
// millisecond on Linux, too coarse for a 100µs poll. It blocks only this thread.
func pause(d time.Duration) {
	ts := syscall.NsecToTimespec(int64(d))
	for {
		var rem syscall.Timespec
		if err := syscall.Nanosleep(&ts, &rem); err != syscall.EINTR {
			return
		}
		ts = rem
	}
}

// waitDir waits until dir exists (it may be replicating).
func waitDir(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		fi, err := os.Stat(dir)
		if err == nil && fi.IsDir() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %v (last error: %v)", dir, timeout, err)
		}
		pause(time.Millisecond)
	}
}

// mkStore creates DB/store on A and waits until it is on B.
func mkStore(c *runConfig, store string) (string, string, error) {
	da := filepath.Join(c.a, c.db, store)
	db := filepath.Join(c.b, c.db, store)
	if err := os.Mkdir(da, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", "", err
	}
	if err := waitDir(db, 10*time.Second); err != nil {
		return "", "", err
	}
	return da, db, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile is the nearest-rank percentile of sorted xs.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// ---- 1. latency ----

func runLatency(c *runConfig, r *results) {
	const sec = "write-to-visible latency"
	da, db, err := mkStore(c, "todo")
	if err != nil {
		r.note("latency: skipped: %v", err)
		logf("latency: %v", err)
		return
	}
	logf("latency: %d iterations", c.n)
	nonce := time.Now().UnixNano()
	var lat, writes []time.Duration
	timeouts, mismatches, readErrs, writeErrs, polls := 0, 0, 0, 0, 0
	var firstTimeout string
	var lastReadErr error
	for i := 0; i < c.n; i++ {
		name := fmt.Sprintf("k%d", i)
		val := []byte(fmt.Sprintf("v%d-%d\n", i, nonce))
		t0 := time.Now()
		if err := os.WriteFile(filepath.Join(da, name), val, 0o644); err != nil {
			writeErrs++
			logf("latency: write %s: %v", name, err)
			continue
		}
		closed := time.Now()
		writes = append(writes, closed.Sub(t0))
		pb := filepath.Join(db, name)
		for {
			b, err := os.ReadFile(pb)
			polls++
			now := time.Now()
			if err == nil {
				if bytes.Equal(b, val) {
					lat = append(lat, now.Sub(closed))
					break
				}
				mismatches++ // visible but not (yet) the full content
			} else if !errors.Is(err, fs.ErrNotExist) {
				readErrs++
				lastReadErr = err
			}
			if now.Sub(closed) > c.timeout {
				timeouts++
				if firstTimeout == "" {
					firstTimeout = fmt.Sprintf("iteration %d (%s), last read: %v", i, name, err)
				}
				// Counted as the timeout, so the percentiles do not hide it.
				lat = append(lat, c.timeout)
				logf("latency: %s not visible on B after %v", name, c.timeout)
				break
			}
			pause(c.poll)
		}
		if (i+1)%100 == 0 {
			logf("latency: %d/%d", i+1, c.n)
		}
	}
	if len(lat) == 0 {
		r.note("latency: no successful iterations (%d write errors)", writeErrs)
		return
	}
	first := lat[0]
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	sort.Slice(writes, func(i, j int) bool { return writes[i] < writes[j] })
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	p50, p90, p99, mx := percentile(lat, 50), percentile(lat, 90), percentile(lat, 99), lat[len(lat)-1]
	r.add(metric{sec, "latency-p50", "close→visible p50", ms(p50), "ms", 2, "< 10 ms", verdict(p50 < 10*time.Millisecond)})
	r.add(metric{sec, "latency-p90", "close→visible p90", ms(p90), "ms", 2, "", ""})
	r.add(metric{sec, "latency-p99", "close→visible p99", ms(p99), "ms", 2, "< 50 ms", verdict(p99 < 50*time.Millisecond)})
	r.add(metric{sec, "latency-max", "close→visible max", ms(mx), "ms", 2, "", ""})
	r.add(metric{sec, "latency-mean", "close→visible mean", ms(sum / time.Duration(len(lat))), "ms", 2, "", ""})
	r.add(metric{sec, "latency-min", "close→visible min", ms(lat[0]), "ms", 2, "", ""})
	r.add(metric{sec, "latency-first", "close→visible, first write after join", ms(first), "ms", 2, "", ""})
	r.add(metric{sec, "latency-timeouts", fmt.Sprintf("iterations not visible within %v", c.timeout), float64(timeouts), "count", 0, "0", verdict(timeouts == 0)})
	r.add(metric{sec, "write-close-p50", "write on A (open+write+close) p50", ms(percentile(writes, 50)), "ms", 2, "", ""})
	r.add(metric{sec, "write-close-p99", "write on A (open+write+close) p99", ms(percentile(writes, 99)), "ms", 2, "", ""})
	r.add(metric{sec, "latency-polls", "reads on B per iteration (mean)", float64(polls) / float64(len(lat)), "count", 1, "", ""})
	if timeouts > 0 {
		r.note("latency: %d of %d iterations were not visible on B within %v (counted as %v in the percentiles); first: %s",
			timeouts, c.n, c.timeout, c.timeout, firstTimeout)
	}
	if mismatches > 0 {
		r.note("latency: %d reads on B found the key with other content than written (partial or stale value visible)", mismatches)
	}
	if readErrs > 0 {
		r.note("latency: %d reads on B failed with an error other than ENOENT; last: %v", readErrs, lastReadErr)
	}
	if writeErrs > 0 {
		r.note("latency: %d writes on A failed", writeErrs)
	}
}

// ---- 2. bulk ----

func bulkValue(i int, nonce int64) []byte {
	return []byte(fmt.Sprintf("bulk value %05d %d\n", i, nonce))
}

func countDir(dir string) (int, error) {
	f, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	return len(names), err
}

func runBulk(c *runConfig, r *results) {
	const sec = "bulk replication"
	da, db, err := mkStore(c, "bulk")
	if err != nil {
		r.note("bulk: skipped: %v", err)
		logf("bulk: %v", err)
		return
	}
	if n, err := countDir(db); err != nil || n != 0 {
		r.note("bulk: skipped: %s is not empty (%d names, %v)", db, n, err)
		return
	}
	logf("bulk: writing %d keys on A", c.bulk)
	nonce := time.Now().UnixNano()
	name := func(i int) string { return fmt.Sprintf("f%05d", i) }
	start := time.Now()
	for i := 0; i < c.bulk; i++ {
		if err := os.WriteFile(filepath.Join(da, name(i)), bulkValue(i, nonce), 0o644); err != nil {
			r.note("bulk: write %s on A failed: %v; run abandoned", name(i), err)
			logf("bulk: write: %v", err)
			return
		}
	}
	lastClose := time.Now()
	writeTime := lastClose.Sub(start)
	logf("bulk: A wrote %d keys in %.2fs; waiting for B", c.bulk, writeTime.Seconds())

	// Cheap check first: the last key written (usually the last to arrive); then
	// list the directory until it holds every key.
	last := filepath.Join(db, name(c.bulk-1))
	deadline := lastClose.Add(c.bulkTimeout)
	var lastSeen time.Time
	for {
		if _, err := os.Stat(last); err == nil {
			lastSeen = time.Now()
			break
		}
		if time.Now().After(deadline) {
			break
		}
		pause(c.bulkPoll)
	}
	var done, doneStart time.Time
	var listing time.Duration
	count := 0
	lists := 0
	for !lastSeen.IsZero() {
		t := time.Now()
		n, err := countDir(db)
		now := time.Now()
		lists++
		listing = now.Sub(t)
		if err != nil {
			r.note("bulk: listing %s on B failed: %v", db, err)
			break
		}
		count = n
		if n >= c.bulk {
			done, doneStart = now, t
			break
		}
		if now.After(deadline) {
			break
		}
		pause(c.bulkPoll)
	}
	r.add(metric{sec, "bulk-write", fmt.Sprintf("A writes %d keys (create+write+close each)", c.bulk), writeTime.Seconds(), "s", 3, "", ""})
	r.add(metric{sec, "bulk-write-rate", "A write rate", float64(c.bulk) / writeTime.Seconds(), "keys/s", 0, "", ""})
	if done.IsZero() {
		r.add(metric{sec, "bulk-catchup", "A's last close → B lists all keys", math.NaN(), "s", 3, "< 0.5 s", "MISSED"})
		r.note("bulk: B had %d of %d keys when the wait ended (%v after A's last close; last key seen: %v)",
			count, c.bulk, c.bulkTimeout, !lastSeen.IsZero())
		return
	}
	catchup := done.Sub(lastClose)
	r.add(metric{sec, "bulk-catchup", "A's last close → B lists all keys", catchup.Seconds(), "s", 3, "< 0.5 s", verdict(catchup < 500*time.Millisecond)})
	r.add(metric{sec, "bulk-catchup-liststart", "A's last close → start of that listing", doneStart.Sub(lastClose).Seconds(), "s", 3, "", ""})
	r.add(metric{sec, "bulk-last-key", "A's last close → last key visible on B", lastSeen.Sub(lastClose).Seconds(), "s", 3, "", ""})
	r.add(metric{sec, "bulk-total", "first write on A → B has all keys", done.Sub(start).Seconds(), "s", 3, "", ""})
	r.add(metric{sec, "bulk-list", fmt.Sprintf("duration of that listing of %d keys on B", c.bulk), ms(listing), "ms", 1, "", ""})
	if count > c.bulk {
		r.note("bulk: B lists %d names, more than the %d written", count, c.bulk)
	}
	logf("bulk: B has all keys %.3fs after A's last close (%d listings)", catchup.Seconds(), lists)

	// Verify a sample of the contents on B, evenly spaced, plus first and last.
	bad, checked := 0, 0
	var firstBad string
	step := max(1, c.bulk/max(1, c.sample))
	for i := 0; i < c.bulk; i += step {
		checked++
		if b, err := os.ReadFile(filepath.Join(db, name(i))); err != nil || !bytes.Equal(b, bulkValue(i, nonce)) {
			bad++
			if firstBad == "" {
				firstBad = fmt.Sprintf("%s: %q, %v", name(i), b, err)
			}
		}
	}
	if b, err := os.ReadFile(last); err != nil || !bytes.Equal(b, bulkValue(c.bulk-1, nonce)) {
		bad++
		if firstBad == "" {
			firstBad = fmt.Sprintf("%s: %q, %v", name(c.bulk-1), b, err)
		}
	}
	checked++
	r.add(metric{sec, "bulk-verify-bad", fmt.Sprintf("sampled keys with wrong content on B (of %d)", checked), float64(bad), "count", 0, "0", verdict(bad == 0)})
	if bad > 0 {
		r.note("bulk: %d of %d sampled keys differ on B; first: %s", bad, checked, firstBad)
	}
}

// ---- 3. bootstrap ----

// dirSize is the apparent size of the files under dir.
func dirSize(dir string) (int64, error) {
	var sum int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			sum += fi.Size()
		}
		return nil
	})
	return sum, err
}

func runBootstrap(c *runConfig, r *results) {
	const sec = "bootstrap"
	var bi bigInfo
	if c.info != "" {
		b, err := os.ReadFile(c.info)
		if err == nil {
			err = json.Unmarshal(b, &bi)
		}
		if err != nil {
			r.note("bootstrap: reading %s: %v", c.info, err)
		}
	}
	before, err := dirSize(c.d2)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		r.note("bootstrap: size of %s: %v", c.d2, err)
	}
	logf("bootstrap: joining %s (%d entries) on a fresh node", bi.DB, bi.Entries)
	cmd := exec.Command(c.eidefs, "--data", c.d2, "db", "join", c.ticket)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	srcCPU0, srcErr := procCPU(c.srcPid)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		r.note("bootstrap: starting the join: %v", err)
		return
	}
	timer := time.AfterFunc(c.joinTimeout, func() { cmd.Process.Kill() })
	err = cmd.Wait()
	took := time.Since(start)
	timer.Stop()
	srcCPU1, srcErr1 := procCPU(c.srcPid)
	if err != nil {
		r.add(metric{sec, "bootstrap-join", "join (process start → exit)", math.NaN(), "s", 3, "< 5 s", "MISSED"})
		r.note("bootstrap: the join failed after %.2fs: %v; stderr: %s", took.Seconds(), err, strings.TrimSpace(stderr.String()))
		return
	}
	var maxrss int64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		maxrss = ru.Maxrss // KiB on Linux
	}
	after, _ := dirSize(c.d2)

	// What arrived, as the node itself reports it.
	var got uint64
	out, err := exec.Command(c.eidefs, "--data", c.d2, "db", "list", "--json").Output()
	if err == nil {
		var dbs []struct {
			Name    string `json:"name"`
			ID      string `json:"id"`
			Entries uint64 `json:"entries"`
		}
		if err = json.Unmarshal(out, &dbs); err == nil {
			for _, d := range dbs {
				if bi.ID == "" || d.ID == bi.ID {
					got += d.Entries
				}
			}
		}
	}
	if err != nil {
		r.note("bootstrap: eidefs db list --json on D2: %v", err)
	}
	if bi.Entries != 0 && got < bi.Entries {
		r.note("bootstrap: D2 holds %d entries, the source had %d", got, bi.Entries)
	}
	r.add(metric{sec, "bootstrap-join", fmt.Sprintf("`db join` of %d entries (process start → exit)", got), took.Seconds(), "s", 3, "< 5 s", verdict(took < 5*time.Second)})
	r.add(metric{sec, "bootstrap-entries", "entries on the joined node", float64(got), "count", 0, "", ""})
	r.add(metric{sec, "bootstrap-rate", "entries per second", float64(got) / took.Seconds(), "entries/s", 0, "", ""})
	if bi.EntryBytes > 0 {
		r.add(metric{sec, "bootstrap-entry-bytes", "encoded entries transferred (sum of entry sizes)", float64(bi.EntryBytes) / 1e6, "MB", 2, "", ""})
		r.add(metric{sec, "bootstrap-throughput", "entry bytes per second", float64(bi.EntryBytes) / 1e6 / took.Seconds(), "MB/s", 2, "", ""})
	}
	r.add(metric{sec, "bootstrap-disk", "joined node's data dir growth", float64(after-before) / 1e6, "MB", 2, "", ""})
	joinCPU := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	r.add(metric{sec, "bootstrap-join-cpu", "join process CPU time (user+sys)", joinCPU.Seconds(), "s", 2, "", ""})
	if c.srcPid != "" && srcErr == nil && srcErr1 == nil {
		r.add(metric{sec, "bootstrap-source-cpu", "serving node's CPU time during the join", (srcCPU1 - srcCPU0).Seconds(), "s", 2, "", ""})
	}
	if maxrss > 0 {
		r.add(metric{sec, "bootstrap-join-maxrss", "join process peak RSS", float64(maxrss) / 1024, "MiB", 1, "", ""})
	}
	if bi.Seconds > 0 {
		r.add(metric{sec, "bootstrap-populate", fmt.Sprintf("source: %d local commits via the engine (setup, for context)", bi.Commits), bi.Seconds, "s", 2, "", ""})
	}
	logf("bootstrap: %s", strings.TrimSpace(stdout.String()))
}

// procCPU is the user+system CPU time a process has used so far.
func procCPU(pid string) (time.Duration, error) {
	if pid == "" {
		return 0, errors.New("no pid")
	}
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; count fields after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%s/stat: unexpected format", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%s/stat: unexpected format", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // utime, field 14
	st, err2 := strconv.ParseInt(f[12], 10, 64) // stime, field 15
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%s/stat: unexpected format", pid)
	}
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck, nil
}

// ---- 4. memory ----

func procStatus(pid string) (rss, hwm int64, err error) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v
		case "VmHWM:":
			hwm = v
		}
	}
	return rss, hwm, nil
}

func runMemory(c *runConfig, r *results) {
	const sec = "memory (after the runs)"
	for _, p := range c.pids {
		name, pid, _ := strings.Cut(p, "=")
		rss, hwm, err := procStatus(pid)
		if err != nil {
			r.note("memory: %s (pid %s): %v", name, pid, err)
			continue
		}
		r.add(metric{sec, "rss-" + name, name + " VmRSS (current)", float64(rss) / 1024, "MiB", 1, "", ""})
		r.add(metric{sec, "hwm-" + name, name + " VmHWM (peak)", float64(hwm) / 1024, "MiB", 1, "", ""})
	}
}

// loadavg is the 1, 5 and 15 minute load average.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// ---- output ----

func fmtValue(m metric) string {
	if math.IsNaN(m.value) {
		return "—"
	}
	return strconv.FormatFloat(m.value, 'f', m.prec, 64)
}

func printTable(r *results) {
	fmt.Println("| benchmark | metric | value | unit | goal | |")
	fmt.Println("|---|---|---:|---|---|---|")
	for _, m := range r.metrics {
		fmt.Printf("| %s | %s | %s | %s | %s | %s |\n", m.section, m.label, fmtValue(m), m.unit, m.goal, m.verdict)
	}
	fmt.Println()
	if len(r.notes) > 0 {
		fmt.Println("Notes:")
		for _, n := range r.notes {
			fmt.Println("- " + n)
		}
		fmt.Println()
	}
}

func printResults(r *results) {
	for _, m := range r.metrics {
		v := "nan"
		if !math.IsNaN(m.value) {
			v = strconv.FormatFloat(m.value, 'f', max(m.prec, 3), 64)
		}
		fmt.Printf("RESULT %s %s %s\n", m.name, v, m.unit)
	}
}
