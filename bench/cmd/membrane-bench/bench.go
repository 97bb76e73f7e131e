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

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/endpoint"
)

// ep is one endpoint of the topology: a namespace with one address, wired
// either by the agent (membrane) or by the bench with the same code
// (pkg/endpoint) and no eBPF programs (plain).
type ep struct {
	ns     string // namespace name
	path   string // namespace path
	addr   netip.Addr
	hostIf string
	ifidx  int
	id     uint32 // agent endpoint id (membrane only)
	ident  uint32
}

type bench struct {
	work      string
	membrane  string
	benchTCP  string
	s         settings
	sel       map[string]bool
	profiling bool
	agentArgs []string

	cl  cleaner
	rep *report
	fwd *fwdKeeper

	agent *proc
	api   *api.Client
	// Membrane's endpoints: client, server, the two flatness servers and
	// the endpoint the 9,000-CIDR policy selects.
	mCli, mSrv, mF100, mF60k, mOther *ep
	// The same wiring without Membrane.
	pCli, pSrv, pF100, pF60k *ep
}

var base = time.Now()

// now is a monotonic clock shared by every goroutine of the run.
func now() int64 { return time.Since(base).Nanoseconds() }

func newBench(work string, s settings, sel map[string]bool, profile bool) *bench {
	return &bench{
		work: work, membrane: filepath.Join(work, "membrane"), benchTCP: filepath.Join(work, "bench-tcp"),
		s: s, sel: sel, profiling: profile, rep: newReport(s), fwd: newFwdKeeper(),
	}
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%6.1fs] "+format+"\n", append([]any{time.Since(base).Seconds()}, args...)...)
}

func (b *bench) cleanup() {
	b.logf("cleaning up")
	b.cl.run(b.logf)
	sweep(b.work, false)
}

