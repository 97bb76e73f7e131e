package conformance

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/pkg/nsutil"
)

// Source ports and ICMP echo ids are unique per source for the whole run,
// so that no probe ever matches a conntrack entry an earlier probe left.
const (
	firstSourcePort = 20000
	lastSourcePort  = 60999
)

// sequencer hands out source ports and echo ids per source.
// Each run starts at a random point, so that a second run against the same
// agent does not meet the first one's entries either.
type sequencer struct {
	mu    sync.Mutex
	start uint16
	ports map[string]uint16
	ids   map[string]uint16
}

func newSequencer() *sequencer {
	return &sequencer{
		start: firstSourcePort + uint16(rand.IntN(lastSourcePort-firstSourcePort)),
		ports: map[string]uint16{}, ids: map[string]uint16{},
	}
}

func (s *sequencer) port(src string) uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.ports[src]
	switch {
	case !ok:
		p = s.start
	case p >= lastSourcePort:
		p = firstSourcePort
	default:
		p++
	}
	s.ports[src] = p
	return p
}

func (s *sequencer) id(src string) uint16 {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.ids[src]
	if !ok {
		id = s.start
	}
	id++
	if id == 0 {
		id = 1
	}
	s.ids[src] = id
	return id
}

// prober sends probes from namespaces.
type prober struct {
	timeout time.Duration
	seq     *sequencer
}

// origin is where a probe starts: a namespace and, for the world, the
// address to send from.
type origin struct {
	key    string // the sequencer's key
	nsPath string
	addr   netip.Addr // unset: the namespace's own address
}

// probe sends one probe to dst and classifies what happened.
func (p *prober) probe(ctx context.Context, o origin, pp PlannedProbe, dst netip.Addr, timeout time.Duration) Outcome {
	switch {
	case pp.Protocol == "ICMP":
		return p.ping(ctx, o, dst, timeout)
	case pp.Protocol == "UDP":
		return p.udp(ctx, o, netip.AddrPortFrom(dst, pp.Port), timeout)
	case pp.HTTP != nil:
		return p.http(ctx, o, netip.AddrPortFrom(dst, pp.Port), pp.HTTP, timeout)
	default:
		return p.tcp(ctx, o, netip.AddrPortFrom(dst, pp.Port), timeout)
	}
}

// dial connects from the origin with a fresh source port.
func (p *prober) dial(ctx context.Context, o origin, network string, dst string) (net.Conn, error) {
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := int(p.seq.port(o.key))
		var local net.Addr
		var ip net.IP
		if o.addr.IsValid() {
			ip = o.addr.AsSlice()
		}
		if network == "udp4" {
			local = &net.UDPAddr{IP: ip, Port: port}
		} else {
			local = &net.TCPAddr{IP: ip, Port: port}
		}
		var c net.Conn
		err := nsutil.Do(o.nsPath, func() error {
			d := net.Dialer{LocalAddr: local, Control: reuseAddr}
			var err error
			c, err = d.DialContext(ctx, network, dst)
			return err
		})
		if err == nil {
			return c, nil
		}
		lastErr = err
		if !errors.Is(err, syscall.EADDRINUSE) {
			return nil, err
		}
	}
	return nil, lastErr
}

func reuseAddr(network, address string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	})
	return errors.Join(err, serr)
}

// classify turns a probe's error into an outcome: a timeout is a drop.
func classify(err error) Outcome {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, syscall.ETIMEDOUT), errors.As(err, &ne) && ne.Timeout():
		return Outcome{Result: ResultDropped}
	case errors.Is(err, syscall.ECONNREFUSED):
		return Outcome{Result: ResultRefused}
	case errors.Is(err, syscall.ECONNRESET):
		return Outcome{Result: ResultError, Detail: "connection reset"}
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return Outcome{Result: ResultError, Detail: "unreachable: " + lastPart(err)}
	}
	return Outcome{Result: ResultError, Detail: lastPart(err)}
}

func lastPart(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 && i+2 < len(s) {
		return s[i+2:]
	}
	return s
}

