package integration

import (
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUmountHungNode: a node that stops answering (here SIGSTOP; in life, a node
// killed while the kernel held it in an uninterruptible wait) hangs every program
// that touches its mount. `eidefs umount DIR` frees it: after 5 s without an
// answer it aborts the mount's FUSE connection and detaches it, the blocked
// program gets an error, the node exits once it runs again, and a new mount of
// the same data directory has everything that was closed.
func TestUmountHungNode(t *testing.T) {
	m := mount(t, mountOpts{})
	dir := newStore(t, m, "notes", "todo")
	writeFile(t, dir+"/milk", "2 litres\n")

	if err := m.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Whatever happens below, the node runs again at the end.
	t.Cleanup(func() { m.cmd.Process.Signal(syscall.SIGCONT) })
	blocked := exec.Command("ls", dir)
	if err := blocked.Start(); err != nil {
		t.Fatal(err)
	}
	lsDone := make(chan error, 1)
	go func() { lsDone <- blocked.Wait() }()
	select {
	case err := <-lsDone:
		t.Fatalf("ls on the stopped node's mount returned (%v): the node was not hung", err)
	case <-time.After(500 * time.Millisecond):
	}

	start := time.Now()
	out, errOut, code := cli(t, m.Data, "umount", m.Dir)
	took := time.Since(start)
	if code != 0 || !strings.Contains(out, "aborted the FUSE connection") {
		t.Fatalf("eidefs umount of a hung node: exit %d after %v\nstdout: %s\nstderr: %s", code, took, out, errOut)
	}
	t.Logf("eidefs umount freed the hung mount in %v: %s", took.Round(time.Millisecond), strings.TrimSpace(out))
	if mounted(m.Dir) {
		t.Errorf("%s is still mounted after eidefs umount", m.Dir)
	}
	select {
	case err := <-lsDone:
		if err == nil {
			t.Errorf("ls blocked on the hung mount succeeded after the abort; want an error")
		}
	case <-time.After(10 * time.Second):
		t.Errorf("ls blocked on the hung mount still blocked 10 s after the abort")
	}

	m.cmd.Process.Signal(syscall.SIGCONT)
	select {
	case <-m.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("the node did not exit after its mount was aborted and it ran again")
	}
	m.stop.Do(func() { m.unregister() }) // it ended: nothing to stop
	if m.exitErr != nil {
		t.Errorf("the node exited with %v after its mount was aborted; output:\n%s", m.exitErr, m.output)
	}

	again := mount(t, mountOpts{Data: m.Data, Dir: m.Dir})
	if got := readFile(t, again.Path("notes", "todo", "milk")); got != "2 litres\n" {
		t.Errorf("after the abort and a new mount, milk holds %q", got)
	}
}