func (b *bench) run(ctx context.Context) error {
	if err := b.checkTools(); err != nil {
		return err
	}
	kctx, stop := context.WithCancel(ctx)
	defer stop()
	go b.fwd.run(kctx)
	defer b.reportForwardingResets()
	if err := b.setup(ctx); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	blocks := map[string]func(context.Context) error{
		"datapath": b.blockDatapath, "flat": b.blockFlat, "update": b.blockUpdate,
		"epadd": b.blockEPAdd, "l7": b.blockL7, "mem": b.blockMem,
	}
	if b.sel["hold"] {
		// For investigating: keep the topology up until interrupted.
		b.logf("topology up (agent socket %s); interrupt to clean up", filepath.Join(b.work, "agent.sock"))
		<-ctx.Done()
		return nil
	}
	for _, name := range blockNames {
		if len(b.sel) > 0 && !b.sel[name] {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !b.agent.alive() {
			return fmt.Errorf("the agent died: %s", tail(b.agent.logPath, 20))
		}
		b.logf("== block %s", name)
		t0 := time.Now()
		if err := blocks[name](ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.logf("block %s failed: %v", name, err)
			b.rep.blockError(name, err)
		}
		b.logf("   block %s took %s", name, time.Since(t0).Round(100*time.Millisecond))
	}
	return nil
}

func (b *bench) checkTools() error {
	var missing []string
	for _, t := range []string{"ip", "taskset", "iptables", "iptables-restore", "nft", "wrk", "nginx"} {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	for _, f := range []string{b.membrane, b.benchTCP} {
		if _, err := os.Stat(f); err != nil {
			missing = append(missing, f)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing: %s", strings.Join(missing, ", "))
	}
	return nil
}

// setup starts the agent, wires the endpoints, starts the servers and
// imports the standing policy state: 10,000 CIDR identities in the
// ipcache, 1,000 of them in the server's policy map (plus its own rules),
// 9,000 in another endpoint's.
func (b *bench) setup(ctx context.Context) error {
	if err := b.startAgent(ctx); err != nil {
		return err
	}
	var err error
	mk := func(short, labels string) *ep {
		if err != nil {
			return nil
		}
		var e *ep
		e, err = b.addEndpoint(ctx, short, labels)
		return e
	}
	b.mCli = mk("mcli", "role=client")
	b.mSrv = mk("msrv", "role=server")
	b.mF100 = mk("mf100", "role=f100")
	b.mF60k = mk("mf60k", "role=f60k")
	b.mOther = mk("mother", "role=other")
	if err != nil {
		return err
	}
	pk := func(short, hostIf string, addr netip.Addr) *ep {
		if err != nil {
			return nil
		}
		var e *ep
		e, err = b.plainEndpoint(short, hostIf, addr)
		return e
	}
	b.pCli = pk("bcli", plainPrefix+"cli", plainCli)
	b.pSrv = pk("bsrv", plainPrefix+"srv", plainSrv)
	b.pF100 = pk("bf100", plainPrefix+"f100", plainF100)
	b.pF60k = pk("bf60k", plainPrefix+"f60k", plainF60k)
	if err != nil {
		return err
	}
	// Clients open many short connections: reuse TIME_WAIT ports.
	for _, c := range []*ep{b.mCli, b.pCli} {
		if err := sysctlNS(ctx, c.ns, "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65535"); err != nil {
			return err
		}
	}
	for _, s := range []*ep{b.mSrv, b.mF100, b.mF60k, b.pSrv, b.pF100, b.pF60k} {
		argv := inNS(s.ns, serverCore, b.benchTCP, "serve", "-ports", strconv.Itoa(portEcho), "-sink", strconv.Itoa(portSink))
		if _, err := b.startProc("tcp-"+s.ns, argv, "ready"); err != nil {
			return err
		}
	}
	b.logf("importing the standing policies (10,000 CIDR identities)")
	t0 := time.Now()
	if _, err := b.api.ImportPolicy(ctx, []api.PolicyFile{
		{Name: "mbrb-server.json", Content: serverPolicy()},
		{Name: "mbrb-other.json", Content: otherPolicy()},
	}); err != nil {
		return fmt.Errorf("import standing policies: %w", err)
	}
	b.rep.setupImport = time.Since(t0)
	b.logf("   imported in %s", b.rep.setupImport.Round(time.Millisecond))
	waitIdle(b.agent.cmd.Process.Pid, 30*time.Second)
	if b.rep.srvEntries, err = b.policyEntries(ctx, b.mSrv.id); err != nil {
		return err
	}
	if b.rep.otherEntries, err = b.policyEntries(ctx, b.mOther.id); err != nil {
		return err
	}
	ipc, err := b.api.BPFIPCache(ctx)
	if err != nil {
		return err
	}
	b.rep.ipcacheEntries = len(ipc)
	ids, err := b.api.ListIdentities(ctx)
	if err != nil {
		return err
	}
	b.rep.identities = len(ids)
	// Every path works before anything is measured.
	for _, c := range []struct {
		cli, srv *ep
	}{{b.mCli, b.mSrv}, {b.pCli, b.pSrv}, {b.mCli, b.mF100}, {b.mCli, b.mF60k}, {b.pCli, b.pF100}, {b.pCli, b.pF60k}} {
		if _, err := b.tcpClient(ctx, "crr", c.cli.ns, netip.AddrPortFrom(c.srv.addr, portEcho), 200*time.Millisecond); err != nil {
			return fmt.Errorf("sanity check %s -> %s: %w", c.cli.ns, c.srv.ns, err)
		}
	}
	return nil
}

func (b *bench) startAgent(ctx context.Context) error {
	sock := filepath.Join(b.work, "agent.sock")
	bpffs := fmt.Sprintf("%s%d", bpffsPrefix, os.Getpid())
	argv := []string{b.membrane, "agent", "--socket", sock, "--state-dir", filepath.Join(b.work, "state"),
		"--bpffs-dir", bpffs, "--ipv4-pool", agentPool.String(), "--host-ifname", agentHostIf,
		"--policy-map-max-entries", "65536", "--docker-plugin="}
	argv = append(argv, b.agentArgs...)
	p, err := b.startProc("agent", argv, "")
	if err != nil {
		return err
	}
	b.agent = p
	b.cl.add("agent pins and host device", func() error {
		_ = p.stop()
		err := os.RemoveAll(bpffs)
		return errors.Join(err, deleteLink(agentHostIf))
	})
	b.api = api.NewClient(sock)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := b.api.Status(ctx); err == nil {
			return nil
		}
		if !p.alive() || time.Now().After(deadline) {
			return fmt.Errorf("the agent did not come up: %s", tail(p.logPath, 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// addEndpoint makes a namespace and has the agent wire it.
func (b *bench) addEndpoint(ctx context.Context, short, labels string) (*ep, error) {
	ns, path, err := b.newNS(short)
	if err != nil {
		return nil, err
	}
	e, err := b.api.AddEndpoint(ctx, api.EndpointRequest{Netns: path, Name: ns, Labels: []string{labels}})
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", ns, err)
	}
	b.fwd.add(e.Interface)
	return &ep{ns: ns, path: path, addr: e.IPv4, hostIf: e.Interface, ifidx: e.IfIndex, id: e.ID, ident: uint32(e.Identity)}, nil
}

// plainEndpoint wires a namespace exactly as the agent does (pkg/endpoint:
// veth pair, /32 address, link-local gateway with a static neighbour, /32
// route on the host with the gateway's source address) without attaching
// any program.
func (b *bench) plainEndpoint(short, hostIf string, addr netip.Addr) (*ep, error) {
	ns, path, err := b.newNS(short)
	if err != nil {
		return nil, err
	}
	idx, err := wirePlain(path, hostIf, addr)
	if err != nil {
		return nil, fmt.Errorf("wire %s: %w", ns, err)
	}
	b.cl.add("link "+hostIf, func() error { return deleteLink(hostIf) })
	b.fwd.add(hostIf)
	return &ep{ns: ns, path: path, addr: addr, hostIf: hostIf, ifidx: idx}, nil
}

func wirePlain(nsPath, hostIf string, addr netip.Addr) (int, error) {
	v, err := endpoint.PrepareVeth(nsPath, hostIf, endpoint.DefaultContainerIfName)
	if err != nil {
		return 0, err
	}
	defer v.Close()
	if err := v.Configure(addr, gateway); err != nil {
		_ = v.Delete()
		return 0, err
	}
	return v.HostIndex, nil
}

// reportForwardingResets tells the report when something outside the
// bench turned forwarding off.
func (b *bench) reportForwardingResets() {
	ev := b.fwd.resets()
	if len(ev) == 0 {
		return
	}
	var ts []string
	for _, t := range ev {
		ts = append(ts, fmt.Sprintf("%.0f s", t.Sub(b.rep.started).Seconds()))
	}
	b.rep.note("Environment: forwarding on the bench's veths was turned off %d time(s) during the run (at %s into it) by a write of "+
		"net.ipv4.ip_forward outside the bench (another test on this shared machine: test/e2e's TestPrivilegedForwardingReset "+
		"does that); the bench turned it back on within 100 ms each time. A measurement running then lost up to 100 ms. "+
		"(The agent restores it too, every 2 s, but `keepForwarding` waits for the agent's lock, which an import holds for as "+
		"long as it runs.)", len(ev), strings.Join(ts, ", "))
}
