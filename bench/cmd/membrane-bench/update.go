package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// updVariant is one way of changing the policy so that the prober's flow
// becomes allowed, and of undoing it.
type updVariant struct {
	name    string
	p       *prober
	r       *receiver
	apply   func(context.Context) error
	undo    func(context.Context) error
	first   []float64 // seconds
	call    []float64
	spent   time.Duration
	reps    int
	errors  int
	lastErr error
}

// blockUpdate: measurement 5, for 1,000 and 10,000 rules.
func (b *bench) blockUpdate(ctx context.Context) error {
	b.cl.add("update netfilter rules", func() error {
		iptRemoveAll(context.Background())
		nftDelete(context.Background(), nftUpdTable)
		return nil
	})
	if err := iptRestore(ctx, iptUpdBase(b.pSrv.hostIf)); err != nil {
		return err
	}
	if err := nftApply(ctx, nftUpdBase(b.pSrv.hostIf)); err != nil {
		return err
	}
	defer func() {
		iptRemoveAll(context.Background())
		nftDelete(context.Background(), nftUpdTable)
	}()
	mRx, err := newReceiver(b.mSrv.path, portUpd)
	if err != nil {
		return err
	}
	defer mRx.close()
	iRx, err := newReceiver(b.pSrv.path, portUpd)
	if err != nil {
		return err
	}
	defer iRx.close()
	nRx, err := newReceiver(b.pSrv.path, portUpdNft)
	if err != nil {
		return err
	}
	defer nRx.close()
	mP, err := startProber(b.mCli.path, netip.AddrPortFrom(b.mSrv.addr, portUpd))
	if err != nil {
		return err
	}
	defer mP.close()
	iP, err := startProber(b.pCli.path, netip.AddrPortFrom(b.pSrv.addr, portUpd))
	if err != nil {
		return err
	}
	defer iP.close()
	nP, err := startProber(b.pCli.path, netip.AddrPortFrom(b.pSrv.addr, portUpdNft))
	if err != nil {
		return err
	}
	defer nP.close()

	var body, extra strings.Builder
	body.WriteString("Each repetition: the change is applied, its first allowed probe timed, then it is undone (not timed). " +
		"The agent holds the standing state (10,000 CIDR identities) throughout.\n\n")
	body.WriteString("| rules | variant | n | p50 | p99 | min–max | change call p50 (returns) |\n|---|---|---|---|---|---|---|\n")
	for _, n := range []int{1000, 10000} {
		vs, err := b.updateSize(ctx, n, mP, mRx, iP, iRx, nP, nRx)
		if err != nil {
			return fmt.Errorf("%d rules: %w", n, err)
		}
		m, ipt, nft := vs[0], vs[1], vs[2]
		label := fmt.Sprintf("%s rules", commas(n))
		goal := 10 * time.Millisecond
		if n == 10000 {
			goal = 50 * time.Millisecond
		}
		for _, v := range vs {
			if len(v.first) == 0 {
				b.rep.note("Policy update, %s rules, %s: no repetition succeeded (%d tried); last error: %v", commas(n), v.name, v.reps, v.lastErr)
			}
		}
		p99 := time.Duration(pctl(m.first, 0.99) * 1e9)
		lo, hi := minMax(m.first)
		rw := row{num: "5", measure: "Policy update to enforcement, " + label, figure: "membrane p99 (import call → first allowed packet)",
			value: fmtDur(p99), spread: fmt.Sprintf("p50 %s; %s–%s", fmtSecs(median(m.first)), fmtSecs(lo), fmtSecs(hi)),
			n: fmt.Sprint(len(m.first)), target: "≤ " + fmtDur(goal), result: passFail(len(m.first) > 0 && p99 <= goal)}
		if len(m.first) == 0 {
			rw.value, rw.spread, rw.result = "no successful repetition", "see Findings", "ERROR"
		}
		b.rep.add(rw)
		for _, v := range []*updVariant{ipt, nft} {
			lo, hi := minMax(v.first)
			rw := row{num: "5", figure: v.name + " p99", value: fmtSecs(pctl(v.first, 0.99)),
				spread: fmt.Sprintf("p50 %s; %s–%s", fmtSecs(median(v.first)), fmtSecs(lo), fmtSecs(hi)),
				n:      fmt.Sprint(len(v.first)), target: "—", result: "info"}
			if len(v.first) == 0 {
				rw.value, rw.spread, rw.result = "no successful repetition", "see Findings", "ERROR"
			}
			b.rep.add(rw)
		}
		ratioIpt := 0.0
		rw = row{num: "5", figure: "iptables-restore / membrane (p50)", value: "n/a", n: fmt.Sprintf("%d/%d", len(ipt.first), len(m.first)), target: "—", result: "info"}
		if len(m.first) > 0 && len(ipt.first) > 0 {
			ratioIpt = median(ipt.first) / median(m.first)
			rw.value = fmt.Sprintf("%.3f", ratioIpt)
			rw.spread = fmt.Sprintf("nft -f / membrane %.3f", median(nft.first)/median(m.first))
		}
		if n == 10000 {
			rw.target = "≥ 10"
			rw.result = passFail(ratioIpt >= 10)
		}
		b.rep.add(rw)
		for _, v := range vs {
			lo, hi := minMax(v.first)
			fmt.Fprintf(&body, "| %s | %s | %d | %s | %s | %s–%s | %s |\n", commas(n), v.name, len(v.first),
				fmtSecs(median(v.first)), fmtSecs(pctl(v.first, 0.99)), fmtSecs(lo), fmtSecs(hi), fmtSecs(median(v.call)))
			if v.errors > 0 {
				b.rep.note("Policy update, %s rules, %s: %d repetitions failed (see the log).", commas(n), v.name, v.errors)
			}
		}
		if p99 > goal || (n == 10000 && ratioIpt < 10) {
			b.rep.note("Target 5 (%s) missed: membrane p50 %s, p99 %s (goal %s); iptables-restore p50 %s.",
				label, fmtSecs(median(m.first)), fmtDur(p99), fmtDur(goal), fmtSecs(median(ipt.first)))
			if n == 1000 {
				prof, err := b.profile(ctx, "import", b.agent.cmd.Process.Pid, func() error {
					_, err := b.importPolicy(ctx, "mbrb-upd", updPolicy(n))
					if err == nil {
						err = b.deletePolicy(ctx, "mbrb-upd")
					}
					return err
				})
				if err != nil {
					fmt.Fprintf(&extra, "\nProfile of the agent during one more import of %s rules: not taken (%v).\n", commas(n), err)
				} else {
					fmt.Fprintf(&extra, "\nProfile of the agent during one more import and delete of %s rules (perf):\n\n%s", commas(n), prof)
					b.explainImport(prof)
				}
			}
		}
	}
	// What the CLI adds to the API call: its own start-up.
	var starts []float64
	for i := 0; i < 5; i++ {
		t0 := time.Now()
		if _, err := run(ctx, 10*time.Second, b.membrane, "--help"); err == nil {
			starts = append(starts, time.Since(t0).Seconds())
		}
	}
	if len(starts) > 0 {
		fmt.Fprintf(&body, "\nThe `membrane` CLI process itself starts in %s (median of 5 `membrane --help`), on top of the API call timed above.\n",
			fmtSecs(median(starts)))
	}
	b.rep.section("5. Policy update to enforcement", body.String()+extra.String())
	return nil
}

