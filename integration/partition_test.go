package integration

// Partitions heal: three mounted nodes whose every packet crosses a faulty UDP
// proxy (udpproxy_test.go) keep writing while their links lose, delay, duplicate
// and reorder packets, split them {A} | {B, C} and then cut everything; once the
// links are back they converge to the same tips and content, with every write
// present or recorded as the loser of a conflict.

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	partitionSeed = flag.Uint64("partition-seed", 0, "TestPartitionsHeal: seed of the network faults (0: from the clock); printed by the test")
	// partitionHold is at least several retries, periodic syncs and health checks of
	// every node: long enough for a write to cross a cut that leaked.
	partitionHold = flag.Duration("partition-hold", 3*time.Second, "TestPartitionsHeal: how long each partition lasts")
)

const (
	partitionDB    = "notes"
	partitionStore = "s"
	// uniqueWrites is how many keys of its own each writing node writes per phase.
	uniqueWrites = 8
	// hotKeys is how many keys per phase several nodes write.
	hotKeys = 3
	// pace spreads each node's writes of a phase over time, so that they travel in
	// many pushes rather than one.
	pace = 50 * time.Millisecond
)

var (
	// lossyLinks are the faults of the first phase.
	lossyLinks = linkRules{Drop: 0.10, Delay: 2 * time.Millisecond, Jitter: 18 * time.Millisecond, Duplicate: 0.05, Reorder: 0.10}
	// mildLinks are the faults left once the partitions heal.
	mildLinks = linkRules{Drop: 0.02, Delay: time.Millisecond, Jitter: 4 * time.Millisecond, Duplicate: 0.01, Reorder: 0.02}
)

// write is one write through a mount whose close(2) returned without an error.
type write struct {
	Node  *syncNode
	Phase string
	Key   string // store/name
	Value string
}

// partitionRun is the state of TestPartitionsHeal.
type partitionRun struct {
	t       *testing.T
	fn      *faultNet
	a, b, c *syncNode
	nodes   []*syncNode
	proxies map[string]*udpProxy // by node name
	writes  []write
}

func TestPartitionsHeal(t *testing.T) {
	seed := *partitionSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (reproduce the faults: go test ./integration -run 'TestPartitionsHeal$' -v -partition-seed=%d)", seed, seed)
	start := time.Now()
	r := &partitionRun{t: t, fn: newFaultNet(t, seed), proxies: map[string]*udpProxy{}}
	r.setUp()
	t.Logf("set up in %v", time.Since(start).Round(time.Millisecond))

	// a. Every link lossy.
	r.fn.setAll(lossyLinks)
	r.writePhase("lossy", r.nodes)
	d := waitSameTips(t, 30*time.Second, partitionDB, r.nodes...)
	t.Logf("lossy: converged %v after the writes", d.Round(time.Millisecond))

	// b. {A} | {B, C}: B and C keep syncing with each other.
	r.fn.cut("a", "b")
	r.fn.cut("a", "c")
	r.writePhase("split", []*syncNode{r.a, r.b})
	d = waitSameTips(t, 30*time.Second, partitionDB, r.b, r.c)
	t.Logf("split: B and C converged %v after the writes", d.Round(time.Millisecond))
	time.Sleep(*partitionHold - d)
	r.expectIsolated("split", [][]*syncNode{{r.a}, {r.b, r.c}})

	// c. Every link down.
	r.fn.setAll(linkRules{Down: true})
	r.writePhase("cut", r.nodes)
	time.Sleep(*partitionHold)
	r.expectIsolated("cut", [][]*syncNode{{r.a}, {r.b}, {r.c}})

	// d. Heal, mildly lossy.
	r.fn.setAll(mildLinks)
	d = waitSameTips(t, 30*time.Second, partitionDB, r.nodes...)
	t.Logf("healed: same tips on A, B and C %v after the links came back", d.Round(time.Millisecond))

	r.expectConverged()
	r.expectOnlyProxyAddresses()
	r.expectFaults()
	t.Logf("%d writes in all; whole test %v", len(r.writes), time.Since(start).Round(time.Millisecond))
}

// setUp starts A, B and C behind proxies; A makes the database and shares it with
// B and C, which join it; B is told of C (at C's proxy); all three converge.
func (r *partitionRun) setUp() {
	t := r.t
	opts := syncOpts{Periodic: "1s", Retry: "300ms", RetryCap: "2s", Health: "1s"}
	r.a, r.b, r.c = r.proxied("a", opts), r.proxied("b", opts), r.proxied("c", opts)
	r.nodes = []*syncNode{r.a, r.b, r.c}

	newStore(t, r.a.Mount, partitionDB, partitionStore)
	r.record(r.a, "setup", partitionStore+"/first", "before sharing\n")
	join(t, r.b, share(t, r.a, partitionDB, "--write"))
	join(t, r.c, share(t, r.a, partitionDB, "--write"))
	mustCLI(t, r.b.Data, "peer", "add", r.c.Key()+"@"+r.proxies["c"].Addr(), "--name", "c")
	// C learns B from B's hello, at the address B advertises.
	waitFor(t, 10*time.Second, "C's peer list showing B", func() (bool, string) {
		ps := peerList(t, r.c.Data)
		_, ok := findPeer(ps, r.b.Key())
		return ok, "peers: " + peerNames(ps)
	})
	waitSameTips(t, 10*time.Second, partitionDB, r.nodes...)
	r.expectOnlyProxyAddresses()
}

