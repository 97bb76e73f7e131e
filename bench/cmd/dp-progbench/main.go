// Command dp-progbench compares the per-packet cost of two builds of the
// datapath object (bpf/membrane.c) side by side, free of the machine's
// scheduling noise: both builds are loaded against the maps of a running
// agent (its pins), and each runs the same packets of a live connection
// through BPF_PROG_TEST_RUN, alternating build by build, round by round.
//
// Run it beside the bench's topology (the agent, endpoints and policies of
// `make bench`, kept until Ctrl-C); with -server it opens a connection from
// the client namespace so that conntrack holds a live flow:
//
//	BENCH_ONLY=hold bench/run.sh &
//	go run ./bench/cmd/dp-progbench -bpffs /sys/fs/bpf/mbrb-PID -server 10.251.0.3:5001 \
//		-a pkg/datapath/bpf_bpfel.o -b /tmp/candidate_bpfel.o
//
// The four packets are the four program runs of one request/response
// transaction: the request leaving the client (from_container on the
// client's veth), entering the server (to_container on the server's), the
// reply leaving the server (from_container) and entering the client
// (to_container). Times are wall time over many runs of
// BPF_PROG_TEST_RUN, so they include the test loop's own per-run cost,
// the same for both builds.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/pkg/nsutil"
)

// Mirrors of bpf/common.h (the datapath keeps its own unexported).
type ctKey struct {
	Saddr, Daddr [16]byte
	Sport, Dport uint16
	Protocol     uint8
	Family       uint8
	Dir          uint8
	Pad          uint8
}

type ctEntry struct {
	ExpiresNs, CreatedNs       uint64
	EpID, PeerIdentity, Cookie uint32
	ProxyPort                  uint16
	Flags, Pad                 uint8
}

type endpointInfo struct {
	EpID, Identity uint32
	IPv4           [4]byte
	Flags, Pad     uint32
}

const (
	dirIngress = 0
	dirEgress  = 1
)

var sharedMaps = []string{"ipcache", "endpoints", "policy", "ct", "frags", "config", "metrics", "events"}

type build struct {
	name     string
	from, to *ebpf.Program
}

type packet struct {
	name string
	prog func(*build) *ebpf.Program
	data []byte
	ctx  []byte
}

func main() {
	bpffs := flag.String("bpffs", "", "the agent's bpffs directory (/sys/fs/bpf/mbrb-PID for the bench's agent)")
	objA := flag.String("a", "pkg/datapath/bpf_bpfel.o", "datapath object A")
	objB := flag.String("b", "", "datapath object B (optional)")
	policyMax := flag.Uint("policy-max", 65536, "the agent's --policy-map-max-entries")
	netnsPath := flag.String("netns", "/var/run/netns/mbrb-mcli", "client namespace: a connection is opened from it to -server")
	server := flag.String("server", "", "server ip:port to open the connection to (default: any established TCP flow in the conntrack map)")
	rounds := flag.Int("rounds", 7, "rounds")
	repeat := flag.Int("repeat", 200000, "runs per packet per round")
	flag.Parse()
	if err := run(*bpffs, *objA, *objB, uint32(*policyMax), *netnsPath, *server, *rounds, *repeat); err != nil {
		fmt.Fprintln(os.Stderr, "dp-progbench:", err)
		os.Exit(1)
	}
}

