package proxy

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadHead(t *testing.T) {
	for _, c := range []struct {
		name, in, head string
		max            int
		err            error
	}{
		{name: "simple", in: "GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", head: "GET / HTTP/1.1\r\nHost: a\r\n\r\n"},
		{name: "leading CRLF", in: "\r\n\r\nGET / HTTP/1.1\r\n\r\n", head: "GET / HTTP/1.1\r\n\r\n"},
		{name: "empty", in: "", err: io.EOF},
		{name: "partial", in: "GET / HTTP/1.1\r\nHo", err: io.ErrUnexpectedEOF},
		{name: "only CRLF", in: "\r\n", err: io.ErrUnexpectedEOF},
		{name: "too large", in: "GET /" + strings.Repeat("a", 100) + " HTTP/1.1\r\n\r\n", max: 64, err: errHeadTooLarge},
		{name: "long line over buffer", in: "GET /" + strings.Repeat("a", 5000) + " HTTP/1.1\r\n\r\n", head: "GET /" + strings.Repeat("a", 5000) + " HTTP/1.1\r\n\r\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			max := c.max
			if max == 0 {
				max = 64 << 10
			}
			br := bufio.NewReaderSize(strings.NewReader(c.in), 16)
			head, err := readHead(br, nil, max)
			if !errors.Is(err, c.err) {
				t.Fatalf("error %v, want %v", err, c.err)
			}
			if c.err == nil && string(head) != c.head {
				t.Fatalf("head %q, want %q", head, c.head)
			}
		})
	}
}

func TestParseRequestHead(t *testing.T) {
	var h reqHead
	head := "POST http://Api.Example:8080/v1/x?y=%2e HTTP/1.1\r\nHost: api.example:8080\r\nConnection: keep-alive, X-Hop\r\nTransfer-Encoding: chunked\r\nExpect: 100-Continue\r\nTE: trailers;q=1\r\nX-Hop: 1\r\n\r\n"
	if err := h.parse([]byte(head)); err != nil {
		t.Fatal(err)
	}
	if string(h.method) != "POST" || h.minor != 1 || !h.chunked || h.contentLength != -1 || !h.expectContinue || !h.teTrailers {
		t.Fatalf("%+v", h)
	}
	if !h.absolute || string(h.path) != "/v1/x?y=%2e" || string(h.checkHost) != "Api.Example:8080" {
		t.Fatalf("path %q host %q", h.path, h.checkHost)
	}
	if !h.conn.keepAlive || h.conn.close || !h.conn.nominates([]byte("x-hop")) || !h.persistent() {
		t.Fatalf("connection options %+v", h.conn)
	}

	if err := h.parse([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil || h.persistent() || h.minor != 0 {
		t.Fatalf("HTTP/1.0: %v %+v", err, h)
	}
	if err := h.parse([]byte("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")); err != nil || !h.isUpgrade() {
		t.Fatalf("upgrade: %v %+v", err, h)
	}
	if err := h.parse([]byte("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")); err != nil || h.isUpgrade() {
		t.Fatalf("Upgrade without Connection: upgrade is no upgrade: %v", err)
	}
	if err := h.parse([]byte("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo, H2C\r\n\r\n")); err != nil || h.isUpgrade() {
		t.Fatalf("h2c upgrade let through: %v", err)
	}
	if err := h.parse([]byte("CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")); err != nil || !h.isConnect() || string(h.path) != "db:5432" {
		t.Fatalf("CONNECT: %v %+v", err, h)
	}
}

func TestHasDotSegment(t *testing.T) {
	for in, want := range map[string]bool{
		"/":                 false,
		"/a/b":              false,
		"/a/..":             true,
		"/a/../b":           true,
		"/./a":              true,
		"/.":                true,
		"/...":              false,
		"/a..b/c.":          false,
		"/.well-known/x":    false,
		"/a/%2e%2e/b":       true,
		"/a/%2E./b":         true,
		"/a%2f..%2fb":       true,
		"/a\\..\\b":         true,
		"/a%5c..":           true,
		"/a/b?x=/../..":     false,
		"/%2":               false,
		"/%zz/..x":          false,
		"/a/%252e%252e/b/c": false, // decoded once only
	} {
		if got := hasDotSegment([]byte(in)); got != want {
			t.Errorf("hasDotSegment(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestParseChunkSize(t *testing.T) {
	for _, c := range []struct {
		in     string
		strict bool
		n      int64
		ok     bool
	}{
		{"0", true, 0, true},
		{"1a", true, 26, true},
		{"FF;name=value", true, 255, true},
		{"ff ; name", true, 255, true},
		{"ff ", true, 0, false},
		{"ff ", false, 255, true},
		{"", true, 0, false},
		{"x", true, 0, false},
		{"-1", true, 0, false},
		{"0x10", true, 0, false},
		{"fffffffffffffff", true, 1<<60 - 1, true},
		{"1000000000000000", true, 0, false},
		{"5;a=\x01", true, 0, false},
	} {
		n, err := parseChunkSize([]byte(c.in), c.strict)
		if (err == nil) != c.ok || (c.ok && n != c.n) {
			t.Errorf("parseChunkSize(%q, %v) = %d, %v", c.in, c.strict, n, err)
		}
	}
}

func TestParseResponseHead(t *testing.T) {
	var r respHead
	for _, c := range []struct {
		in     string
		ok     bool
		status int
		check  func(*respHead) bool
	}{
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, 200, func(r *respHead) bool { return r.contentLength == 5 && r.persistent() }},
		{"HTTP/1.1 200\r\n\r\n", true, 200, nil},
		{"HTTP/1.0 200 OK\nConnection: keep-alive\n\n", true, 200, func(r *respHead) bool { return r.persistent() }},
		{"HTTP/1.0 200 OK\r\n\r\n", true, 200, func(r *respHead) bool { return !r.persistent() }},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", true, 200, func(r *respHead) bool { return r.chunked }},
		{"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", true, 200, func(r *respHead) bool { return !r.chunked && r.hasTE }},
		{"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", true, 101, func(r *respHead) bool { return r.conn.upgrade && string(r.upgrade) == "websocket" }},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", false, 0, nil},
		{"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false, 0, nil},
		{"HTTP/2 200 OK\r\n\r\n", false, 0, nil},
		{"HTTP/1.1 20 OK\r\n\r\n", false, 0, nil},
		{"HTTP/1.1 200OK\r\n\r\n", false, 0, nil},
		{"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n", false, 0, nil},
	} {
		err := r.parse([]byte(c.in))
		if (err == nil) != c.ok {
			t.Errorf("%q: %v", c.in, err)
			continue
		}
		if c.ok && (r.status != c.status || (c.check != nil && !c.check(&r))) {
			t.Errorf("%q: %+v", c.in, r)
		}
	}
}
