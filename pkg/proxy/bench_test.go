package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"

	"github.com/membrane-net/membrane/pkg/policy/l7"
)

// benchPolicy is a policy of a realistic size: a few rules, the matching
// one last.
func benchPolicy(b testing.TB) *l7.EndpointPolicy {
	return mkPolicy(b,
		l7.HTTPRuleSpec{Method: "POST", Path: "/v1/orders"},
		l7.HTTPRuleSpec{Method: "GET", Path: "/healthz"},
		l7.HTTPRuleSpec{Method: "GET", Path: "/v1/items/[0-9]+", Headers: []string{"X-Tenant"}},
		l7.HTTPRuleSpec{Method: "GET", Path: "/public/.*"},
	)
}

var benchHead = []byte("GET /public/index.html?lang=en HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\nAccept-Encoding: gzip\r\nX-Request-Id: 0123456789abcdef\r\n\r\n")

var benchHead2 = bytes.Replace(benchHead, []byte("index.html"), []byte("other.html"), 1)

// BenchmarkCheck measures the request-check path: parse a request head
// and decide it against a policy. "uncached" alternates two requests, so
// that every decision is computed; "repeated" sends the same request,
// whose decision the connection reuses.
func BenchmarkCheck(b *testing.B) {
	for _, mode := range []string{"uncached", "repeated"} {
		b.Run(mode, func(b *testing.B) {
			pv := newPolicyVar(benchPolicy(b))
			checks := []Check{checkOf(pv)}
			var h reqHead
			var k checker
			heads := [][]byte{benchHead, benchHead2}
			if mode == "repeated" {
				heads[1] = benchHead
			}
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				i++
				if err := h.parse(heads[i%2]); err != nil {
					b.Fatal(err)
				}
				d := k.check(checks, &h, internMethod(h.method), string(h.target), string(h.checkHost))
				if !d.allowed {
					b.Fatal("denied")
				}
			}
		})
	}
}

// BenchmarkParseRequest measures the head parser alone.
func BenchmarkParseRequest(b *testing.B) {
	var h reqHead
	b.ReportAllocs()
	b.SetBytes(int64(len(benchHead)))
	for b.Loop() {
		if err := h.parse(benchHead); err != nil {
			b.Fatal(err)
		}
	}
}

// fastBackend answers every request head with a fixed small response.
func fastBackend(b testing.TB) netip.AddrPort {
	return rawBackend(b, func(c net.Conn) {
		br := bufio.NewReader(c)
		bw := bufio.NewWriter(c)
		for {
			// Read one head (no bodies in this benchmark).
			for {
				line, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				if len(line) <= 2 {
					break
				}
			}
			bw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello")
			if br.Buffered() == 0 {
				if bw.Flush() != nil {
					return
				}
			}
		}
	})
}

func benchRoundTrips(b *testing.B, addr string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	resp := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Write(benchHead); err != nil {
			b.Fatal(err)
		}
		// Read the head, then the 5-byte body.
		resp = resp[:0]
		for {
			line, err := br.ReadSlice('\n')
			if err != nil {
				b.Fatal(err)
			}
			resp = append(resp, line...)
			if len(line) <= 2 {
				break
			}
		}
		if !bytes.HasPrefix(resp, []byte("HTTP/1.1 200")) {
			b.Fatalf("response %q", resp)
		}
		if _, err := io.ReadFull(br, resp[:5]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProxyRequest measures one keep-alive request through the proxy
// over loopback (client, proxy and server all in this process).
func BenchmarkProxyRequest(b *testing.B) {
	dst := fastBackend(b)
	pv := newPolicyVar(benchPolicy(b))
	p, _ := startProxy(b, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
	benchRoundTrips(b, p.Addr().String())
}

// BenchmarkDirectRequest is BenchmarkProxyRequest without the proxy.
func BenchmarkDirectRequest(b *testing.B) {
	benchRoundTrips(b, fastBackend(b).String())
}

// TestCheckAllocs guards the check path's allocations: parsing allocates
// nothing, a repeated request only the two strings this test converts, and
// a new decision what pkg/policy/l7 allocates for its verdict.
func TestCheckAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under the race detector")
	}
	pv := newPolicyVar(benchPolicy(t))
	checks := []Check{checkOf(pv)}
	var h reqHead
	var k checker
	parse := testing.AllocsPerRun(100, func() {
		if err := h.parse(benchHead); err != nil {
			t.Fatal(err)
		}
	})
	if parse != 0 {
		t.Errorf("parse allocates %v times", parse)
	}
	i := 0
	for _, c := range []struct {
		name  string
		heads [][]byte
		max   float64
	}{
		{"repeated", [][]byte{benchHead, benchHead}, 2},
		{"uncached", [][]byte{benchHead, benchHead2}, 8},
	} {
		allocs := testing.AllocsPerRun(100, func() {
			i++
			_ = h.parse(c.heads[i%2])
			d := k.check(checks, &h, internMethod(h.method), string(h.target), string(h.checkHost))
			if !d.allowed {
				t.Fatal("denied")
			}
		})
		if allocs > c.max {
			t.Errorf("%s: parse+check allocates %v times, want at most %v", c.name, allocs, c.max)
		}
	}
}