// explainImport turns the profile of an import into a finding.
func (b *bench) explainImport(prof string) {
	if h := hotspots(prof, 5); h != "" {
		b.rep.note("Policy import and delete of 1,000 rules, where the agent's time goes (perf, cumulative, section 5): %s. "+
			"Every item that scales with all the state (every identity, prefix, ipcache key or endpoint) rather than with "+
			"the rules that changed is paid again on each import.", h)
	}
}

func fmtSecs(s float64) string { return fmtDur(time.Duration(s * 1e9)) }

func commas(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func (b *bench) updateSize(ctx context.Context, n int, mP *prober, mRx *receiver, iP *prober, iRx *receiver, nP *prober, nRx *receiver) ([]*updVariant, error) {
	mPol := updPolicy(n)
	iptFile := filepath.Join(b.work, fmt.Sprintf("upd-%d.iptables", n))
	nftFile := filepath.Join(b.work, fmt.Sprintf("upd-%d.nft", n))
	if err := os.WriteFile(iptFile, []byte(iptUpdRules(n)), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(nftFile, []byte(nftUpdRules(n)), 0o644); err != nil {
		return nil, err
	}
	vs := []*updVariant{
		{name: "membrane", p: mP, r: mRx,
			apply: func(ctx context.Context) error { _, err := b.importPolicy(ctx, "mbrb-upd", mPol); return err },
			undo:  func(ctx context.Context) error { return b.deletePolicy(ctx, "mbrb-upd") }},
		{name: "iptables", p: iP, r: iRx,
			apply: func(ctx context.Context) error {
				_, err := run(ctx, 5*time.Minute, "iptables-restore", "--noflush", iptFile)
				return err
			},
			undo: func(ctx context.Context) error {
				_, err := run(ctx, time.Minute, "iptables", "-F", iptUpdChain)
				return err
			}},
		{name: "nftables", p: nP, r: nRx,
			apply: func(ctx context.Context) error { _, err := run(ctx, 5*time.Minute, "nft", "-f", nftFile); return err },
			undo: func(ctx context.Context) error {
				_, err := run(ctx, time.Minute, "nft", "flush", "set", "ip", nftUpdTable, "upd")
				return err
			}},
	}
	// A variant stops after UpdMax repetitions, or once it has spent the
	// budget and made UpdMin repetitions; a variant whose repetitions are
	// so slow that UpdMin of them would not fit the budget stops when the
	// budget is spent (at least one repetition).
	done := func(v *updVariant) bool {
		if v.reps >= b.s.UpdMax || v.errors > 3 {
			return true
		}
		if v.spent < b.s.UpdBudget || v.reps == 0 {
			return false
		}
		return v.reps >= b.s.UpdMin || v.spent/time.Duration(v.reps) > b.s.UpdBudget/time.Duration(b.s.UpdMin)
	}
	for r := 0; ; r++ {
		active := 0
		for _, v := range rotate(vs, r) {
			if done(v) {
				continue
			}
			active++
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			t0 := time.Now()
			first, call, err := change(v.p, v.r, func() error { return v.apply(ctx) }, 5*time.Minute)
			if uerr := v.undo(ctx); uerr != nil && err == nil {
				err = uerr
			}
			if err == nil {
				err = waitDenied(v.p, v.r, 10*time.Second)
			}
			v.spent += time.Since(t0)
			v.reps++
			if err != nil {
				v.errors++
				v.lastErr = err
				b.logf("   %d rules, %s: repetition %d: %v", n, v.name, v.reps, err)
				continue
			}
			v.first = append(v.first, first.Seconds())
			v.call = append(v.call, call.Seconds())
			if v.reps <= 3 || v.reps%20 == 0 {
				b.logf("   %d rules, %-8s rep %3d: first allowed packet after %s (call %s)", n, v.name, v.reps, fmtDur(first), fmtDur(call))
			}
		}
		if active == 0 {
			break
		}
	}
	return vs, nil
}
