package datapath

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/membrane-net/membrane/internal/testutil"
	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

const (
	tcActOK   = 0
	tcActShot = 2
)

var (
	epIP    = netip.MustParseAddr("10.0.0.1")
	peerIP  = netip.MustParseAddr("10.0.0.2") // identity 400
	otherIP = netip.MustParseAddr("10.0.0.3") // identity 500
	worldIP = netip.MustParseAddr("192.0.2.9")
	cidrIP  = netip.MustParseAddr("198.51.100.7") // in a policy CIDR
)

type harness struct {
	t  *testing.T
	d  *Datapath
	ep Endpoint

	mu     sync.Mutex
	events []Event
}

// newHarness loads the datapath on a private bpffs and makes lo (ifindex
// 1, where BPF_PROG_TEST_RUN puts packets) an endpoint.
func newHarness(t *testing.T, policy mapstate.MapState) *harness {
	t.Helper()
	testutil.RequirePrivileged(t)
	dir := testutil.MountBPFFS(t)
	d, err := Open(Config{BPFFSDir: dir}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("open datapath: %v", err)
	}
	h := &harness{t: t, d: d, ep: Endpoint{ID: 7, IfIndex: 1, Identity: 300, IPv4: epIP}}
	// Attaching to lo would disturb the machine: register the endpoint in
	// the maps only, and run the programs directly.
	st := &endpointState{ifindex: 1, current: mapstate.MapState{}}
	if err := writePolicy(d.maps["policy"], h.ep.ID, st.current, policy); err != nil {
		t.Fatal(err)
	}
	if err := d.putEndpoint(h.ep, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	d.eps[h.ep.ID] = st
	for p, v := range map[string]IPCacheValue{
		"0.0.0.0/0":       {Identity: uint32(identity.World)},
		"10.0.0.1/32":     {Identity: 300, InCluster: true},
		"10.0.0.2/32":     {Identity: 400, InCluster: true},
		"10.0.0.3/32":     {Identity: 500, InCluster: true},
		"198.51.100.0/24": {Identity: uint32(identity.World), CIDRIdentity: uint32(identity.LocalScope) + 1},
	} {
		if err := d.UpsertIPCache(netip.MustParsePrefix(p), v); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SetVerdictEvents(true); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = d.ReadEvents(ctx, func(e Event) {
			h.mu.Lock()
			h.events = append(h.events, e)
			h.mu.Unlock()
		})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		d.Close()
	})
	return h
}

func (h *harness) run(prog *ebpf.Program, p testutil.Packet) uint32 {
	h.t.Helper()
	return h.runRaw(prog, p.Bytes())
}

func (h *harness) runRaw(prog *ebpf.Program, data []byte) uint32 {
	h.t.Helper()
	ret, err := prog.Run(&ebpf.RunOptions{Data: data})
	if err != nil {
		h.t.Errorf("test run of %d bytes: %v", len(data), err)
		return 0xffffffff
	}
	return ret
}

// lastEvent waits for an event matching fn.
func (h *harness) waitEvent(fn func(Event) bool) (Event, bool) {
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		for _, e := range h.events {
			if fn(e) {
				h.mu.Unlock()
				return e, true
			}
		}
		h.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	return Event{}, false
}

func tcp(src, dst netip.Addr, sport, dport uint16, flags uint8) testutil.Packet {
	return testutil.Packet{Src: src, Dst: dst, Proto: 6, SrcPort: sport, DstPort: dport, TCPFlags: flags}
}

func basePolicy() mapstate.MapState {
	return mapstate.MapState{
		// ingress: identity 400 may reach TCP 80 and ports 8000-8003
		{Identity: 400, Protocol: mapstate.ProtoTCP, Port: 80, PortPrefixLen: 16}:   {Cookie: 1},
		{Identity: 400, Protocol: mapstate.ProtoTCP, Port: 8000, PortPrefixLen: 14}: {Cookie: 2},
		// ingress: identity 500 may send ICMP echo requests (type 8)
		{Identity: 500, Protocol: mapstate.ProtoICMP, Port: 8, PortPrefixLen: 16}: {Cookie: 3},
		// ingress: a policy CIDR may send anything except UDP 53
		{Identity: identity.LocalScope + 1}: {Cookie: 4},
		{Identity: identity.LocalScope + 1, Protocol: mapstate.ProtoUDP, Port: 53, PortPrefixLen: 16}: {Deny: true, Cookie: 5},
		// egress: any identity on UDP 53, identity 400 on everything
		{Egress: true, Protocol: mapstate.ProtoUDP, Port: 53, PortPrefixLen: 16}: {Cookie: 6},
		{Egress: true, Identity: 400}:                                            {Cookie: 7},
		// egress: deny world explicitly on TCP 443 even though... nothing allows it
		{Egress: true, Identity: identity.World, Protocol: mapstate.ProtoTCP, Port: 443, PortPrefixLen: 16}: {Deny: true, Cookie: 8},
	}
}