// proxied starts a mounted node whose peers reach it only through a proxy: the
// node is started once to learn its address, then restarted advertising the
// proxy's before any peer knows it.
func (r *partitionRun) proxied(name string, opts syncOpts) *syncNode {
	t := r.t
	n := newSyncNode(t, name, opts)
	p := r.fn.proxy(name, n.Addr)
	r.proxies[name] = p
	n.stop(t)
	setConfig(t, n.Data, map[string]string{"advertise": fmt.Sprintf("[%q]", p.Addr())})
	n.start(t)
	return n
}

// record writes value to key through n's mount and records the write if close(2)
// succeeded.
func (r *partitionRun) record(n *syncNode, phase, key, value string) {
	r.t.Helper()
	if err := os.WriteFile(n.Path(partitionDB, key), []byte(value), 0o644); err != nil {
		r.t.Fatalf("%s: %v", n.Name, err)
	}
	r.writes = append(r.writes, write{Node: n, Phase: phase, Key: key, Value: value})
}

// writePhase writes through every node's mount at once: uniqueWrites keys of its
// own, and the phase's hot keys if it is one of hot. Every write must succeed: a
// mount writes locally, whatever the network does.
func (r *partitionRun) writePhase(phase string, hot []*syncNode) {
	t := r.t
	t.Helper()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, n := range r.nodes {
		var keys []string
		if slices.Contains(hot, n) {
			for i := range hotKeys {
				keys = append(keys, fmt.Sprintf("%s/hot-%s-%d", partitionStore, phase, i))
			}
		}
		for i := range uniqueWrites {
			keys = append(keys, fmt.Sprintf("%s/%s-%s-%d", partitionStore, n.Name, phase, i))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, k := range keys {
				if i > 0 {
					time.Sleep(pace)
				}
				v := fmt.Sprintf("%s by %s in %s\n", k, n.Name, phase)
				err := os.WriteFile(n.Path(partitionDB, k), []byte(v), 0o644)
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: writing %s: %w", n.Name, k, err))
				} else {
					r.writes = append(r.writes, write{Node: n, Phase: phase, Key: k, Value: v})
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		t.Error(err)
	}
}

// expectIsolated checks that none of phase's writes crossed from one group of
// nodes to another: every node shows its group's last value of each key written
// in the phase, and nothing of the keys only other groups wrote.
func (r *partitionRun) expectIsolated(phase string, groups [][]*syncNode) {
	t := r.t
	t.Helper()
	for _, g := range groups {
		want := map[string]string{} // key → the group's last write in the phase
		var others []string
		for _, w := range r.writes {
			if w.Phase != phase {
				continue
			}
			if slices.Contains(g, w.Node) {
				want[w.Key] = w.Value
			} else {
				others = append(others, w.Key)
			}
		}
		for _, n := range g {
			for k, v := range want {
				if got, err := os.ReadFile(n.Path(partitionDB, k)); err != nil || string(got) != v {
					t.Errorf("%s: %s while cut off: %q (%v), want its group's %q", n.Name, k, got, err, v)
				}
			}
			for _, k := range others {
				if _, ok := want[k]; ok {
					continue // a hot key the group wrote too: checked above
				}
				if got, err := os.ReadFile(n.Path(partitionDB, k)); !os.IsNotExist(err) {
					t.Errorf("%s: %s crossed the cut (%s): %q, %v", n.Name, k, phase, got, err)
				}
			}
		}
	}
}

// logEntry is an entry of the database as .sync/log and .sync/log.json show it.
type logEntry struct {
	ID      string   `json:"id"`
	Author  string   `json:"author"`
	Parents []string `json:"parents"`
	Keys    []string `json:"-"` // store/path of each change
}

// readLog reads the entries of db from n's .sync/log.json, with the keys each
// changed from .sync/log.
func readLog(t *testing.T, n *syncNode, db string) map[string]*logEntry {
	t.Helper()
	var es []*logEntry
	if err := json.Unmarshal([]byte(readFile(t, n.Path(db, ".sync", "log.json"))), &es); err != nil {
		t.Fatalf("%s: %s/.sync/log.json: %v", n.Name, db, err)
	}
	out := map[string]*logEntry{}
	for _, e := range es {
		out[e.ID] = e
	}
	for _, line := range strings.Split(strings.TrimSpace(readFile(t, n.Path(db, ".sync", "log"))), "\n") {
		f := strings.Fields(line)
		if len(f) != 6 || out[f[0]] == nil {
			t.Fatalf("%s: %s/.sync/log: line %q: want ID HEIGHT TIME AUTHOR STORES KEYS of an entry in log.json", n.Name, db, line)
		}
		out[f[0]].Keys = strings.Split(f[5], ",")
	}
	return out
}

// isAncestor reports whether entry x is an ancestor of entry y (or y itself).
func isAncestor(log map[string]*logEntry, x, y string) bool {
	seen := map[string]bool{}
	stack := []string{y}
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if id == x {
			return true
		}
		if seen[id] || log[id] == nil {
			continue
		}
		seen[id] = true
		stack = append(stack, log[id].Parents...)
	}
	return false
}

// conflictJSON is one element of `eidefs conflicts --all --json`.
type conflictJSON struct {
	Key      string `json:"key"`
	Loser    string `json:"loser"`
	Author   string `json:"author"`
	Value    string `json:"value"`
	Winner   string `json:"winner"`
	Resolved bool   `json:"resolved"`
}

// expectConverged checks the end state: the same tree and conflicts on every node;
// every write present with its content, or overwritten by a write that had seen
// it, or the loser of a conflict with the write that is present.
func (r *partitionRun) expectConverged() {
	t := r.t
	t.Helper()
	tree := dbTree(t, r.a, partitionDB)
	for _, n := range r.nodes[1:] {
		expectSameTree(t, tree, dbTree(t, n, partitionDB), "A and "+strings.ToUpper(n.Name))
	}
	out := mustCLI(t, r.a.Data, "conflicts", "--all", "--json", partitionDB)
	for _, n := range r.nodes[1:] {
		if got := mustCLI(t, n.Data, "conflicts", "--all", "--json", partitionDB); got != out {
			t.Errorf("conflicts --all on %s differ from A's:\n%s\nA:\n%s", n.Name, got, out)
		}
	}
	var conflicts []conflictJSON
	if err := json.Unmarshal([]byte(out), &conflicts); err != nil {
		t.Fatalf("eidefs conflicts --all --json: %v\n%s", err, out)
	}
	log := readLog(t, r.a, partitionDB)

	byKey := map[string][]write{}
	var keys []string
	for _, w := range r.writes {
		if byKey[w.Key] == nil {
			keys = append(keys, w.Key)
		}
		byKey[w.Key] = append(byKey[w.Key], w)
	}
	losers := map[string]conflictJSON{} // by losing entry
	for _, c := range conflicts {
		losers[c.Loser] = c
	}
	writeOf := map[string]write{}       // by entry
	unresolved := map[string][]string{} // key → entries of its losing heads
	nconcurrent := 0
	for _, k := range keys {
		ws := byKey[k]
		entries := make([]string, len(ws))
		for i, w := range ws {
			entries[i] = r.entryOf(log, w)
		}
		// The heads: the writes of k that no other write of k had seen.
		var heads []int
		for i := range ws {
			seen := false
			for j := range ws {
				if i != j && entries[i] != "" && entries[j] != "" && isAncestor(log, entries[i], entries[j]) {
					seen = true
				}
			}
			if !seen {
				heads = append(heads, i)
			}
		}
		if len(heads) > 1 {
			nconcurrent++
		}
		// Writes made on different sides of a cut are concurrent.
		if ws[0].Phase == "split" || ws[0].Phase == "cut" {
			if len(heads) != len(ws) {
				t.Errorf("%s: %d of its %d writes are concurrent, want all (they were made on different sides of a cut)", k, len(heads), len(ws))
			}
		}
		got, ok := tree[k]
		winner := -1
		for _, h := range heads {
			if ok && ws[h].Value == got.Data {
				winner = h
			}
		}
		if winner < 0 {
			t.Errorf("%s = %q (present %v), want the value of one of the concurrent last writes: %s", k, got.Data, ok, describe(ws, heads))
			continue
		}
		for _, h := range heads {
			if h == winner {
				continue
			}
			c, ok := losers[entries[h]]
			switch {
			case !ok:
				t.Errorf("%s: %s's write %q is neither the value (%q) nor a recorded conflict loser", k, ws[h].Node.Name, ws[h].Value, got.Data)
			case c.Key != k || c.Value != ws[h].Value || c.Author != ws[h].Node.Key() || c.Resolved:
				t.Errorf("%s: %s's write %q lost; its conflict record is %+v, want key %s, its value and author, unresolved", k, ws[h].Node.Name, ws[h].Value, c, k)
			default:
				unresolved[k] = append(unresolved[k], entries[h])
			}
		}
		for i, e := range entries {
			if e != "" {
				writeOf[e] = ws[i]
			}
		}
	}
	for _, c := range conflicts {
		if w, ok := writeOf[c.Loser]; !ok || w.Key != c.Key || w.Value != c.Value {
			t.Errorf("conflict %+v: its loser is no write of that key and value made in the test", c)
		}
	}
	t.Logf("%d keys, %d of them with concurrent last writes; %d conflicts recorded, %d unresolved", len(keys), nconcurrent, len(conflicts), countAll(unresolved))
	for _, n := range r.nodes {
		r.expectConflictFiles(n, tree, unresolved, writeOf)
	}
}

// entryOf finds the entry of write w in the log: the one entry by w's node that
// changed w's key (every node writes a key at most once).
func (r *partitionRun) entryOf(log map[string]*logEntry, w write) string {
	var found []string
	for id, e := range log {
		if e.Author == w.Node.Key() && slices.Contains(e.Keys, w.Key) {
			found = append(found, id)
		}
	}
	if len(found) != 1 {
		r.t.Errorf("%s's write of %s: %d entries by %s change it (%v), want one", w.Node.Name, w.Key, len(found), w.Node.Name, found)
		return ""
	}
	return found[0]
}

// expectConflictFiles checks n's .sync/conflicts: a directory for each key with
// unresolved losers (key → losing entries), holding each loser's value as
// <entry>.<author> and the winner's as winner.
func (r *partitionRun) expectConflictFiles(n *syncNode, tree map[string]fileInfo, unresolved map[string][]string, writeOf map[string]write) {
	t := r.t
	t.Helper()
	root := n.Path(partitionDB, ".sync", "conflicts")
	var want []string
	for k := range unresolved {
		want = append(want, strings.TrimPrefix(k, partitionStore+"/"))
	}
	slices.Sort(want)
	var got []string
	if slices.Contains(names(t, root), partitionStore) {
		got = names(t, filepath.Join(root, partitionStore))
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s: ls .sync/conflicts/%s = %v, want %v", n.Name, partitionStore, got, want)
		return
	}
	for k, losers := range unresolved {
		dir := filepath.Join(root, k)
		files := names(t, dir)
		expectContent(t, filepath.Join(dir, "winner"), tree[k].Data)
		for _, l := range losers {
			i := slices.IndexFunc(files, func(f string) bool { return strings.HasPrefix(f, l[:12]) })
			if i < 0 {
				t.Errorf("%s: %s has no file for the loser %s: %v", n.Name, dir, l[:12], files)
				continue
			}
			expectContent(t, filepath.Join(dir, files[i]), writeOf[l].Value)
		}
	}
}

// countAll is the number of values in m.
func countAll(m map[string][]string) int {
	n := 0
	for _, v := range m {
		n += len(v)
	}
	return n
}

// describe lists the writes at indexes is, for messages.
func describe(ws []write, is []int) string {
	var s []string
	for _, i := range is {
		s = append(s, fmt.Sprintf("%s: %q", ws[i].Node.Name, ws[i].Value))
	}
	return strings.Join(s, ", ")
}

// expectOnlyProxyAddresses checks that every node knows exactly the other two, each
// at its proxy's address only: no peer ever learned a real address to bypass the
// faults by.
func (r *partitionRun) expectOnlyProxyAddresses() {
	t := r.t
	t.Helper()
	for _, n := range r.nodes {
		ps := peerList(t, n.Data)
		if len(ps) != len(r.nodes)-1 {
			t.Errorf("%s's peers: %s, want the other %d", n.Name, peerNames(ps), len(r.nodes)-1)
		}
		for _, o := range r.nodes {
			if o == n {
				continue
			}
			p, ok := findPeer(ps, o.Key())
			if want := []string{r.proxies[o.Name].Addr()}; !ok || !slices.Equal(p.Addresses, want) {
				t.Errorf("%s's peer entry for %s: %+v (found %v), want addresses %v (its proxy; it listens at %s)", n.Name, o.Name, p, ok, want, o.Addr)
			}
		}
	}
}

// expectFaults logs what the proxies did and checks that every kind of fault
// happened, and that every packet came from a node.
func (r *partitionRun) expectFaults() {
	t := r.t
	t.Helper()
	lines, total := r.fn.report()
	t.Logf("proxies: %v in all; per link:%s", total, lines)
	if total.Dropped == 0 || total.Cut == 0 || total.Duplicated == 0 || total.Delayed == 0 || total.Reordered == 0 {
		t.Errorf("faults injected: %v; want some of every kind", total)
	}
	for l, s := range r.fn.stats() {
		if l.From == unknownSource || l.To == unknownSource {
			t.Errorf("link %s: %v: packets from an address that is no node's listening socket", l, s)
		}
	}
}
