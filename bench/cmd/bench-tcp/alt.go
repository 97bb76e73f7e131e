package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// AltResult is what alt prints: for each target, the rate of each of its
// slices (transactions/s, or bits/s for stream), in the order they ran;
// slice i of target k ran in cycle i, targets in the order given.
type AltResult struct {
	Mode    string      `json:"mode"`
	Slice   float64     `json:"sliceSeconds"`
	Targets []AltTarget `json:"targets"`
}

// AltTarget is one target's slices.
type AltTarget struct {
	Target string    `json:"target"`
	Rates  []float64 `json:"rates"`
	Errors int64     `json:"errors"`
}

type targetFlags []string

func (t *targetFlags) String() string     { return strings.Join(*t, ",") }
func (t *targetFlags) Set(v string) error { *t = append(*t, v); return nil }

// gate lets a target's workers run while its slice is on.
type gate struct {
	mu   sync.Mutex
	cond *sync.Cond
	open bool
	done bool
}

func newGate() *gate {
	g := &gate{}
	g.cond = sync.NewCond(&g.mu)
	return g
}

// wait blocks while the gate is shut; false when the run is over.
func (g *gate) wait() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for !g.open && !g.done {
		g.cond.Wait()
	}
	return !g.done
}

func (g *gate) set(open, done bool) {
	g.mu.Lock()
	g.open, g.done = open, done
	g.mu.Unlock()
	g.cond.Broadcast()
}

type altTarget struct {
	spec   string
	ns     netns.NsHandle
	sa     *unix.SockaddrInet4
	gate   *gate
	ops    atomic.Int64
	errs   atomic.Int64
	stream int // the stream's socket (bytes acked are read from it)
	ready  chan error
}

func alt(args []string) error {
	fs := flag.NewFlagSet("alt", flag.ExitOnError)
	mode := fs.String("mode", "rr", "rr, crr or stream")
	var targets targetFlags
	fs.Var(&targets, "target", "NETNS_PATH=IP:PORT (repeat)")
	slice := fs.Duration("slice", 100*time.Millisecond, "length of one slice")
	dur := fs.Duration("duration", 3*time.Second, "total length (all targets)")
	workers := fs.Int("workers", 1, "concurrent connections per target (crr)")
	_ = fs.Parse(args)
	if len(targets) == 0 {
		return errors.New("alt: give at least one -target")
	}
	var ts []*altTarget
	defer func() {
		for _, t := range ts {
			t.ns.Close()
		}
	}()
	for _, spec := range targets {
		path, addr, ok := strings.Cut(spec, "=")
		ap, err := netip.ParseAddrPort(addr)
		if !ok || err != nil || !ap.Addr().Is4() {
			return fmt.Errorf("-target %q: want NETNS_PATH=IPv4:PORT", spec)
		}
		h, err := netns.GetFromPath(path)
		if err != nil {
			return fmt.Errorf("-target %q: %w", spec, err)
		}
		ts = append(ts, &altTarget{spec: spec, ns: h, gate: newGate(), stream: -1, ready: make(chan error, 64),
			sa: &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}})
	}
	n := 1
	if *mode == "crr" {
		n = *workers
	}
	var wg sync.WaitGroup
	for _, t := range ts {
		for w := 0; w < n; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// The thread enters the target's namespace for good: its
				// sockets belong there. It is never unlocked, so it dies
				// with the goroutine instead of serving others.
				runtime.LockOSThread()
				if err := netns.Set(t.ns); err != nil {
					t.ready <- fmt.Errorf("enter netns: %w", err)
					return
				}
				switch *mode {
				case "rr":
					altRR(t)
				case "crr":
					altCRR(t)
				case "stream":
					altStream(t)
				default:
					t.ready <- fmt.Errorf("unknown mode %q", *mode)
				}
			}()
		}
	}
	for _, t := range ts {
		for w := 0; w < n; w++ {
			if err := <-t.ready; err != nil {
				for _, t := range ts {
					t.gate.set(false, true)
				}
				return fmt.Errorf("%s: %w", t.spec, err)
			}
		}
	}
	res := AltResult{Mode: *mode, Slice: slice.Seconds()}
	rates := make([][]float64, len(ts))
	count := func(t *altTarget) int64 {
		if *mode == "stream" {
			return bytesAcked(t.stream)
		}
		return t.ops.Load()
	}
	end := nowNS() + dur.Nanoseconds()
	for i := 0; nowNS() < end; i++ {
		t := ts[i%len(ts)]
		before, t0 := count(t), nowNS()
		t.gate.set(true, false)
		time.Sleep(time.Duration(t0 + slice.Nanoseconds() - nowNS()))
		t.gate.set(false, false)
		after, t1 := count(t), nowNS()
		r := float64(after-before) * 1e9 / float64(t1-t0)
		if *mode == "stream" {
			r *= 8
		}
		rates[i%len(ts)] = append(rates[i%len(ts)], r)
	}
	for _, t := range ts {
		t.gate.set(false, true)
	}
	for i, t := range ts {
		res.Targets = append(res.Targets, AltTarget{Target: t.spec, Rates: rates[i], Errors: t.errs.Load()})
	}
	// Stream senders may sit in a blocking write: do not wait for them.
	if *mode != "stream" {
		wg.Wait()
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func altRR(t *altTarget) {
	fd, err := dial(t.sa)
	if err != nil {
		t.ready <- fmt.Errorf("connect: %w", err)
		return
	}
	defer unix.Close(fd)
	buf := []byte{'x'}
	for i := 0; i < 100; i++ {
		if err := transact(fd, buf); err != nil {
			t.ready <- fmt.Errorf("warm-up: %w", err)
			return
		}
	}
	t.ready <- nil
	for t.gate.wait() {
		if err := transact(fd, buf); err != nil {
			t.errs.Add(1)
			return
		}
		t.ops.Add(1)
	}
}

func altCRR(t *altTarget) {
	buf := []byte{'x'}
	// One connection first: the path works.
	fd, err := dial(t.sa)
	if err == nil {
		err = transact(fd, buf)
		unix.Close(fd)
	}
	if err != nil {
		t.ready <- fmt.Errorf("first connection: %w", err)
		return
	}
	t.ready <- nil
	for t.gate.wait() {
		fd, err := dial(t.sa)
		if err != nil {
			t.errs.Add(1)
			continue
		}
		err = transact(fd, buf)
		unix.Close(fd)
		if err != nil {
			t.errs.Add(1)
			continue
		}
		t.ops.Add(1)
	}
}

func altStream(t *altTarget) {
	fd, err := dial(t.sa)
	if err != nil {
		t.ready <- fmt.Errorf("connect: %w", err)
		return
	}
	// A bounded send buffer: at a slice's end little data is left to
	// drain into the next target's slice.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
	tv := unix.Timeval{Sec: 5}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	t.stream = fd
	buf := make([]byte, 64<<10)
	t.ready <- nil
	for t.gate.wait() {
		if _, err := unix.Write(fd, buf); err != nil && !errors.Is(err, unix.EINTR) && !errors.Is(err, unix.EAGAIN) {
			t.errs.Add(1)
			return
		}
	}
}

// bytesAcked reads tcpi_bytes_acked: bytes the peer acknowledged.
func bytesAcked(fd int) int64 {
	var info unix.TCPInfo
	l := uint32(unsafe.Sizeof(info))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0
	}
	return int64(info.Bytes_acked)
}
