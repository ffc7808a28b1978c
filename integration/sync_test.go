package integration

// Sync between real nodes: each node is the built binary, mounted (or serving) with
// QUIC listening on 127.0.0.1, driven through its mount and its CLI.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pushTimeout bounds how long a pushed change may take to show on a peer's mount.
const pushTimeout = 2 * time.Second

// syncedPair mounts A and B, creates notes/todo on A with one key, shares it with
// --write and joins it on B.
func syncedPair(t *testing.T, ao, bo syncOpts) (a, b *syncNode) {
	t.Helper()
	a = newSyncNode(t, "a", ao)
	b = newSyncNode(t, "b", bo)
	newStore(t, a.Mount, "notes", "todo")
	writeFile(t, a.Path("notes", "todo", "first"), "before sharing\n")
	join(t, b, share(t, a, "notes", "--write"))
	expectContent(t, b.Path("notes", "todo", "first"), "before sharing\n")
	return a, b
}

// chain mounts A, B and C: A shares notes with B (--admin), B shares it with C
// (--write). C only knows B.
func chain(t *testing.T) (a, b, c *syncNode) {
	t.Helper()
	a = newSyncNode(t, "a", syncOpts{})
	b = newSyncNode(t, "b", syncOpts{})
	c = newSyncNode(t, "c", syncOpts{})
	newStore(t, a.Mount, "notes", "todo")
	writeFile(t, a.Path("notes", "todo", "first"), "from a\n")
	join(t, b, share(t, a, "notes", "--admin"))
	join(t, c, share(t, b, "notes", "--write"))
	expectContent(t, c.Path("notes", "todo", "first"), "from a\n")
	return a, b, c
}

// lookupPeer finds n in a peer list: by key, or by name when the key is not a string
// (reported separately by expectKeysAreStrings).
func lookupPeer(ps []peerJSON, n *syncNode) (peerJSON, bool) {
	if p, ok := findPeer(ps, n.Key()); ok {
		return p, true
	}
	for _, p := range ps {
		if p.KeyString() == "" && p.Name == n.Name {
			return p, true
		}
	}
	return peerJSON{}, false
}

// expectKeysAreStrings checks that peer list --json shows keys as ed25519:… strings.
func expectKeysAreStrings(t *testing.T, who string, ps []peerJSON) {
	t.Helper()
	for _, p := range ps {
		if !strings.HasPrefix(p.KeyString(), "ed25519:") {
			var compact bytes.Buffer
			json.Compact(&compact, p.Key)
			t.Errorf("eidefs --data %s peer list --json: peer %q has \"key\": %.60s…, want a string \"ed25519:…\" (as peer list, status and peer add show keys)",
				who, p.Name, compact.String())
		}
	}
}

// waitActivePeer waits until who's peer list shows peer as active with a last sync.
func waitActivePeer(t *testing.T, who, peer *syncNode) peerJSON {
	t.Helper()
	var got peerJSON
	waitFor(t, 5*time.Second, fmt.Sprintf("%s's peer list showing %s active with a last sync", who.Name, peer.Name), func() (bool, string) {
		ps := peerList(t, who.Data)
		p, ok := lookupPeer(ps, peer)
		if !ok {
			return false, "peers: " + peerNames(ps)
		}
		got = p
		return p.Status == "active" && !p.LastSync.IsZero(), fmt.Sprintf("%+v", p)
	})
	return got
}

var syncLine = regexp.MustCompile(`^(\S+) (\S+): ok, received (\d+), sent (\d+), [0-9.]+s$`)

// syncNow runs `eidefs sync` on n and checks one ok line per peer and database.
func syncNow(t *testing.T, n *syncNode, wantLines int) string {
	t.Helper()
	out := mustCLI(t, n.Data, "sync")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != wantLines {
		t.Errorf("eidefs --data %s sync: %d lines, want %d (one per peer and database):\n%s", n.Name, len(lines), wantLines, out)
	}
	for _, l := range lines {
		if !syncLine.MatchString(l) {
			t.Errorf("eidefs --data %s sync: line %q, want PEER DB: ok, received N, sent N, S.SSSs", n.Name, l)
		}
	}
	return out
}

