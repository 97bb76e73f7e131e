package cli

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/endpoint"
)

func endpointCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "endpoint", Aliases: []string{"endpoints", "ep"}, Short: "Manage endpoints (network namespaces under policy)"}
	cmd.AddCommand(endpointAddCmd(g), endpointListCmd(g), endpointGetCmd(g), endpointDeleteCmd(g), endpointUpdateCmd(g))
	return cmd
}

func endpointAddCmd(g *globals) *cobra.Command {
	var req api.EndpointRequest
	var lbls, namedPorts string
	cmd := &cobra.Command{
		Use:   "add --netns PATH --labels k=v,... [--name N] [--ipv4 ADDR] [--named-ports name=port/PROTO,...]",
		Short: "Wire an existing network namespace as an endpoint; policy is enforced when it returns",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if req.Netns == "" {
				return fmt.Errorf("--netns is required")
			}
			nps, err := endpoint.ParseNamedPorts(namedPorts)
			if err != nil {
				return fmt.Errorf("--named-ports: %w", err)
			}
			req.NamedPorts = nps
			req.Labels = splitList(lbls)
			ep, err := g.client().AddEndpoint(cmd.Context(), req)
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(ep)
			}
			fmt.Fprintf(g.out, "Endpoint %d (%s): %s, identity %d, interface %s\n", ep.ID, ep.Name, ep.IPv4, ep.Identity, ep.Interface)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Netns, "netns", "", "network namespace path (e.g. /var/run/netns/app1)")
	f.StringVar(&lbls, "labels", "", "labels [source:]key=value,... (no source: unspec)")
	f.StringVar(&req.Name, "name", "", "endpoint name (free text; default: the namespace's file name)")
	f.StringVar(&req.IPv4, "ipv4", "", "address to use instead of one from the pool")
	f.StringVar(&namedPorts, "named-ports", "", "named ports name=port/PROTO,...")
	f.StringVar(&req.Interface, "ifname", "", "interface name inside the namespace (default eth0)")
	f.BoolVar(&req.Audit, "audit", false, "audit mode for this endpoint")
	return cmd
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func parseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("endpoint id %q is not a number", s)
	}
	return uint32(n), nil
}

func endpointListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List endpoints",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			eps, err := g.client().ListEndpoints(cmd.Context())
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(eps)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tIPV4\tIDENTITY\tINGRESS\tEGRESS\tINTERFACE\tLABELS")
			for _, ep := range eps {
				fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", ep.ID, ep.Name, ep.IPv4, ep.Identity,
					enforced(ep.Policy.IngressEnforced), enforced(ep.Policy.EgressEnforced), ep.Interface, ep.Labels.String())
			}
			return tw.Flush()
		},
	}
}

func enforced(b bool) string {
	if b {
		return "enforced"
	}
	return "open"
}

func endpointGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show one endpoint",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			ep, err := g.client().GetEndpoint(cmd.Context(), id)
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(ep)
			}
			printEndpoint(g, ep)
			return nil
		},
	}
}

func printEndpoint(g *globals, ep *api.Endpoint) {
	tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ID:\t%d\nName:\t%s\nState:\t%s\nNetns:\t%s\nIPv4:\t%s\nIdentity:\t%d\nLabels:\t%s\n",
		ep.ID, ep.Name, ep.State, ep.Netns, ep.IPv4, ep.Identity, ep.Labels.String())
	fmt.Fprintf(tw, "Interface:\t%s (ifindex %d) <-> %s %s\n", ep.Interface, ep.IfIndex, ep.ContainerInterface, ep.MAC)
	for _, np := range ep.NamedPorts {
		fmt.Fprintf(tw, "Named port:\t%s=%d/%s\n", np.Name, np.Port, np.Protocol)
	}
	fmt.Fprintf(tw, "Policy:\tingress %s, egress %s, revision %d, %d map entries\n",
		enforced(ep.Policy.IngressEnforced), enforced(ep.Policy.EgressEnforced), ep.Policy.Revision, ep.Policy.Entries)
	if ep.Audit {
		fmt.Fprintf(tw, "Audit:\ton\n")
	}
	tw.Flush()
}

func endpointDeleteCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "delete ID...",
		Aliases: []string{"rm"},
		Short:   "Delete endpoints and everything made for them",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, a := range args {
				id, err := parseID(a)
				if err != nil {
					return err
				}
				if err := g.client().DeleteEndpoint(cmd.Context(), id); err != nil {
					return err
				}
				if !g.json() {
					fmt.Fprintf(g.out, "Endpoint %d deleted\n", id)
				}
			}
			return nil
		},
	}
}

func endpointUpdateCmd(g *globals) *cobra.Command {
	var lbls string
	var audit bool
	cmd := &cobra.Command{
		Use:   "update ID --labels k=v,... [--audit=true|false]",
		Short: "Replace an endpoint's labels (new identity) or switch its audit mode",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseID(args[0])
			if err != nil {
				return err
			}
			var upd api.EndpointUpdate
			if cmd.Flags().Changed("labels") {
				upd.Labels = splitList(lbls)
				if upd.Labels == nil {
					upd.Labels = []string{}
				}
			}
			if cmd.Flags().Changed("audit") {
				upd.Audit = &audit
			}
			if upd.Labels == nil && upd.Audit == nil {
				return fmt.Errorf("nothing to update: give --labels or --audit")
			}
			ep, err := g.client().UpdateEndpoint(cmd.Context(), id, upd)
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(ep)
			}
			fmt.Fprintf(g.out, "Endpoint %d (%s): identity %d, labels %s\n", ep.ID, ep.Name, ep.Identity, ep.Labels.String())
			return nil
		},
	}
	cmd.Flags().StringVar(&lbls, "labels", "", "the new labels [source:]key=value,...")
	cmd.Flags().BoolVar(&audit, "audit", false, "audit mode for this endpoint")
	return cmd
}

func identityCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "identity", Aliases: []string{"identities"}, Short: "Inspect security identities"}
	cmd.AddCommand(&cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List identities, reserved ones included",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ids, err := g.client().ListIdentities(cmd.Context())
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(ids)
			}
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tENDPOINTS\tLABELS")
			for _, id := range ids {
				fmt.Fprintf(tw, "%d\t%d\t%s\n", id.ID, id.Endpoints, id.Labels.String())
			}
			return tw.Flush()
		},
	})
	return cmd
}
