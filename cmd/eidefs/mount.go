package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/eidefs/eidefs/fs"
	"github.com/spf13/cobra"
)

func newMountCmd(g *globals) *cobra.Command {
	var debug, background bool
	var listen []string
	var metricsAddr string
	c := &cobra.Command{
		Use:   "mount DIR",
		Short: "Mount the databases at DIR (runs in the foreground; Ctrl-C unmounts)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			if err := checkMountPoint(dir); err != nil {
				return err
			}
			if background && os.Getenv(backgroundChild) == "" {
				return startInBackground(cmd, g, dir)
			}
			// Signals are caught before anything shows that the node is up (the
			// control socket, the mount): one sent as soon as it is must unmount
			// cleanly, not kill the process and leave a dead mount behind.
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
			// The control socket is up before the mount appears, so a script that waits
			// for the mount can use the CLI at once.
			n, log, stop, err := startDaemon(g, listen, metricsAddr)
			if err != nil {
				return err
			}
			defer stop()
			maxValue, _ := parseSize(n.cfg.MaxValue)
			fsys, err := fs.Mount(dir, fs.Options{
				Instance:      n.inst,
				MaxValue:      maxValue,
				LocalOnly:     n.cfg.LocalOnly,
				NoPassthrough: !n.cfg.Passthrough,
				PassWrites:    n.cfg.PassthroughWrites,
				EntryTimeout:  n.cfg.Cache.Entry.Duration,
				AttrTimeout:   n.cfg.Cache.Attr.Duration,
				StatfsDir:     n.dir,
				Debug:         debug,
				Sync:          syncViews{n: n, started: time.Now()},
				Observe:       n.observe,
			})
			if err != nil {
				return fmt.Errorf("mounting %s: %w", dir, err)
			}
			stopWatch := watchConfig(n, log, fsys)
			defer stopWatch()
			log.Info("mounted", "dir", dir, "data", n.dir, "key", n.inst.Identity().Public().String(), "listen", strings.Join(n.sync.Addrs(), ","), "passthrough", fsys.Passthrough(), "passthrough_writes", fsys.PassWrites())

			// `eidefs umount DIR`, run through the control socket, ends the mount as
			// a signal does.
			n.mu.Lock()
			n.mountDir = dir
			n.unmount = func() {
				select {
				case sigs <- syscall.SIGTERM:
				default:
				}
			}
			n.mu.Unlock()
			unmounted := make(chan struct{})
			go func() { fsys.Wait(); close(unmounted) }()
			select {
			case s := <-sigs:
				log.Info("unmounting", "signal", s.String())
				writeHeapProfile()
				if err := fsys.Unmount(); err != nil {
					// Busy (a shell cd'ed inside, say): detach now; the kernel finishes
					// the unmount when the last user goes.
					log.Warn("mount point busy; detaching it", "err", err)
					syscall.Unmount(dir, syscall.MNT_DETACH)
				}
			case <-unmounted:
				fsys.FlushAll()
				log.Info("unmounted from outside", "dir", dir)
			}
			return nil
		},
	}
	c.Flags().BoolVar(&debug, "debug", false, "log every FUSE request")
	c.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics (default: metrics_addr in eidefs.toml)")
	c.Flags().BoolVar(&background, "background", false, "detach, and return once the mount is ready (or has failed, with the reason)")
	c.Flags().StringSliceVar(&listen, "listen", nil, "address to listen on for peers, e.g. 0.0.0.0:7400 (repeatable; default: listen in eidefs.toml)")
	return c
}

// checkMountPoint refuses a missing or non-empty directory and cleans up the dead
// mount a killed eidefs leaves behind.
func checkMountPoint(dir string) error {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return errors.New("no /dev/fuse: this system cannot serve FUSE filesystems (load the fuse module, or in a container pass --device /dev/fuse)")
	}
	if syscall.Geteuid() != 0 {
		if _, err := exec.LookPath("fusermount3"); err != nil {
			return errors.New("fusermount3 not found: install the fuse3 package to mount as a normal user")
		}
	}
	fi, err := os.Stat(dir)
	if errors.Is(err, syscall.ENOTCONN) {
		if err := detach(dir); err != nil {
			return fmt.Errorf("mount point %s is a dead mount (its process died) and could not be cleaned up: %w", dir, err)
		}
		fmt.Fprintf(os.Stderr, "eidefs: cleaned up a dead mount at %s left by a process that died\n", dir)
		fi, err = os.Stat(dir)
	}
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("mount point %s does not exist; create it with mkdir", dir)
	} else if err != nil {
		return fmt.Errorf("mount point %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("mount point %s is not a directory", dir)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dir, err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("mount point %s is not empty; use an empty directory", dir)
	}
	return nil
}

func detach(dir string) error {
	if err := syscall.Unmount(dir, syscall.MNT_DETACH); err == nil {
		return nil
	}
	out, err := exec.Command("fusermount3", "-uz", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}

// logLevel is the level of the daemon's logger; a configuration reload sets it.
var logLevel slog.LevelVar

func newLogger(level, format string) *slog.Logger {
	setLogLevel(level)
	opts := &slog.HandlerOptions{Level: &logLevel}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func setLogLevel(level string) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		l = slog.LevelInfo
	}
	logLevel.Set(l)
}

