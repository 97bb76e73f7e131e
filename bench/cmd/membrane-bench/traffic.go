package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"
)

type tcpResult struct {
	Ops     int64   `json:"ops"`
	Errors  int64   `json:"errors"`
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"rate"`
	// WindowRate: median of 100 ms windows (see bench-tcp).
	WindowRate float64 `json:"windowRate"`
	P50us      float64 `json:"p50us"`
	P99us      float64 `json:"p99us"`
}

// tcpClient runs bench-tcp rr or crr in a client namespace, on the client
// core.
func (b *bench) tcpClient(ctx context.Context, mode, ns string, dst netip.AddrPort, dur time.Duration) (tcpResult, error) {
	argv := inNS(ns, clientCore, b.benchTCP, mode, "-addr", dst.String(), "-duration", dur.String(),
		"-workers", strconv.Itoa(b.s.CRRWorkers))
	out, err := run(ctx, dur+30*time.Second, argv...)
	if err != nil {
		return tcpResult{}, err
	}
	var r tcpResult
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		return r, fmt.Errorf("bench-tcp output %q: %w", out, err)
	}
	if r.Ops == 0 {
		return r, fmt.Errorf("bench-tcp %s to %s: no transaction", mode, dst)
	}
	return r, nil
}

// altTarget is one side of an alternating measurement: a client
// namespace and the server address it reaches.
type altTarget struct {
	cli *ep
	dst netip.AddrPort
}

// alt runs bench-tcp alt: the targets measured in alternating 100 ms
// slices by one process on the client core; it returns each target's slice
// rates (per second; bits per second for stream).
func (b *bench) alt(ctx context.Context, mode string, dur time.Duration, ts ...altTarget) ([][]float64, error) {
	argv := []string{"taskset", "-c", clientCore, b.benchTCP, "alt", "-mode", mode, "-slice", "100ms",
		"-duration", dur.String(), "-workers", strconv.Itoa(b.s.CRRWorkers)}
	for _, t := range ts {
		argv = append(argv, "-target", t.cli.path+"="+t.dst.String())
	}
	out, err := run(ctx, dur+time.Minute, argv...)
	if err != nil {
		return nil, err
	}
	var r struct {
		Targets []struct {
			Target string    `json:"target"`
			Rates  []float64 `json:"rates"`
			Errors int64     `json:"errors"`
		} `json:"targets"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		return nil, fmt.Errorf("bench-tcp alt output %q: %w", out, err)
	}
	if len(r.Targets) != len(ts) {
		return nil, fmt.Errorf("bench-tcp alt: %d targets in the output, want %d", len(r.Targets), len(ts))
	}
	rates := make([][]float64, len(ts))
	for i, t := range r.Targets {
		if t.Errors > 0 {
			return nil, fmt.Errorf("%s %s: %d failed transactions", mode, t.Target, t.Errors)
		}
		if len(t.Rates) == 0 || median(t.Rates) == 0 {
			return nil, fmt.Errorf("%s %s: nothing went through", mode, t.Target)
		}
		rates[i] = t.Rates
	}
	return rates, nil
}

// cycleRatio is the median over cycles of a's slice rate over b's (slices
// of one cycle ran back to back).
func cycleRatio(a, b []float64) float64 {
	n := min(len(a), len(b))
	return median(ratios(a[:n], b[:n]))
}

type httpResult struct {
	RPS   float64
	P50us float64
	P99us float64
}

var (
	wrkRPS     = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkPct     = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	wrkNon2xx  = regexp.MustCompile(`Non-2xx or 3xx responses:\s+(\d+)`)
	wrkSockErr = regexp.MustCompile(`Socket errors:.*`)
)

// wrk runs HTTP/1.1 keep-alive load from a client namespace at a fixed
// concurrency.
func (b *bench) wrk(ctx context.Context, ns, url string, dur time.Duration) (httpResult, error) {
	secs := int(math.Max(1, math.Round(dur.Seconds())))
	argv := inNS(ns, clientCore, "wrk", "-t1", "-c"+strconv.Itoa(b.s.WrkConns), fmt.Sprintf("-d%ds", secs), "--latency", url)
	out, err := run(ctx, dur+30*time.Second, argv...)
	if err != nil {
		return httpResult{}, err
	}
	if m := wrkNon2xx.FindStringSubmatch(out); m != nil {
		return httpResult{}, fmt.Errorf("wrk %s: %s responses were not 2xx", url, m[1])
	}
	if m := wrkSockErr.FindString(out); m != "" {
		return httpResult{}, fmt.Errorf("wrk %s: %s", url, m)
	}
	m := wrkRPS.FindStringSubmatch(out)
	if m == nil {
		return httpResult{}, fmt.Errorf("wrk output: no Requests/sec: %s", out)
	}
	var r httpResult
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	for _, pm := range wrkPct.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(pm[2], 64)
		switch pm[3] {
		case "ms":
			v *= 1e3
		case "s":
			v *= 1e6
		}
		if pm[1] == "50" {
			r.P50us = v
		} else {
			r.P99us = v
		}
	}
	if r.RPS == 0 {
		return r, fmt.Errorf("wrk %s: no request completed", url)
	}
	return r, nil
}
