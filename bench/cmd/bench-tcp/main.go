// Command bench-tcp is the traffic generator of `make bench`: a 1-byte
// echo server, a request/response client (one connection, 1-byte request,
// 1-byte answer, as netperf TCP_RR) and a connect/request/close client (as
// netperf TCP_CRR). It runs inside a network namespace (`ip netns exec`),
// pinned to a core by taskset, and prints its result as one JSON line.
//
// The clients use blocking system calls on raw sockets, so that the cost of
// a transaction is the kernel's (and the datapath's under test), not Go's
// network poller.
//
//	bench-tcp serve -ports 5001 -sink 5002
//	bench-tcp rr  -addr 10.0.0.2:5001 -duration 3s
//	bench-tcp crr -addr 10.0.0.2:5001 -duration 3s -workers 1
//	bench-tcp alt -mode rr|crr|stream -target NETNS=ADDR [-target NETNS=ADDR] -slice 100ms -duration 3s
//
// alt is what `make bench` uses: it measures one or more targets (each a
// client namespace and a server address) in alternating time slices from
// one process, so that variants compared side by side see the same
// background load on a shared machine.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Result is what a client prints.
type Result struct {
	Mode    string  `json:"mode"`
	Ops     int64   `json:"ops"`
	Errors  int64   `json:"errors"`
	Seconds float64 `json:"seconds"`
	Rate    float64 `json:"rate"`
	// WindowRate is the median of the rates of 100 ms windows: robust to
	// the bursts in which other work on a shared machine preempts the
	// client or the server.
	WindowRate float64 `json:"windowRate"`
	Windows    int     `json:"windows"`
	// Latency percentiles of one transaction, in microseconds (sampled).
	P50us float64 `json:"p50us"`
	P99us float64 `json:"p99us"`
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: bench-tcp serve|rr|crr [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "rr", "crr":
		err = client(os.Args[1], os.Args[2:])
	case "alt":
		err = alt(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-tcp:", err)
		os.Exit(1)
	}
}

// ---- server ---------------------------------------------------------------

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	ports := fs.String("ports", "5001", "TCP ports to serve (1-byte echo), comma-separated")
	sink := fs.Int("sink", 0, "TCP port that reads and discards (stream tests); 0: none")
	_ = fs.Parse(args)
	if *sink != 0 {
		fd, err := listen(*sink)
		if err != nil {
			return fmt.Errorf("listen on %d: %w", *sink, err)
		}
		go acceptLoopWith(fd, discard)
	}
	var fds []int
	for _, p := range strings.Split(*ports, ",") {
		port, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil {
			return fmt.Errorf("port %q: %w", p, err)
		}
		fd, err := listen(port)
		if err != nil {
			return fmt.Errorf("listen on %d: %w", port, err)
		}
		fds = append(fds, fd)
	}
	for _, fd := range fds {
		go acceptLoop(fd)
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}

func listen(port int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: port}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("listen: %w", err)
	}
	return fd, nil
}

// acceptLoop serves each connection on its own thread with blocking calls:
// read up to a byte, answer a byte, until the peer closes.
func acceptLoop(lfd int) { acceptLoopWith(lfd, echo) }

func acceptLoopWith(lfd int, serve func(int)) {
	runtime.LockOSThread()
	for {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
				continue
			}
			fmt.Fprintln(os.Stderr, "accept:", err)
			return
		}
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		go serve(fd)
	}
}

func echo(fd int) {
	runtime.LockOSThread()
	defer unix.Close(fd)
	buf := make([]byte, 1)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			return
		}
		if _, err := unix.Write(fd, buf[:1]); err != nil {
			return
		}
	}
}

// discard reads until the peer closes.
func discard(fd int) {
	runtime.LockOSThread()
	defer unix.Close(fd)
	buf := make([]byte, 256<<10)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n == 0 {
			return
		}
	}
}

// ---- clients --------------------------------------------------------------

func client(mode string, args []string) error {
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	addr := fs.String("addr", "", "server address ip:port")
	dur := fs.Duration("duration", 3*time.Second, "how long to run")
	workers := fs.Int("workers", 1, "concurrent connections (crr)")
	_ = fs.Parse(args)
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil || !ap.Addr().Is4() {
		return fmt.Errorf("-addr %q: want an IPv4 ip:port", *addr)
	}
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	var res Result
	switch mode {
	case "rr":
		res, err = runRR(sa, *dur)
	case "crr":
		res, err = runCRR(sa, *dur, *workers)
	}
	if err != nil {
		return err
	}
	res.Mode = mode
	return json.NewEncoder(os.Stdout).Encode(res)
}

