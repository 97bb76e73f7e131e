// Package cli owns the `membrane` command line: flags, output formats and
// exit codes. It talks to the agent only through pkg/api's client, except
// `membrane agent`, which runs one.
package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/membrane-net/membrane/pkg/api"
)

// Version is set at build time.
var Version = "dev"

type globals struct {
	socket string
	output string
	out    io.Writer
	errOut io.Writer
}

func (g *globals) client() *api.Client { return api.NewClient(g.socket) }

func (g *globals) json() bool { return g.output == "json" }

func (g *globals) printJSON(v any) error {
	enc := json.NewEncoder(g.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// ExitError carries an exit code without printing more.
type ExitError struct{ Code int }

func (e *ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// NewRoot builds the command tree.
func NewRoot() *cobra.Command {
	g := &globals{out: os.Stdout, errOut: os.Stderr}
	root := &cobra.Command{
		Use:           "membrane",
		Short:         "Membrane secures the connections between containers with eBPF",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			switch g.output {
			case "", "text", "json", "yaml":
			default:
				return fmt.Errorf("-o %q: want text, json or yaml", g.output)
			}
			return nil
		},
	}
	sock := os.Getenv("MEMBRANE_SOCKET")
	if sock == "" {
		sock = api.DefaultSocket
	}
	root.PersistentFlags().StringVar(&g.socket, "socket", sock, "agent API socket (env MEMBRANE_SOCKET)")
	root.PersistentFlags().StringVarP(&g.output, "output", "o", "text", "output format: text or json (policy get: yaml too)")
	root.AddCommand(
		agentCmd(g), statusCmd(g), endpointCmd(g), identityCmd(g), policyCmd(g),
		monitorCmd(g), bpfCmd(g), demoCmd(g), versionCmd(g),
	)
	for _, c := range extraCommands {
		root.AddCommand(c(g))
	}
	return root
}

// extraCommands lets other files of this package add commands.
var extraCommands []func(*globals) *cobra.Command

// Main runs the CLI and returns the process exit code.
func Main(args []string) int {
	root := NewRoot()
	root.SetArgs(args)
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		if ee, ok := err.(*ExitError); ok {
			return ee.Code
		}
		fmt.Fprintln(os.Stderr, "Error:", err)
		return 1
	}
	return 0
}

func versionCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			fmt.Fprintln(g.out, "membrane", Version)
			return nil
		},
	}
}
