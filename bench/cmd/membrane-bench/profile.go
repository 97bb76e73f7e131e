package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// datapathCost measures what Membrane's programs cost per packet: one
// extra request/response and connect/close pass with the kernel's BPF run
// time statistics on (BPF_ENABLE_STATS, switched off again when its file
// descriptor closes). Not part of the ratios: the statistics cost time.
func (b *bench) datapathCost(ctx context.Context) (string, dpCost, error) {
	var cost dpCost
	progs := map[string]*ebpf.Program{}
	defer func() {
		for _, p := range progs {
			p.Close()
		}
	}()
	for _, e := range []*ep{b.mCli, b.mSrv} {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			qr, err := link.QueryPrograms(link.QueryOptions{Target: e.ifidx, Attach: at})
			if err != nil {
				return "", cost, fmt.Errorf("query programs on %s: %w", e.hostIf, err)
			}
			for _, ap := range qr.Programs {
				p, err := ebpf.NewProgramFromID(ap.ID)
				if err != nil {
					return "", cost, err
				}
				info, err := p.Info()
				if err != nil || progs[info.Name] != nil {
					p.Close()
					continue
				}
				progs[info.Name] = p
			}
		}
	}
	if len(progs) == 0 {
		return "", cost, errors.New("no program attached to the endpoints' veths")
	}
	closer, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return "", cost, fmt.Errorf("enable BPF statistics: %w", err)
	}
	defer closer.Close()
	snap := func() map[string]ebpf.ProgramStats {
		out := map[string]ebpf.ProgramStats{}
		for n, p := range progs {
			if st, err := p.Stats(); err == nil {
				out[n] = *st
			}
		}
		return out
	}
	var sb strings.Builder
	sb.WriteString("Cost of Membrane's eBPF programs, from the kernel's BPF run-time statistics during one extra pass " +
		"(not part of the ratios; the statistics add their own cost):\n\n")
	sb.WriteString("| pass | program | runs per transaction | ns per run | eBPF time per transaction | share of a transaction |\n|---|---|---|---|---|---|\n")
	dst := netip.AddrPortFrom(b.mSrv.addr, portEcho)
	for _, mode := range []string{"rr", "crr"} {
		before := snap()
		r, err := b.tcpClient(ctx, mode, b.mCli.ns, dst, b.s.Dur)
		if err != nil {
			return "", cost, err
		}
		after := snap()
		txNS := 1e9 / r.WindowRate
		for _, n := range sortedKeys(after) {
			runs := float64(after[n].RunCount - before[n].RunCount)
			ns := float64(after[n].Runtime - before[n].Runtime)
			if runs == 0 {
				continue
			}
			per := ns / float64(r.Ops)
			fmt.Fprintf(&sb, "| %s | %s | %.1f | %.0f | %.2f µs | %.1f%% |\n", mode, n, runs/float64(r.Ops), ns/runs, per/1e3, 100*per/txNS)
			if mode == "rr" {
				cost.rrPerTxNS += per
				cost.rrTxNS = txNS
			}
		}
	}
	// The stream: per 64 KiB sent, and as a share of the pass's time.
	before := snap()
	t0 := time.Now()
	rates, err := b.alt(ctx, "stream", b.s.Dur, altTarget{b.mCli, netip.AddrPortFrom(dst.Addr(), portSink)})
	if err != nil {
		return "", cost, err
	}
	elapsed := float64(time.Since(t0).Nanoseconds())
	after := snap()
	bytes := 0.0
	for _, r := range rates[0] {
		bytes += r * 0.1 / 8
	}
	chunks := bytes / 65536
	for _, n := range sortedKeys(after) {
		runs := float64(after[n].RunCount - before[n].RunCount)
		ns := float64(after[n].Runtime - before[n].Runtime)
		if runs == 0 || chunks == 0 {
			continue
		}
		fmt.Fprintf(&sb, "| stream (per 64 KiB) | %s | %.2f | %.0f | %.2f µs | %.1f%% of the pass's time |\n", n, runs/chunks, ns/runs, ns/chunks/1e3, 100*ns/elapsed)
		cost.streamShare += ns / elapsed
	}
	if h, err := helperCosts(); err == nil {
		sb.WriteString("\nCost of one helper call on this machine (BPF_PROG_TEST_RUN of 100 calls, 20,000 runs): ")
		var parts []string
		for _, x := range h {
			parts = append(parts, fmt.Sprintf("%s %.1f ns", x.name, x.ns))
		}
		sb.WriteString(strings.Join(parts, ", ") + ".\n")
		cost.helpers = h
	}
	return sb.String(), cost, nil
}

