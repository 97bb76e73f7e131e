package cli

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

func (g *globals) printJSONLine(v any) error { return json.NewEncoder(g.out).Encode(v) }

func bpfCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "bpf", Short: "Show what the kernel's eBPF maps hold"}
	pol := &cobra.Command{Use: "policy", Short: "Per-endpoint policy maps"}
	pol.AddCommand(&cobra.Command{
		Use:   "get ID",
		Short: "Show an endpoint's policy map, read from the kernel",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			bp, err := g.client().BPFPolicy(cmd.Context(), id)
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(bp)
			}
			fmt.Fprintf(g.out, "Endpoint %d: %d of %d entries\n", bp.Endpoint, len(bp.Entries), bp.Capacity)
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DIRECTION\tIDENTITY\tPROTOCOL\tPORTS\tVERDICT\tPROXY\tLABELS\tRULE")
			for _, e := range bp.Entries {
				ident := fmt.Sprint(e.Identity)
				if e.Identity == 0 {
					ident = "any"
				}
				proxy := "-"
				if e.ProxyPort != 0 {
					proxy = fmt.Sprint(e.ProxyPort)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Direction, ident, e.Protocol, e.Ports, e.Verdict, proxy, e.Labels.String(), e.Rule)
			}
			return tw.Flush()
		},
	})
	ipc := &cobra.Command{Use: "ipcache", Short: "The ipcache map: address/prefix to identity"}
	ipc.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List the ipcache, read from the kernel",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			es, err := g.client().BPFIPCache(cmd.Context())
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(es)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PREFIX\tIDENTITY\tCIDR-IDENTITY\tCLUSTER\tSOURCE")
			for _, e := range es {
				cid := "-"
				if e.CIDRIdentity != 0 {
					cid = fmt.Sprint(uint32(e.CIDRIdentity))
				}
				fmt.Fprintf(tw, "%s\t%d\t%s\t%v\t%s\n", e.Prefix, e.Identity, cid, e.InCluster, e.Source)
			}
			return tw.Flush()
		},
	})
	ct := &cobra.Command{Use: "ct", Short: "The connection tracking map"}
	ct.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List tracked connections, read from the kernel",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			es, err := g.client().BPFCT(cmd.Context())
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(es)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PROTO\tSOURCE\tDESTINATION\tHOOK\tENDPOINT\tPEER-IDENTITY\tEXPIRES\tFLAGS")
			for _, e := range es {
				flags := ""
				if e.Reply {
					flags += "reply-entry "
				}
				if e.SeenReply {
					flags += "replied "
				}
				if e.Closing {
					flags += "closing "
				}
				if e.Audit {
					flags += "audit "
				}
				if e.ProxyPort != 0 {
					flags += fmt.Sprintf("proxy=%d", e.ProxyPort)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", mapstate.ProtoName(e.Protocol), e.Src, e.Dst, e.Dir, e.EndpointID, e.PeerIdentity, e.ExpiresIn.Round(1e9), flags)
			}
			return tw.Flush()
		},
	})
	cmd.AddCommand(pol, ipc, ct)
	return cmd
}
