package conformance

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// probeCase sends the plan's probes, Parallel at a time, sends the ones
// that mismatched once more with twice the time, and records the results.
func (r *Runner) probeCase(ctx context.Context, plan *Plan, res *CaseResult) {
	var todo []int
	for i, pp := range plan.Probes {
		switch {
		case pp.Skip != "":
			res.Skipped++
			res.countReason("skipped: " + pp.Skip)
		case pp.Unsupported != "":
			res.Unsupported++
			res.countReason("unsupported: " + pp.Unsupported)
		default:
			todo = append(todo, i)
		}
	}
	got := make([]Outcome, len(plan.Probes))
	r.sendAll(ctx, plan.Probes, todo, got, r.cfg.Timeout)
	var again []int
	for _, i := range todo {
		if !plan.Probes[i].Want.Matches(got[i]) {
			again = append(again, i)
		}
	}
	first := append([]Outcome(nil), got...)
	if len(again) > 0 && ctx.Err() == nil {
		r.sendAll(ctx, plan.Probes, again, got, 2*r.cfg.Timeout)
	}
	for _, i := range todo {
		pp := plan.Probes[i]
		res.Probes++
		pr := ProbeResult{Index: pp.Index, From: pp.From, To: pp.To, Protocol: pp.Protocol, HTTP: pp.HTTP, Want: pp.Want, Got: got[i]}
		if pp.Protocol != "ICMP" {
			pr.Port = fmt.Sprint(pp.Port)
		}
		if pp.Want.Matches(got[i]) {
			res.Passed++
			if !pp.Want.Matches(first[i]) {
				res.Flaky++
				pr.Got = first[i]
				res.Flakes = append(res.Flakes, pr)
			}
			continue
		}
		if first[i] != got[i] {
			pr.Got.Detail = joinDetail(pr.Got.Detail, "first attempt: "+first[i].String())
		}
		res.Failures = append(res.Failures, pr)
	}
}

func joinDetail(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func (c *CaseResult) countReason(reason string) {
	if c.SkipReasons == nil {
		c.SkipReasons = map[string]int{}
	}
	c.SkipReasons[reason]++
}

// sendAll sends the probes idx of probes concurrently and stores the
// outcomes in got.
func (r *Runner) sendAll(ctx context.Context, probes []PlannedProbe, idx []int, got []Outcome, timeout time.Duration) {
	p := &prober{timeout: timeout, seq: r.seq}
	sem := make(chan struct{}, r.cfg.Parallel)
	var wg sync.WaitGroup
	for _, i := range idx {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			got[i] = r.send(ctx, p, probes[i], timeout)
		}(i)
	}
	wg.Wait()
}

// send sends one probe to each of its destinations; the first outcome that
// mismatches is the probe's.
func (r *Runner) send(ctx context.Context, p *prober, pp PlannedProbe, timeout time.Duration) Outcome {
	o, err := r.topo.origin(pp.Src)
	if err != nil {
		return Outcome{Result: ResultError, Detail: err.Error()}
	}
	if pp.HTTP != nil {
		timeout *= 3
	}
	var out Outcome
	for _, dst := range pp.Dsts {
		out = p.probe(ctx, o, pp, dst, timeout)
		if !pp.Want.Matches(out) {
			if len(pp.Dsts) > 1 {
				out.Detail = joinDetail(out.Detail, "to "+dst.String())
			}
			return out
		}
	}
	return out
}
