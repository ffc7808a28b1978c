// Command soak runs three eidefs nodes with mounts under a mixed write, read and
// sync load for a while, stopping and restarting nodes at random, and then checks
// that the nodes converged, that no acknowledged write was lost and that memory,
// goroutines and open files (goleveldb's table files apart) stayed flat. bench/soak.sh builds eidefs and runs it:
//
//	soak -bin EIDEFS -dir SCRATCH [-minutes 10] [-seed N] [flags]
//
// SCRATCH (empty or missing) receives the nodes' data directories, mount points,
// logs (NAME.log), pid files (NAME.pid, for soak.sh's cleanup) and acks.jsonl, the
// acknowledged operations. Nodes a, b and c listen on 127.0.0.1 (free ports, the
// same across restarts). a creates the database soak; b and c join it with write
// tickets and know each other as peers. Then, for -minutes:
//
//   - writers (-writers per node) create unique keys (some with fsync, some of
//     ~1 MiB), overwrite hot keys shared by all nodes, append to keys, write keys
//     under a temporary name and rename them, create and delete keys;
//   - readers (-readers per node) read acknowledged unique keys (exact content, or
//     not there yet on another node; always there on the node that wrote them),
//     hot keys (a value some writer wrote), listings and .sync files;
//   - `eidefs sync` runs on a random node every -sync-min to -sync-max;
//   - every -kill-min to -kill-max one node not in -keep is stopped (SIGKILL, or
//     SIGTERM with probability -term) and restarted -down-min to -down-max later;
//   - every -sample each node's RSS, Go heap and goroutines (from its /metrics),
//     open files (from /proc, goleveldb's table files counted apart) and entries
//     (from .sync/entries) are sampled.
//
// An operation is acknowledged when close (or fsync) returned without error; one
// that failed while its node was being stopped is not, and its key then allows
// both outcomes. At the end the load stops and soak waits up to -converge for the
// same tips on all nodes, then compares the three trees, checks every key against
// the acknowledged operations, lists conflicts and scans the logs. The report (a
// markdown summary) goes to stdout, progress to stderr. Exit status 1 on any
// failure, 2 on bad flags, 130/143 when interrupted.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

const db = "soak"

type config struct {
	bin, dir         string
	minutes          float64
	seed             uint64
	writers, readers int
	pace, readPace   time.Duration
	bigRate          float64
	keep             string
	killMin, killMax time.Duration
	downMin, downMax time.Duration
	termRate         float64
	syncMin, syncMax time.Duration
	sample           time.Duration
	converge         time.Duration
	maxRSSGrowth     float64
	maxRSSPerEntry   float64 // bytes of RSS growth allowed per entry the database grew by
	maxCountGrowth   float64
	syncConf         map[string]string
	passWrites       bool // passthrough_writes in each node's eidefs.toml
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "soak %s: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func parseFlags() *config {
	c := &config{syncConf: map[string]string{}}
	flag.StringVar(&c.bin, "bin", "", "eidefs binary (required)")
	flag.StringVar(&c.dir, "dir", "", "scratch directory, empty or missing (required)")
	flag.Float64Var(&c.minutes, "minutes", 10, "how long the load runs")
	flag.Uint64Var(&c.seed, "seed", 0, "random seed (0: from the clock)")
	flag.IntVar(&c.writers, "writers", 3, "writer goroutines per node")
	flag.IntVar(&c.readers, "readers", 1, "reader goroutines per node")
	flag.DurationVar(&c.pace, "pace", 100*time.Millisecond, "mean pause between a writer's operations")
	flag.DurationVar(&c.readPace, "read-pace", 100*time.Millisecond, "mean pause between a reader's operations")
	flag.Float64Var(&c.bigRate, "big", 0.003, "probability that a write is a ~1 MiB file")
	flag.StringVar(&c.keep, "keep", "a", "nodes never stopped (comma-separated); their memory trend is judged")
	flag.DurationVar(&c.killMin, "kill-min", 30*time.Second, "shortest pause between node stops")
	flag.DurationVar(&c.killMax, "kill-max", 90*time.Second, "longest pause between node stops")
	flag.DurationVar(&c.downMin, "down-min", 2*time.Second, "shortest time a stopped node stays down")
	flag.DurationVar(&c.downMax, "down-max", 8*time.Second, "longest time a stopped node stays down")
	flag.Float64Var(&c.termRate, "term", 0.25, "probability that a stop is SIGTERM rather than SIGKILL")
	flag.DurationVar(&c.syncMin, "sync-min", 10*time.Second, "shortest pause between eidefs sync runs")
	flag.DurationVar(&c.syncMax, "sync-max", 30*time.Second, "longest pause between eidefs sync runs")
	flag.DurationVar(&c.sample, "sample", 10*time.Second, "interval between memory samples")
	flag.DurationVar(&c.converge, "converge", 60*time.Second, "how long the nodes may take to converge after the load")
	flag.Float64Var(&c.maxRSSGrowth, "max-rss-growth", 1.5, "flat: median RSS of the last fifth at most this times the first fifth's (or within -max-rss-per-entry)")
	flag.Float64Var(&c.maxRSSPerEntry, "max-rss-per-entry", 3072, "flat: or the RSS grew by at most this many bytes per entry the database grew by")
	flag.Float64Var(&c.maxCountGrowth, "max-count-growth", 1.25, "flat: median goroutines (open files other than tables) of the last fifth at most this times the first fifth's, plus 10")
	flag.BoolVar(&c.passWrites, "passthrough-writes", true, "passthrough_writes in each node's eidefs.toml (eidefs's default: true)")
	syncFlags := map[string]*string{}
	for _, k := range []struct{ key, def string }{{"periodic", "5s"}, {"retry", "1s"}, {"retry_cap", "5s"}, {"health", "5s"}} {
		syncFlags[k.key] = flag.String("sync-"+strings.ReplaceAll(k.key, "_", "-"), k.def, "[sync] "+k.key+" in each node's eidefs.toml")
	}
	flag.Parse()
	for k, v := range syncFlags {
		c.syncConf[k] = *v
	}
	if c.bin == "" || c.dir == "" || flag.NArg() != 0 || c.minutes <= 0 || c.writers < 1 || c.readers < 0 ||
		c.killMin <= 0 || c.killMax < c.killMin || c.downMax < c.downMin || c.sample <= 0 {
		fmt.Fprintln(os.Stderr, "usage: soak -bin EIDEFS -dir SCRATCH [-minutes N] [flags]; see -h")
		os.Exit(2)
	}
	if c.seed == 0 {
		c.seed = uint64(time.Now().UnixNano())
	}
	return c
}

