package engine

import (
	"bytes"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// refDoc is the reference model: Eidetica's Doc merge, folded over all ops in
// (height, entry id, op index) order. The engine's incremental state must equal it.
type refVal struct {
	del      bool
	isMap    bool
	kind     OpKind
	value    []byte
	children map[string]*refVal
}

func refMerge(old, nw *refVal) *refVal {
	if old == nil || old.del {
		return nw
	}
	if nw.del {
		return nw
	}
	if old.isMap && nw.isMap {
		out := &refVal{isMap: true, children: map[string]*refVal{}}
		for k, v := range old.children {
			out.children[k] = v
		}
		for k, v := range nw.children {
			out.children[k] = refMerge(out.children[k], v)
		}
		return out
	}
	return nw
}

// refDelta is the Doc delta of one op: maps down the path, the op at the end.
func refDelta(op Op) *refVal {
	var leaf *refVal
	switch op.Kind {
	case OpDelete:
		leaf = &refVal{del: true}
	case OpMap:
		leaf = &refVal{isMap: true, children: map[string]*refVal{}}
	default:
		leaf = &refVal{kind: op.Kind, value: op.Value}
	}
	for i := len(op.Path) - 1; i >= 0; i-- {
		leaf = &refVal{isMap: true, children: map[string]*refVal{op.Path[i]: leaf}}
	}
	return leaf
}

func refDump(stores map[string]*refVal) []string {
	var out []string
	var walk func(prefix string, v *refVal)
	walk = func(prefix string, v *refVal) {
		for k, c := range v.children {
			if c.del {
				continue
			}
			p := prefix + "/" + k
			if c.isMap {
				out = append(out, p+"/")
				walk(p, c)
			} else {
				out = append(out, fmt.Sprintf("%s=%s:%q", p, c.kind, c.value))
			}
		}
	}
	for name, v := range stores {
		if v == nil || v.del || !v.isMap {
			continue
		}
		out = append(out, name+"/")
		walk(name, v)
	}
	sort.Strings(out)
	return out
}

func refState(t testing.TB, raws [][]byte) []string {
	type item struct {
		o  order
		st string
		op Op
	}
	var items []item
	for _, raw := range raws {
		e, id, err := DecodeEntry(raw)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range e.Stores {
			for i, op := range s.Ops {
				items = append(items, item{order{e.Height, id, uint32(i)}, s.Name, op})
			}
		}
	}
	sort.Slice(items, func(i, j int) bool { return items[i].o.less(items[j].o) })
	stores := map[string]*refVal{}
	for _, it := range items {
		stores[it.st] = refMerge(stores[it.st], refDelta(it.op))
	}
	return refDump(stores)
}

// engineDump lists a database's visible state in refDump's format.
func engineDump(t testing.TB, db *Database) []string {
	var out []string
	var walk func(store string, path []string)
	walk = func(store string, path []string) {
		err := db.List(store, path, func(d DirEntry) bool {
			p := store + "/" + strings.Join(append(slices.Clone(path), d.Name), "/")
			if d.Kind == OpMap {
				out = append(out, p+"/")
				walk(store, append(slices.Clone(path), d.Name))
			} else {
				n, err := db.Get(store, append(slices.Clone(path), d.Name))
				if err != nil {
					t.Fatalf("get %s: %v", p, err)
				}
				out = append(out, fmt.Sprintf("%s=%s:%q", p, n.Kind, n.Value))
			}
			return true
		})
		if err != nil {
			t.Fatalf("list %s/%v: %v", store, path, err)
		}
	}
	for _, s := range append(db.Stores(), SettingsStore) {
		if n, err := db.Stat(s, nil); err != nil || n.Kind != OpMap {
			continue
		}
		out = append(out, s+"/")
		walk(s, nil)
	}
	sort.Strings(out)
	return out
}

func conflictDump(db *Database) []string {
	var out []string
	db.Conflicts(func(c Conflict) bool {
		out = append(out, fmt.Sprintf("%s/%s loser=%s winner=%s %s %q resolved=%v", c.Store, strings.Join(c.Path, "/"), c.Loser.Short(), c.Winner.Short(), c.Kind, c.Value, c.Resolved))
		return true
	})
	return out
}

// kvDump is the raw materialised state of a database: path records, history and
// conflicts, byte for byte.
func kvDump(in *Instance, db ID) []byte {
	var buf bytes.Buffer
	for _, p := range []byte{pPath, pHist, pConflict} {
		in.kv.Iterate(key(p, db[:]), false, func(k, v []byte) bool {
			buf.Write(k)
			buf.WriteByte(0xff)
			buf.Write(v)
			buf.WriteByte(0xfe)
			return true
		})
	}
	return buf.Bytes()
}

func allEntries(db *Database) [][]byte {
	var raws [][]byte
	db.Entries(0, func(_ ID, raw []byte) bool { raws = append(raws, bytes.Clone(raw)); return true })
	return raws
}

// TestReplicasConverge: replicas that commit concurrently and exchange random
// subsets of entries in random orders end, once all have everything, with
// byte-identical state and conflict lists, equal to the reference fold.
func TestReplicasConverge(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		const nrep = 3
		var now atomic.Int64
		now.Store(1_700_000_000_000)
		reps := make([]*Instance, nrep)
		dbs := make([]*Database, nrep)
		for i := range reps {
			skew := rapid.Int64Range(-3, 3).Draw(rt, fmt.Sprintf("skew%d", i))
			reps[i] = newInstance(t, nil)
			reps[i].now = func() time.Time { return time.UnixMilli(now.Load() + skew) }
		}
		db0, err := reps[0].CreateDatabase("d", "")
		if err != nil {
			rt.Fatal(err)
		}
		if _, err := db0.Grant(WildcardKey, "everyone", PermWrite); err != nil {
			rt.Fatal(err)
		}
		dbs[0] = db0
		for i := 1; i < nrep; i++ {
			if _, err := reps[i].Apply("r0", allEntries(db0)...); err != nil {
				rt.Fatal(err)
			}
			dbs[i], _ = reps[i].DatabaseByID(db0.ID())
		}
		nameGen := rapid.SampledFrom([]string{"a", "b", "c"})
		steps := rapid.IntRange(1, 30).Draw(rt, "steps")
		for s := 0; s < steps; s++ {
			now.Add(rapid.Int64Range(0, 3).Draw(rt, "tick"))
			r := rapid.IntRange(0, nrep-1).Draw(rt, "replica")
			if rapid.Bool().Draw(rt, "sync") {
				// Deliver a random subset of r's entries to another replica, shuffled.
				to := (r + 1 + rapid.IntRange(0, nrep-2).Draw(rt, "to")) % nrep
				raws := allEntries(dbs[r])
				var sub [][]byte
				for i := range raws {
					if rapid.Bool().Draw(rt, "pick") {
						sub = append(sub, raws[i])
					}
				}
				perm := rapid.Permutation(sub).Draw(rt, "order")
				if res, err := reps[to].Apply("peer", perm...); err != nil || len(res.Rejected) > 0 {
					rt.Fatalf("apply: %v %v", err, res.Rejected)
				}
				continue
			}
			tx := dbs[r].Begin()
			nops := rapid.IntRange(1, 3).Draw(rt, "nops")
			for i := 0; i < nops; i++ {
				st := tx.Store(rapid.SampledFrom([]string{"s", "t"}).Draw(rt, "store"))
				depth := rapid.IntRange(0, 3).Draw(rt, "depth")
				path := make([]string, depth)
				for j := range path {
					path[j] = nameGen.Draw(rt, "name")
				}
				switch kind := rapid.IntRange(0, 3).Draw(rt, "kind"); {
				case kind <= 1 && depth > 0:
					st.SetPath(path, []byte(fmt.Sprintf("v%d.%d", s, i)))
				case kind == 2:
					st.SetMap(path)
				default:
					st.Delete(path)
				}
			}
			if _, err := tx.Commit(Journal); err != nil {
				rt.Fatal(err)
			}
		}
		// Everyone gets everything, in a random order, one entry at a time.
		seen := map[string]bool{}
		var union [][]byte
		for _, d := range dbs {
			for _, raw := range allEntries(d) {
				if !seen[string(raw)] {
					seen[string(raw)] = true
					union = append(union, raw)
				}
			}
		}
		for i, in := range reps {
			for _, raw := range rapid.Permutation(union).Draw(rt, fmt.Sprintf("final%d", i)) {
				if res, err := in.Apply("peer", raw); err != nil || len(res.Rejected) > 0 {
					rt.Fatalf("apply: %v %v", err, res.Rejected)
				}
			}
			if m := in.Missing(); len(m) > 0 {
				rt.Fatalf("replica %d still misses %d parents", i, len(m))
			}
		}
		want := refState(t, union)
		for i, d := range dbs {
			if got := engineDump(t, d); !slices.Equal(got, want) {
				rt.Fatalf("replica %d state differs from the reference fold:\n got %v\nwant %v", i, got, want)
			}
			if i == 0 {
				continue
			}
			if !slices.Equal(d.Tips(), dbs[0].Tips()) {
				rt.Fatalf("replica %d tips differ", i)
			}
			if got, want := conflictDump(d), conflictDump(dbs[0]); !slices.Equal(got, want) {
				rt.Fatalf("replica %d conflicts differ:\n got %v\nwant %v", i, got, want)
			}
			if !bytes.Equal(kvDump(reps[i], d.ID()), kvDump(reps[0], dbs[0].ID())) {
				rt.Fatalf("replica %d materialised state is not byte-identical", i)
			}
		}
	})
}
