package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// blockMem: measurement 8. Endpoints are added (each with its own labels,
// so its own identity) until 100 exist beside the 10,000 CIDR identities;
// then the agent's resident set is read.
func (b *bench) blockMem(ctx context.Context) error {
	pid := b.agent.cmd.Process.Pid
	rss0, _, err := procRSS(pid)
	if err != nil {
		return err
	}
	eps, err := b.api.ListEndpoints(ctx)
	if err != nil {
		return err
	}
	have := len(eps)
	t0 := time.Now()
	var adds []float64
	for i := 0; have < b.s.MemEndpoints; i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		ta := time.Now()
		if _, err := b.addEndpoint(ctx, fmt.Sprintf("mem%d", i), fmt.Sprintf("app=mem%d", i)); err != nil {
			return err
		}
		adds = append(adds, time.Since(ta).Seconds())
		have++
		if have%25 == 0 {
			b.logf("   %d endpoints (last add %s)", have, fmtSecs(adds[len(adds)-1]))
		}
	}
	addTime := time.Since(t0)
	waitIdle(pid, 30*time.Second)
	time.Sleep(time.Second)
	rss, hwm, err := procRSS(pid)
	if err != nil {
		return err
	}
	ids, err := b.api.ListIdentities(ctx)
	if err != nil {
		return err
	}
	const goal = 100 << 20
	b.rep.add(row{num: "8", measure: fmt.Sprintf("Agent memory, %d endpoints, %s identities", have, commas(len(ids))), figure: "agent VmRSS",
		value: fmt.Sprintf("%.1f MB", float64(rss)/(1<<20)), spread: fmt.Sprintf("peak (VmHWM) %.1f MB", float64(hwm)/(1<<20)),
		n: "1", target: "≤ 100 MB", result: passFail(rss <= goal)})
	if rss > goal {
		b.rep.note("Target 8 missed: agent RSS %.1f MB with %d endpoints.", float64(rss)/(1<<20), have)
	}
	if hwm > goal {
		b.rep.note("Agent memory: the resident set peaked at %.1f MB (VmHWM) during the run, above 100 MB, while the policy "+
			"imports of 10,000 rules ran (section 5: the import builds the whole repository, map states and a JSON state file at "+
			"once); it settles at %.1f MB.", float64(hwm)/(1<<20), float64(rss)/(1<<20))
	}
	var body strings.Builder
	fmt.Fprintf(&body, "VmRSS before adding endpoints (%d endpoints): %.1f MB; after: %.1f MB; peak over the run (VmHWM, "+
		"includes the policy imports of the earlier blocks): %.1f MB. Adding %d endpoints took %s "+
		"(one add: first %s, last %s, median %s).\n", len(eps), float64(rss0)/(1<<20), float64(rss)/(1<<20), float64(hwm)/(1<<20),
		len(adds), fmtDur(addTime), fmtSecs(first(adds)), fmtSecs(last(adds)), fmtSecs(median(adds)))
	if len(adds) > 0 && last(adds) > 2*first(adds) {
		b.rep.note("`endpoint add` slows down as endpoints are added: %s for the first of this block, %s for the %dth "+
			"(each add resolves the policy of every endpoint again, memoized, writes the maps of those whose policy "+
			"changed, and saves the state of all endpoints).", fmtSecs(first(adds)), fmtSecs(last(adds)), have)
	}
	b.rep.section("8. Agent memory", body.String())
	return nil
}

func first(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return xs[0]
}

func last(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	return xs[len(xs)-1]
}
