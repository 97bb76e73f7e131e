// Command membrane-bench runs `make bench`: Membrane's datapath, policy
// engine and proxy measured side by side with the alternatives (no policy,
// iptables, nftables, nginx) on this machine, in one run, variants
// interleaved round by round, every figure a ratio or a distribution of one
// run. It builds its own topology (network namespaces, veth pairs, a
// Membrane agent of its own), removes everything it made, and writes a
// markdown report.
//
//	membrane-bench run --work DIR [--quick] [--out bench/results/latest.md] [--only rr,flat,...]
//	membrane-bench cleanup --work DIR
//
// DIR holds the binaries (membrane, bench-tcp), the agent's state, logs
// and pid files; bench/run.sh makes it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: membrane-bench run|cleanup --work DIR [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runCmd(os.Args[2:])
	case "cleanup":
		err = cleanupCmd(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "membrane-bench:", err)
		os.Exit(1)
	}
}

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	work := fs.String("work", "", "work directory holding the binaries (membrane, bench-tcp)")
	out := fs.String("out", "bench/results/latest.md", "where to write the report")
	quick := fs.Bool("quick", false, "fewer rounds and shorter runs (smoke test)")
	only := fs.String("only", "", "run only these blocks (comma-separated: "+strings.Join(blockNames, ",")+")")
	noProfile := fs.Bool("no-profile", false, "do not profile the agent or the kernel when a target is missed")
	agentArgs := fs.String("agent-args", "", "more flags for `membrane agent`, space-separated (e.g. --proxy-port 0)")
	_ = fs.Parse(args)
	if *work == "" {
		return fmt.Errorf("--work is required")
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root (network namespaces, eBPF, netfilter)")
	}
	sel := map[string]bool{}
	for _, b := range strings.Split(*only, ",") {
		if b = strings.TrimSpace(b); b != "" {
			if !contains(blockNames, b) && b != "hold" {
				return fmt.Errorf("--only: unknown block %q (have %s)", b, strings.Join(blockNames, ","))
			}
			sel[b] = true
		}
	}
	abs, err := filepath.Abs(*work)
	if err != nil {
		return err
	}
	unlock, err := lock()
	if err != nil {
		return err
	}
	defer unlock()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	b := newBench(abs, settingsFor(*quick), sel, !*noProfile)
	b.agentArgs = strings.Fields(*agentArgs)
	// Anything a crashed earlier run left behind would collide with names.
	sweep(abs, false)
	start := time.Now()
	runErr := b.run(ctx)
	b.cleanup()
	b.rep.Duration = time.Since(start)
	if runErr != nil && ctx.Err() != nil {
		// Interrupted: keep the last complete report.
		return fmt.Errorf("interrupted; %s left as it was", *out)
	}
	if runErr != nil {
		b.rep.Fatal = runErr.Error()
	}
	if err := b.rep.write(*out); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	fmt.Println()
	fmt.Print(b.rep.table())
	fmt.Printf("\nReport written to %s (%s)\n", *out, b.rep.Duration.Round(time.Second))
	if runErr != nil {
		return runErr
	}
	return nil
}

func cleanupCmd(args []string) error {
	fs := flag.NewFlagSet("cleanup", flag.ExitOnError)
	work := fs.String("work", "", "work directory of the run")
	_ = fs.Parse(args)
	sweep(*work, true)
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// lock keeps two runs from sharing names and addresses.
func lock() (func(), error) {
	const path = "/run/lock/membrane-bench.lock"
	_ = os.MkdirAll(filepath.Dir(path), 0o755)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another membrane-bench run holds %s", path)
	}
	return func() { f.Close() }, nil
}
