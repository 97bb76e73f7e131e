package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-net/membrane/pkg/policy/l7"
)

// fuzzEnv is a proxy that allows only GET /public, in front of an upstream
// that parses what it receives with net/http's parser (a second,
// independent HTTP/1 parser) and records every request that is not
// GET /public.
type fuzzEnv struct {
	p        *Proxy
	dst      netip.AddrPort
	active   atomic.Int64
	mu       sync.Mutex
	bad      []string
	requests atomic.Int64
}

func newFuzzEnv(tb testing.TB) *fuzzEnv {
	env := &fuzzEnv{}
	dst := rawBackend(tb, func(c net.Conn) {
		env.active.Add(1)
		defer env.active.Add(-1)
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, syscall.ECONNRESET) {
					env.fail(fmt.Sprintf("upstream cannot parse what the proxy sent: %v", err))
				}
				return
			}
			env.requests.Add(1)
			// The request as the upstream understands it (an absolute-form
			// target names the same path).
			if req.Method != "GET" || req.URL.RequestURI() != "/public" {
				env.fail(fmt.Sprintf("upstream got %s %s", req.Method, req.RequestURI))
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
			if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
				return
			}
		}
	})
	pv := newPolicyVar(mkPolicy(tb, l7.HTTPRuleSpec{Method: "GET", Path: "/public"}))
	cfg := Config{
		HeaderTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond,
		ResponseHeaderTimeout: 300 * time.Millisecond, MaxHeaderBytes: 8 << 10, MaxDiscardBytes: 16 << 10,
	}
	env.dst = dst
	env.p, _ = startProxy(tb, cfg, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
	return env
}

func (e *fuzzEnv) fail(s string) {
	e.mu.Lock()
	e.bad = append(e.bad, s)
	e.mu.Unlock()
}

// run sends data as one client's whole stream and waits until the proxy
// and the upstream are done with it.
func (e *fuzzEnv) run(t *testing.T, data []byte) {
	e.send(t, e.p.Addr().String(), data)
	e.mu.Lock()
	bad := e.bad
	e.bad = nil
	e.mu.Unlock()
	for _, b := range bad {
		t.Errorf("%s (input %q)", b, data)
	}
}

func (e *fuzzEnv) send(t *testing.T, addr string, data []byte) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, c)
	c.Close()
	if isTimeout(err) {
		t.Fatalf("proxy did not close the connection within 10s")
	}
	deadline := time.Now().Add(10 * time.Second)
	for e.p.Stats().Active != 0 || e.active.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("proxy or upstream still busy after 10s: %+v, upstream handlers %d", e.p.Stats(), e.active.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

func FuzzProxyRequest(f *testing.F) {
	env := newFuzzEnv(f)
	f.Add([]byte("GET /public HTTP/1.1\r\nHost: s\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		env.run(t, data)
	})
}

// TestFuzzEnvDetects makes sure the fuzz test can fail: requests sent to
// the upstream directly, bypassing the proxy, are flagged, and allowed
// requests through the proxy are not.
func TestFuzzEnvDetects(t *testing.T) {
	env := newFuzzEnv(t)
	env.run(t, []byte("GET /public HTTP/1.1\r\nHost: s\r\n\r\nGET /public HTTP/1.1\r\nHost: s\r\n\r\n"))
	if n := env.requests.Load(); n != 2 {
		t.Fatalf("upstream saw %d requests, want 2", n)
	}
	for _, in := range []string{
		"GET /private HTTP/1.1\r\nHost: s\r\n\r\n",
		"POST /public HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\n\r\n",
		"GET /public\r\n\r\n", // not HTTP/1.x: unparsable
	} {
		env.send(t, env.dst.String(), []byte(in))
		env.mu.Lock()
		n := len(env.bad)
		env.bad = nil
		env.mu.Unlock()
		if n != 1 {
			t.Errorf("%q sent directly: detector recorded %d problems, want 1", in, n)
		}
	}
}
