package main

import "github.com/spf13/cobra"

func newMountCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "mount DIR",
		Short: "Mount the databases at DIR (runs in the foreground)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return errNotImplemented
		},
	}
}