func TestPrivilegedDatapathVerdicts(t *testing.T) {
	h := newHarness(t, basePolicy())
	to, from := h.d.toProg, h.d.fromProg

	cases := []struct {
		name   string
		prog   *ebpf.Program
		pkt    testutil.Packet
		want   uint32
		reason uint8
	}{
		{"allowed identity and port", to, tcp(peerIP, epIP, 40000, 80, testutil.SYN), tcActOK, 0},
		{"allowed port range", to, tcp(peerIP, epIP, 40001, 8003, testutil.SYN), tcActOK, 0},
		{"port outside range", to, tcp(peerIP, epIP, 40002, 8004, testutil.SYN), tcActShot, ReasonPolicyNoEntry},
		{"port mismatch", to, tcp(peerIP, epIP, 40003, 81, testutil.SYN), tcActShot, ReasonPolicyNoEntry},
		{"protocol mismatch", to, testutil.Packet{Src: peerIP, Dst: epIP, Proto: 17, SrcPort: 40004, DstPort: 80}, tcActShot, ReasonPolicyNoEntry},
		{"identity without entry", to, tcp(otherIP, epIP, 40005, 80, testutil.SYN), tcActShot, ReasonPolicyNoEntry},
		{"world without entry", to, tcp(worldIP, epIP, 40006, 80, testutil.SYN), tcActShot, ReasonPolicyNoEntry},
		{"icmp echo allowed", to, testutil.Packet{Src: otherIP, Dst: epIP, Proto: 1, ICMPType: 8, ICMPID: 77}, tcActOK, 0},
		{"icmp other type", to, testutil.Packet{Src: otherIP, Dst: epIP, Proto: 1, ICMPType: 13, ICMPID: 78}, tcActShot, ReasonPolicyNoEntry},
		{"cidr identity allowed", to, tcp(cidrIP, epIP, 40007, 22, testutil.SYN), tcActOK, 0},
		{"cidr deny beats cidr allow", to, testutil.Packet{Src: cidrIP, Dst: epIP, Proto: 17, SrcPort: 40008, DstPort: 53}, tcActShot, ReasonPolicyDenied},
		{"egress any identity port", from, testutil.Packet{Src: epIP, Dst: worldIP, Proto: 17, SrcPort: 40009, DstPort: 53}, tcActOK, 0},
		{"egress identity all ports", from, tcp(epIP, peerIP, 40010, 9999, testutil.SYN), tcActOK, 0},
		{"egress default deny", from, tcp(epIP, otherIP, 40011, 80, testutil.SYN), tcActShot, ReasonPolicyNoEntry},
		{"egress explicit deny", from, tcp(epIP, worldIP, 40012, 443, testutil.SYN), tcActShot, ReasonPolicyDenied},
		{"spoofed source", from, tcp(otherIP, peerIP, 40013, 80, testutil.SYN), tcActShot, ReasonSpoofedSource},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := h.run(c.prog, c.pkt)
			if got != c.want {
				t.Fatalf("verdict %d, want %d", got, c.want)
			}
			if c.want == tcActShot {
				e, ok := h.waitEvent(func(e Event) bool {
					return e.Type == EventDrop && e.SrcPort == c.pkt.SrcPort && e.Src == c.pkt.Src
				})
				if !ok {
					t.Fatalf("no drop event")
				}
				if e.Reason != c.reason {
					t.Fatalf("drop reason %q, want %q", ReasonName(e.Reason), ReasonName(c.reason))
				}
				if e.EndpointID != h.ep.ID {
					t.Fatalf("event endpoint %d, want %d", e.EndpointID, h.ep.ID)
				}
			}
		})
	}
}

