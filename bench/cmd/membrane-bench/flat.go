package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
)

// blockFlat: measurement 4. Connect/close rate to a server with a
// 60,000-entry policy map over one with 100 entries, alternately; then the
// same with iptables chains of 60,000 and 100 rules.
func (b *bench) blockFlat(ctx context.Context) error {
	t0 := time.Now()
	if _, err := b.api.ImportPolicy(ctx, []api.PolicyFile{
		{Name: "mbrb-f100.json", Content: flat100Policy()},
		{Name: "mbrb-f60k.json", Content: flat60kPolicy()},
	}); err != nil {
		return fmt.Errorf("import flatness policies: %w", err)
	}
	importTime := time.Since(t0)
	b.cl.add("flatness policies", func() error {
		_, _ = b.api.DeletePolicy(context.Background(), "mbrb-f60k")
		_, _ = b.api.DeletePolicy(context.Background(), "mbrb-f100")
		return nil
	})
	n100, err := b.policyEntries(ctx, b.mF100.id)
	if err != nil {
		return err
	}
	n60k, err := b.policyEntries(ctx, b.mF60k.id)
	if err != nil {
		return err
	}
	b.logf("   policy maps: %d and %d entries (imported in %s)", n100, n60k, fmtDur(importTime))
	waitIdle(b.agent.cmd.Process.Pid, 30*time.Second)

	m100, m60k, rm, err := b.alternate(ctx, "membrane", b.mCli, b.mF100, b.mF60k)
	if err != nil {
		return err
	}
	// Done with the big map before the next blocks (they add endpoints,
	// which makes the agent recompute every endpoint's policy).
	t0 = time.Now()
	if err := b.deletePolicy(ctx, "mbrb-f60k"); err != nil {
		return err
	}
	if err := b.deletePolicy(ctx, "mbrb-f100"); err != nil {
		return err
	}
	deleteTime := time.Since(t0)

	t0 = time.Now()
	if err := iptRestore(ctx, iptFlatRules(b.pF100.hostIf, b.pF60k.hostIf)); err != nil {
		iptRemoveAll(ctx)
		return fmt.Errorf("load iptables chains: %w", err)
	}
	iptLoad := time.Since(t0)
	i100, i60k, ri, err := b.alternate(ctx, "iptables", b.pCli, b.pF100, b.pF60k)
	iptRemoveAll(ctx)
	if err != nil {
		return err
	}

	if !b.rep.ratioRow("4", "Flatness: connections/s with 60,000 vs 100 policy entries", "membrane 60,000 / 100", rm, 0.97) {
		b.rep.note("Target 4 missed: membrane conn/s at 60,000 entries / at 100 = %.3f (< 0.97).", median(rm))
	}
	b.rep.ratioRow("4", "", "iptables 60,000 / 100 rules (contrast)", ri, 0)
	var body strings.Builder
	fmt.Fprintf(&body, "Policy maps read back from the kernel: %d and %d entries. Importing both policies took %s, deleting them %s; "+
		"loading the iptables chains (60,100 rules) with iptables-restore took %s.\n\n", n100, n60k, fmtDur(importTime), fmtDur(deleteTime), fmtDur(iptLoad))
	body.WriteString("| variant | conn/s, small | conn/s, large |\n|---|---|---|\n")
	fmt.Fprintf(&body, "| membrane (100 / 60,000 entries) | %s | %s |\n", fmtRate(median(m100), ""), fmtRate(median(m60k), ""))
	fmt.Fprintf(&body, "| iptables (100 / 60,000 rules) | %s | %s |\n", fmtRate(median(i100), ""), fmtRate(median(i60k), ""))
	b.rep.section("4. Flatness", body.String())
	return nil
}

// alternate measures the connect/close rate from cli to small and to
// large in alternating slices.
func (b *bench) alternate(ctx context.Context, label string, cli, small, large *ep) (smallRates, largeRates, roundRatios []float64, err error) {
	return b.altRounds(ctx, "crr", label, altTarget{cli, netip.AddrPortFrom(small.addr, portEcho)},
		altTarget{cli, netip.AddrPortFrom(large.addr, portEcho)})
}

// altRounds measures two targets in alternating slices, one round at a
// time (which goes first alternates); it returns each round's median slice
// rates and its ratio of y over x (the median over its cycles).
func (b *bench) altRounds(ctx context.Context, mode, label string, x, y altTarget) (xs, ys, rs []float64, err error) {
	// Warm-up, not counted: caches, conntrack, the servers' threads.
	if _, err := b.alt(ctx, mode, 600*time.Millisecond, x, y); err != nil {
		return nil, nil, nil, fmt.Errorf("%s %s warm-up: %w", label, mode, err)
	}
	for r := 0; r < b.s.Rounds; r++ {
		if ctx.Err() != nil {
			return nil, nil, nil, ctx.Err()
		}
		ts := []altTarget{x, y}
		if r%2 == 1 {
			ts[0], ts[1] = ts[1], ts[0]
		}
		rates, err := b.alt(ctx, mode, 2*b.s.Dur, ts...)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%s %s round %d: %w", label, mode, r+1, err)
		}
		a, c := rates[0], rates[1]
		if r%2 == 1 {
			a, c = c, a
		}
		xs, ys, rs = append(xs, median(a)), append(ys, median(c)), append(rs, cycleRatio(c, a))
		b.logf("   %-6s round %d %s: %s, %s, ratio %.3f", mode, r+1, label, fmtRate(median(a), ""), fmtRate(median(c), ""), rs[r])
	}
	return xs, ys, rs, nil
}
