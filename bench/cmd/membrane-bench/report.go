package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ---- statistics -----------------------------------------------------------

func median(xs []float64) float64 { return pctl(xs, 0.5) }

// pctl is the nearest-rank percentile (q in (0, 1]); the median of an even
// count is the mean of the two middle values.
func pctl(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if q == 0.5 {
		n := len(s)
		if n%2 == 1 {
			return s[n/2]
		}
		return (s[n/2-1] + s[n/2]) / 2
	}
	i := int(q*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

func minMax(xs []float64) (float64, float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	lo, hi := xs[0], xs[0]
	for _, x := range xs {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}

// ratios divides a's values by b's, round by round.
func ratios(a, b []float64) []float64 {
	out := make([]float64, 0, len(a))
	for i := range a {
		if i < len(b) && b[i] != 0 {
			out = append(out, a[i]/b[i])
		}
	}
	return out
}

// ---- report ---------------------------------------------------------------

type row struct {
	num, measure, figure, value, spread, n, target, result string
}

type section struct {
	title, body string
}

type report struct {
	s        settings
	started  time.Time
	Duration time.Duration
	Fatal    string

	setupImport                                          time.Duration
	srvEntries, otherEntries, ipcacheEntries, identities int

	rows     []row
	sections []section
	notes    []string
}

func newReport(s settings) *report { return &report{s: s, started: time.Now()} }

func (r *report) add(rw row) { r.rows = append(r.rows, rw) }

func (r *report) section(title, body string) { r.sections = append(r.sections, section{title, body}) }

func (r *report) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// ratioRow adds a row for a ratio measured round by round; target 0 means
// none (reported for contrast).
func (r *report) ratioRow(num, measure, figure string, rs []float64, target float64) bool {
	lo, hi := minMax(rs)
	rw := row{num: num, measure: measure, figure: figure, value: fmtRatio(median(rs), target),
		spread: fmt.Sprintf("%.3f–%.3f", lo, hi), n: fmt.Sprint(len(rs)), target: "—", result: "info"}
	pass := true
	if target > 0 {
		rw.target = fmt.Sprintf("≥ %.2f", target)
		pass = median(rs) >= target
		rw.result = passFail(pass)
	}
	if len(rs) == 0 {
		rw.value, rw.spread, rw.result = "n/a", "", "ERROR"
		pass = false
	}
	r.add(rw)
	return pass
}

// fmtRatio prints a ratio with 3 decimals, 4 when 3 would round it onto
// its target.
func fmtRatio(v, target float64) string {
	if target > 0 && v != target && fmt.Sprintf("%.3f", v) == fmt.Sprintf("%.3f", target) {
		return fmt.Sprintf("%.4f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "**FAIL**"
}

func (r *report) blockError(block string, err error) {
	r.add(row{num: blockNum[block], measure: blockTitle[block], figure: "—", result: "ERROR"})
	r.note("Block %q stopped with an error: %v", block, err)
}

var blockNum = map[string]string{"datapath": "1–3", "flat": "4", "update": "5", "epadd": "6", "l7": "7", "mem": "8"}
var blockTitle = map[string]string{
	"datapath": "TCP request/response, connect/close, throughput",
	"flat":     "Flatness: conn/s, 100 vs 60,000 entries",
	"update":   "Policy update to enforcement",
	"epadd":    "`endpoint add` to enforced",
	"l7":       "L7: HTTP keep-alive req/s",
	"mem":      "Agent RSS, 100 endpoints, 10,000 identities",
}

func (r *report) table() string {
	var b strings.Builder
	b.WriteString("| # | Measurement | Figure | Value | Spread | n | Target | Result |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, rw := range r.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", rw.num, rw.measure, rw.figure, rw.value, rw.spread, rw.n, rw.target, rw.result)
	}
	return b.String()
}

func (r *report) write(path string) error {
	var b strings.Builder
	mode := fmt.Sprintf("full (%d rounds of 2 × %s; netfilter contrasts %d rounds; L7 %d rounds of %s per path)",
		r.s.Rounds, r.s.Dur, r.s.NFRounds, r.s.L7Rounds, r.s.HTTPDur)
	if r.s.Quick {
		mode = fmt.Sprintf("QUICK smoke test (BENCH_QUICK=1: %d rounds of 2 × %s; figures are indicative only)", r.s.Rounds, r.s.Dur)
	}
	b.WriteString("# Membrane benchmarks (`make bench`)\n\n")
	fmt.Fprintf(&b, "- Date: %s\n", r.started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- Kernel: %s\n", kernel())
	fmt.Fprintf(&b, "- CPU: %s\n", cpuModel())
	fmt.Fprintf(&b, "- Tree: %s\n", commit())
	fmt.Fprintf(&b, "- Mode: %s; run took %s\n", mode, r.Duration.Round(time.Second))
	if r.identities > 0 {
		fmt.Fprintf(&b, "- Standing state of the `membrane` variant: %d identities, %d ipcache entries; the server's policy map holds %d entries, another endpoint's %d (imported in %s)\n",
			r.identities, r.ipcacheEntries, r.srvEntries, r.otherEntries, r.setupImport.Round(time.Millisecond))
	}
	if r.Fatal != "" {
		fmt.Fprintf(&b, "\n**The run stopped early: %s**\n", r.Fatal)
	}
	b.WriteString("\nEvery ratio is computed round by round between variants measured side by side in this run " +
		"(variants interleaved, their order alternated or rotated each round): Value is its median over the rounds, Spread its " +
		"min–max, n the number of rounds. Higher is better for every ratio. Latencies and memory are absolute targets, " +
		"measured in this run (n: repetitions).\n\n")
	b.WriteString(r.table())
	for _, s := range r.sections {
		fmt.Fprintf(&b, "\n## %s\n\n%s\n", s.title, strings.TrimRight(s.body, "\n"))
	}
	if len(r.notes) > 0 {
		b.WriteString("\n## Findings\n\n")
		for _, n := range r.notes {
			fmt.Fprintf(&b, "- %s\n", strings.ReplaceAll(strings.TrimRight(n, "\n"), "\n", "\n  "))
		}
	}
	b.WriteString("\n" + methodology)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func kernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:])
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	model, n := "", 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "model name":
			model = strings.TrimSpace(v)
		case "processor":
			n++
		}
	}
	return fmt.Sprintf("%s, %d CPUs", model, n)
}

// commit describes the tree (read-only git commands).
func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	s := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		s += " with uncommitted changes"
	}
	return s
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	}
}