func main() {
	cfg := parseFlags()
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	var interrupted syscall.Signal
	var sigMu sync.Mutex
	go func() {
		s := <-sigs
		sigMu.Lock()
		interrupted = s.(syscall.Signal)
		sigMu.Unlock()
		logf("%v: stopping", s)
		cancel()
	}()
	r, err := run(ctx, cfg)
	sigMu.Lock()
	sig := interrupted
	sigMu.Unlock()
	if sig != 0 {
		logf("interrupted by %v; nodes stopped", sig)
		os.Exit(128 + int(sig))
	}
	if err != nil {
		logf("%v", err)
		os.Exit(1)
	}
	r.print(os.Stdout)
	if len(r.failures) > 0 {
		os.Exit(1)
	}
}

// cluster is the three nodes.
type cluster struct {
	nodes []*node
}

// shutdown stops every running node with SIGTERM (SIGKILL after 30 s) and detaches
// any mount left; it returns what each stop observed.
func (c *cluster) shutdown() map[string]stopResult {
	out := map[string]stopResult{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		if !n.running() {
			n.up.Store(false)
			continue
		}
		wg.Go(func() {
			res, err := n.stop(syscall.SIGTERM, 30*time.Second)
			if err != nil {
				logf("%v", err)
			}
			mu.Lock()
			out[n.name] = res
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, n := range c.nodes {
		if err := n.detachDeadMount(); err != nil {
			logf("%v", err)
		}
	}
	return out
}

// setup starts the nodes, creates the database and its directories on a, has b
// and c join it and know each other, and waits until all three agree.
func setup(ctx context.Context, cfg *config, c *cluster, ids []string) error {
	for _, n := range c.nodes {
		if err := n.start(time.Minute); err != nil {
			return err
		}
		logf("node %s mounted at %s (listen %s, metrics %s)", n.name, n.mnt, n.addr, n.metrics)
	}
	a := c.nodes[0]
	dirs := []string{"", store, store + "/hot"}
	for _, id := range ids {
		dirs = append(dirs, store+"/"+id)
		for _, d := range writerDirs {
			dirs = append(dirs, store+"/"+id+"/"+d)
		}
	}
	for _, d := range dirs {
		if err := os.Mkdir(a.path(db, d), 0o755); err != nil {
			return fmt.Errorf("mkdir on a: %w", err)
		}
	}
	for _, n := range c.nodes[1:] {
		ticket, err := a.cli(ctx, time.Minute, "db", "share", db, "--write")
		if err != nil {
			return err
		}
		out, err := n.cli(ctx, 2*time.Minute, "db", "join", ticket)
		if err != nil {
			return err
		}
		logf("node %s: %s", n.name, out)
	}
	for i, n := range c.nodes[1:] {
		other := c.nodes[2-i]
		if _, err := n.cli(ctx, time.Minute, "peer", "add", other.key+"@"+other.addr, "--name", other.name); err != nil {
			return err
		}
	}
	last := dirs[len(dirs)-1]
	deadline := time.Now().Add(time.Minute)
	for _, n := range c.nodes[1:] {
		for {
			if _, err := os.Stat(n.path(db, last)); err == nil {
				break
			} else if time.Now().After(deadline) {
				return fmt.Errorf("node %s: %s not replicated within a minute: %v", n.name, last, err)
			}
			if !sleepCtx(ctx, 100*time.Millisecond) {
				return ctx.Err()
			}
		}
	}
	_, err := waitConverged(ctx, c.nodes, db, time.Minute)
	return err
}

// run sets up the nodes, runs the load, checks the outcome and stops the nodes.
func run(ctx context.Context, cfg *config) (*report, error) {
	if err := os.MkdirAll(cfg.dir, 0o755); err != nil {
		return nil, err
	}
	c := &cluster{}
	defer c.shutdown()
	for _, name := range []string{"a", "b", "c"} {
		n, err := newNode(cfg.bin, cfg.dir, name, cfg.syncConf, cfg.passWrites)
		if err != nil {
			return nil, err
		}
		c.nodes = append(c.nodes, n)
	}
	keep := map[string]bool{}
	var killable []*node
	for _, k := range strings.Split(cfg.keep, ",") {
		keep[strings.TrimSpace(k)] = true
	}
	for _, n := range c.nodes {
		if !keep[n.name] {
			killable = append(killable, n)
		}
	}
	ids := writerIDs(c.nodes, cfg.writers)
	if err := setup(ctx, cfg, c, ids); err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	l := &load{cfg: cfg, db: db, nodes: c.nodes, model: newModel(), stats: newOpStats(), faults: newFaults()}
	r := &report{cfg: cfg, load: l, keep: keep, started: time.Now(), loadStart: loadavg()}
	for _, n := range c.nodes {
		if s, err := l.sampleNode(n); err == nil {
			r.idleStart = append(r.idleStart, s)
		}
	}

	logf("load for %.1f minutes (seed %d): %d writers, %d readers per node", cfg.minutes, cfg.seed, cfg.writers, cfg.readers)
	loadCtx, stopLoad := context.WithTimeout(ctx, time.Duration(cfg.minutes*float64(time.Minute)))
	killerErr := runLoad(loadCtx, stopLoad, l, ids, killable)
	stopLoad()
	r.loadTook = time.Since(r.started)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if killerErr != nil {
		r.fail("a node could not be restarted: %v", killerErr)
	}
	if err := writeAcks(filepath.Join(cfg.dir, "acks.jsonl"), l.model); err != nil {
		logf("writing acks.jsonl: %v", err)
	}
	logf("load stopped after %v; checking", r.loadTook.Round(time.Second))
	r.check(ctx, c)
	r.loadEnd = loadavg()
	r.finalStops = c.shutdown()
	for name, res := range r.finalStops {
		if res.forced || res.hung || res.exitErr != nil {
			r.fail("node %s: final SIGTERM: exit %v (SIGKILL needed: %v, FUSE connection aborted: %v)%s", name, res.exitErr, res.forced, res.hung, res.stacks)
		}
	}
	return r, nil
}

// runLoad runs writers, readers, the syncer, the killer and the sampler until ctx
// ends (or the killer fails, which ends it through stop) and returns the killer's
// error.
func runLoad(ctx context.Context, stop context.CancelFunc, l *load, ids []string, killable []*node) error {
	var wg sync.WaitGroup
	stream := uint64(0)
	rng := func() *rand.Rand {
		stream++
		return rand.New(rand.NewPCG(l.cfg.seed, stream))
	}
	for _, n := range l.nodes {
		for _, id := range ids {
			if strings.HasPrefix(id, n.name) {
				w := &writer{l: l, n: n, id: id, rnd: rng()}
				wg.Go(func() { w.run(ctx) })
			}
		}
		for range l.cfg.readers {
			rd := &reader{l: l, n: n, rnd: rng(), writers: ids}
			wg.Go(func() { rd.run(ctx) })
		}
	}
	syncRnd, killRnd := rng(), rng()
	wg.Go(func() { l.syncer(ctx, syncRnd) })
	wg.Go(func() { l.sampler(ctx) })
	var killerErr error
	if len(killable) > 0 {
		wg.Go(func() {
			if killerErr = l.killer(ctx, killRnd, killable); killerErr != nil {
				stop()
			}
		})
	}
	wg.Wait()
	return killerErr
}

// writeAcks saves the acknowledged operations, one JSON object a line.
func writeAcks(path string, m *model) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, a := range m.acks {
		if err := enc.Encode(a); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
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
