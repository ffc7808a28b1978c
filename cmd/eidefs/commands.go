package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/eidefs/eidefs/engine"
	"github.com/spf13/cobra"
)

// withNode opens the data directory for the duration of fn.
func withNode(g *globals, fn func(n *node) error) error {
	if g.node != nil {
		return fn(g.node)
	}
	n, err := openNode(g)
	if err != nil {
		return err
	}
	defer n.Close()
	return fn(n)
}

// withDatabase runs fn with the database a command names.
func withDatabase(g *globals, name string, fn func(n *node, d *engine.Database) error) error {
	return withNode(g, func(n *node) error {
		d, err := n.inst.Database(name)
		if err != nil {
			return err
		}
		return fn(n, d)
	})
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newInitCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "init",
		Short: "Create the data directory, device key and eidefs.toml",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir := g.dataDir()
			created, err := initDataDir(dir)
			if err != nil {
				return err
			}
			id, err := engine.LoadIdentity(filepath.Join(dir, keyFile))
			if err != nil {
				return err
			}
			if created {
				fmt.Fprintf(cmd.OutOrStdout(), "initialized %s\n", dir)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "already initialized: %s\n", dir)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "device key: %s\n", id.Public())
			return nil
		},
	}
}

func newDBCmd(g *globals) *cobra.Command {
	db := &cobra.Command{Use: "db", Short: "Create, list and grant access to databases"}
	var desc string
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a database; prints its id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withNode(g, func(n *node) error {
				d, err := n.inst.CreateDatabase(args[0], desc)
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), d.ID())
				return nil
			})
		},
	}
	create.Flags().StringVar(&desc, "description", "", "a description stored in the database's settings")
	list := &cobra.Command{
		Use:   "list",
		Short: "List databases: name, id, entries, tips",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withNode(g, func(n *node) error {
				infos := n.inst.Databases()
				if g.json {
					type js struct {
						Name    string   `json:"name"`
						ID      string   `json:"id"`
						Entries uint64   `json:"entries"`
						Tips    []string `json:"tips"`
						Stores  []string `json:"stores"`
					}
					out := []js{}
					for _, i := range infos {
						out = append(out, js{i.Name, i.ID.String(), i.Entries, idStrings(i.Tips, false), orEmpty(i.Stores)})
					}
					return printJSON(cmd.OutOrStdout(), out)
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "NAME\tID\tENTRIES\tTIPS")
				for _, i := range infos {
					fmt.Fprintf(w, "%s\t%s\t%d\t%s\n", i.Name, i.ID, i.Entries, strings.Join(idStrings(i.Tips, true), ","))
				}
				return w.Flush()
			})
		},
	}
	list.Flags().BoolVar(&g.json, "json", false, "print JSON")
	var grantName string
	grant := &cobra.Command{
		Use:   "grant DB KEY read|write|admin",
		Short: "Allow a device key (or * for everyone) to read, write or administer a database",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := engine.ParsePermission(args[2])
			if err != nil {
				return usageError{err}
			}
			return withDatabase(g, args[0], func(n *node, d *engine.Database) error {
				id, err := d.Grant(args[1], grantName, p)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "granted %s %s on %s (entry %s)\n", args[1], p, d.Name(), id.Short())
				return nil
			})
		},
	}
	grant.Flags().StringVar(&grantName, "name", "", "a display name for the key")
	db.AddCommand(create, list, grant, newShareCmd(g), newJoinCmd(g))
	return db
}

func idStrings(ids []engine.ID, short bool) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		if short {
			out[i] = id.Short()
		} else {
			out[i] = id.String()
		}
	}
	return out
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// target resolves "DB STORE PATH..." arguments.
func target(n *node, args []string) (*engine.Database, string, []string, error) {
	d, err := n.inst.Database(args[0])
	if err != nil {
		return nil, "", nil, err
	}
	if len(args) < 2 {
		return d, "", nil, nil
	}
	return d, args[1], args[2:], nil
}

