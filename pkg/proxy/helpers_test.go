package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/policy/l7"
)

var testPort = l7.PortKey{Egress: false, Protocol: 6, Port: 80}

// mkPolicy compiles rules into an endpoint policy for testPort that
// applies to any peer.
func mkPolicy(t testing.TB, specs ...l7.HTTPRuleSpec) *l7.EndpointPolicy {
	t.Helper()
	sel := &l7.Selection{AnyPeer: true, Origin: "test"}
	for _, s := range specs {
		r, err := l7.Compile(s)
		if err != nil {
			t.Fatalf("compile %+v: %v", s, err)
		}
		sel.Rules = append(sel.Rules, r)
	}
	if len(specs) == 0 {
		// No rules would allow everything; tests want explicit rules.
		t.Fatalf("mkPolicy without rules")
	}
	return &l7.EndpointPolicy{Ports: map[l7.PortKey][]*l7.Selection{testPort: {sel}}}
}

// policyVar is a policy that tests can swap between requests.
type policyVar struct {
	p atomic.Pointer[l7.EndpointPolicy]
}

func newPolicyVar(p *l7.EndpointPolicy) *policyVar {
	v := &policyVar{}
	v.p.Store(p)
	return v
}

func (v *policyVar) get() *l7.EndpointPolicy { return v.p.Load() }

// fakeResolver sends every connection to dst with the given checks.
type fakeResolver struct {
	dst    netip.AddrPort
	checks []Check
	err    error
	calls  atomic.Int64
}

func (r *fakeResolver) Resolve(client, origDst netip.AddrPort) (*ConnInfo, error) {
	r.calls.Add(1)
	if r.err != nil {
		return nil, r.err
	}
	return &ConnInfo{
		SrcIdentity: 1001, DstIdentity: 1002, SrcEndpoint: 11, DstEndpoint: 12,
		Checks: r.checks, Dst: r.dst,
	}, nil
}

func checkOf(pv *policyVar) Check {
	return Check{EndpointID: 12, Port: testPort, Peer: l7.Peer{Identity: identity.NumericIdentity(1001)}, Policy: pv.get}
}

// eventLog records events.
type eventLog struct {
	mu sync.Mutex
	ev []Event
}

func (l *eventLog) add(e Event) {
	l.mu.Lock()
	l.ev = append(l.ev, e)
	l.mu.Unlock()
}

func (l *eventLog) all() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.ev...)
}

// wait waits until n events are recorded and returns them.
func (l *eventLog) wait(t testing.TB, n int) []Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ev := l.all()
		if len(ev) >= n {
			return ev
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d events, want %d: %+v", len(ev), n, ev)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// startProxy starts a non-transparent proxy on loopback.
func startProxy(t testing.TB, cfg Config, res Resolver) (*Proxy, *eventLog) {
	t.Helper()
	return startProxyWith(t, cfg, res, nil)
}

// startProxyWith is startProxy with a function that adjusts the proxy
// before it serves.
func startProxyWith(t testing.TB, cfg Config, res Resolver, adjust func(*Proxy)) (*Proxy, *eventLog) {
	t.Helper()
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = "127.0.0.1:0"
	}
	ev := &eventLog{}
	p, err := New(cfg, res, ev.add, testLogger(t))
	if err != nil {
		t.Fatalf("new proxy: %v", err)
	}
	if adjust != nil {
		adjust(p)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(context.Background()) }()
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close proxy: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Errorf("serve returned %v, want ErrClosed", err)
		}
		if a := p.Stats().Active; a != 0 {
			t.Errorf("%d connections still active after Close", a)
		}
	})
	return p, ev
}

// recorded is what the test backend saw of one request.
type recorded struct {
	Method, URI, Host, Proto string
	Header                   http.Header
	BodyLen                  int64
	Remote                   string
}

// backend is an HTTP server that records requests.
type backend struct {
	srv   *httptest.Server
	mu    sync.Mutex
	reqs  []recorded
	conns atomic.Int64
}

func (b *backend) addr() netip.AddrPort {
	return netip.MustParseAddrPort(b.srv.Listener.Addr().String())
}

func (b *backend) requests() []recorded {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]recorded(nil), b.reqs...)
}