func run(bpffs, objA, objB string, policyMax uint32, netnsPath, server string, rounds, repeat int) error {
	if bpffs == "" {
		return errors.New("-bpffs is required")
	}
	maps := map[string]*ebpf.Map{}
	for _, n := range sharedMaps {
		m, err := ebpf.LoadPinnedMap(filepath.Join(bpffs, "maps", n), nil)
		if err != nil {
			return fmt.Errorf("map %s: %w", n, err)
		}
		defer m.Close()
		maps[n] = m
	}
	if server != "" {
		// Keep a connection open (and used once) so that conntrack holds it.
		c, err := nsutil.DialTimeout(netnsPath, "tcp4", server, 2*time.Second)
		if err != nil {
			return fmt.Errorf("connect %s from %s: %w", server, netnsPath, err)
		}
		defer c.Close()
		buf := []byte{'x'}
		if _, err := c.Write(buf); err != nil {
			return err
		}
		if _, err := c.Read(buf); err != nil {
			return err
		}
	}
	cli, srv, err := findFlow(maps["ct"], server)
	if err != nil {
		return err
	}
	cliIf, srvIf, err := findIfindexes(maps["endpoints"], cli.Addr(), srv.Addr())
	if err != nil {
		return err
	}
	fmt.Printf("flow %s -> %s, client veth ifindex %d, server veth ifindex %d\n", cli, srv, cliIf, srvIf)
	var builds []*build
	for i, obj := range []string{objA, objB} {
		if obj == "" {
			continue
		}
		b, err := load(obj, maps, policyMax)
		if err != nil {
			return fmt.Errorf("load %s: %w", obj, err)
		}
		b.name = fmt.Sprintf("%c (%s)", 'A'+i, obj)
		defer b.from.Close()
		defer b.to.Close()
		builds = append(builds, b)
	}
	from := func(b *build) *ebpf.Program { return b.from }
	to := func(b *build) *ebpf.Program { return b.to }
	pkts := []packet{
		{"request, client egress (from_container)", from, tcpPacket(cli, srv), skbCtx(cliIf)},
		{"request, server ingress (to_container)", to, tcpPacket(cli, srv), skbCtx(srvIf)},
		{"reply, server egress (from_container)", from, tcpPacket(srv, cli), skbCtx(srvIf)},
		{"reply, client ingress (to_container)", to, tcpPacket(srv, cli), skbCtx(cliIf)},
	}
	// Every packet must pass (TC_ACT_OK / TCX_NEXT-equivalent 0 or -1).
	for _, b := range builds {
		for _, p := range pkts {
			ret, err := p.prog(b).Run(&ebpf.RunOptions{Data: p.data, Context: p.ctx})
			if err != nil {
				return fmt.Errorf("%s, %s: %w", b.name, p.name, err)
			}
			if int32(ret) == 2 { // TC_ACT_SHOT
				return fmt.Errorf("%s, %s: dropped (is the flow still in conntrack?)", b.name, p.name)
			}
		}
	}
	ns := make([][][]float64, len(builds)) // build, packet, round
	for i := range ns {
		ns[i] = make([][]float64, len(pkts))
	}
	for r := 0; r < rounds; r++ {
		for k := range builds {
			bi := (k + r) % len(builds)
			for pi, p := range pkts {
				t0 := time.Now()
				if _, err := p.prog(builds[bi]).Run(&ebpf.RunOptions{Data: p.data, Context: p.ctx, Repeat: uint32(repeat)}); err != nil {
					return err
				}
				ns[bi][pi] = append(ns[bi][pi], float64(time.Since(t0).Nanoseconds())/float64(repeat))
			}
		}
	}
	fmt.Printf("\nns per run (median over %d rounds of %d runs; min-max)\n", rounds, repeat)
	fmt.Printf("%-42s", "packet")
	for _, b := range builds {
		fmt.Printf(" | %-28s", b.name)
	}
	if len(builds) == 2 {
		fmt.Printf(" | B/A")
	}
	fmt.Println()
	var tot [2]float64
	for pi, p := range pkts {
		fmt.Printf("%-42s", p.name)
		for bi := range builds {
			lo, hi := minMax(ns[bi][pi])
			m := median(ns[bi][pi])
			tot[bi] += m
			fmt.Printf(" | %6.1f (%6.1f-%6.1f)       ", m, lo, hi)
		}
		if len(builds) == 2 {
			fmt.Printf(" | %.3f", median(ns[1][pi])/median(ns[0][pi]))
		}
		fmt.Println()
	}
	fmt.Printf("%-42s", "one transaction (sum)")
	for bi := range builds {
		fmt.Printf(" | %6.1f                      ", tot[bi])
	}
	if len(builds) == 2 {
		fmt.Printf(" | %.3f", tot[1]/tot[0])
	}
	fmt.Println()
	return nil
}

