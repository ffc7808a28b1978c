package fs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Mappings of files on a mount served by the test's own process are made and
// read in a helper process (this test binary, run again): a page fault on such a
// mapping holds the process's mmap lock while it waits for the mount to answer
// a READ, and the mount's goroutines need that lock to grow the heap, so the
// fault and the mount wait for each other (the fs tests hung so, about one run
// in three, once writers bypassed the page cache and mappings found no pages
// cached). Programs that map files on a mount of another process never meet
// this.

const (
	mapEnvPath = "EIDEFS_TEST_MAP"      // the file the helper maps
	mapEnvSize = "EIDEFS_TEST_MAP_SIZE" // how many bytes
	mapEnvSpin = "EIDEFS_TEST_MAP_SPIN" // "1": read the mapping over and over meanwhile
)

func init() {
	if path := os.Getenv(mapEnvPath); path != "" {
		if err := mapHelper(path); err != nil {
			fmt.Fprintln(os.Stderr, "map helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
}

// mapHelper maps path and writes the mapping's bytes to stdout for every line
// read from stdin, until stdin ends.
func mapHelper(path string) error {
	size, err := strconv.Atoi(os.Getenv(mapEnvSize))
	if err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	m, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	f.Close()
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	if os.Getenv(mapEnvSpin) == "1" {
		go func() {
			sum := 0
			for {
				for i := 0; i < len(m); i += 512 {
					sum += int(m[i])
				}
			}
		}()
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if _, err := os.Stdout.Write(m); errors.Is(err, syscall.EFAULT) {
			// The file is shorter than the mapping now (truncated meanwhile):
			// touching the mapping there would be SIGBUS, as on a disk.
			os.Exit(mapShortExit)
		} else if err != nil {
			return err
		}
	}
	return in.Err()
}

// mapShortExit is the helper's exit status for a file shorter than its mapping.
const mapShortExit = 3

// errShortMapping: the file was shorter than the mapping when it was read.
var errShortMapping = errors.New("the file is shorter than its mapping")

// mapCommand runs this test binary as the helper mapping size bytes of path.
func mapCommand(path string, size int) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), mapEnvPath+"="+path, mapEnvSize+"="+strconv.Itoa(size))
	return cmd
}

// mapping is a file on the mount mapped (MAP_SHARED, read-only) by a helper
// process.
type mapping struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  io.Reader
	size int
}

// mapFile maps the first size bytes of path in a helper process, which reads
// them over and over meanwhile if spin is set. The test fails if it cannot; the
// helper stops when the test ends.
func mapFile(t *testing.T, path string, size int, spin bool) *mapping {
	t.Helper()
	cmd := mapCommand(path, size)
	if spin {
		cmd.Env = append(cmd.Env, mapEnvSpin+"=1")
	}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	mp := &mapping{cmd: cmd, in: in, out: out, size: size}
	t.Cleanup(mp.close)
	return mp
}

// bytes returns what the mapping shows now.
func (mp *mapping) bytes(t *testing.T) []byte {
	t.Helper()
	if _, err := io.WriteString(mp.in, "dump\n"); err != nil {
		t.Fatalf("asking the mapping helper: %v", err)
	}
	b := make([]byte, mp.size)
	if _, err := io.ReadFull(mp.out, b); err != nil {
		t.Fatalf("reading from the mapping helper (did it map the file?): %v", err)
	}
	return b
}

// await fails the test unless the mapping shows want within a second of what
// (the writes that made it so).
func (mp *mapping) await(t *testing.T, want []byte, what string) {
	t.Helper()
	for try := 0; ; try++ {
		got := mp.bytes(t)
		if bytes.Equal(got, want) {
			return
		}
		if try == 100 {
			t.Fatalf("the mapping differs at byte %d a second after %s", firstDifference(got, want), what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// close unmaps the file: the helper exits.
func (mp *mapping) close() {
	if mp.cmd.Process == nil || mp.cmd.ProcessState != nil {
		return
	}
	mp.in.Close()
	if err := mp.cmd.Wait(); err != nil {
		mp.cmd.Process.Kill()
	}
}

// mapOnce returns the first size bytes of path as a mapping of it shows them,
// mapped in a helper process (see mapFile).
func mapOnce(path string, size int) ([]byte, error) {
	cmd := mapCommand(path, size)
	cmd.Stdin = strings.NewReader("dump\n")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == mapShortExit {
		return nil, errShortMapping
	}
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, stderr.String())
	}
	if len(out) != size {
		return nil, fmt.Errorf("the mapping helper wrote %d bytes, want %d", len(out), size)
	}
	return out, nil
}
