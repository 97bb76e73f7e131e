package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/pkg/datapath"
	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/monitor"
	"github.com/membrane-net/membrane/pkg/policy"
	"github.com/membrane-net/membrane/pkg/policy/l7"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
	"github.com/membrane-net/membrane/pkg/proxy"
)

// Policy routing that delivers marked packets to local (proxy) sockets
// (notes: l7-redirect, facts 3 and 13).
const (
	proxyRouteTable = 2004
	proxyRulePrio   = 9
)

// DefaultProxyPort is the L7 proxy's listening port.
const DefaultProxyPort = 15001

// l7Store holds each endpoint's resolved policy for the proxy, read on
// every request without the agent's lock.
type l7Store struct{ m sync.Map } // uint32 -> *policy.Resolved

func (s *l7Store) set(id uint32, r *policy.Resolved) { s.m.Store(id, r) }
func (s *l7Store) del(id uint32)                     { s.m.Delete(id) }
func (s *l7Store) get(id uint32) *policy.Resolved {
	v, ok := s.m.Load(id)
	if !ok {
		return nil
	}
	return v.(*policy.Resolved)
}

// ensureProxyRouting installs the policy routing rule and table.
func ensureProxyRouting() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	route := &netlink.Route{
		Type: unix.RTN_LOCAL, Table: proxyRouteTable, LinkIndex: lo.Attrs().Index, Scope: netlink.SCOPE_HOST,
		Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)},
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("proxy route table %d: %w", proxyRouteTable, err)
	}
	rules, err := netlink.RuleList(unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list ip rules: %w", err)
	}
	mask := uint32(datapath.MarkMask)
	for _, r := range rules {
		if r.Table == proxyRouteTable && r.Mark == datapath.MarkToProxy {
			return nil
		}
	}
	rule := netlink.NewRule()
	rule.Family = unix.AF_INET
	rule.Table = proxyRouteTable
	rule.Priority = proxyRulePrio
	rule.Mark = datapath.MarkToProxy
	rule.Mask = &mask
	if err := netlink.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("ip rule fwmark 0x%x/0x%x: %w", datapath.MarkToProxy, datapath.MarkMask, err)
	}
	return nil
}

// socketRule marks packets of connections the proxy holds that arrive on
// interfaces without Membrane's programs (the world, the host's own
// interfaces), like Cilium's rule; installed only while some policy
// redirects to the proxy.
var socketRule = []string{"PREROUTING", "-m", "socket", "--transparent", "--nowildcard",
	"-m", "comment", "--comment", "membrane: steer to the L7 proxy",
	"-j", "MARK", "--set-xmark", fmt.Sprintf("0x%x/0x%x", datapath.MarkToProxy, datapath.MarkMask)}