// dpCost is what datapathCost measured of the request/response pass.
type dpCost struct {
	rrPerTxNS float64 // eBPF run time per transaction
	rrTxNS    float64 // one transaction
	// streamShare: eBPF run time over the stream pass's time.
	streamShare float64
	helpers     []helperCost
}

type helperCost struct {
	name string
	ns   float64
}

// helperCosts times time helpers with BPF_PROG_TEST_RUN: what one call
// costs on this machine.
func helperCosts() ([]helperCost, error) {
	var out []helperCost
	for _, h := range []struct {
		name string
		fn   asm.BuiltinFunc
	}{{"bpf_ktime_get_ns", asm.FnKtimeGetNs}, {"bpf_ktime_get_coarse_ns", asm.FnKtimeGetCoarseNs}, {"bpf_jiffies64", asm.FnJiffies64}} {
		var ins asm.Instructions
		for i := 0; i < 100; i++ {
			ins = append(ins, h.fn.Call())
		}
		ins = append(ins, asm.Mov.Imm(asm.R0, 0), asm.Return())
		p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: ins})
		if err != nil {
			return nil, err
		}
		_, d, err := p.Benchmark(make([]byte, 64), 20000, nil)
		p.Close()
		if err != nil {
			return nil, err
		}
		out = append(out, helperCost{h.name, float64(d.Nanoseconds()) / 100})
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// perfWorks reports whether perf can sample (software clock: this VM has
// no hardware counters).
func perfWorks() bool {
	if _, err := exec.LookPath("perf"); err != nil {
		return false
	}
	return exec.Command("perf", "record", "-e", "cpu-clock", "-o", "/dev/null", "--", "true").Run() == nil
}

// profile samples (perf, cpu-clock, call graphs) while during runs: the
// whole system (pid 0) or one process, and returns the report's top
// entries: self time, and for a process the cumulative time of
// Membrane's own functions.
func (b *bench) profile(ctx context.Context, name string, pid int, during func() error) (string, error) {
	if !b.profiling {
		return "", errors.New("profiling switched off (--no-profile)")
	}
	if !perfWorks() {
		return "", errors.New("perf cannot sample here")
	}
	data := filepath.Join(b.work, "perf-"+name+".data")
	args := []string{"record", "-F", "999", "-e", "cpu-clock", "-g", "-o", data}
	if pid > 0 {
		args = append(args, "-p", strconv.Itoa(pid))
	} else {
		args = append(args, "-a")
	}
	cmd := exec.Command("perf", args...)
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	b.cl.add("perf "+name, func() error { _ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL); return nil })
	time.Sleep(300 * time.Millisecond)
	derr := during()
	_ = cmd.Process.Signal(os.Interrupt)
	werr := make(chan error, 1)
	go func() { werr <- cmd.Wait() }()
	select {
	case <-werr:
	case <-time.After(30 * time.Second):
		_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		<-werr
	}
	if derr != nil {
		return "", derr
	}
	self, err := run(ctx, 2*time.Minute, "perf", "report", "-i", data, "--no-children", "--sort", "symbol",
		"--stdio", "-g", "none", "--percent-limit", "1.5", "-q")
	if err != nil {
		return "", err
	}
	var sb strings.Builder
	sb.WriteString("```\nself time (perf, cpu-clock):\n")
	sb.WriteString(topLines(self, 14))
	if pid > 0 {
		cum, err := run(ctx, 2*time.Minute, "perf", "report", "-i", data, "--children", "--sort", "symbol",
			"--stdio", "-g", "none", "--percent-limit", "3", "-q")
		if err == nil {
			var keep []string
			for _, l := range strings.Split(cum, "\n") {
				if strings.Contains(l, "membrane-net/membrane/pkg/") && !strings.Contains(l, "pkg/api.") {
					keep = append(keep, l)
				}
			}
			sb.WriteString("cumulative (with callees), Membrane's functions:\n")
			sb.WriteString(topLines(strings.Join(keep, "\n"), 14))
		}
	}
	sb.WriteString("```\n")
	_ = os.Remove(data)
	return sb.String(), nil
}