func newSetCmd(g *globals) *cobra.Command {
	var sync bool
	c := &cobra.Command{
		Use:   "set DB STORE KEY... VALUE",
		Short: "Set a key (nested keys as several names); VALUE - reads stdin",
		Args:  cobra.MinimumNArgs(4),
		RunE: func(cmd *cobra.Command, args []string) error {
			value := []byte(args[len(args)-1])
			if args[len(args)-1] == "-" {
				b, err := io.ReadAll(cmd.InOrStdin())
				if err != nil {
					return err
				}
				value = b
			}
			return withNode(g, func(n *node) error {
				d, store, path, err := target(n, args[:len(args)-1])
				if err != nil {
					return err
				}
				tx := d.Begin()
				tx.Store(store).SetPath(path, value)
				dur := engine.Journal
				if sync {
					dur = engine.Sync
				}
				_, err = tx.Commit(dur)
				return err
			})
		},
	}
	c.Flags().BoolVar(&sync, "sync", false, "fsync before returning")
	return c
}

func newGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get DB STORE KEY...",
		Short: "Print a key's value",
		Args:  cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withNode(g, func(n *node) error {
				d, store, path, err := target(n, args)
				if err != nil {
					return err
				}
				node, err := d.Get(store, path)
				if err != nil {
					return fmt.Errorf("%s: %w", strings.Join(args, " "), err)
				}
				if node.Kind == engine.OpMap {
					return fmt.Errorf("%s: %w (use eidefs ls)", strings.Join(args, " "), engine.ErrIsDir)
				}
				out := node.Value
				if len(out) > 0 && out[len(out)-1] != '\n' && isTerminal(os.Stdout) {
					out = append(out, '\n')
				}
				_, err = cmd.OutOrStdout().Write(out)
				return err
			})
		},
	}
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func newLsCmd(g *globals) *cobra.Command {
	var long bool
	c := &cobra.Command{
		Use:   "ls [DB [STORE [KEY...]]]",
		Short: "List databases, stores or keys; nested maps end in /",
		RunE: func(cmd *cobra.Command, args []string) error {
			return withNode(g, func(n *node) error {
				out := cmd.OutOrStdout()
				if len(args) == 0 {
					for _, i := range n.inst.Databases() {
						fmt.Fprintln(out, i.Name+"/")
					}
					return nil
				}
				d, store, path, err := target(n, args)
				if err != nil {
					return err
				}
				if store == "" {
					for _, s := range d.Stores() {
						fmt.Fprintln(out, s+"/")
					}
					return nil
				}
				type js struct {
					Name   string `json:"name"`
					Kind   string `json:"kind"`
					Size   int64  `json:"size"`
					Time   string `json:"time"`
					Author string `json:"author"`
					Entry  string `json:"entry"`
				}
				all := []js{}
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				err = d.List(store, path, func(e engine.DirEntry) bool {
					name := e.Name
					if e.Kind == engine.OpMap {
						name += "/"
					}
					if g.json {
						all = append(all, js{e.Name, e.Kind.String(), e.Size, time.UnixMilli(e.Time).UTC().Format(time.RFC3339Nano), e.Author.String(), e.Entry.String()})
					} else if long {
						fmt.Fprintf(w, "%d\t%s\t%s\t%s\n", e.Size, time.UnixMilli(e.Time).Format("2006-01-02 15:04:05"), e.Author.Short(), name)
					} else {
						fmt.Fprintln(w, name)
					}
					return true
				})
				if err != nil {
					return fmt.Errorf("%s: %w", strings.Join(args, " "), err)
				}
				if g.json {
					return printJSON(out, all)
				}
				return w.Flush()
			})
		},
	}
	c.Flags().BoolVarP(&long, "long", "l", false, "show size, time and author")
	c.Flags().BoolVar(&g.json, "json", false, "print JSON (for keys)")
	return c
}

func newRmCmd(g *globals) *cobra.Command {
	var recursive bool
	c := &cobra.Command{
		Use:   "rm DB STORE [KEY...]",
		Short: "Delete a key (-r for a nested map or a whole store)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withNode(g, func(n *node) error {
				d, store, path, err := target(n, args)
				if err != nil {
					return err
				}
				node, err := d.Stat(store, path)
				if err != nil {
					return fmt.Errorf("%s: %w", strings.Join(args, " "), err)
				}
				if node.Kind == engine.OpMap && !recursive {
					return fmt.Errorf("%s: %w (use rm -r)", strings.Join(args, " "), engine.ErrIsDir)
				}
				tx := d.Begin()
				tx.Store(store).Delete(path)
				_, err = tx.Commit(engine.Journal)
				return err
			})
		},
	}
	c.Flags().BoolVarP(&recursive, "recursive", "r", false, "delete a nested map or store with everything in it")
	return c
}

