package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/pkg/nsutil"
)

// A prober sends small UDP datagrams, each carrying a tag and its send
// time, every ~60-100 µs from a namespace; a receiver in the server's
// namespace reports the send time of the first datagram of a tag that
// reaches it. Both run in this process, so their clock is one.

type prober struct {
	fd   int
	dst  unix.SockaddrInet4
	tag  atomic.Uint64
	wake chan struct{} // a tag was set
	stop chan struct{}
	done chan struct{}
}

// startProber opens a UDP socket inside the namespace at nsPath and sends
// to dst while a tag is set. Sends fail (and are retried) while the
// namespace has no route.
func startProber(nsPath string, dst netip.AddrPort) (*prober, error) {
	p := &prober{fd: -1, dst: unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	err := nsutil.Do(nsPath, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		p.fd = fd
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("prober socket: %w", err)
	}
	go p.loop()
	return p, nil
}

func (p *prober) loop() {
	defer close(p.done)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// Timer slack of 1 µs instead of 50: sleeps of 50 µs last ~60 µs.
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
	ts := unix.NsecToTimespec(50_000)
	var buf [16]byte
	for {
		select {
		case <-p.stop:
			return
		default:
		}
		tag := p.tag.Load()
		if tag == 0 {
			// Idle: sleep until a tag is set.
			select {
			case <-p.stop:
				return
			case <-p.wake:
			}
			continue
		}
		binary.LittleEndian.PutUint64(buf[0:], tag)
		binary.LittleEndian.PutUint64(buf[8:], uint64(now()))
		_ = unix.Sendto(p.fd, buf[:], 0, &p.dst)
		_ = unix.Nanosleep(&ts, nil)
	}
}

func (p *prober) setTag(t uint64) {
	p.tag.Store(t)
	if t != 0 {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

func (p *prober) close() {
	select {
	case <-p.stop:
		return
	default:
	}
	close(p.stop)
	<-p.done
	unix.Close(p.fd)
}

type receiver struct {
	conn net.PacketConn
	mu   sync.Mutex
	want uint64
	ch   chan int64
}

// newReceiver listens on a UDP port inside the namespace at nsPath.
func newReceiver(nsPath string, port int) (*receiver, error) {
	c, err := nsutil.ListenPacket(nsPath, "udp4", fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, fmt.Errorf("receiver: %w", err)
	}
	r := &receiver{conn: c}
	go r.loop()
	return r, nil
}

func (r *receiver) loop() {
	buf := make([]byte, 64)
	for {
		n, _, err := r.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		if n < 16 {
			continue
		}
		tag := binary.LittleEndian.Uint64(buf[0:])
		sent := int64(binary.LittleEndian.Uint64(buf[8:]))
		r.mu.Lock()
		if tag != 0 && tag == r.want {
			r.want = 0
			r.ch <- sent
		}
		r.mu.Unlock()
	}
}

// expect arms the receiver for a tag; the channel gets the send time of
// the first datagram of that tag.
func (r *receiver) expect(tag uint64) <-chan int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.want = tag
	r.ch = make(chan int64, 1)
	return r.ch
}

func (r *receiver) close() { r.conn.Close() }

var errPassedBefore = errors.New("probes passed before the change")

// afterCall bounds the wait for the first probe once a change returned.
const afterCall = 10 * time.Second

// change measures how long after the start of change the first probe
// passes: the prober must be denied before (quiet: nothing arrives for
// 30 ms), then change runs; it returns the delay to the first datagram that
// passes (by its send time) and how long change itself took.
func change(p *prober, r *receiver, fn func() error, timeout time.Duration) (first, call time.Duration, err error) {
	tag := rand.Uint64() | 1
	ch := r.expect(tag)
	p.setTag(tag)
	defer p.setTag(0)
	select {
	case <-ch:
		return 0, 0, errPassedBefore
	case <-time.After(30 * time.Millisecond):
	}
	t0 := now()
	type done struct {
		err error
		at  int64
	}
	dc := make(chan done, 1)
	go func() {
		err := fn()
		dc <- done{err, now()}
	}()
	var sent int64
	var d *done
	deadline := time.After(timeout)
	for sent == 0 {
		select {
		case s := <-ch:
			sent = s
		case x := <-dc:
			if x.err != nil {
				return 0, 0, x.err
			}
			d = &x
			dc = nil
			// The change is in place once its call returns (`membrane
			// policy import`, `endpoint add` return once enforced;
			// iptables-restore and nft once committed).
			deadline = time.After(afterCall)
		case <-deadline:
			if d != nil {
				return 0, 0, fmt.Errorf("no probe passed within %s of the change's return (%s after its start)",
					afterCall, time.Duration(d.at-t0).Round(time.Millisecond))
			}
			return 0, 0, fmt.Errorf("the change did not return within %s", timeout)
		}
	}
	if d == nil {
		x := <-dc
		if x.err != nil {
			return 0, 0, x.err
		}
		d = &x
	}
	if sent < t0 {
		return 0, 0, errPassedBefore
	}
	return time.Duration(sent - t0), time.Duration(d.at - t0), nil
}

// waitDenied waits until the prober's datagrams stop passing (after a
// change was undone), for at most max.
func waitDenied(p *prober, r *receiver, max time.Duration) error {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		tag := rand.Uint64() | 1
		ch := r.expect(tag)
		p.setTag(tag)
		select {
		case <-ch:
			p.setTag(0)
			time.Sleep(20 * time.Millisecond)
			continue
		case <-time.After(30 * time.Millisecond):
			p.setTag(0)
			return nil
		}
	}
	return fmt.Errorf("probes still pass %s after the change was undone", max)
}
