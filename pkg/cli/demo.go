package cli

import (
	"github.com/spf13/cobra"

	"github.com/membrane-net/membrane/pkg/demo"
)

func demoCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "demo",
		Short: "Run the whole system end to end on defaults, with real namespaces and traffic, then clean up",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return demo.Run(cmd.Context(), demo.Config{Socket: g.socket, Out: g.out})
		},
	}
}
