package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/membrane-net/membrane/pkg/monitor"
)

func monitorCmd(g *globals) *cobra.Command {
	var types []string
	cmd := &cobra.Command{
		Use:   "monitor [--type drop|policy-verdict|l7] [-o json]",
		Short: "Stream datapath and proxy verdicts",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var ts []string
			for _, t := range types {
				ts = append(ts, splitList(t)...)
			}
			for _, t := range ts {
				known := false
				for _, k := range monitor.Types {
					known = known || k == t
				}
				if !known {
					return fmt.Errorf("--type %q: want drop, policy-verdict or l7", t)
				}
			}
			return g.client().Monitor(cmd.Context(), ts, func(e monitor.Event) {
				if g.json() {
					_ = g.printJSONLine(e)
					return
				}
				fmt.Fprintln(g.out, e.String())
			})
		},
	}
	cmd.Flags().StringSliceVar(&types, "type", nil, "event types: drop, policy-verdict, l7 (default: all)")
	return cmd
}