// tcp connects and checks that a line comes back.
func (p *prober) tcp(ctx context.Context, o origin, dst netip.AddrPort, timeout time.Duration) Outcome {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := p.dial(dctx, o, "tcp4", dst.String())
	if err != nil {
		return classify(err)
	}
	defer c.Close()
	return echo(c, timeout, "connected")
}

// echo writes a line and reads it back.
func echo(c net.Conn, timeout time.Duration, what string) Outcome {
	msg := fmt.Sprintf("membrane-probe %s -> %s\n", c.LocalAddr(), c.RemoteAddr())
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		o := classify(err)
		if o.Result == ResultRefused {
			return o
		}
		return Outcome{Result: ResultError, Detail: what + ", but the write failed: " + lastPart(err)}
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		o := classify(err)
		if o.Result == ResultRefused {
			return o
		}
		if o.Result == ResultDropped && what == "sent" {
			return o
		}
		return Outcome{Result: ResultError, Detail: what + ", but no echo: " + lastPart(err)}
	}
	if string(buf) != msg {
		return Outcome{Result: ResultError, Detail: fmt.Sprintf("%s, but the echo was %q", what, truncate(string(buf), 40))}
	}
	return Outcome{Result: ResultAllowed}
}

// udp sends a datagram (twice if the first gets no answer) and waits for
// the echo.
func (p *prober) udp(ctx context.Context, o origin, dst netip.AddrPort, timeout time.Duration) Outcome {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := p.dial(dctx, o, "udp4", dst.String())
	if err != nil {
		return classify(err)
	}
	defer c.Close()
	deadline := time.Now().Add(timeout)
	first := echo(c, timeout/2, "sent")
	if first.Result != ResultDropped || time.Until(deadline) <= 0 {
		return first
	}
	return echo(c, time.Until(deadline), "sent")
}

// http sends one request without keep-alive.
func (p *prober) http(ctx context.Context, o origin, dst netip.AddrPort, r *HTTPRequest, timeout time.Duration) Outcome {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return p.dial(ctx, o, "tcp4", addr)
		},
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout}
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+dst.String()+r.Path, nil)
	if err != nil {
		return Outcome{Result: ResultError, Detail: err.Error()}
	}
	for k, v := range r.Headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return classify(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return outcomeOfHTTP(resp.StatusCode, strings.TrimSpace(string(body)))
}

// ping sends an ICMP echo request from a raw socket and waits for the
// reply carrying its id.
func (p *prober) ping(ctx context.Context, o origin, dst netip.Addr, timeout time.Duration) Outcome {
	var pc net.PacketConn
	laddr := "0.0.0.0"
	if o.addr.IsValid() {
		laddr = o.addr.String()
	}
	err := nsutil.Do(o.nsPath, func() error {
		var err error
		pc, err = net.ListenPacket("ip4:icmp", laddr)
		return err
	})
	if err != nil {
		return Outcome{Result: ResultError, Detail: "raw ICMP socket: " + lastPart(err)}
	}
	defer pc.Close()
	id := p.seq.id(o.key)
	msg := icmpEcho(id, 1, []byte("membrane-probe"))
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = pc.SetDeadline(deadline)
	if _, err := pc.WriteTo(msg, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return classify(err)
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return classify(err)
		}
		ia, ok := from.(*net.IPAddr)
		if !ok || n < 8 {
			continue
		}
		src, _ := netip.AddrFromSlice(ia.IP.To4())
		switch {
		case buf[0] == 0 && src == dst && binary.BigEndian.Uint16(buf[4:6]) == id:
			return Outcome{Result: ResultAllowed}
		case buf[0] == 3 && n >= 8+20+8 && binary.BigEndian.Uint16(buf[8+20+4:8+20+6]) == id:
			return Outcome{Result: ResultError, Detail: fmt.Sprintf("ICMP destination unreachable (code %d) from %s", buf[1], src)}
		}
	}
}

// icmpEcho builds an ICMP echo request.
func icmpEcho(id, seq uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	b[0] = 8 // echo request
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], payload)
	binary.BigEndian.PutUint16(b[2:], checksum(b))
	return b
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// sctpAvailable reports whether the kernel can open SCTP sockets.
func sctpAvailable() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}