func TestPrivilegedDatapathConntrack(t *testing.T) {
	h := newHarness(t, basePolicy())
	to, from := h.d.toProg, h.d.fromProg

	// The endpoint's egress policy allows nothing towards identity 500, yet
	// replies of a connection 500 opened pass through conntrack.
	h.d.SyncPolicy(h.ep.ID, mapstate.MapState{
		{Identity: 500, Protocol: mapstate.ProtoTCP, Port: 80, PortPrefixLen: 16}: {},
	})
	if got := h.run(to, tcp(otherIP, epIP, 41000, 80, testutil.SYN)); got != tcActOK {
		t.Fatalf("SYN: %d", got)
	}
	if got := h.run(from, tcp(epIP, otherIP, 80, 41000, testutil.SYN|testutil.ACK)); got != tcActOK {
		t.Fatalf("SYN-ACK reply: %d", got)
	}
	if got := h.run(to, tcp(otherIP, epIP, 41000, 80, testutil.ACK)); got != tcActOK {
		t.Fatalf("ACK: %d", got)
	}
	// A connection the endpoint opens itself is not a reply: dropped.
	if got := h.run(from, tcp(epIP, otherIP, 41001, 80, testutil.SYN)); got != tcActShot {
		t.Fatalf("unrelated egress: %d", got)
	}
	// Once the policy no longer allows it, established packets still pass
	// (conntrack), but a new connection on the same tuple is checked again.
	h.d.SyncPolicy(h.ep.ID, mapstate.MapState{})
	if got := h.run(to, tcp(otherIP, epIP, 41000, 80, testutil.ACK|testutil.PSH)); got != tcActOK {
		t.Fatalf("established after policy change: %d", got)
	}
	if got := h.run(to, tcp(otherIP, epIP, 41000, 80, testutil.FIN|testutil.ACK)); got != tcActOK {
		t.Fatalf("FIN: %d", got)
	}
	if got := h.run(to, tcp(otherIP, epIP, 41000, 80, testutil.SYN)); got != tcActShot {
		t.Fatalf("new SYN on a closing tuple must be checked again: %d", got)
	}

	// ICMP echo: the reply passes through conntrack.
	h.d.SyncPolicy(h.ep.ID, mapstate.MapState{{Egress: true, Identity: 500}: {}})
	if got := h.run(from, testutil.Packet{Src: epIP, Dst: otherIP, Proto: 1, ICMPType: 8, ICMPID: 99}); got != tcActOK {
		t.Fatalf("echo request: %d", got)
	}
	if got := h.run(to, testutil.Packet{Src: otherIP, Dst: epIP, Proto: 1, ICMPType: 0, ICMPID: 99}); got != tcActOK {
		t.Fatalf("echo reply: %d", got)
	}
	if got := h.run(to, testutil.Packet{Src: otherIP, Dst: epIP, Proto: 1, ICMPType: 0, ICMPID: 100}); got != tcActShot {
		t.Fatalf("unsolicited echo reply: %d", got)
	}

	// An ICMP error about a UDP flow the endpoint sent passes as related.
	if got := h.run(from, testutil.Packet{Src: epIP, Dst: otherIP, Proto: 17, SrcPort: 5000, DstPort: 6000}); got != tcActOK {
		t.Fatalf("udp egress: %d", got)
	}
	inner := testutil.Packet{Src: epIP, Dst: otherIP, Proto: 17, SrcPort: 5000, DstPort: 6000}
	innerBytes := append(inner.IPHeader(8), inner.L4()[:8]...)
	if got := h.run(to, testutil.Packet{Src: otherIP, Dst: epIP, Proto: 1, ICMPType: 3, Inner: innerBytes}); got != tcActOK {
		t.Fatalf("related icmp error: %d", got)
	}
	innerOther := testutil.Packet{Src: epIP, Dst: otherIP, Proto: 17, SrcPort: 5001, DstPort: 6000}
	if got := h.run(to, testutil.Packet{Src: otherIP, Dst: epIP, Proto: 1, ICMPType: 3, Inner: append(innerOther.IPHeader(8), innerOther.L4()[:8]...)}); got != tcActShot {
		t.Fatalf("unrelated icmp error: %d", got)
	}

	entries, err := h.d.ListCT()
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatal("conntrack list is empty")
	}
}

