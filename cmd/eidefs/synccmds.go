package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/eidefs/eidefs/netsync"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

// startSync starts the node's sync engine. Passive nodes (for one CLI command) do
// not push or sync in the background.
func (n *node) startSync(listen []string, passive bool, log *slog.Logger) error {
	var peers []netsync.PeerConfig
	for _, p := range n.cfg.Peers {
		k, _ := engine.ParsePublicKey(p.Key) // checked by loadConfig
		peers = append(peers, netsync.PeerConfig{Key: k, Name: p.Name, Addrs: p.Addresses})
	}
	s, err := netsync.Start(netsync.Options{
		Instance: n.inst, KV: n.kv, Name: n.cfg.Name, Listen: listen, Advertise: n.cfg.Advertise, Peers: peers,
		Periodic: n.cfg.Sync.Periodic.Duration, Retry: n.cfg.Sync.Retry.Duration,
		RetryCap: n.cfg.Sync.RetryCap.Duration, Health: n.cfg.Sync.Health.Duration,
		Log: log, Passive: passive,
	})
	if err != nil {
		return fmt.Errorf("starting sync: %w", err)
	}
	n.sync = s
	return nil
}

// withSync runs fn with a sync engine: the running node's, or a passive one for
// this command (listening on the configured addresses only when listen is set).
func withSync(g *globals, listen bool, fn func(n *node) error) error {
	return withNode(g, func(n *node) error {
		if n.sync == nil {
			var addrs []string
			if listen {
				addrs = n.cfg.Listen
			}
			if err := n.startSync(addrs, true, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))); err != nil {
				return err
			}
			defer func() { n.sync.Close(); n.sync = nil }()
		}
		return fn(n)
	})
}

func newServeCmd(g *globals) *cobra.Command {
	var listen []string
	var metricsAddr string
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run this node's sync without a mount (foreground)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Caught before the control socket shows that the node is up: a signal
			// sent as soon as it is must stop the node cleanly, not kill it.
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
			n, log, stop, err := startDaemon(g, listen, metricsAddr)
			if err != nil {
				return err
			}
			defer stop()
			defer watchConfig(n, log, nil)()
			log.Info("serving", "listen", strings.Join(n.sync.Addrs(), ","), "key", n.inst.Identity().Public().String())
			s := <-sigs
			log.Info("stopping", "signal", s.String())
			return nil
		},
	}
	c.Flags().StringSliceVar(&listen, "listen", nil, "address to listen on for peers, e.g. 0.0.0.0:7400 (repeatable; default: listen in eidefs.toml)")
	c.Flags().StringVar(&metricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics (default: metrics_addr in eidefs.toml)")
	return c
}

func newShareCmd(g *globals) *cobra.Command {
	var write, admin bool
	var key, keyName string
	c := &cobra.Command{
		Use:   "share DB",
		Short: "Print a ticket another machine joins with (one-time invite); --key grants a known key instead",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			perm := engine.PermRead
			if write {
				perm = engine.PermWrite
			}
			if admin {
				perm = engine.PermAdmin
			}
			return withSync(g, true, func(n *node) error {
				d, err := n.inst.Database(args[0])
				if err != nil {
					return err
				}
				if key != "" {
					if _, err := d.Grant(key, keyName, perm); err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "granted %s %s on %s\n", key, perm, d.Name())
					return nil
				}
				t, err := n.sync.Share(d, perm)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), t.String())
				return nil
			})
		},
	}
	c.Flags().BoolVar(&write, "write", false, "the joiner may write (default: read only)")
	c.Flags().BoolVar(&admin, "admin", false, "the joiner may also change the database's settings")
	c.Flags().StringVar(&key, "key", "", "grant this device key directly instead of printing a ticket")
	c.Flags().StringVar(&keyName, "name", "", "display name for --key")
	return c
}

func newJoinCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "join TICKET",
		Short: "Clone the database a ticket describes and keep it in sync",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t, err := netsync.ParseTicket(args[0])
			if err != nil {
				return usageError{err}
			}
			return withSync(g, false, func(n *node) error {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
				defer cancel()
				// A progress bar when a person watches (a join run by a running mount
				// through the control socket has no terminal).
				var progress func(done, total int)
				if g.node == nil && isTerminal(os.Stdout) && isTerminal(os.Stderr) {
					var bar *progressbar.ProgressBar
					progress = func(done, total int) {
						if bar == nil {
							bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(os.Stderr),
								progressbar.OptionSetDescription("cloning "+t.Name), progressbar.OptionShowCount(),
								progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
						}
						bar.Set(done)
					}
				}
				d, err := n.sync.Join(ctx, t, progress)
				if err != nil {
					return fmt.Errorf("joining %s: %w", t.Name, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "joined %s as %s (%d entries)\n", t.DB, d.Name(), d.Count())
				return nil
			})
		},
	}
}