func TestShareJoinAndPush(t *testing.T) {
	a := newSyncNode(t, "a", syncOpts{})
	b := newSyncNode(t, "b", syncOpts{})
	newStore(t, a.Mount, "notes", "todo")
	writeFile(t, a.Path("notes", "todo", "first"), "before sharing\n")

	ticket := share(t, a, "notes", "--write")
	join(t, b, ticket)
	// The join clones the database before returning: B's mount shows it at once.
	if _, err := os.Stat(b.Path("notes", "todo", "first")); err != nil {
		d := waitFor(t, 5*time.Second, "the joined database in B's mount", func() (bool, string) {
			_, err := os.Stat(b.Path("notes", "todo", "first"))
			return err == nil, fmt.Sprint(err)
		})
		t.Errorf("after db join returned, B's mount did not show notes/todo/first at once (%v); it appeared %v later", err, d)
	}
	expectContent(t, b.Path("notes", "todo", "first"), "before sharing\n")
	if got, want := names(t, b.Path("notes")), []string{".sync", "todo"}; !slices.Equal(got, want) && !slices.Equal(got, want[1:]) {
		t.Errorf("ls B/notes = %v, want %v", got, want)
	}

	// A → B.
	writeFile(t, a.Path("notes", "todo", "x"), "hi\n")
	ab := waitContent(t, pushTimeout, b.Path("notes", "todo", "x"), "hi\n")
	// B → A.
	writeFile(t, b.Path("notes", "todo", "y"), "from b\n")
	ba := waitContent(t, pushTimeout, a.Path("notes", "todo", "y"), "from b\n")
	// An overwrite of a file B has read (its page cache must be invalidated).
	writeFile(t, a.Path("notes", "todo", "x"), "changed on a\n")
	ab2 := waitContent(t, pushTimeout, b.Path("notes", "todo", "x"), "changed on a\n")
	// A delete on B.
	if err := os.Remove(b.Path("notes", "todo", "first")); err != nil {
		t.Fatal(err)
	}
	del := waitFor(t, pushTimeout, "the delete on B reaching A", func() (bool, string) {
		_, err := os.Stat(a.Path("notes", "todo", "first"))
		return os.IsNotExist(err), fmt.Sprint(err)
	})
	// A new store made on B.
	if err := os.Mkdir(b.Path("notes", "fromb"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, b.Path("notes", "fromb", "k"), "v")
	ba2 := waitContent(t, pushTimeout, a.Path("notes", "fromb", "k"), "v")
	t.Logf("push latencies: A→B new file %v, B→A new file %v, A→B overwrite %v, B→A delete %v, B→A new store %v",
		ab.Round(time.Microsecond), ba.Round(time.Microsecond), ab2.Round(time.Microsecond), del.Round(time.Microsecond), ba2.Round(time.Microsecond))

	// Both know each other as active peers with a last sync.
	pa := waitActivePeer(t, a, b)
	pb := waitActivePeer(t, b, a)
	expectKeysAreStrings(t, "a", peerList(t, a.Data))
	expectKeysAreStrings(t, "b", peerList(t, b.Data))
	if pa.Name != "b" || !slices.Contains(pa.Addresses, b.Addr) || pa.LastError != "" || pa.Rejected != 0 {
		t.Errorf("A's peer entry for B: %+v; want name b, address %s, no error, nothing rejected", pa, b.Addr)
	}
	if pb.Name != "a" || !slices.Contains(pb.Addresses, a.Addr) || pb.LastError != "" || pb.Rejected != 0 {
		t.Errorf("B's peer entry for A: %+v; want name a, address %s, no error, nothing rejected", pb, a.Addr)
	}
	for _, n := range []*syncNode{a, b} {
		if ps := peerList(t, n.Data); len(ps) != 1 {
			t.Errorf("%s's peer list: %s, want exactly one peer", n.Name, peerNames(ps))
		}
	}
	// The table form names the peer and its state too.
	if out := mustCLI(t, a.Data, "peer", "list"); !regexp.MustCompile(`(?m)^b\s+` + regexp.QuoteMeta(b.Key()) + `\s+` + regexp.QuoteMeta(b.Addr) + `\s+active\s+\d{4}-`).MatchString(out) {
		t.Errorf("eidefs peer list on A: no line `b KEY ADDR active TIME`:\n%s", out)
	}

	// eidefs sync: one ok line per peer and database, on both sides.
	outA := syncNow(t, a, 1)
	outB := syncNow(t, b, 1)
	if !strings.HasPrefix(outA, "b notes: ok") || !strings.HasPrefix(outB, "a notes: ok") {
		t.Errorf("eidefs sync: A printed %q, B printed %q; want `b notes: ok…` and `a notes: ok…`", outA, outB)
	}

	settle := waitSameTips(t, 5*time.Second, "notes", a, b)
	t.Logf("tips equal after %v: %s", settle, shortIDs(tips(t, a, "notes")))
	expectSameTree(t, dbTree(t, a, "notes"), dbTree(t, b, "notes"), "A and B")
	la, lb := dbList(t, a.Data), dbList(t, b.Data)
	for _, n := range []*syncNode{a, b} {
		if len(la) == 0 {
			break
		}
		if got, want := commits(t, n.Mount, "notes"), int(la[0].Entries); got != want {
			t.Errorf("%s: .sync/log has %d lines, want one per entry (%d)", n.Name, got, want)
		}
	}
	if len(la) != 1 || len(lb) != 1 || la[0].ID != lb[0].ID || la[0].Entries != lb[0].Entries || la[0].Name != "notes" || lb[0].Name != "notes" {
		t.Errorf("db list --json: A %+v, B %+v; want the same database notes with the same entries", la, lb)
	}
}

func TestConcurrentWritesConverge(t *testing.T) {
	fast := syncOpts{Retry: "300ms", RetryCap: "1s"}
	a, b := syncedPair(t, fast, fast)
	writeFile(t, a.Path("notes", "todo", "k"), "v0")
	waitContent(t, pushTimeout, b.Path("notes", "todo", "k"), "v0")

	// Cut B off, then write the same key on both sides.
	b.stop(t)
	writeFile(t, a.Path("notes", "todo", "k"), "vA")
	if out, errOut, code := cli(t, b.Data, "set", "notes", "todo", "k", "vB"); code != 0 {
		t.Fatalf("eidefs set on stopped B: exit %d\n%s%s", code, out, errOut)
	}
	if got := mustCLI(t, b.Data, "get", "notes", "todo", "k"); got != "vB" {
		t.Fatalf("offline B: get = %q, want vB", got)
	}

	b.start(t)
	syncNow(t, b, 1)
	d := waitSameTips(t, 10*time.Second, "notes", a, b)
	t.Logf("tips equal %v after eidefs sync", d)

	va := readFile(t, a.Path("notes", "todo", "k"))
	vb := readFile(t, b.Path("notes", "todo", "k"))
	if va != vb || (va != "vA" && va != "vB") {
		t.Fatalf("after sync: A shows %q, B shows %q; want the same value, vA or vB", va, vb)
	}
	loser := map[string]string{"vA": "vB", "vB": "vA"}[va]
	t.Logf("winner %q, loser %q", va, loser)
	if got := mustCLI(t, a.Data, "get", "notes", "todo", "k"); got != va {
		t.Errorf("eidefs get on A = %q, mount shows %q", got, va)
	}

	ca := mustCLI(t, a.Data, "conflicts", "notes")
	cb := mustCLI(t, b.Data, "conflicts", "notes")
	if ca != cb {
		t.Errorf("conflicts differ:\nA:\n%s\nB:\n%s", ca, cb)
	}
	lines := strings.Split(strings.TrimSpace(ca), "\n")
	conflictRE := regexp.MustCompile(`^todo/k lost=([0-9a-f]{12}) by (ed25519:\S+) at (\S+) value=(".*")$`)
	var m []string
	if len(lines) == 1 {
		m = conflictRE.FindStringSubmatch(lines[0])
	}
	if m == nil {
		t.Fatalf("eidefs conflicts notes on A:\n%s\nwant one line `todo/k lost=ID by KEY at TIME value=%q`", ca, loser)
	}
	if m[4] != fmt.Sprintf("%q", loser) {
		t.Errorf("conflict line %q: value %s, want the loser %q", lines[0], m[4], loser)
	}
	loserKey := map[string]string{"vA": a.Key(), "vB": b.Key()}[loser]
	if !strings.HasPrefix(loserKey, m[2]) {
		t.Errorf("conflict line %q: author %s, want the loser's author %s", lines[0], m[2], loserKey)
	}
	if _, err := time.Parse(time.RFC3339, m[3]); err != nil {
		t.Errorf("conflict line %q: time: %v", lines[0], err)
	}
	// The loser is an entry both logs have.
	for _, n := range []*syncNode{a, b} {
		if !regexp.MustCompile(`(?m)^` + m[1]).MatchString(readFile(t, n.Path("notes", ".sync", "log"))) {
			t.Errorf("%s's .sync/log has no entry %s (the loser)", n.Name, m[1])
		}
	}
	if all := mustCLI(t, a.Data, "conflicts", "--all", "notes"); all != ca {
		t.Errorf("conflicts --all on A lists more than conflicts (nothing is resolved yet):\n%s", all)
	}
	if !slices.Equal(tips(t, a, "notes"), tips(t, b, "notes")) || len(tips(t, a, "notes")) != 2 {
		t.Errorf("tips: A %s, B %s; want the same two concurrent entries", shortIDs(tips(t, a, "notes")), shortIDs(tips(t, b, "notes")))
	}

	// The same, as files: .sync/conflicts/todo/k/ holds the losing version and the winner.
	for _, n := range []*syncNode{a, b} {
		dir := n.Path("notes", ".sync", "conflicts", "todo", "k")
		got := names(t, dir)
		if len(got) != 2 || got[1] != "winner" || !strings.HasPrefix(got[0], m[1]+".") {
			t.Errorf("%s: ls %s = %v, want [%s.<author> winner]", n.Name, dir, got, m[1])
			continue
		}
		expectContent(t, filepath.Join(dir, got[0]), loser)
		expectContent(t, filepath.Join(dir, "winner"), va)
	}

	// Writing the key again on A, having seen both, resolves the conflict everywhere.
	writeFile(t, a.Path("notes", "todo", "k"), "merged")
	waitContent(t, pushTimeout, b.Path("notes", "todo", "k"), "merged")
	waitSameTips(t, 5*time.Second, "notes", a, b)
	for _, n := range []*syncNode{a, b} {
		if got := names(t, n.Path("notes", ".sync", "conflicts")); len(got) != 0 {
			t.Errorf("%s: .sync/conflicts after the resolving write: %v, want empty", n.Name, got)
		}
	}
	for _, n := range []*syncNode{a, b} {
		if out := mustCLI(t, n.Data, "conflicts", "notes"); out != "" {
			t.Errorf("%s: conflicts after a later write resolved it:\n%s", n.Name, out)
		}
		if out := mustCLI(t, n.Data, "conflicts", "--all", "notes"); out != ca {
			t.Errorf("%s: conflicts --all after the resolution:\n%s\nwant:\n%s", n.Name, out, ca)
		}
	}
}

func TestThreeNodesRandomWrites(t *testing.T) {
	a, b, c := chain(t)
	nodes := []*syncNode{a, b, c}

	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	var paths []string
	for _, dir := range []string{"", "sub", "sub/deep"} {
		for i := range 20 {
			paths = append(paths, filepath.Join(dir, fmt.Sprintf("k%02d", i)))
		}
	}
	var mu sync.Mutex
	written := map[string][]string{"first": {"from a\n"}} // path → values written there (guarded by mu)
	var errs []error                                      // guarded by mu
	var wg sync.WaitGroup
	const total = 200
	start := time.Now()
	for ni, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(seed), uint64(ni)))
			for i := ni; i < total; i += len(nodes) {
				p := paths[rnd.IntN(len(paths))]
				v := fmt.Sprintf("%s %d %x\n", n.Name, i, rnd.Uint32())
				full := n.Path("notes", "todo", p)
				err := os.MkdirAll(filepath.Dir(full), 0o755)
				if err == nil {
					err = os.WriteFile(full, []byte(v), 0o644)
				}
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
				} else {
					written[p] = append(written[p], v)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("%d writes over three mounts in %v", total, time.Since(start))
	for _, err := range errs {
		t.Error(err)
	}

	// eidefs sync everywhere until everyone has the same tips.
	rounds := 0
	d := waitFor(t, 20*time.Second, "the same tips on A, B and C after eidefs sync", func() (bool, string) {
		rounds++
		for _, n := range nodes {
			if out, errOut, code := cli(t, n.Data, "sync"); code != 0 {
				return false, fmt.Sprintf("eidefs --data %s sync: exit %d\n%s%s", n.Name, code, out, errOut)
			}
		}
		ta, tb, tc := tips(t, a, "notes"), tips(t, b, "notes"), tips(t, c, "notes")
		return slices.Equal(ta, tb) && slices.Equal(tb, tc), fmt.Sprintf("A %s, B %s, C %s", shortIDs(ta), shortIDs(tb), shortIDs(tc))
	})
	t.Logf("converged after %d rounds of eidefs sync (%v)", rounds, d)
	// Quiet: one more round moves nothing.
	for _, n := range nodes {
		var res []struct {
			Peer     string `json:"peer"`
			DB       string `json:"db"`
			Received int    `json:"received"`
			Sent     int    `json:"sent"`
			Error    string `json:"error"`
		}
		out := mustCLI(t, n.Data, "sync", "--json")
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("eidefs sync --json on %s: %v\n%s", n.Name, err, out)
		}
		for _, r := range res {
			if r.Received != 0 || r.Sent != 0 || r.Error != "" || r.DB != "notes" {
				t.Errorf("eidefs sync on %s after convergence: %+v, want notes with nothing received or sent", n.Name, r)
			}
		}
		if want := map[string]int{"a": 1, "b": 2, "c": 1}[n.Name]; len(res) != want {
			t.Errorf("eidefs sync --json on %s: %d results, want %d (one per peer)", n.Name, len(res), want)
		}
	}

	ta := dbTree(t, a, "notes")
	expectSameTree(t, ta, dbTree(t, b, "notes"), "A and B")
	expectSameTree(t, ta, dbTree(t, c, "notes"), "A and C")
	// Every name written is there, holding one of the values written to it.
	for p, vs := range written {
		fi, ok := ta[filepath.Join("todo", p)]
		if !ok {
			t.Errorf("todo/%s: written %d times but missing", p, len(vs))
		} else if !slices.Contains(vs, fi.Data) {
			t.Errorf("todo/%s = %q, not one of the values written: %q", p, fi.Data, vs)
		}
	}
	for p, fi := range ta {
		if rel, ok := strings.CutPrefix(p, "todo/"); ok && !fi.Dir && written[rel] == nil {
			t.Errorf("%s: present but never written", p)
		}
	}
	// Every replica lists the same conflicts.
	cs := mustCLI(t, a.Data, "conflicts", "--all", "notes")
	for _, n := range nodes[1:] {
		if got := mustCLI(t, n.Data, "conflicts", "--all", "notes"); got != cs {
			t.Errorf("conflicts --all on %s differ from A's:\n%s\nA:\n%s", n.Name, got, cs)
		}
	}
	t.Logf("%d conflicts recorded", strings.Count(cs, "\n"))
}