// startBackend starts the test server. Paths:
//
//	/upload          reads the body: "len=N sha=HEX"
//	/download?n=N&mode=cl|chunked   N bytes of a pattern
//	/headers         the request's headers, one "Name: value" a line, sorted
//	/slow?ms=N       waits N ms, then "slow"
//	anything else    "hello METHOD URI"
func startBackend(t testing.TB) *backend {
	t.Helper()
	b := &backend{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := recorded{Method: r.Method, URI: r.RequestURI, Host: r.Host, Proto: r.Proto, Header: r.Header.Clone(), Remote: r.RemoteAddr}
		switch r.URL.Path {
		case "/upload":
			hsh := sha256.New()
			n, err := io.Copy(hsh, r.Body)
			rec.BodyLen = n
			b.record(rec)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			fmt.Fprintf(w, "len=%d sha=%s", n, hex.EncodeToString(hsh.Sum(nil)))
		case "/download":
			b.record(rec)
			n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			if r.URL.Query().Get("mode") == "cl" {
				w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
			}
			writePattern(w, n)
		case "/headers":
			n, _ := io.Copy(io.Discard, r.Body)
			rec.BodyLen = n
			b.record(rec)
			var lines []string
			for k, vs := range r.Header {
				for _, v := range vs {
					lines = append(lines, k+": "+v)
				}
			}
			sort.Strings(lines)
			io.WriteString(w, strings.Join(lines, "\n"))
		case "/slow":
			b.record(rec)
			ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
			time.Sleep(time.Duration(ms) * time.Millisecond)
			io.WriteString(w, "slow")
		default:
			n, _ := io.Copy(io.Discard, r.Body)
			rec.BodyLen = n
			b.record(rec)
			fmt.Fprintf(w, "hello %s %s", r.Method, r.RequestURI)
		}
	})
	b.srv = httptest.NewUnstartedServer(h)
	b.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			b.conns.Add(1)
		}
	}
	b.srv.Config.ErrorLog = nil
	b.srv.Start()
	t.Cleanup(b.srv.Close)
	return b
}

func (b *backend) record(r recorded) {
	b.mu.Lock()
	b.reqs = append(b.reqs, r)
	b.mu.Unlock()
}

// pattern is the byte at offset i of generated bodies.
func pattern(i int64) byte { return byte('a' + i%26) }

func writePattern(w io.Writer, n int64) {
	buf := make([]byte, 64<<10)
	var off int64
	for off < n {
		k := min(int64(len(buf)), n-off)
		for i := int64(0); i < k; i++ {
			buf[i] = pattern(off + i)
		}
		if _, err := w.Write(buf[:k]); err != nil {
			return
		}
		off += k
	}
}

// patternReader yields n bytes of the pattern.
type patternReader struct{ off, n int64 }

func (r *patternReader) Read(p []byte) (int, error) {
	if r.off >= r.n {
		return 0, io.EOF
	}
	k := min(int64(len(p)), r.n-r.off)
	for i := int64(0); i < k; i++ {
		p[i] = pattern(r.off + i)
	}
	r.off += k
	return int(k), nil
}

// client is a raw TCP client of the proxy.
type client struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dial(t testing.TB, addr net.Addr) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatalf("dial proxy: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	return &client{t: t, c: c, br: bufio.NewReader(c)}
}

func (c *client) send(raw string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, raw); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// read reads one response (to a request with the given method) and its body.
func (c *client) read(method string) (*http.Response, string) {
	c.t.Helper()
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		c.t.Fatalf("read response: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("read body: %v", err)
	}
	return resp, string(body)
}

func (c *client) do(raw string) (*http.Response, string) {
	c.t.Helper()
	c.send(raw)
	method, _, _ := strings.Cut(raw, " ")
	return c.read(method)
}

// expectClosed asserts the proxy closes the connection (EOF or reset) with
// no further bytes.
func (c *client) expectClosed() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := c.br.ReadByte()
	if err == nil {
		rest, _ := c.br.Peek(c.br.Buffered())
		c.t.Fatalf("connection not closed: got %q", append([]byte{b}, rest...))
	}
	if isTimeout(err) {
		c.t.Fatalf("connection not closed within 5s")
	}
}

func get(path, host string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\n\r\n"
}

func wantStatus(t testing.TB, resp *http.Response, body string, status int) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status %d (%q), want %d", resp.StatusCode, body, status)
	}
}

func want403(t testing.TB, resp *http.Response, body string) {
	t.Helper()
	wantStatus(t, resp, body, 403)
	if body != "Access denied" || resp.Header.Get("Content-Type") != "text/plain" || resp.ContentLength != 13 {
		t.Fatalf("403 response: body %q, type %q, length %d", body, resp.Header.Get("Content-Type"), resp.ContentLength)
	}
}

// rawBackend accepts connections and runs handle for each.
func rawBackend(t testing.TB, handle func(c net.Conn)) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String())
}

// freePort returns a loopback address where nothing listens.
func closedAddr(t testing.TB) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	return a
}
