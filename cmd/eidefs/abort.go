package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A node can stop answering without its mount going away: stopped (SIGSTOP), or
// killed while the kernel held it in an uninterruptible wait (a cache invalidation
// racing a lookup in the same directory), which leaves a zombie that still holds
// /dev/fuse. Everything that touches such a mount hangs. `eidefs umount DIR` then
// aborts the mount's FUSE connection, as `umount -f` does, and detaches it.

// umountAnswer is how long `eidefs umount` waits for the running node to answer
// before it takes the node as hung.
const umountAnswer = 5 * time.Second

// nodeHung is set when forward found a node on the control socket that did not
// answer an umount in time.
var nodeHung bool

const fuseConnections = "/sys/fs/fuse/connections"

// abortFUSE aborts the FUSE connection of the mount at dir (without touching the
// mount, which may hang) and detaches it.
func abortFUSE(dir string) error {
	conn, fstype, err := fuseConnection(dir)
	if err != nil {
		return err
	}
	if fstype != "fuse" && !strings.HasPrefix(fstype, "fuse.") {
		return fmt.Errorf("%s is not a FUSE mount (it is %s)", dir, fstype)
	}
	abort := filepath.Join(fuseConnections, conn, "abort")
	if _, err := os.Stat(abort); errors.Is(err, os.ErrNotExist) {
		// The control filesystem is not mounted everywhere (containers).
		if err := syscall.Mount("fusectl", fuseConnections, "fusectl", 0, ""); err != nil && !errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("mounting fusectl at %s to reach the connection: %w", fuseConnections, err)
		}
	}
	if err := os.WriteFile(abort, []byte("1"), 0); err != nil {
		return fmt.Errorf("aborting FUSE connection %s: %w", conn, err)
	}
	return detach(dir)
}

// fuseConnection finds the mount at dir in /proc/self/mountinfo: its FUSE
// connection's name under /sys/fs/fuse/connections (the device number) and its
// file system type.
func fuseConnection(dir string) (conn, fstype string, err error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	found := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 36 35 0:52 / /mnt rw,nosuid - fuse.eidefs eidefs rw,user_id=0
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, fl := range fields {
			if fl == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) || unescapeMountPath(fields[4]) != dir {
			continue
		}
		// The last mount at dir is the one on top.
		majMin := strings.SplitN(fields[2], ":", 2)
		if len(majMin) != 2 {
			continue
		}
		major, err1 := strconv.ParseUint(majMin[0], 10, 32)
		minor, err2 := strconv.ParseUint(majMin[1], 10, 32)
		if err1 != nil || err2 != nil {
			continue
		}
		conn = strconv.FormatUint(major<<20|minor, 10) // the kernel's dev_t
		fstype, found = fields[sep+1], true
	}
	if err := sc.Err(); err != nil {
		return "", "", err
	}
	if !found {
		return "", "", fmt.Errorf("nothing is mounted at %s", dir)
	}
	return conn, fstype, nil
}

// unescapeMountPath undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
