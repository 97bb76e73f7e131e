package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/membrane-net/membrane/pkg/api"
)

func policyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "Import, inspect, trace and delete policies"}
	cmd.AddCommand(policyImportCmd(g), policyValidateCmd(g), policyGetCmd(g), policyDeleteCmd(g), policyTraceCmd(g))
	return cmd
}

func readPolicyFiles(paths []string) ([]api.PolicyFile, error) {
	var files []api.PolicyFile
	for _, p := range paths {
		var b []byte
		var err error
		name := p
		if p == "-" {
			name = "stdin"
			b, err = readAllStdin()
		} else {
			b, err = os.ReadFile(p)
			name = filepath.Base(p)
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		files = append(files, api.PolicyFile{Name: name, Content: string(b)})
	}
	return files, nil
}

func readAllStdin() ([]byte, error) {
	var sb strings.Builder
	buf := make([]byte, 64<<10)
	for {
		n, err := os.Stdin.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			if err.Error() == "EOF" {
				return []byte(sb.String()), nil
			}
			return []byte(sb.String()), nil
		}
	}
}

func policyImportCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "import FILE...",
		Short: "Import CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy YAML or a JSON rule list; returns once enforced",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			files, err := readPolicyFiles(args)
			if err != nil {
				return err
			}
			res, err := g.client().ImportPolicy(cmd.Context(), files)
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(res)
			}
			fmt.Fprintf(g.out, "Revision: %d\n", res.Revision)
			return nil
		},
	}
}

func policyValidateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE...",
		Short: "Check policy files without importing them",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			files, err := readPolicyFiles(args)
			if err != nil {
				return err
			}
			res, err := g.client().ValidatePolicy(cmd.Context(), files)
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(res)
			}
			for _, p := range res.Policies {
				fmt.Fprintf(g.out, "%s: document %d (%s): valid\n", p.File, p.Document, refString(p))
			}
			return nil
		},
	}
}

func refString(p api.PolicyRef) string {
	if p.Namespace != "" {
		return fmt.Sprintf("%s %s/%s", p.Kind, p.Namespace, p.Name)
	}
	return fmt.Sprintf("%s %s", p.Kind, p.Name)
}

func policyGetCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "get",
		Short: "Show the imported policies (-o json|yaml for the objects)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			pl, err := g.client().GetPolicy(cmd.Context())
			if err != nil {
				return err
			}
			switch g.output {
			case "json":
				return g.printJSON(pl)
			case "yaml":
				fmt.Fprintf(g.out, "# Revision: %d\n", pl.Revision)
				for i, p := range pl.Policies {
					y, err := yaml.JSONToYAML(p.Object)
					if err != nil {
						return fmt.Errorf("render %s: %w", refString(p.PolicyRef), err)
					}
					if i > 0 {
						fmt.Fprintln(g.out, "---")
					}
					g.out.Write(y)
				}
				return nil
			}
			fmt.Fprintf(g.out, "Revision: %d\n", pl.Revision)
			tw := tabwriter.NewWriter(g.out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "KIND\tNAMESPACE\tNAME\tFROM")
			for _, p := range pl.Policies {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s document %d\n", p.Kind, p.Namespace, p.Name, p.File, p.Document)
			}
			return tw.Flush()
		},
	}
}

func policyDeleteCmd(g *globals) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "delete NAME | NAMESPACE/NAME | --all",
		Short: "Delete policies; returns once enforced",
		RunE: func(cmd *cobra.Command, args []string) error {
			var res *api.PolicyResult
			var err error
			switch {
			case all && len(args) == 0:
				res, err = g.client().DeleteAllPolicies(cmd.Context())
			case !all && len(args) == 1:
				res, err = g.client().DeletePolicy(cmd.Context(), args[0])
			default:
				return fmt.Errorf("give one policy name, or --all")
			}
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(res)
			}
			for _, p := range res.Policies {
				fmt.Fprintf(g.out, "Deleted %s\n", refString(p))
			}
			fmt.Fprintf(g.out, "Revision: %d\n", res.Revision)
			return nil
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "delete every policy")
	return cmd
}

func policyTraceCmd(g *globals) *cobra.Command {
	var req api.TraceRequest
	var srcEP, dstEP uint32
	var srcLabels, dstLabels string
	cmd := &cobra.Command{
		Use:   "trace (--src-endpoint ID | --src-labels k=v,... | --src-ip ADDR) (--dst-endpoint ID | --dst-labels ... | --dst-ip ADDR) --dport 80/TCP",
		Short: "Explain whether a flow is allowed, and which rules decide it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			req.SrcEndpoint, req.DstEndpoint = srcEP, dstEP
			req.SrcLabels, req.DstLabels = splitList(srcLabels), splitList(dstLabels)
			if req.DPort == "" {
				return fmt.Errorf("--dport is required (e.g. 80/TCP)")
			}
			res, err := g.client().TracePolicy(cmd.Context(), req)
			if err != nil {
				return err
			}
			if g.json() {
				return g.printJSON(res)
			}
			fmt.Fprint(g.out, res.String())
			return nil
		},
	}
	f := cmd.Flags()
	f.Uint32Var(&srcEP, "src-endpoint", 0, "source endpoint id")
	f.StringVar(&srcLabels, "src-labels", "", "source labels k=v,...")
	f.StringVar(&req.SrcIP, "src-ip", "", "source address")
	f.Uint32Var(&dstEP, "dst-endpoint", 0, "destination endpoint id")
	f.StringVar(&dstLabels, "dst-labels", "", "destination labels k=v,...")
	f.StringVar(&req.DstIP, "dst-ip", "", "destination address")
	f.StringVar(&req.DPort, "dport", "", "destination port and protocol, e.g. 80/TCP, 53/UDP, 8/ICMP")
	return cmd
}