// sampler keeps every 16th transaction's latency.
type sampler struct {
	mu sync.Mutex
	ns []int64
}

func (s *sampler) add(d int64) {
	s.mu.Lock()
	s.ns = append(s.ns, d)
	s.mu.Unlock()
}

func (s *sampler) fill(r *Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ns) == 0 {
		return
	}
	sort.Slice(s.ns, func(i, j int) bool { return s.ns[i] < s.ns[j] })
	pick := func(q float64) float64 {
		i := int(q*float64(len(s.ns))+0.5) - 1
		i = max(0, min(i, len(s.ns)-1))
		return float64(s.ns[i]) / 1e3
	}
	r.P50us, r.P99us = pick(0.50), pick(0.99)
}

// windows counts transactions per 100 ms window from its own goroutine.
type windows struct {
	ops   atomic.Int64
	rates []float64
	stop  chan struct{}
	done  chan struct{}
}

func startWindows() *windows {
	w := &windows{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		last, lastT := w.ops.Load(), nowNS()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
				n, tn := w.ops.Load(), nowNS()
				if tn > lastT {
					w.rates = append(w.rates, float64(n-last)*1e9/float64(tn-lastT))
				}
				last, lastT = n, tn
			}
		}
	}()
	return w
}

func (w *windows) finish(r *Result) {
	close(w.stop)
	<-w.done
	r.Windows = len(w.rates)
	if len(w.rates) == 0 {
		r.WindowRate = r.Rate
		return
	}
	sort.Float64s(w.rates)
	n := len(w.rates)
	if n%2 == 1 {
		r.WindowRate = w.rates[n/2]
	} else {
		r.WindowRate = (w.rates[n/2-1] + w.rates[n/2]) / 2
	}
}

func nowNS() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

func dial(sa *unix.SockaddrInet4) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	// A connection that hangs (dropped SYN) must not stall the run.
	tv := unix.Timeval{Sec: 2}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	for {
		err = unix.Connect(fd, sa)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// transact sends one byte and waits for the answer.
func transact(fd int, buf []byte) error {
	if _, err := unix.Write(fd, buf[:1]); err != nil {
		return err
	}
	for {
		n, err := unix.Read(fd, buf[:1])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return errors.New("connection closed")
		}
		return nil
	}
}

func runRR(sa *unix.SockaddrInet4, dur time.Duration) (Result, error) {
	runtime.LockOSThread()
	fd, err := dial(sa)
	if err != nil {
		return Result{}, fmt.Errorf("connect: %w", err)
	}
	defer unix.Close(fd)
	buf := []byte{'x'}
	// Warm up: the first transactions create conntrack entries.
	for i := 0; i < 100; i++ {
		if err := transact(fd, buf); err != nil {
			return Result{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	var s sampler
	w := startWindows()
	start := nowNS()
	end := start + dur.Nanoseconds()
	var ops int64
	for {
		t0 := nowNS()
		if t0 >= end {
			break
		}
		if err := transact(fd, buf); err != nil {
			return Result{}, fmt.Errorf("transaction %d: %w", ops, err)
		}
		ops++
		w.ops.Add(1)
		if ops&15 == 0 {
			s.add(nowNS() - t0)
		}
	}
	secs := float64(nowNS()-start) / 1e9
	r := Result{Ops: ops, Seconds: secs, Rate: float64(ops) / secs}
	s.fill(&r)
	w.finish(&r)
	return r, nil
}

func runCRR(sa *unix.SockaddrInet4, dur time.Duration, workers int) (Result, error) {
	var ops, errs atomic.Int64
	var s sampler
	w := startWindows()
	start := nowNS()
	end := start + dur.Nanoseconds()
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			buf := []byte{'x'}
			var n int64
			for {
				t0 := nowNS()
				if t0 >= end {
					return
				}
				fd, err := dial(sa)
				if err != nil {
					errs.Add(1)
					continue
				}
				err = transact(fd, buf)
				unix.Close(fd)
				if err != nil {
					errs.Add(1)
					continue
				}
				ops.Add(1)
				w.ops.Add(1)
				n++
				if n&7 == 0 {
					s.add(nowNS() - t0)
				}
			}
		}()
	}
	wg.Wait()
	secs := float64(nowNS()-start) / 1e9
	r := Result{Ops: ops.Load(), Errors: errs.Load(), Seconds: secs, Rate: float64(ops.Load()) / secs}
	s.fill(&r)
	w.finish(&r)
	if r.Ops == 0 {
		return r, fmt.Errorf("no connection succeeded (%d errors)", r.Errors)
	}
	return r, nil
}
