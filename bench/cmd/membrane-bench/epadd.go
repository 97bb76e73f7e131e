package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
)

// blockEPAdd: measurement 6. Each repetition makes a namespace, starts a
// prober in it toward a port the server allows to role=eptest, and times
// `endpoint add` (the API call) to the first datagram through; beside it,
// the same wiring done without Membrane.
func (b *bench) blockEPAdd(ctx context.Context) error {
	mRx, err := newReceiver(b.mSrv.path, portEPAdd)
	if err != nil {
		return err
	}
	defer mRx.close()
	pRx, err := newReceiver(b.pSrv.path, portEPAdd)
	if err != nil {
		return err
	}
	defer pRx.close()
	var mFirst, mCall, pFirst []float64
	for i := 0; i < b.s.EPAddReps; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		first, call, err := b.epAddMembrane(ctx, i, mRx)
		if err != nil {
			return fmt.Errorf("membrane repetition %d: %w", i+1, err)
		}
		mFirst, mCall = append(mFirst, first.Seconds()), append(mCall, call.Seconds())
		pf, err := b.epAddPlain(ctx, i, pRx)
		if err != nil {
			return fmt.Errorf("plain repetition %d: %w", i+1, err)
		}
		pFirst = append(pFirst, pf.Seconds())
		if i < 3 || (i+1)%10 == 0 {
			b.logf("   rep %2d: membrane first packet %s (call %s), plain wiring %s", i+1, fmtDur(first), fmtDur(call), fmtDur(pf))
		}
	}
	goal := 50 * time.Millisecond
	med := time.Duration(median(mFirst) * 1e9)
	lo, hi := minMax(mFirst)
	b.rep.add(row{num: "6", measure: "`membrane endpoint add` to enforced", figure: "membrane median (add call → first allowed packet)",
		value: fmtDur(med), spread: fmt.Sprintf("p90 %s; %s–%s", fmtSecs(pctl(mFirst, 0.9)), fmtSecs(lo), fmtSecs(hi)),
		n: fmt.Sprint(len(mFirst)), target: "≤ " + fmtDur(goal), result: passFail(med <= goal)})
	plo, phi := minMax(pFirst)
	b.rep.add(row{num: "6", figure: "plain wiring without Membrane, median", value: fmtSecs(median(pFirst)),
		spread: fmt.Sprintf("%s–%s", fmtSecs(plo), fmtSecs(phi)), n: fmt.Sprint(len(pFirst)), target: "—", result: "info"})
	var body strings.Builder
	fmt.Fprintf(&body, "The agent held the standing state (%d identities). `endpoint add` API call: median %s (the call returns after the state is saved). "+
		"First allowed packet: median %s. The same namespace wiring without Membrane (pkg/endpoint, no agent): median %s.\n",
		b.rep.identities, fmtSecs(median(mCall)), fmtSecs(median(mFirst)), fmtSecs(median(pFirst)))
	if med > goal {
		b.rep.note("Target 6 missed: endpoint add to enforced, median %s (goal %s); the plain wiring takes %s of it.",
			fmtDur(med), fmtDur(goal), fmtSecs(median(pFirst)))
		prof, err := b.profile(ctx, "epadd", b.agent.cmd.Process.Pid, func() error {
			for i := 0; i < 5; i++ {
				if _, _, err := b.epAddMembrane(ctx, 1000+i, mRx); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			fmt.Fprintf(&body, "\nProfile of the agent during 5 more adds: not taken (%v).\n", err)
		} else {
			fmt.Fprintf(&body, "\nProfile of the agent during 5 more `endpoint add` (and delete) calls (perf):\n\n%s", prof)
			b.explainEPAdd(prof, median(mFirst), median(mCall), median(pFirst))
		}
	}
	b.rep.section("6. `endpoint add` to enforced", body.String())
	return nil
}

func (b *bench) epAddMembrane(ctx context.Context, i int, rx *receiver) (first, call time.Duration, err error) {
	ns, path, err := b.newNS(fmt.Sprintf("ep%d", i))
	if err != nil {
		return 0, 0, err
	}
	defer deleteNS(ns)
	p, err := startProber(path, netip.AddrPortFrom(b.mSrv.addr, portEPAdd))
	if err != nil {
		return 0, 0, err
	}
	defer p.close()
	var id uint32
	var iface string
	defer func() {
		if iface != "" {
			b.fwd.remove(iface)
		}
	}()
	first, call, err = change(p, rx, func() error {
		e, err := b.api.AddEndpoint(ctx, api.EndpointRequest{Netns: path, Name: ns, Labels: []string{"role=eptest"}})
		if err == nil {
			id, iface = e.ID, e.Interface
			b.fwd.add(iface)
		}
		return err
	}, time.Minute)
	if id != 0 {
		if derr := b.api.DeleteEndpoint(ctx, id); derr != nil && err == nil {
			err = derr
		}
	}
	return first, call, err
}

func (b *bench) epAddPlain(ctx context.Context, i int, rx *receiver) (time.Duration, error) {
	ns, path, err := b.newNS(fmt.Sprintf("pep%d", i))
	if err != nil {
		return 0, err
	}
	defer deleteNS(ns)
	p, err := startProber(path, netip.AddrPortFrom(b.pSrv.addr, portEPAdd))
	if err != nil {
		return 0, err
	}
	defer p.close()
	hostIf := fmt.Sprintf("%sp%d", plainPrefix, i)
	defer deleteLink(hostIf)
	b.fwd.add(hostIf)
	defer b.fwd.remove(hostIf)
	first, _, err := change(p, rx, func() error {
		_, err := wirePlain(path, hostIf, plainTrial)
		return err
	}, time.Minute)
	return first, err
}

// explainEPAdd turns the profile of endpoint adds into a finding.
func (b *bench) explainEPAdd(prof string, first, call, plain float64) {
	h := hotspots(prof, 5)
	if h == "" {
		return
	}
	b.rep.note("`endpoint add` (profile of 5 adds and deletes, section 6): %s. The first packet passes at %s (median), "+
		"the call returns at %s; wiring the namespace itself takes %s. Work that scales with every endpoint or identity "+
		"(recomputing and diffing every endpoint's policy, saving the whole state) is paid on each add.",
		h, fmtSecs(first), fmtSecs(call), fmtSecs(plain))
}