func newPeerCmd(g *globals) *cobra.Command {
	peer := &cobra.Command{Use: "peer", Short: "Add, list and remove peers"}
	var name string
	add := &cobra.Command{
		Use:   "add KEY@ADDRESS",
		Short: "Add a peer by its device key and address",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ks, addr, ok := strings.Cut(args[0], "@")
			if !ok {
				return usageError{fmt.Errorf("want KEY@ADDRESS, got %q", args[0])}
			}
			k, err := engine.ParsePublicKey(ks)
			if err != nil {
				return usageError{err}
			}
			return withSync(g, false, func(n *node) error {
				if err := n.sync.AddPeer(k, name, []string{addr}); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "added peer %s at %s\n", k, addr)
				return nil
			})
		},
	}
	add.Flags().StringVar(&name, "name", "", "display name")
	list := &cobra.Command{
		Use:   "list",
		Short: "List peers: name, key, addresses, status, last sync",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withSync(g, false, func(n *node) error {
				peers := n.sync.State().Peers()
				if g.json {
					return printJSON(cmd.OutOrStdout(), peers)
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAME\tKEY\tADDRESSES\tSTATUS\tLAST SYNC\tLAST ERROR")
				for _, p := range peers {
					last := "never"
					if !p.LastSync.IsZero() {
						last = p.LastSync.UTC().Format(time.RFC3339)
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.Key, strings.Join(p.Addrs, ","), p.Status, last, p.LastError)
				}
				return w.Flush()
			})
		},
	}
	list.Flags().BoolVar(&g.json, "json", false, "print JSON")
	rm := &cobra.Command{
		Use:   "rm KEY|NAME",
		Short: "Forget a peer",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withSync(g, false, func(n *node) error { return n.sync.RemovePeer(args[0]) })
		},
	}
	peer.AddCommand(add, list, rm)
	return peer
}

func newSyncCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "sync [PEER]",
		Short: "Sync now with every peer (or one), reporting each database",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withSync(g, false, func(n *node) error {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
				defer cancel()
				if g.node == nil && isTerminal(os.Stdout) && isTerminal(os.Stderr) {
					// A bar for each sync that brings many entries.
					var bar *progressbar.ProgressBar
					n.sync.OnProgress(func(_ engine.PublicKey, db engine.ID, done, total int) {
						if total < 1000 {
							return
						}
						if bar == nil {
							name := db.Short()
							if d, ok := n.inst.DatabaseByID(db); ok {
								name = d.Name()
							}
							bar = progressbar.NewOptions(total, progressbar.OptionSetWriter(os.Stderr),
								progressbar.OptionSetDescription("syncing "+name), progressbar.OptionShowCount(),
								progressbar.OptionThrottle(100*time.Millisecond), progressbar.OptionClearOnFinish())
						}
						bar.Set(done)
						if done >= total {
							bar = nil
						}
					})
				}
				var results []netsync.Result
				if len(args) == 1 {
					p, err := n.sync.FindPeer(args[0])
					if err != nil {
						return err
					}
					results = n.sync.SyncPeer(ctx, p.Key)
				} else {
					results = n.sync.SyncAll(ctx)
				}
				if len(results) == 0 {
					fmt.Fprintln(cmd.OutOrStdout(), "no peers (add one with eidefs peer add)")
					return nil
				}
				failed := 0
				type js struct {
					Peer     string  `json:"peer"`
					DB       string  `json:"db"`
					Received int     `json:"received"`
					Sent     int     `json:"sent"`
					Seconds  float64 `json:"seconds"`
					Error    string  `json:"error,omitempty"`
				}
				var out []js
				for _, r := range results {
					j := js{Peer: n.peerName(r.Peer), DB: n.dbName(r.DB), Received: r.Received, Sent: r.Sent, Seconds: r.Duration.Seconds()}
					if r.Err != nil {
						failed++
						j.Error = r.Err.Error()
					}
					out = append(out, j)
				}
				if g.json {
					printJSON(cmd.OutOrStdout(), out)
				} else {
					for _, j := range out {
						if j.Error != "" {
							fmt.Fprintf(cmd.OutOrStdout(), "%s %s: failed: %s\n", j.Peer, j.DB, j.Error)
						} else {
							fmt.Fprintf(cmd.OutOrStdout(), "%s %s: ok, received %d, sent %d, %.3fs\n", j.Peer, j.DB, j.Received, j.Sent, j.Seconds)
						}
					}
				}
				if failed > 0 {
					return fmt.Errorf("%d of %d syncs failed", failed, len(results))
				}
				return nil
			})
		},
	}
	c.Flags().BoolVar(&g.json, "json", false, "print JSON")
	return c
}

func newDiscoverCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "discover ADDRESS",
		Short: "Ask the node at ADDRESS who it is and which databases it shares with you",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withSync(g, false, func(n *node) error {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				key, name, offers, err := n.sync.Discover(ctx, args[0])
				if err != nil {
					return err
				}
				if g.json {
					b, _ := json.Marshal(map[string]any{"key": key.String(), "name": name, "databases": offers})
					fmt.Fprintln(cmd.OutOrStdout(), string(b))
					return nil
				}
				fmt.Fprintf(cmd.OutOrStdout(), "key: %s\nname: %s\n", key, name)
				for _, o := range offers {
					fmt.Fprintf(cmd.OutOrStdout(), "database: %s %s entries=%d permission=%s\n", o.Name, o.ID, o.Entries, o.Perm)
				}
				return nil
			})
		},
	}
	c.Flags().BoolVar(&g.json, "json", false, "print JSON")
	return c
}

// peerName is a peer's name, or a short form of its key if it is not known.
func (n *node) peerName(k engine.PublicKey) string {
	if p, ok := n.sync.State().Peer(k); ok {
		return p.Name
	}
	return k.Short()
}

// dbName is this node's name for a database, or a short form of its id.
func (n *node) dbName(id engine.ID) string {
	if d, ok := n.inst.DatabaseByID(id); ok {
		return d.Name()
	}
	return id.Short()
}