// topLines keeps the first n non-empty lines, trimmed of perf's padding.
func topLines(s string, n int) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimRight(l, " -\t")
		if strings.TrimSpace(l) == "" {
			continue
		}
		l = strings.Join(strings.Fields(l), " ")
		out = append(out, "  "+l)
		if len(out) == n {
			break
		}
	}
	return strings.Join(out, "\n") + "\n"
}

// bpfBreakdown samples the whole system (perf, cpu-clock, call graphs)
// while during runs and splits the samples taken inside Membrane's
// programs (from_container, to_container) by what they were doing: the
// program's own instructions, hash map lookups, reading the clock, loading
// packet bytes, other helpers.
func (b *bench) bpfBreakdown(ctx context.Context, during func() error) (string, map[string]float64, error) {
	if !b.profiling {
		return "", nil, errors.New("profiling switched off (--no-profile)")
	}
	if !perfWorks() {
		return "", nil, errors.New("perf cannot sample here")
	}
	data := filepath.Join(b.work, "perf-bpf.data")
	cmd := exec.Command("perf", "record", "-F", "9999", "-e", "cpu-clock", "-g", "-a", "-o", data)
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	b.cl.add("perf bpf", func() error { _ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL); return nil })
	time.Sleep(300 * time.Millisecond)
	derr := during()
	_ = cmd.Process.Signal(os.Interrupt)
	_ = cmd.Wait()
	defer os.Remove(data)
	if derr != nil {
		return "", nil, derr
	}
	out, err := run(ctx, 5*time.Minute, "perf", "script", "-i", data, "-F", "ip,sym")
	if err != nil {
		return "", nil, err
	}
	groups := map[string]float64{}
	total := 0.0
	for _, st := range strings.Split(out, "\n\n") {
		var syms []string
		for _, l := range strings.Split(strings.TrimSpace(st), "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				syms = append(syms, f[1])
			}
		}
		inProg := false
		for _, s := range syms {
			if strings.HasPrefix(s, "bpf_prog_") && (strings.HasSuffix(s, "_from_container") || strings.HasSuffix(s, "_to_container")) {
				inProg = true
				break
			}
		}
		if !inProg || len(syms) == 0 {
			continue
		}
		total++
		groups[leafGroup(syms[0])]++
	}
	if total < 50 {
		return "", nil, fmt.Errorf("only %.0f samples inside the programs", total)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "Where the programs spend their time (perf, %0.f samples inside from_container/to_container during a request/response pass):\n\n", total)
	sb.WriteString("| inside the programs | share |\n|---|---|\n")
	keys := sortedKeys(groups)
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && groups[keys[j]] > groups[keys[j-1]]; j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	shares := map[string]float64{}
	rest := 0.0
	for _, k := range keys {
		shares[k] = groups[k] / total
		if shares[k] < 0.02 {
			rest += shares[k]
			continue
		}
		fmt.Fprintf(&sb, "| %s | %.0f%% |\n", k, 100*shares[k])
	}
	if rest > 0 {
		fmt.Fprintf(&sb, "| other (each < 2%%) | %.0f%% |\n", 100*rest)
	}
	return sb.String(), shares, nil
}

// Names of the groups bpfBreakdown uses.
const (
	grpOwn   = "the programs' own instructions"
	grpHash  = "hash map lookups (endpoints, conntrack: hashing, bucket walk, key compare)"
	grpClock = "reading the clock (bpf_ktime_get_*)"
	grpLoad  = "copying packet bytes (bpf_skb_load_bytes)"
	grpOther = "other helpers"
)

func leafGroup(sym string) string {
	switch {
	case strings.HasPrefix(sym, "bpf_prog_"):
		return grpOwn
	case strings.Contains(sym, "htab") || strings.Contains(sym, "lookup_nulls") || strings.Contains(sym, "jhash") ||
		sym == "memcmp" || strings.Contains(sym, "lru"):
		return grpHash
	case strings.Contains(sym, "ktime") || strings.Contains(sym, "tsc") || strings.Contains(sym, "clock"):
		return grpClock
	case strings.Contains(sym, "skb_load_bytes") || strings.Contains(sym, "memcpy") || strings.Contains(sym, "skb_copy_bits") ||
		strings.Contains(sym, "skb_header_pointer"):
		return grpLoad
	}
	return grpOther + " (" + sym + ")"
}

