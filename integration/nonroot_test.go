package integration

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestNonRootMount mounts as an unprivileged user, which goes through fusermount3
// rather than mounting directly, writes and reads through the mount as that user,
// and unmounts with SIGTERM. The test runs as root so it can make the user.
func TestNonRootMount(t *testing.T) {
	requireFUSE(t)
	requireTools(t, "fusermount3", "setpriv", "useradd")
	if os.Geteuid() != 0 {
		unavailable(t, "the test must run as root to create an unprivileged user")
	}
	const name = "eidefs-test"
	u, err := user.Lookup(name)
	if err != nil {
		if out, err := exec.Command("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
			t.Fatalf("useradd: %v: %s", err, out)
		}
		if u, err = user.Lookup(name); err != nil {
			t.Fatal(err)
		}
	}
	// fusermount3 opens /dev/fuse as the user when setuid does not apply (as in
	// containers); distributions ship it 0666 for that reason.
	if fi, err := os.Stat("/dev/fuse"); err == nil && fi.Mode().Perm()&0o006 != 0o006 {
		old := fi.Mode().Perm()
		if err := os.Chmod("/dev/fuse", 0o666); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod("/dev/fuse", old) })
	}

	base, err := os.MkdirTemp("", "eidefs-nonroot")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	bin := filepath.Join(base, "eidefs")
	copyFile(t, eidefsBin, bin, 0o755)
	data, mnt := filepath.Join(base, "data"), filepath.Join(base, "mnt")
	os.Mkdir(mnt, 0o755)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	for _, p := range []string{base, mnt} {
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	asUser := func(args ...string) *exec.Cmd {
		return exec.Command("setpriv", append([]string{"--reuid=" + u.Uid, "--regid=" + u.Gid, "--clear-groups", "--"}, args...)...)
	}

	cmd := asUser(bin, "--data", data, "mount", mnt)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), "HOME="+base)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if mounted(mnt) {
			exec.Command("fusermount3", "-uz", mnt).Run()
			syscall.Unmount(mnt, syscall.MNT_DETACH)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for !mounted(mnt) {
		if time.Now().After(deadline) {
			t.Fatalf("not mounted after 10 s:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	line := mountLine(mnt)
	if !strings.Contains(line, fmt.Sprintf("user_id=%d", uid)) {
		t.Errorf("/proc/mounts: %q, want a mount owned by uid %d (through fusermount3)", line, uid)
	}

	script := fmt.Sprintf(`set -e
mkdir %[1]s/notes %[1]s/notes/todo
echo "2 litres" > %[1]s/notes/todo/milk
cat %[1]s/notes/todo/milk
stat -c '%%u %%a' %[1]s/notes/todo/milk`, mnt)
	sh := asUser("/bin/sh", "-c", script)
	got, err := sh.CombinedOutput()
	if err != nil {
		t.Fatalf("as %s: %v\n%s\nmount output:\n%s", name, err, got, out.String())
	}
	if want := fmt.Sprintf("2 litres\n%d 644\n", uid); string(got) != want {
		t.Errorf("as %s: %q, want %q", name, got, want)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("mount exited with %v:\n%s", err, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("mount did not exit after SIGTERM:\n%s", out.String())
	}
	if mounted(mnt) {
		t.Errorf("%s still mounted after SIGTERM", mnt)
	}
	// The data is there for the CLI afterwards.
	get := asUser(bin, "--data", data, "get", "notes", "todo", "milk")
	if b, err := get.Output(); err != nil || string(b) != "2 litres\n" {
		t.Errorf("eidefs get as %s after unmount: %q %v", name, b, err)
	}
}

func mountLine(dir string) string {
	b, _ := os.ReadFile("/proc/mounts")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == dir {
			return l
		}
	}
	return ""
}

func mounted(dir string) bool { return mountLine(dir) != "" }

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}
