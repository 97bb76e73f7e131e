package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/membrane-net/membrane/pkg/policy/l7"
)

func TestNewValidates(t *testing.T) {
	res := &fakeResolver{}
	if _, err := New(Config{ListenAddr: "127.0.0.1:0", UpstreamMark: 0x200}, res, nil, nil); err == nil || !strings.Contains(err.Error(), "0x200/0xf00") {
		t.Errorf("mark 0x200 accepted: %v", err)
	}
	if _, err := New(Config{ListenAddr: "127.0.0.1:0", UpstreamMark: 0x1200}, res, nil, nil); err == nil {
		t.Errorf("mark 0x1200 accepted")
	}
	if _, err := New(Config{ListenAddr: "127.0.0.1:0"}, nil, nil, nil); err == nil {
		t.Errorf("nil resolver accepted")
	}
	if _, err := New(Config{ListenAddr: "256.0.0.1:0"}, res, nil, nil); err == nil || !strings.HasPrefix(err.Error(), "listen 256.0.0.1:0: ") {
		t.Errorf("bad address: %v", err)
	}
	p, err := New(Config{ListenAddr: "127.0.0.1:0"}, res, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.cfg.UpstreamMark != DefaultUpstreamMark || p.cfg.HeaderTimeout != DefaultHeaderTimeout || p.cfg.MaxHeaderBytes != DefaultMaxHeaderBytes {
		t.Errorf("defaults not applied: %+v", p.cfg)
	}
	p.Close()
	if err := p.Serve(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("serve after close: %v", err)
	}
}

func TestServeStopsWithContext(t *testing.T) {
	p, err := New(Config{ListenAddr: "127.0.0.1:0"}, &fakeResolver{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Serve(ctx) }()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("serve returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return")
	}
	if _, err := net.Dial("tcp", p.Addr().String()); err == nil {
		t.Fatal("listener still open")
	}
}

// TestCloseWithActiveConnections closes the proxy under an idle keep-alive
// connection, a tunnel and a download in progress: every client sees its
// connection end, and Close returns.
func TestCloseWithActiveConnections(t *testing.T) {
	dst := rawBackend(t, func(c net.Conn) {
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		switch {
		case strings.Contains(string(buf[:n]), "Upgrade"):
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
			io.Copy(c, c)
		case strings.HasPrefix(string(buf[:n]), "GET /big"):
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
			io.Copy(c, &patternReader{n: 1000000000})
		default:
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			io.Copy(io.Discard, c)
		}
	})
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/.*"}))
	p, _ := startProxy(t, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
	idle := dial(t, p.Addr())
	resp, body := idle.do(get("/", "s"))
	wantStatus(t, resp, body, 200)
	tun := dial(t, p.Addr())
	if resp, _ := tun.do("GET /t HTTP/1.1\r\nHost: s\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"); resp.StatusCode != 101 {
		t.Fatalf("upgrade: %d", resp.StatusCode)
	}
	big := dial(t, p.Addr())
	big.send(get("/big", "s"))
	if _, err := io.ReadFull(big.br, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if a := p.Stats().Active; a != 3 {
		t.Fatalf("%d active connections, want 3", a)
	}
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	for _, c := range []*client{idle, tun, big} {
		_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, c.br); isTimeout(err) {
			t.Fatal("connection still open after Close")
		}
	}
	if a := p.Stats().Active; a != 0 {
		t.Fatalf("%d active connections after Close", a)
	}
}