func newLogCmd(g *globals) *cobra.Command {
	var limit int
	c := &cobra.Command{
		Use:   "log DB",
		Short: "One line per entry, newest first: id, height, time, author, stores",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withDatabase(g, args[0], func(n *node, d *engine.Database) error {
				out := cmd.OutOrStdout()
				type js struct {
					ID      string   `json:"id"`
					Height  uint64   `json:"height"`
					Time    string   `json:"time"`
					Author  string   `json:"author"`
					Stores  []string `json:"stores"`
					Parents []string `json:"parents"`
				}
				var all []js
				count := 0
				err := d.Log(func(e engine.LogEntry) bool {
					t := time.UnixMilli(e.Time).UTC().Format(time.RFC3339Nano)
					if g.json {
						all = append(all, js{e.ID.String(), e.Height, t, e.Author.String(), orEmpty(e.Stores), idStrings(e.Parents, false)})
					} else {
						fmt.Fprintf(out, "%s %d %s %s %s\n", e.ID.Short(), e.Height, t, e.Author.Short(), strings.Join(e.Stores, ","))
					}
					count++
					return limit <= 0 || count < limit
				})
				if err == nil && g.json {
					err = printJSON(out, all)
				}
				return err
			})
		},
	}
	c.Flags().IntVarP(&limit, "max-count", "n", 0, "show at most this many entries")
	c.Flags().BoolVar(&g.json, "json", false, "print JSON")
	return c
}

func newConflictsCmd(g *globals) *cobra.Command {
	var all bool
	c := &cobra.Command{
		Use:   "conflicts DB",
		Short: "List writes that lost to concurrent writes of the same key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withDatabase(g, args[0], func(n *node, d *engine.Database) error {
				out := cmd.OutOrStdout()
				type js struct {
					Key      string `json:"key"`
					Loser    string `json:"loser"`
					Author   string `json:"author"`
					Time     string `json:"time"`
					Op       string `json:"op"`
					Value    string `json:"value"`
					Winner   string `json:"winner"`
					Resolved bool   `json:"resolved"`
				}
				if g.json {
					list := []js{}
					err := d.Conflicts(func(c engine.Conflict) bool {
						if !c.Resolved || all {
							list = append(list, js{c.Store + "/" + strings.Join(c.Path, "/"), c.Loser.String(), c.Author.String(),
								time.UnixMilli(c.Time).UTC().Format(time.RFC3339Nano), c.Kind.String(), string(c.Value), c.Winner.String(), c.Resolved})
						}
						return true
					})
					if err != nil {
						return err
					}
					return printJSON(out, list)
				}
				return d.Conflicts(func(c engine.Conflict) bool {
					if c.Resolved && !all {
						return true
					}
					v := fmt.Sprintf("%q", c.Value)
					if c.Kind == engine.OpDelete {
						v = "(deleted)"
					}
					fmt.Fprintf(out, "%s/%s lost=%s by %s at %s value=%s\n", c.Store, strings.Join(c.Path, "/"), c.Loser.Short(), c.Author.Short(),
						time.UnixMilli(c.Time).UTC().Format(time.RFC3339), v)
					return true
				})
			})
		},
	}
	c.Flags().BoolVarP(&all, "all", "a", false, "include conflicts already resolved by a later write")
	c.Flags().BoolVar(&g.json, "json", false, "print JSON")
	return c
}

func newStatusCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "status",
		Short: "Show this node's key, data directory and databases",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withNode(g, func(n *node) error {
				out := cmd.OutOrStdout()
				if g.json {
					return printJSON(out, map[string]any{"key": n.inst.Identity().Public().String(), "name": n.cfg.Name, "data": n.dir,
						"databases": len(n.inst.Databases()), "running": n.sync != nil})
				}
				fmt.Fprintf(out, "key: %s\nname: %s\ndata: %s\ndatabases: %d\n", n.inst.Identity().Public(), n.cfg.Name, n.dir, len(n.inst.Databases()))
				return nil
			})
		},
	}
	c.Flags().BoolVar(&g.json, "json", false, "print JSON")
	return c
}