// limitMemory gives a long-running node a soft memory limit (unless GOMEMLIMIT is
// set): a 64 MiB file passes through a few transient copies on its way to disk,
// and without a limit the heap would keep the high-water mark of such a burst.
func limitMemory() {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(384 << 20)
	}
}

// startDaemon opens the data directory and starts what every long-running node
// runs: sync (on listen, else the configured addresses) and the control socket.
// stop undoes it all.
func startDaemon(g *globals, listen []string, metricsAddr string) (n *node, log *slog.Logger, stop func(), err error) {
	if n, err = openNode(g); err != nil {
		return nil, nil, nil, err
	}
	limitMemory()
	log = newLogger(n.cfg.LogLevel, n.cfg.LogFormat)
	slog.SetDefault(log)
	if len(listen) == 0 {
		listen = n.cfg.Listen
	}
	if err := n.startSync(listen, false, log); err != nil {
		n.Close()
		return nil, nil, nil, err
	}
	ctl, err := serveControl(n, log)
	if err != nil {
		n.sync.Close()
		n.Close()
		return nil, nil, nil, err
	}
	if metricsAddr == "" {
		metricsAddr = n.cfg.MetricsAddr
	}
	stopMetrics := func() {}
	if metricsAddr != "" {
		if stopMetrics, err = serveMetrics(n, metricsAddr, log); err != nil {
			ctl.Close()
			n.sync.Close()
			n.Close()
			return nil, nil, nil, err
		}
	}
	return n, log, func() { stopMetrics(); ctl.Close(); n.sync.Close(); n.Close() }, nil
}

func newUmountCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "umount DIR",
		Short: "Unmount a running eidefs mount cleanly (its buffered writes are committed first), or free a hung one",
		Long: `Unmount a running eidefs mount cleanly: its buffered writes are committed first.

A node that does not answer within 5 s (stopped, or stuck after a kill) has its
mount's FUSE connection aborted and the mount detached, as umount -f does; then it
can exit, and a new eidefs mount can start. A dead mount (its process gone) is
cleaned up.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			if n := g.node; n != nil {
				n.mu.Lock()
				stop, mounted := n.unmount, n.mountDir
				n.mu.Unlock()
				if stop == nil || mounted != dir {
					return fmt.Errorf("the eidefs node of this data directory has no mount at %s (it is mounted at %q)", dir, mounted)
				}
				stop()
				fmt.Fprintf(cmd.OutOrStdout(), "unmounting %s\n", dir)
				return nil
			}
			if nodeHung {
				// Its node is there but does not answer: the mount may hang anything
				// that touches it, this command included, so it is not looked at.
				if err := abortFUSE(dir); err != nil {
					return fmt.Errorf("the eidefs node of data directory %s does not answer; freeing %s failed: %w (try umount -f %s)", g.dataDir(), dir, err, dir)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "the eidefs node did not answer in %v: aborted the FUSE connection of %s and detached it\n", umountAnswer, dir)
				return nil
			}
			// No running node for this data directory: only a dead mount can be here.
			if _, err := os.Stat(dir); errors.Is(err, syscall.ENOTCONN) {
				if err := detach(dir); err != nil {
					return fmt.Errorf("cleaning up the dead mount at %s: %w", dir, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "cleaned up the dead mount at %s\n", dir)
				return nil
			}
			return fmt.Errorf("no running eidefs mount for data directory %s (is --data right?)", g.dataDir())
		},
	}
}

// backgroundChild marks the detached process started by mount --background.
const backgroundChild = "EIDEFS_BACKGROUND_CHILD"

// startInBackground runs the same mount as a detached process logging to
// <data>/eidefs.log, and returns once the mount appears, or with the child's
// error if it exits first.
func startInBackground(cmd *cobra.Command, g *globals, dir string) error {
	if _, err := initDataDir(g.dataDir()); err != nil {
		return err
	}
	logPath := filepath.Join(g.dataDir(), "eidefs.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.Command(self, os.Args[1:]...)
	child.Env = append(os.Environ(), backgroundChild+"=1")
	child.Stdout, child.Stderr = logf, logf
	child.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	start, _ := logf.Seek(0, io.SeekEnd)
	if err := child.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	deadline := time.After(30 * time.Second)
	for {
		if isMounted(dir) {
			fmt.Fprintf(cmd.OutOrStdout(), "mounted %s (pid %d, log %s)\n", dir, child.Process.Pid, logPath)
			return nil
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logPath)
			if int(start) <= len(b) {
				b = b[start:]
			}
			return fmt.Errorf("mount failed (%v): %s", err, strings.TrimSpace(string(b)))
		case <-deadline:
			child.Process.Kill()
			return fmt.Errorf("mount did not become ready within 30 s; see %s", logPath)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// isMounted reports whether dir is a mount point (in /proc/mounts).
func isMounted(dir string) bool {
	b, _ := os.ReadFile("/proc/mounts")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == dir {
			return true
		}
	}
	return false
}
