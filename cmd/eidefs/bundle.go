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
// hand (or to seed a new machine): "EIDEFSB2", then records, each a kind byte ('e'
// an entry, 'b' a blob an entry before it refers to), a uvarint length and the
// bytes. Bundles of the first format ("EIDEFSB1": entries only, without kind
// bytes) are still read.
const (
	bundleMagic   = "EIDEFSB2"
	bundleMagicV1 = "EIDEFSB1"
)

func newExportCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "export DB",
		Short: "Write all entries of a database to stdout as a bundle",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withDatabase(g, args[0], func(n *node, d *engine.Database) error {
				w := bufio.NewWriter(cmd.OutOrStdout())
				w.WriteString(bundleMagic)
				record := func(kind byte, b []byte) {
					w.WriteByte(kind)
					w.Write(binary.AppendUvarint(nil, uint64(len(b))))
					w.Write(b)
				}
				var berr error
				err := d.Entries(0, func(id engine.ID, raw []byte) bool {
					record('e', raw)
					blobs, err := n.inst.Blobs(raw)
					if err != nil {
						berr = fmt.Errorf("entry %s: %w", id.Short(), err)
						return false
					}
					for _, b := range blobs {
						record('b', b)
					}
					return true
				})
				if err == nil {
					err = berr
				}
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
			raws, blobs, err := readBundle(bufio.NewReader(r))
			if err != nil {
				return err
			}
			return withNode(g, func(n *node) error {
				res, err := n.inst.ApplyVerified("import", engine.Verify(raws...).WithBlobs(blobs))
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

// readBundle returns a bundle's entries and blobs.
func readBundle(r *bufio.Reader) (raws, blobs [][]byte, err error) {
	magic := make([]byte, len(bundleMagic))
	if _, err := io.ReadFull(r, magic); err != nil || (string(magic) != bundleMagic && string(magic) != bundleMagicV1) {
		return nil, nil, errors.New("not an eidefs bundle")
	}
	v1 := string(magic) == bundleMagicV1
	for {
		kind := byte('e')
		if !v1 {
			if kind, err = r.ReadByte(); errors.Is(err, io.EOF) {
				return raws, blobs, nil
			} else if err != nil {
				return nil, nil, fmt.Errorf("reading bundle: %w", err)
			}
			if kind != 'e' && kind != 'b' {
				return nil, nil, fmt.Errorf("reading bundle: unknown record kind %q", kind)
			}
		}
		n, err := binary.ReadUvarint(r)
		if v1 && errors.Is(err, io.EOF) {
			return raws, blobs, nil
		} else if err != nil {
			return nil, nil, fmt.Errorf("reading bundle: truncated: %w", err)
		}
		if n > 256<<20 {
			return nil, nil, fmt.Errorf("reading bundle: record of %d bytes is too large", n)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, nil, fmt.Errorf("reading bundle: truncated: %w", err)
		}
		if kind == 'e' {
			raws = append(raws, b)
		} else {
			blobs = append(blobs, b)
		}
	}
}