func TestRelay(t *testing.T) {
	a, b, c := chain(t)

	writeFile(t, a.Path("notes", "todo", "relayed"), "a to c via b\n")
	ac := waitContent(t, pushTimeout, c.Path("notes", "todo", "relayed"), "a to c via b\n")
	writeFile(t, c.Path("notes", "todo", "back"), "c to a via b\n")
	ca := waitContent(t, pushTimeout, a.Path("notes", "todo", "back"), "c to a via b\n")
	t.Logf("relayed push latencies: A→B→C %v, C→B→A %v", ac.Round(time.Microsecond), ca.Round(time.Microsecond))
	waitSameTips(t, 5*time.Second, "notes", a, b, c)

	// C never contacted A: each end knows B only; B knows both.
	for _, tc := range []struct {
		n    *syncNode
		want []*syncNode
	}{{a, []*syncNode{b}}, {c, []*syncNode{b}}, {b, []*syncNode{a, c}}} {
		ps := peerList(t, tc.n.Data)
		expectKeysAreStrings(t, tc.n.Name, ps)
		ok := len(ps) == len(tc.want)
		for _, w := range tc.want {
			if _, found := lookupPeer(ps, w); !found {
				ok = false
			}
		}
		if !ok {
			var want []string
			for _, w := range tc.want {
				want = append(want, w.Name)
			}
			t.Errorf("%s's peers: %s, want exactly %v", tc.n.Name, peerNames(ps), want)
		}
	}
}