// pctOf finds the first percentage on the first line of a profile that
// mentions sym; 0 when none does.
func pctOf(prof, sym string) float64 {
	for _, l := range strings.Split(prof, "\n") {
		if !strings.Contains(l, sym) {
			continue
		}
		for _, f := range strings.Fields(l) {
			if strings.HasSuffix(f, "%") {
				v, err := strconv.ParseFloat(strings.TrimSuffix(f, "%"), 64)
				if err == nil {
					return v
				}
			}
		}
	}
	return 0
}

// attachNoop attaches a program that only returns TCX_NEXT to both TCX
// hooks of an interface; the returned function detaches it.
func attachNoop(ifindex int) (func(), error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "mbrb_noop", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
	if err != nil {
		return nil, fmt.Errorf("load no-op program: %w", err)
	}
	var ls []link.Link
	detach := func() {
		for _, l := range ls {
			l.Close()
		}
		p.Close()
	}
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: p, Attach: at})
		if err != nil {
			detach()
			return nil, fmt.Errorf("attach no-op program: %w", err)
		}
		ls = append(ls, l)
	}
	return detach, nil
}

// hotspots lists the Membrane functions that take at least min percent of
// a profile (cumulative), wrappers left out, each with what it does when
// known: the evidence behind a finding, worded from the profile of this
// run rather than from what the code looked like when the bench was
// written.
func hotspots(prof string, min float64) string {
	wrappers := []string{"changePolicy", "enforcePolicy", "ImportPolicy", "DeletePolicy", "AddEndpoint", "createEndpoint",
		"DeleteEndpoint", "pkg/api.", ".func", "gowrap"}
	hints := []struct{ sym, hint string }{
		{"selectorCache).upsert", "new identities matched against the cached selectors"},
		{"selectorCache).acquire", "new selectors matched against the known identities"},
		{"selectorCache).remove", "identities removed from the cached selectors"},
		{"keysUnderAny", "a pass over every ipcache key to find those under changed prefixes"},
		{"Repository).Prefixes", "every policy prefix collected and sorted again"},
		{"policyPrefixes", "the set of policy prefixes rebuilt"},
		{"syncCIDRIdentities", "CIDR identities allocated and told to the repository"},
		{"publishCIDRs", "the ipcache brought to the CIDR identities"},
		{"SetCIDRs", "ipcache entries recomputed"},
		{"persist", "state written"},
		{"Store).Save", "the whole state marshalled and written"},
		{"Store).write", "state files written"},
		{"resolveAll", "every endpoint's policy recomputed"},
		{"Repository).Resolve", "one endpoint's policy resolved"},
		{"SyncPolicy", "policy maps diffed and written"},
		{"writePolicy", "policy map entries written"},
		{"flushCT", "the conntrack map walked to reset changed connections"},
		{"Parse", "policy documents parsed"},
		{"MarshalJSON", "labels marshalled to JSON"},
		{"regenerate", "policies recomputed after an identity went away"},
	}
	var out []string
	seen := map[string]bool{}
	for _, l := range strings.Split(prof, "\n") {
		if !strings.Contains(l, "membrane-net/membrane/pkg/") {
			continue
		}
		pct := pctOf(l, "%")
		if pct < min {
			continue
		}
		f := strings.Fields(l)
		name := f[len(f)-1]
		name = name[strings.LastIndex(name, "/")+1:]
		skip := false
		for _, w := range wrappers {
			if strings.Contains(name, w) {
				skip = true
			}
		}
		if skip || seen[name] {
			continue
		}
		seen[name] = true
		item := fmt.Sprintf("`%s` %.0f%%", name, pct)
		for _, h := range hints {
			if strings.Contains(name, h.sym) {
				item += " (" + h.hint + ")"
				break
			}
		}
		out = append(out, item)
		if len(out) == 8 {
			break
		}
	}
	return strings.Join(out, ", ")
}
