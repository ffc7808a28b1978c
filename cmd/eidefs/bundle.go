package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/eidefs/eidefs/engine"
	"github.com/spf13/cobra"
)

// A bundle is a database's entries in a file, parents first, to carry changes by
// hand (or to seed a new machine): "EIDEFSB1", then per entry a uvarint length and
// the entry's canonical bytes.
const bundleMagic = "EIDEFSB1"

func newExportCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "export DB",
		Short: "Write all entries of a database to stdout as a bundle",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withDatabase(g, args[0], func(n *node, d *engine.Database) error {
				w := bufio.NewWriter(cmd.OutOrStdout())
				w.WriteString(bundleMagic)
				err := d.Entries(0, func(_ engine.ID, raw []byte) bool {
					w.Write(binary.AppendUvarint(nil, uint64(len(raw))))
					w.Write(raw)
					return true
				})
				if err != nil {
					return err
				}
				return w.Flush()
			})
		},
	}
}

func newImportCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "import FILE|-",
		Short: "Apply the entries of a bundle (made by export); creates the database if new",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r io.Reader = cmd.InOrStdin()
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			raws, err := readBundle(bufio.NewReader(r))
			if err != nil {
				return err
			}
			return withNode(g, func(n *node) error {
				res, err := n.inst.Apply("import", raws...)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "applied %d, already had %d, waiting for parents %d, rejected %d\n",
					len(res.Applied), res.Duplicates, res.Pending, len(res.Rejected))
				if len(res.Rejected) > 0 {
					return fmt.Errorf("entry %s rejected: %w", res.Rejected[0].ID.Short(), res.Rejected[0].Err)
				}
				return nil
			})
		},
	}
}

func readBundle(r *bufio.Reader) ([][]byte, error) {
	magic := make([]byte, len(bundleMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != bundleMagic {
		return nil, errors.New("not an eidefs bundle")
	}
	var raws [][]byte
	for {
		n, err := binary.ReadUvarint(r)
		if errors.Is(err, io.EOF) {
			return raws, nil
		} else if err != nil {
			return nil, fmt.Errorf("reading bundle: %w", err)
		}
		if n > 256<<20 {
			return nil, fmt.Errorf("reading bundle: entry of %d bytes is too large", n)
		}
		raw := make([]byte, n)
		if _, err := io.ReadFull(r, raw); err != nil {
			return nil, fmt.Errorf("reading bundle: truncated: %w", err)
		}
		raws = append(raws, raw)
	}
}
