// Command eidefs mounts replicated databases as a filesystem and manages them.
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"

	"github.com/spf13/cobra"
)

func main() {
	if code, ok := forward(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(runCLI())
}

// writeHeapProfile writes the heap profile to $EIDEFS_MEMPROFILE, if set: a
// mount does when it is told to unmount, before it lets go of anything.
func writeHeapProfile() {
	path := os.Getenv("EIDEFS_MEMPROFILE")
	if path == "" {
		return
	}
	runtime.GC()
	if f, err := os.Create(path); err == nil {
		pprof.WriteHeapProfile(f)
		f.Close()
	}
}

func runCLI() int {
	if path := os.Getenv("EIDEFS_CPUPROFILE"); path != "" {
		// Profiling: the CPU profile of the whole command (a mount: until it
		// unmounts) is written when it ends.
		if f, err := os.Create(path); err == nil {
			pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "eidefs:", userMessage(err))
		return exitCode(err)
	}
	return 0
}

// globals are the persistent flags.
type globals struct {
	data string
	json bool
	node *node // set when commands run inside a running mount (control socket)
}

func newRootCmd() *cobra.Command { return newRootCmdWith(&globals{}) }

func newRootCmdWith(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "eidefs",
		Short: "Replicated databases as a synced filesystem",
		Long: `eidefs keeps databases of keys and values, signed and replicated between
your machines, and mounts them as a filesystem: each database is a directory,
each store a subdirectory, each key a file.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.data, "data", "", "data directory (default $EIDEFS_DATA, else "+defaultDataDir()+")")
	root.AddCommand(
		newInitCmd(g), newDBCmd(g), newSetCmd(g), newGetCmd(g), newLsCmd(g), newRmCmd(g),
		newLogCmd(g), newConflictsCmd(g), newStatusCmd(g), newMountCmd(g),
		newExportCmd(g), newImportCmd(g), newUmountCmd(g), newConfigCmd(g), newServeCmd(g), newPeerCmd(g), newSyncCmd(g), newDiscoverCmd(g),
	)
	return root
}

// usageError marks errors in how the command was called (exit code 2).
type usageError struct{ error }

func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}
