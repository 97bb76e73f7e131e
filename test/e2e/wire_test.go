package e2e

import (
	"encoding/binary"
	"net"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/pkg/nsutil"
)

// sendRaw sends raw Ethernet frames out of the endpoint's eth0.
func sendRaw(t *testing.T, ep *Endpoint, frames ...[]byte) {
	t.Helper()
	err := nsutil.Do(ep.NS, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPrivilegedMalformedOnTheWire sends truncated and bogus frames out of
// an endpoint through its real veth: each is dropped with a named reason.
func TestPrivilegedMalformedOnTheWire(t *testing.T) {
	a := startAgent(t)
	ep := a.addEndpoint("sender", "id=s")
	src := ep.IPv4.As4()
	eth := func(etype uint16, payload []byte) []byte {
		f := make([]byte, 14)
		copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
		binary.BigEndian.PutUint16(f[12:], etype)
		return append(f, payload...)
	}
	ipHdr := func(totLen uint16, proto byte) []byte {
		h := make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], totLen)
		h[8], h[9] = 64, proto
		copy(h[12:], src[:])
		copy(h[16:], []byte{192, 0, 2, 99})
		return h
	}
	events := watchMonitor(t, a, "drop")
	sendRaw(t, ep,
		eth(0x0800, []byte{0x45, 0, 0}),                         // truncated IPv4 header
		eth(0x0800, ipHdr(20+20, 6)),                            // TCP header missing
		eth(0x0800, append(ipHdr(200, 17), make([]byte, 8)...)), // total length beyond the frame
		eth(0x86dd, make([]byte, 40)),                           // IPv6
	)
	reasons := map[string]int{}
	for _, e := range events() {
		if e.Endpoint == ep.ID {
			reasons[e.Reason]++
		}
	}
	if reasons["malformed packet"] < 3 || reasons["unsupported protocol"] < 1 {
		t.Fatalf("drop reasons seen: %v", reasons)
	}
}