func fmtRate(v float64, unit string) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.2f G%s", v/1e9, unit)
	case v >= 1e6:
		return fmt.Sprintf("%.2f M%s", v/1e6, unit)
	case v >= 1e4:
		return fmt.Sprintf("%.1f k%s", v/1e3, unit)
	}
	return fmt.Sprintf("%.0f %s", v, unit)
}

const methodology = `## How this is measured

- **Shared, noisy machine.** No absolute figure is compared across runs. Variants run side by side in the same run,
  interleaved, their order alternated or rotated from round to round; each figure is a ratio per round (or a latency
  distribution of this run), summarised by its median and min–max over the rounds. The run and everything it starts
  (agent, servers, clients, iptables-restore, nft, nginx) has nice −10, the same for every variant.
- **Topology.** Client and server are network namespaces wired as Membrane wires endpoints: a veth pair, the
  address as a /32, a default route through the link-local gateway 169.254.1.1 with a static neighbour, a /32 route on
  the host with the gateway's source address; the host forwards. The ` + "`membrane`" + ` endpoints are made by a Membrane
  agent the run starts (` + "`--policy-map-max-entries 65536`" + `), which attaches its eBPF programs (TCX) to the
  host-side veths. ` + "`none`" + `, ` + "`iptables`" + ` and ` + "`nftables`" + ` use a second pair wired by the bench with the
  same code (` + "`pkg/endpoint`" + `: PrepareVeth, Configure) and no program: only the policy mechanism differs. Client
  processes run on CPU 0, servers on CPU 1 (taskset).
- **membrane** variant: an L3/L4 CiliumNetworkPolicy allows the flow; 10,000 fromCIDR /32 give 10,000 CIDR
  identities in the ipcache, 1,000 of them in the policy selecting the server (1,000 other entries in its policy map),
  9,000 in a policy selecting another endpoint.
- **iptables** (iptables-nft, as installed): a jump from FORWARD for the bench's interfaces to a chain with
  ` + "`--ctstate ESTABLISHED,RELATED -j ACCEPT`" + ` first, then 10,000 rules with the allowing one last, then DROP.
  **nftables**: the same shortcut, then one rule matching ` + "`ip saddr . tcp dport`" + ` against a set of 10,000
  elements. Rules are loaded just before each measurement of their variant and removed after it, so that netfilter's
  conntrack hooks are never active while another variant runs; for the same reason these variants are compared with
  ` + "`none`" + ` by rounds (none, iptables, nftables in rotated order), not in alternating slices.
- **1–3.** ` + "`bench-tcp alt`" + ` (bench/cmd/bench-tcp) is one client process that holds a connection (or
  connect/close loops, or a stream) in each variant's client namespace and runs them in alternating 100 ms slices; a
  slice's rate is its transactions (or, for the stream, the bytes the peer acknowledged) over its length. A round's
  ratio is the median over its cycles of membrane's slice rate over none's in the same cycle. **1**: one TCP
  connection, 1-byte request, 1-byte answer, blocking system calls. **2**: connect, 1-byte request and answer,
  close, by 2 loops (clients reuse TIME_WAIT ports). **3**: one TCP stream of 64 KiB writes (1 MiB send buffer) to a
  reader that discards. The **A/A control** runs the same method between two servers wired the same way without
  policy: its distance from 1 is the method's bias and noise on this run.
- **4. flatness**: connect/close rate, alternating slices, to a server whose policy map holds 60,000 entries (the
  10,000 CIDR identities × 6 ports) over one whose map holds 100; the same with iptables chains of 60,000 and 100
  rules (allowing rule last).
- **5. policy update**: a prober sends a UDP datagram every ~60–100 µs from the client to a port the current policy
  denies; the change allows it. Latency = send time of the first datagram that reaches the server − start of the
  change: the agent's import API call (what ` + "`membrane policy import`" + ` sends; the CLI process adds its start-up),
  ` + "`iptables-restore --noflush FILE`" + ` (a chain replaced by N rules, the allowing one last), or ` + "`nft -f FILE`" + `
  (N elements added to a set). The policy has N rules: N−1 fromCIDR /32 rules (CIDRs not yet known: new identities)
  and the allowing one last. Each repetition is undone (not timed) before the next; variants are interleaved. A
  variant stops after 100 repetitions or when its time budget is spent; p99 is the nearest-rank percentile (the
  maximum below 100 repetitions).
- **6. endpoint add**: the prober runs in a fresh namespace before ` + "`endpoint add`" + ` (its sends fail until the
  interface exists); latency = first datagram allowed by policy through to the server − start of the API call. Beside
  it, the same namespace wiring done without Membrane.
- **7. L7**: wrk (1 thread, fixed concurrency, CPU 0) HTTP/1.1 keep-alive to an nginx origin (1 worker, CPU 1) in
  the server namespace: direct (L3/L4 policy), through Membrane's proxy (CiliumNetworkPolicy with
  toPorts.rules.http), and through nginx as a reverse proxy on the host (upstream keep-alive); the proxies are not
  pinned.
- **8. memory**: VmRSS of the agent process once 100 endpoints (each its own identity) exist beside the 10,000
  CIDR identities, after the agent went idle.
- When a target is missed the run profiles the cause (perf with cpu-clock: this VM has no hardware counters; BPF
  run-time statistics for the programs) and writes what it found under Findings.
`