func TestOfflineCatchUp(t *testing.T) {
	// A retries B only after a minute, and nobody syncs periodically within the
	// test: what brings B up to date is B's own sync with its peers at start.
	a, b := syncedPair(t, syncOpts{Retry: "1m", RetryCap: "5m"}, syncOpts{})
	if err := os.Mkdir(a.Path("notes", "bulk"), 0o755); err != nil {
		t.Fatal(err)
	}
	waitFor(t, pushTimeout, "the bulk store on B", func() (bool, string) {
		_, err := os.Stat(b.Path("notes", "bulk"))
		return err == nil, fmt.Sprint(err)
	})

	b.stop(t)
	const keys = 1000
	start := time.Now()
	a.Mount.mustSh(t, fmt.Sprintf(`i=0; while [ $i -lt %d ]; do echo "v$i" > "$MNT/notes/bulk/k$i" || exit 1; i=$((i+1)); done`, keys))
	t.Logf("A wrote %d keys through its mount in %v", keys, time.Since(start).Round(time.Millisecond))
	if n := len(names(t, a.Path("notes", "bulk"))); n != keys {
		t.Fatalf("A has %d keys in bulk, want %d", n, keys)
	}

	// B stays down until A has noticed: its pushes failed and B is marked inactive.
	noticed := waitFor(t, 20*time.Second, "A's peer list showing B inactive with an error", func() (bool, string) {
		p, ok := lookupPeer(peerList(t, a.Data), b)
		return ok && p.Status == "inactive" && p.LastError != "", fmt.Sprintf("%+v", p)
	})
	p, _ := lookupPeer(peerList(t, a.Data), b)
	t.Logf("A noticed B was gone %v after the writes: %s", noticed.Round(time.Millisecond), p.LastError)

	b.start(t)
	d := waitSameTips(t, 30*time.Second, "notes", a, b)
	t.Logf("B caught up %v after it started", d.Round(time.Millisecond))
	got := names(t, b.Path("notes", "bulk"))
	if len(got) != keys {
		t.Errorf("B has %d keys in bulk, want %d", len(got), keys)
	}
	bad := 0
	for i := range keys {
		p := b.Path("notes", "bulk", fmt.Sprintf("k%d", i))
		if data, err := os.ReadFile(p); err != nil || string(data) != fmt.Sprintf("v%d\n", i) {
			if bad++; bad <= 5 {
				t.Errorf("B: %s: %q, %v", p, data, err)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d keys wrong or missing on B", bad, keys)
	}

	// B is back: pushes flow again both ways, at once.
	writeFile(t, b.Path("notes", "todo", "after"), "from b after\n")
	ba := waitContent(t, pushTimeout, a.Path("notes", "todo", "after"), "from b after\n")
	writeFile(t, a.Path("notes", "todo", "after2"), "from a after\n")
	start = time.Now()
	ok := false
	for time.Since(start) < 5*time.Second {
		if data, err := os.ReadFile(b.Path("notes", "todo", "after2")); err == nil && string(data) == "from a after\n" {
			ok = true
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !ok {
		t.Errorf("a write on A did not reach B within 5 s after B came back and synced (B→A took %v): "+
			"A still holds its pushes to B until its retry timer (sync.retry = 1m) fires, although B is back and synced with A", ba)
	} else {
		t.Logf("after the catch-up: B→A push %v, A→B push %v", ba, time.Since(start))
	}
}

// ticketWithoutInvite returns ticket with its one-time invite removed: the same
// database, owner and addresses, asking as a plain sync. The ticket's encoding is
// deterministic CBOR: a map of 5 integer keys with the invite (key 5, 16 bytes) last.
func ticketWithoutInvite(t *testing.T, ticket string) (string, bool) {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(ticket, "eidefs1:"))
	if err != nil {
		t.Fatalf("ticket %q: %v", ticket, err)
	}
	n := len(b)
	if n < 20 || b[0] != 0xa5 || b[n-18] != 0x05 || b[n-17] != 0x50 {
		return "", false
	}
	out := append([]byte{0xa4}, b[1:n-18]...)
	return "eidefs1:" + base64.RawURLEncoding.EncodeToString(out), true
}

func TestUnauthorized(t *testing.T) {
	a := newSyncNode(t, "a", syncOpts{})
	newStore(t, a.Mount, "notes", "todo")
	writeFile(t, a.Path("notes", "todo", "x"), "secret\n")

	// X was never granted anything: discover shows A but no database.
	x := filepath.Join(t.TempDir(), "x")
	mustCLI(t, x, "init")
	out := mustCLI(t, x, "discover", a.Addr)
	if !strings.Contains(out, "key: "+a.Key()+"\n") || !strings.Contains(out, "name: a\n") {
		t.Errorf("eidefs discover %s from X:\n%s\nwant key: %s and name: a", a.Addr, out, a.Key())
	}
	if strings.Contains(out, "database:") {
		t.Errorf("eidefs discover from an ungranted node lists databases:\n%s", out)
	}

	// As a peer, X gets nothing either.
	mustCLI(t, x, "peer", "add", a.Key()+"@"+a.Addr, "--name", "a")
	if ps := peerList(t, x); len(ps) != 1 || ps[0].Name != "a" || !slices.Equal(ps[0].Addresses, []string{a.Addr}) {
		t.Errorf("X's peers after peer add: %+v", ps)
	}
	out, errOut, code := cli(t, x, "sync")
	if code != 1 || !regexp.MustCompile(`(?i)not authorized|no database.* shared`).MatchString(out+errOut) {
		t.Errorf("eidefs sync on X: exit %d\nstdout:\n%s\nstderr:\n%s\nwant exit 1 reporting nothing shared / not authorized", code, out, errOut)
	}
	// Asking for notes by id without an invite: not authorized.
	if bare, ok := ticketWithoutInvite(t, share(t, a, "notes")); ok {
		out, errOut, code = cli(t, x, "db", "join", bare)
		if code != 1 || !strings.Contains(errOut, "not authorized") {
			t.Errorf("eidefs db join with a ticket stripped of its invite: exit %d\n%s%s\nwant exit 1, not authorized", code, out, errOut)
		}
	} else {
		t.Log("ticket encoding not as expected; skipped the invite-less join")
	}
	if ds := dbList(t, x); len(ds) != 0 {
		t.Errorf("X has databases after being refused: %+v", ds)
	}
	// A does not remember strangers.
	if ps := peerList(t, a.Data); len(ps) != 0 {
		t.Errorf("A's peers after a stranger's discover, sync and join: %s, want none", peerNames(ps))
	}
	mustCLI(t, x, "peer", "rm", "a")
	if ps := peerList(t, x); len(ps) != 0 {
		t.Errorf("X's peers after peer rm a: %s", peerNames(ps))
	}

	// B may only read.
	b := newSyncNode(t, "b", syncOpts{})
	join(t, b, share(t, a, "notes"))
	expectContent(t, b.Path("notes", "todo", "x"), "secret\n")
	out = mustCLI(t, b.Data, "discover", a.Addr)
	wantOffer := fmt.Sprintf("database: notes %s entries=%d permission=read", dbList(t, a.Data)[0].ID, dbList(t, a.Data)[0].Entries)
	if !slices.Contains(strings.Split(out, "\n"), wantOffer) {
		t.Errorf("eidefs discover from read-only B:\n%s\nwant the line %q", out, wantOffer)
	}
	if _, errOut, code := b.Mount.sh(t, `echo x > "$MNT/notes/todo/y"`); code == 0 || !strings.Contains(errOut, "Permission denied") {
		t.Errorf("echo x > B/notes/todo/y on read-only B: exit %d, stderr %q; want Permission denied", code, errOut)
	}
	expectErrno(t, "overwrite on read-only B", os.WriteFile(b.Path("notes", "todo", "x"), []byte("mine"), 0o644), syscall.EACCES)
	expectErrno(t, "rm on read-only B", os.Remove(b.Path("notes", "todo", "x")), syscall.EACCES)
	expectErrno(t, "mkdir store on read-only B", os.Mkdir(b.Path("notes", "newstore"), 0o755), syscall.EACCES)
	// Reading still syncs.
	writeFile(t, a.Path("notes", "todo", "x"), "updated\n")
	waitContent(t, pushTimeout, b.Path("notes", "todo", "x"), "updated\n")

	// Offline, B cannot make an entry either: its own engine refuses to sign one.
	b.stop(t)
	out, errOut, code = cli(t, b.Data, "set", "notes", "todo", "y", "evil")
	if code != 1 || !strings.Contains(errOut, "not authorized") {
		t.Errorf("eidefs set on read-only B (stopped): exit %d\n%s%s\nwant exit 1, not authorized", code, out, errOut)
	}
	b.start(t)
	syncNow(t, b, 1)
	waitSameTips(t, 5*time.Second, "notes", a, b)
	if _, err := os.Stat(a.Path("notes", "todo", "y")); !os.IsNotExist(err) {
		t.Errorf("A has notes/todo/y from read-only B: %v", err)
	}
	if p, ok := lookupPeer(peerList(t, a.Data), b); !ok || p.Rejected != 0 {
		t.Errorf("A's peer entry for B: %+v (found %v), want nothing rejected (B sent nothing)", p, ok)
	}
	// Granted write directly, B can write, through its mount.
	mustCLI(t, a.Data, "db", "grant", "notes", b.Key(), "write")
	granted := waitFor(t, pushTimeout, "B allowed to write after db grant on A", func() (bool, string) {
		err := os.WriteFile(b.Path("notes", "todo", "y"), []byte("granted\n"), 0o644)
		return err == nil, fmt.Sprint(err)
	})
	t.Logf("B could write %v after the grant on A", granted)
	waitContent(t, pushTimeout, a.Path("notes", "todo", "y"), "granted\n")

	// Entries forged to get past that (tampered bytes, a signer without write
	// permission) cannot be made with the CLI, whose engine validates before it
	// stores or sends; their rejection over the wire is covered by netsync's
	// TestForgedPushRejected and engine's tamper tests.
}

func TestJoinErrors(t *testing.T) {
	a := newSyncNode(t, "a", syncOpts{Serve: true})
	mustCLI(t, a.Data, "db", "create", "notes")
	mustCLI(t, a.Data, "set", "notes", "todo", "k", "v")
	ticket := share(t, a, "notes", "--write")

	dir := t.TempDir()
	b, c, d := filepath.Join(dir, "b"), filepath.Join(dir, "c"), filepath.Join(dir, "d")
	join(t, &syncNode{Name: "b", Data: b}, ticket)
	if got := mustCLI(t, b, "get", "notes", "todo", "k"); got != "v" {
		t.Errorf("B after joining: get = %q", got)
	}
	hasNotes := func(data string) bool {
		for _, db := range dbList(t, data) {
			if db.Name == "notes" {
				return true
			}
		}
		return false
	}

	// The invite was used by B.
	out, errOut, code := cli(t, c, "db", "join", ticket)
	if code != 1 || !strings.Contains(errOut, "invite is invalid or already used") {
		t.Errorf("joining with a used ticket: exit %d\n%s%s\nwant exit 1, invite is invalid or already used", code, out, errOut)
	}
	if hasNotes(c) {
		t.Errorf("C has notes after a refused join")
	}
	// Joining again where the database already is.
	out, errOut, code = cli(t, b, "db", "join", share(t, a, "notes"))
	if code != 1 || !strings.Contains(errOut, "already") {
		t.Errorf("joining a database B already has: exit %d\n%s%s\nwant exit 1, already here", code, out, errOut)
	}

	// Not a ticket at all: a usage error.
	for _, bad := range []string{"hello", "https://example.com/eidefs1:x"} {
		out, errOut, code = cli(t, c, "db", "join", bad)
		if code != 2 || !strings.Contains(errOut, "not an eidefs ticket") {
			t.Errorf("eidefs db join %q: exit %d\n%s%s\nwant exit 2, not an eidefs ticket", bad, code, out, errOut)
		}
	}
	out, errOut, code = cli(t, c, "db", "join", "eidefs1:!!!")
	if code != 2 || !strings.Contains(errOut, "bad ticket") {
		t.Errorf("eidefs db join eidefs1:!!!: exit %d\n%s%s\nwant exit 2, bad ticket", code, out, errOut)
	}

	// Sharing needs a node that listens.
	x := filepath.Join(dir, "x")
	mustCLI(t, x, "db", "create", "notes")
	out, errOut, code = cli(t, x, "db", "share", "notes")
	if code != 1 || !strings.Contains(errOut, "does not listen") {
		t.Errorf("eidefs db share on a node that does not listen: exit %d\n%s%s\nwant exit 1, does not listen", code, out, errOut)
	}

	// A ticket whose address has nothing listening any more.
	dead := share(t, a, "notes")
	a.stop(t)
	start := time.Now()
	out, errOut, code = cli(t, d, "db", "join", dead)
	t.Logf("join of a dead address failed after %v", time.Since(start).Round(time.Millisecond))
	if code != 1 || !strings.Contains(errOut, "peer unreachable") {
		t.Errorf("joining with a ticket to a dead address: exit %d\n%s%s\nwant exit 1, peer unreachable", code, out, errOut)
	}
	if hasNotes(d) {
		t.Errorf("D has notes after a failed join")
	}
}