func TestPrivilegedDatapathMalformed(t *testing.T) {
	h := newHarness(t, mapstate.MapState{{}: {}, {Egress: true}: {}}) // allow all
	to := h.d.toProg

	good := tcp(peerIP, epIP, 42000, 80, testutil.SYN).Bytes()
	if got := h.runRaw(to, good); got != tcActOK {
		t.Fatalf("well-formed packet under allow-all: %d", got)
	}
	ipv6 := append([]byte(nil), good...)
	ipv6[12], ipv6[13] = 0x86, 0xdd
	bad := map[string]struct {
		data   []byte
		reason uint8
	}{
		// BPF_PROG_TEST_RUN refuses IPv4 frames shorter than an IP header;
		// those are sent through a real veth in the endpoint tests.
		"truncated tcp header": {good[:14+20+6], ReasonMalformed},
		"ihl below 5":          {mutate(good, 14, 0x44), ReasonMalformed},
		"ip version 6 in ipv4": {mutate(good, 14, 0x65), ReasonMalformed},
		"total length too big": {mutate(good, 16, 0xff), ReasonMalformed},
		"tcp data offset < 5":  {mutate(good, 14+20+12, 0x40), ReasonMalformed},
		"ipv6":                 {ipv6, ReasonUnsupportedL3},
		"later fragment alone": {testutil.Packet{Src: peerIP, Dst: epIP, Proto: 17, FragOffset: 10, ID: 9, Payload: make([]byte, 16)}.Bytes(), ReasonFragNotFound},
	}
	for name, c := range bad {
		t.Run(name, func(t *testing.T) {
			if got := h.runRaw(to, c.data); got != tcActShot {
				t.Fatalf("verdict %d, want drop", got)
			}
		})
	}
	// A fragmented datagram: the later fragment takes the first's ports.
	h.d.SyncPolicy(h.ep.ID, mapstate.MapState{{Identity: 400, Protocol: mapstate.ProtoUDP, Port: 53, PortPrefixLen: 16}: {}})
	first := testutil.Packet{Src: peerIP, Dst: epIP, Proto: 17, SrcPort: 999, DstPort: 53, ID: 77, MoreFragments: true, Payload: make([]byte, 64)}
	if got := h.run(to, first); got != tcActOK {
		t.Fatalf("first fragment: %d", got)
	}
	later := testutil.Packet{Src: peerIP, Dst: epIP, Proto: 17, ID: 77, FragOffset: 9, Payload: make([]byte, 16)}
	if got := h.run(to, later); got != tcActOK {
		t.Fatalf("later fragment: %d", got)
	}
	// Unknown endpoint: remove the registration.
	if err := h.d.deleteEndpoint(1); err != nil {
		t.Fatal(err)
	}
	if got := h.runRaw(to, good); got != tcActShot {
		t.Fatalf("unknown endpoint: %d", got)
	}
}

func TestPrivilegedDatapathAudit(t *testing.T) {
	h := newHarness(t, mapstate.MapState{})
	h.ep.AuditIngress = true
	if err := h.d.UpdateEndpoint(h.ep); err != nil {
		t.Fatal(err)
	}
	if got := h.run(h.d.toProg, tcp(otherIP, epIP, 43000, 80, testutil.SYN)); got != tcActOK {
		t.Fatalf("audit ingress: %d", got)
	}
	if _, ok := h.waitEvent(func(e Event) bool { return e.Verdict == VerdictAudit && e.SrcPort == 43000 }); !ok {
		t.Fatal("no AUDIT event")
	}
	if got := h.run(h.d.fromProg, tcp(epIP, otherIP, 43001, 80, testutil.SYN)); got != tcActShot {
		t.Fatalf("egress is not in audit mode: %d", got)
	}
}

func TestPrivilegedDatapathPolicyMapRoundTrip(t *testing.T) {
	want := basePolicy()
	h := newHarness(t, want)
	got, err := h.d.ReadPolicy(h.ep.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("read %d entries, want %d", len(got), len(want))
	}
	for k, e := range want {
		if got[k] != e {
			t.Fatalf("entry %s: got %+v want %+v", k, got[k], e)
		}
	}
	// Decide agrees with the kernel on a sweep of flows.
	peers := []netip.Addr{peerIP, otherIP, worldIP, cidrIP}
	ipc, _ := h.d.ListIPCache()
	_ = ipc
	for _, peer := range peers {
		v, _ := h.d.LookupIPCache(peer)
		for _, proto := range []uint8{1, 6, 17} {
			for _, port := range []uint16{0, 8, 22, 53, 80, 81, 443, 8000, 8003, 8004} {
				d := want.Decide(mapstate.Peer{Identity: identity.NumericIdentity(v.Identity), CIDRIdentity: identity.NumericIdentity(v.CIDRIdentity), InCluster: v.InCluster}, false, proto, port)
				p := testutil.Packet{Src: peer, Dst: epIP, Proto: proto, SrcPort: 50000 + port, DstPort: port, TCPFlags: testutil.SYN}
				if proto == 1 {
					p.ICMPType, p.ICMPID = uint8(port), 50000+port
				}
				gotV := h.run(h.d.toProg, p)
				if (gotV == tcActOK) != d.Allowed {
					t.Errorf("peer %s proto %d port %d: kernel %d, Decide %+v", peer, proto, port, gotV, d)
				}
				h.d.FlushCT(func(CTEntry) bool { return true })
			}
		}
	}
}

func mutate(b []byte, off int, v byte) []byte {
	c := append([]byte(nil), b...)
	c[off] = v
	return c
}
