package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/membrane-net/membrane/pkg/conformance"
)

func init() { extraCommands = append(extraCommands, conformanceCmd) }

func conformanceCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "conformance",
		Short: "Check the installation against network-policy conformance cases, with real packets",
	}
	cmd.AddCommand(conformanceRunCmd(g))
	return cmd
}

const conformanceRunLong = `Run the network-policy conformance cases of DIR (Kubernetes e2e, cyclonus,
Cilium connectivity and policy tests, selector tables; one YAML file per case).

For each case the runner builds the case's pods as real network namespaces wired
as Membrane endpoints, runs echo and HTTP servers in them, imports the case's
policies and sends real TCP, UDP, HTTP and ICMP probes, then compares what got
through with the case's truth table. Addresses outside the cluster are emulated
by a "world" namespace the runner owns; nothing leaves the machine. Cases whose
topology has several nodes run on this one. Probes from a pod to itself, SCTP
probes (no SCTP in this kernel) and cases needing features Membrane lacks
(ClusterNetworkPolicy, toFQDNs) are reported apart, never as passes.

By default the runner starts a private agent of its own (temporary socket and
state, bpffs directory /sys/fs/bpf/membrane-conformance-<pid>, its own host
device and pool) and removes it, and everything else it made, at the end.

Prints one line per case and, last, "N passed, M failed"; exit status 1 if a
case failed. Needs root.`

func conformanceRunCmd(g *globals) *cobra.Command {
	var socket, run, logLevel string
	var cfg conformance.Config
	var keep bool
	cmd := &cobra.Command{
		Use:   "run DIR",
		Short: "Run the conformance cases of DIR against a private agent (or --socket) and report pass/fail per case",
		Long:  conformanceRunLong,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.Dir, cfg.Socket = args[0], socket
			if run != "" {
				re, err := regexp.Compile(run)
				if err != nil {
					return fmt.Errorf("--run %q: %w", run, err)
				}
				cfg.Run = re
			}
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)
			}
			log := slog.New(slog.NewTextHandler(g.errOut, &slog.HandlerOptions{Level: lvl}))
			if !g.json() {
				cfg.OnCase = func(res conformance.CaseResult) { conformance.WriteCase(g.out, res) }
			}
			return runConformance(cmd.Context(), g, cfg, keep, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", "", "use the agent running on this socket instead of a private one. DANGEROUS on a production agent: "+
		"the run adds endpoints on the cases' addresses (10.244.x.y), imports and deletes policies and routes test addresses (1.1.1.1, 192.0.2.x, ...) "+
		"into a namespace of its own while it runs")
	f.StringVar(&run, "run", "", "run only the cases whose file name, id or name matches this regular expression")
	f.DurationVar(&cfg.Timeout, "timeout", conformance.DefaultTimeout, "how long a probe waits for an answer before it counts as dropped (HTTP: 3x)")
	f.IntVar(&cfg.Parallel, "parallel", conformance.DefaultParallel, "probes in flight at once")
	f.BoolVar(&keep, "keep", false, "after the run, leave the last topology (and the private agent) up for debugging until interrupted")
	f.StringVar(&logLevel, "log-level", "warn", "log level of the runner: debug, info, warn, error")
	return cmd
}

func runConformance(ctx context.Context, g *globals, cfg conformance.Config, keep bool, log *slog.Logger) (err error) {
	// Output piped into a reader that goes away (| head) must not kill the
	// run before it removes what it made: writes fail instead.
	signal.Ignore(syscall.SIGPIPE)
	r, err := conformance.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := r.Close(); cerr != nil {
			fmt.Fprintf(g.errOut, "clean up: %v\n", cerr)
			if err == nil {
				err = fmt.Errorf("clean up: %w", cerr)
			}
		}
	}()
	rep, runErr := r.Run(ctx)
	if rep != nil {
		if rep.Duration == "" {
			rep.Duration = time.Since(rep.Started).Round(10 * time.Millisecond).String()
		}
		if g.json() {
			if err := g.printJSON(rep); err != nil {
				return err
			}
		} else {
			conformance.WriteSummary(g.out, rep)
		}
		if rep.Summary.Failed > 0 {
			if p := r.KeepAgentLog(); p != "" {
				fmt.Fprintf(g.errOut, "The private agent's log is kept in %s\n", p)
			}
		}
	}
	if runErr != nil {
		if errors.Is(runErr, context.Canceled) {
			return errors.New("interrupted")
		}
		return runErr
	}
	if keep && ctx.Err() == nil {
		fmt.Fprintf(g.errOut, "Left up for debugging (agent socket %s):\n", r.Socket())
		for _, l := range r.Kept() {
			fmt.Fprintf(g.errOut, "  %s\n", l)
		}
		fmt.Fprintln(g.errOut, "Press Ctrl-C (or send SIGTERM) to remove it all.")
		<-ctx.Done()
	}
	if rep.Summary.Failed > 0 {
		return &ExitError{Code: 1}
	}
	return nil
}