func iptables(op string) error {
	args := append([]string{"-w", "-t", "mangle", op}, socketRule...)
	out, err := exec.Command("iptables", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables %s: %v: %s", op, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// syncSocketRule installs or removes the socket rule; the caller holds mu.
func (a *Agent) syncSocketRule() {
	want := false
	for _, s := range a.eps {
		if s.resolved == nil {
			continue
		}
		for _, e := range s.resolved.MapState {
			if e.ProxyPort != 0 {
				want = true
				break
			}
		}
	}
	if want == a.socketRule {
		return
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		if want {
			a.log.Warn("iptables not found: L7 redirects work between endpoints and from the host, not from other interfaces")
		}
		return
	}
	if want {
		if iptables("-C") != nil {
			if err := iptables("-I"); err != nil {
				a.log.Warn("install proxy socket rule", "error", err)
				return
			}
		}
	} else {
		for iptables("-C") == nil {
			if err := iptables("-D"); err != nil {
				a.log.Warn("remove proxy socket rule", "error", err)
				break
			}
		}
	}
	a.socketRule = want
}

// startProxy binds the L7 proxy's transparent listener.
func (a *Agent) startProxy() error {
	if err := ensureProxyRouting(); err != nil {
		return err
	}
	p, err := proxy.New(proxy.Config{
		ListenAddr:   fmt.Sprintf("0.0.0.0:%d", a.cfg.ProxyPort),
		Transparent:  true,
		UpstreamMark: datapath.MarkFromProxy,
	}, proxy.ResolverFunc(a.resolveProxyConn), a.onProxyEvent, a.log.With("part", "proxy"))
	if err != nil {
		return fmt.Errorf("L7 proxy: %w", err)
	}
	a.proxy = p
	return nil
}

func (a *Agent) epByIP(ip netip.Addr) *epState {
	for _, s := range a.eps {
		if s.ep.IPv4 == ip {
			return s
		}
	}
	return nil
}

func peerOf(v datapath.IPCacheValue) mapstate.Peer {
	return mapstate.Peer{Identity: identity.NumericIdentity(v.Identity), CIDRIdentity: identity.NumericIdentity(v.CIDRIdentity), InCluster: v.InCluster}
}

// resolveProxyConn tells the proxy which L7 policies a redirected
// connection must pass: the client endpoint's egress policy and the server
// endpoint's ingress policy, whichever redirect it.
func (a *Agent) resolveProxyConn(client, orig netip.AddrPort) (*proxy.ConnInfo, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	srcV, dstV := a.ipc.Lookup(client.Addr()), a.ipc.Lookup(orig.Addr())
	info := &proxy.ConnInfo{SrcIdentity: identity.NumericIdentity(srcV.Identity), DstIdentity: identity.NumericIdentity(dstV.Identity)}
	if s := a.epByIP(client.Addr()); s != nil && s.resolved != nil {
		info.SrcEndpoint = uint64(s.ep.ID)
		if d := s.resolved.MapState.Decide(peerOf(dstV), true, mapstate.ProtoTCP, orig.Port()); d.Allowed && d.ProxyPort != 0 {
			info.Checks = append(info.Checks, a.l7Check(s.ep.ID, true, orig.Port(), peerOf(dstV)))
		}
	}
	if s := a.epByIP(orig.Addr()); s != nil && s.resolved != nil {
		info.DstEndpoint = uint64(s.ep.ID)
		if d := s.resolved.MapState.Decide(peerOf(srcV), false, mapstate.ProtoTCP, orig.Port()); d.Allowed && d.ProxyPort != 0 {
			info.Checks = append(info.Checks, a.l7Check(s.ep.ID, false, orig.Port(), peerOf(srcV)))
		}
	}
	if len(info.Checks) == 0 {
		return nil, fmt.Errorf("connection %s -> %s: no policy redirects it to the proxy", client, orig)
	}
	return info, nil
}

// l7Check builds a check that reads the endpoint's current policy on every
// request: its L7 rules while the flow is redirected; every request while
// the policy allows the flow without L7 rules (a policy change left the
// connection on the proxy); nothing once the policy denies it.
func (a *Agent) l7Check(id uint32, egress bool, port uint16, peer mapstate.Peer) proxy.Check {
	key := l7.PortKey{Egress: egress, Protocol: mapstate.ProtoTCP, Port: port}
	lp := l7.Peer{Identity: peer.Identity, CIDRIdentity: peer.CIDRIdentity, InCluster: peer.InCluster}
	return proxy.Check{
		EndpointID: uint64(id), Port: key, Peer: lp,
		Policy: func() *l7.EndpointPolicy {
			res := a.l7.get(id)
			if res == nil {
				return nil
			}
			d := res.MapState.Decide(peer, egress, mapstate.ProtoTCP, port)
			switch {
			case !d.Allowed:
				return nil
			case d.ProxyPort == 0:
				return &l7.EndpointPolicy{Ports: map[l7.PortKey][]*l7.Selection{key: {{AnyPeer: true, Origin: "L4 allow"}}}}
			}
			return res.L7
		},
	}
}

func (a *Agent) onProxyEvent(e proxy.Event) {
	if !a.hub.Wants(monitor.TypeL7) {
		return
	}
	ev := monitor.Event{
		Time: e.Time, Type: monitor.TypeL7, Src: e.Src.Addr().String(), SrcPort: e.Src.Port(),
		Dst: e.Dst.Addr().String(), DstPort: e.Dst.Port(), Protocol: "TCP",
		SrcIdentity: uint32(e.SrcIdentity), DstIdentity: uint32(e.DstIdentity),
		Verdict: e.Verdict, Reason: e.Reason, Rule: e.Rule,
		Method: e.Method, URL: e.URL, Host: e.Host, Status: e.Status,
		LatencyMS: float64(e.Latency.Microseconds()) / 1000,
		Endpoint:  uint32(e.SrcEndpoint), Direction: "egress",
	}
	if e.DstEndpoint != 0 {
		ev.Endpoint, ev.Direction = uint32(e.DstEndpoint), "ingress"
	}
	if n, ok := a.names.Load(ev.Endpoint); ok {
		ev.EndpointName = n.(string)
	}
	a.hub.Publish(ev)
}

// serveProxy runs the proxy until ctx ends.
func (a *Agent) serveProxy(ctx context.Context) {
	if a.proxy == nil {
		return
	}
	if err := a.proxy.Serve(ctx); err != nil && !errors.Is(err, proxy.ErrClosed) && ctx.Err() == nil {
		a.log.Error("L7 proxy stopped", "error", err)
	}
}
