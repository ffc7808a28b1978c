package netsync

import (
	"sync"
	"testing"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/kv"
)

// fakeClock is a Clock that moves only when told.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{at: c.now.Add(d), ch: ch})
	return ch
}

// Advance moves the clock and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}

// waitingFor blocks until some goroutine waits for the clock to reach at.
func (c *fakeClock) waitingFor(t *testing.T, at time.Time) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for _, w := range c.waiters {
			if w.at.Equal(at) {
				c.mu.Unlock()
				return
			}
		}
		c.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var ats []time.Duration
	for _, w := range c.waiters {
		ats = append(ats, w.at.Sub(c.now))
	}
	t.Fatalf("nobody waits for +%v; waiting for %v", at.Sub(c.now), ats)
}

// TestRetryBackoff drives a failing peer's retries with a fake clock: the first
// retry after a second, then Retry doubling up to RetryCap; a push while waiting
// does not cut the wait short; the peer reappearing does.
func TestRetryBackoff(t *testing.T) {
	store, _ := kv.OpenMemory()
	inst, _ := engine.Open(store, engine.Options{Identity: engine.NewIdentity()})
	t.Cleanup(func() { inst.Close(); store.Close() })
	clock := &fakeClock{now: time.Unix(1_800_000_000, 0)}
	n, err := Start(Options{Instance: inst, KV: store, Name: "a", Periodic: time.Hour, Health: time.Hour,
		Retry: 30 * time.Second, RetryCap: 100 * time.Second, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	attempts := make(chan HistoryRecord, 16)
	n.OnHistory(func(h HistoryRecord) { attempts <- h })

	db, _ := inst.CreateDatabase("notes", "")
	ghost := engine.NewIdentity().Public()
	db.Grant(ghost.String(), "ghost", engine.PermWrite)
	n.AddPeer(ghost, "ghost", nil) // no address: every attempt fails at once

	expectAttempt := func(what string) {
		t.Helper()
		select {
		case h := <-attempts:
			if h.OK {
				t.Fatalf("%s: sync with an unreachable peer succeeded", what)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no attempt", what)
		}
	}
	// The commit of the grant and AddPeer each ask for work; drain what they cause.
	expectAttempt("first attempt")
	start := clock.Now()
	for _, step := range []struct {
		wait time.Duration
		what string
	}{
		{time.Second, "first retry"},
		{30 * time.Second, "second retry"},
		{60 * time.Second, "third retry"},
		{100 * time.Second, "fourth retry (capped)"},
		{100 * time.Second, "fifth retry (capped)"},
	} {
		at := clock.Now().Add(step.wait)
		clock.waitingFor(t, at)
		// A new entry to push does not cut the wait short.
		tx := db.Begin()
		tx.Store("s").Set("k", []byte(step.what))
		tx.Commit(engine.Journal)
		select {
		case h := <-attempts:
			t.Fatalf("%s: attempt %+v before the retry time", step.what, h)
		case <-time.After(20 * time.Millisecond):
		}
		clock.Advance(step.wait - time.Millisecond)
		select {
		case h := <-attempts:
			t.Fatalf("%s: attempt %+v a millisecond early", step.what, h)
		case <-time.After(20 * time.Millisecond):
		}
		clock.Advance(time.Millisecond)
		expectAttempt(step.what)
	}
	// The worker counts the failure just after the attempt is recorded.
	deadline := time.Now().Add(5 * time.Second)
	for {
		p, _ := n.State().Peer(ghost)
		if p.Failures == 6 && p.Status == "inactive" && p.LastError != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer state after 6 failures: %+v", p)
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("6 failed attempts over %v of fake time", clock.Now().Sub(start))

	// The peer reappearing ends the wait at once.
	w := n.worker(ghost)
	clock.waitingFor(t, clock.Now().Add(100*time.Second))
	w.revive()
	expectAttempt("after the peer reappeared")
}
