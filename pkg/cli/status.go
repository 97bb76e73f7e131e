package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the agent's health; exit 0 only when it is healthy",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := g.client().Status(cmd.Context())
			if err != nil {
				return err
			}
			if g.json() {
				if err := g.printJSON(st); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
				state := "healthy"
				if !st.Healthy {
					state = "UNHEALTHY"
				}
				fmt.Fprintf(tw, "Agent:\t%s (version %s)\n", state, st.Version)
				for _, p := range st.Parts {
					mark := "ok"
					if !p.Healthy {
						mark = "FAILING"
					}
					fmt.Fprintf(tw, "%s:\t%s\t%s\n", title(p.Name), mark, p.State)
				}
				tw.Flush()
			}
			if !st.Healthy {
				return &ExitError{Code: 1}
			}
			return nil
		},
	}
}

func title(s string) string {
	if s == "" {
		return s
	}
	return string(s[0]-'a'+'A') + s[1:]
}