// load loads an object's programs against the agent's maps, as
// datapath.Open does (the inner policy map sized like the agent's).
func load(obj string, maps map[string]*ebpf.Map, policyMax uint32) (*build, error) {
	spec, err := ebpf.LoadCollectionSpec(obj)
	if err != nil {
		return nil, err
	}
	inner := spec.Maps["policy_inner"]
	if inner == nil || spec.Maps["policy"] == nil {
		return nil, errors.New("no policy_inner or policy map")
	}
	inner = inner.Copy()
	inner.MaxEntries = policyMax
	inner.Pinning = ebpf.PinNone
	delete(spec.Maps, "policy_inner")
	spec.Maps["policy"].InnerMap = inner
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: maps})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%+v", ve)
		}
		return nil, err
	}
	defer coll.Close()
	b := &build{from: coll.DetachProgram("from_container"), to: coll.DetachProgram("to_container")}
	if b.from == nil || b.to == nil {
		return nil, errors.New("no from_container or to_container program")
	}
	return b, nil
}

// findFlow finds a live TCP connection that both endpoints track: an
// egress entry of the client and an ingress entry of the server.
func findFlow(ct *ebpf.Map, server string) (cli, srv netip.AddrPort, err error) {
	want, _ := netip.ParseAddrPort(server)
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	now := uint64(ts.Nano())
	var k ctKey
	var v ctEntry
	it := ct.Iterate()
	for it.Next(&k, &v) {
		if k.Protocol != unix.IPPROTO_TCP || k.Dir != dirEgress || v.ExpiresNs <= now || v.Flags&1 != 0 {
			continue
		}
		s := netip.AddrPortFrom(netip.AddrFrom4([4]byte(k.Saddr[:4])), k.Sport)
		d := netip.AddrPortFrom(netip.AddrFrom4([4]byte(k.Daddr[:4])), k.Dport)
		if want.IsValid() && d != want {
			continue
		}
		in := k
		in.Dir = dirIngress
		var iv ctEntry
		if ct.Lookup(&in, &iv) == nil && iv.ExpiresNs > now {
			return s, d, nil
		}
	}
	if err := it.Err(); err != nil {
		return cli, srv, err
	}
	return cli, srv, errors.New("no established TCP flow between two endpoints in the conntrack map (give -server)")
}

func findIfindexes(eps *ebpf.Map, cli, srv netip.Addr) (int, int, error) {
	var ifindex uint32
	var info endpointInfo
	c, s := 0, 0
	it := eps.Iterate()
	for it.Next(&ifindex, &info) {
		a := netip.AddrFrom4(info.IPv4)
		if a == cli {
			c = int(ifindex)
		}
		if a == srv {
			s = int(ifindex)
		}
	}
	if c == 0 || s == 0 {
		return 0, 0, fmt.Errorf("endpoints of %s and %s not found in the endpoints map", cli, srv)
	}
	return c, s, nil
}

// tcpPacket is an Ethernet frame with an IPv4 TCP segment (ACK|PSH, one
// byte) from src to dst.
func tcpPacket(src, dst netip.AddrPort) []byte {
	b := make([]byte, 14+20+20+1)
	copy(b[0:6], net.HardwareAddr{2, 0, 0, 0, 0, 1})
	copy(b[6:12], net.HardwareAddr{2, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(b[12:], unix.ETH_P_IP)
	ip := b[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(len(b)-14))
	ip[8] = 64
	ip[9] = unix.IPPROTO_TCP
	s, d := src.Addr().As4(), dst.Addr().As4()
	copy(ip[12:16], s[:])
	copy(ip[16:20], d[:])
	binary.BigEndian.PutUint16(ip[10:], ipChecksum(ip[:20]))
	tcp := ip[20:]
	binary.BigEndian.PutUint16(tcp[0:], src.Port())
	binary.BigEndian.PutUint16(tcp[2:], dst.Port())
	tcp[12] = 5 << 4
	tcp[13] = 0x18 // ACK|PSH
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	return b
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// skbCtx is a struct __sk_buff with only ifindex set (offset 40): the
// test run attaches the packet to that device.
func skbCtx(ifindex int) []byte {
	b := make([]byte, 48)
	binary.LittleEndian.PutUint32(b[40:], uint32(ifindex))
	return b
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minMax(xs []float64) (float64, float64) {
	lo, hi := xs[0], xs[0]
	for _, x := range xs {
		lo, hi = min(lo, x), max(hi, x)
	}
	return lo, hi
}
