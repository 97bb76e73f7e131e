package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/membrane-net/membrane/pkg/policy/l7"
)

// setup starts a backend and a proxy whose only check is pv.
func setup(t *testing.T, cfg Config, pv *policyVar) (*backend, *Proxy, *eventLog) {
	t.Helper()
	b := startBackend(t)
	p, ev := startProxy(t, cfg, &fakeResolver{dst: b.addr(), checks: []Check{checkOf(pv)}})
	return b, p, ev
}

func TestRuleFields(t *testing.T) {
	type tc struct {
		name    string
		rules   []l7.HTTPRuleSpec
		req     string
		allowed bool
		// for allowed requests: header lines the backend must (not) see,
		// from /headers
		seen, notSeen []string
		reason        string // event reason substring
	}
	hdrReq := func(extra string) string {
		return "GET /headers HTTP/1.1\r\nHost: svc\r\n" + extra + "\r\n"
	}
	cases := []tc{
		{name: "method allowed", rules: []l7.HTTPRuleSpec{{Method: "GET"}}, req: get("/x", "svc"), allowed: true},
		{name: "method denied", rules: []l7.HTTPRuleSpec{{Method: "GET"}}, req: "POST /x HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc"},
		{name: "method regex", rules: []l7.HTTPRuleSpec{{Method: "GET|HEAD"}}, req: "HEAD /x HTTP/1.1\r\nHost: svc\r\n\r\n", allowed: true},
		{name: "path allowed", rules: []l7.HTTPRuleSpec{{Path: "/public/.*"}}, req: get("/public/a?b=c", "svc"), allowed: true},
		{name: "path denied", rules: []l7.HTTPRuleSpec{{Path: "/public/.*"}}, req: get("/private", "svc")},
		{name: "path anchored", rules: []l7.HTTPRuleSpec{{Path: "/public"}}, req: get("/public2", "svc")},
		{name: "host allowed", rules: []l7.HTTPRuleSpec{{Host: "api\\.example\\.com"}}, req: get("/", "api.example.com"), allowed: true},
		{name: "host denied", rules: []l7.HTTPRuleSpec{{Host: "api\\.example\\.com"}}, req: get("/", "other.example.com")},
		{name: "host absolute form", rules: []l7.HTTPRuleSpec{{Host: "api"}}, req: "GET http://api/x HTTP/1.1\r\nHost: api\r\n\r\n", allowed: true},
		{name: "header presence allowed", rules: []l7.HTTPRuleSpec{{Headers: []string{"X-Token"}}}, req: hdrReq("x-token: anything\r\n"), allowed: true},
		{name: "header presence denied", rules: []l7.HTTPRuleSpec{{Headers: []string{"X-Token"}}}, req: hdrReq("X-Other: 1\r\n")},
		{name: "header value allowed", rules: []l7.HTTPRuleSpec{{Headers: []string{"X-Token: s3cret"}}}, req: hdrReq("X-Token: s3cret\r\n"), allowed: true},
		{name: "header value denied", rules: []l7.HTTPRuleSpec{{Headers: []string{"X-Token: s3cret"}}}, req: hdrReq("X-Token: wrong\r\n")},
		{name: "all fields", rules: []l7.HTTPRuleSpec{{Method: "PUT", Path: "/v1/.*", Host: "svc", Headers: []string{"X-A: 1"}}},
			req: "PUT /v1/k HTTP/1.1\r\nHost: svc\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nhi", allowed: true},
		{name: "all fields one wrong", rules: []l7.HTTPRuleSpec{{Method: "PUT", Path: "/v1/.*", Host: "svc", Headers: []string{"X-A: 1"}}},
			req: "PUT /v1/k HTTP/1.1\r\nHost: svc\r\nX-A: 2\r\nContent-Length: 2\r\n\r\nhi"},
		{name: "second rule allows", rules: []l7.HTTPRuleSpec{{Path: "/a"}, {Path: "/headers"}}, req: hdrReq(""), allowed: true},
		{name: "headerMatch matches", rules: []l7.HTTPRuleSpec{{HeaderMatches: []l7.HeaderMatch{{Name: "X-Key", Value: "v"}}}},
			req: hdrReq("X-Key: v\r\n"), allowed: true, seen: []string{"X-Key: v"}},
		{name: "headerMatch mismatch denies", rules: []l7.HTTPRuleSpec{{HeaderMatches: []l7.HeaderMatch{{Name: "X-Key", Value: "v"}}}},
			req: hdrReq("X-Key: w\r\n")},
		{name: "headerMatch LOG", rules: []l7.HTTPRuleSpec{{HeaderMatches: []l7.HeaderMatch{{Name: "X-Key", Value: "v", Mismatch: l7.MismatchLog}}}},
			req: hdrReq("X-Key: w\r\n"), allowed: true, seen: []string{"X-Key: w"}, reason: "header mismatch logged: X-Key"},
		{name: "headerMatch ADD", rules: []l7.HTTPRuleSpec{{HeaderMatches: []l7.HeaderMatch{{Name: "X-Key", Value: "v", Mismatch: l7.MismatchAdd}}}},
			req: hdrReq("X-Key: w\r\n"), allowed: true, seen: []string{"X-Key: w", "X-Key: v"}},
		{name: "headerMatch ADD absent", rules: []l7.HTTPRuleSpec{{HeaderMatches: []l7.HeaderMatch{{Name: "X-Key", Value: "v", Mismatch: l7.MismatchAdd}}}},
			req: hdrReq(""), allowed: true, seen: []string{"X-Key: v"}},
		{name: "headerMatch DELETE", rules: []l7.HTTPRuleSpec{{HeaderMatches: []l7.HeaderMatch{{Name: "X-Key", Value: "v", Mismatch: l7.MismatchDelete}}}},
			req: hdrReq("X-Key: w\r\nx-key: z\r\nX-Keep: 1\r\n"), allowed: true, seen: []string{"X-Keep: 1"}, notSeen: []string{"X-Key: w", "X-Key: z"}},
		{name: "headerMatch REPLACE", rules: []l7.HTTPRuleSpec{{HeaderMatches: []l7.HeaderMatch{{Name: "X-Key", Value: "v", Mismatch: l7.MismatchReplace}}}},
			req: hdrReq("X-Key: w\r\n"), allowed: true, seen: []string{"X-Key: v"}, notSeen: []string{"X-Key: w"}},
		{name: "headerMatch REPLACE matching untouched", rules: []l7.HTTPRuleSpec{{HeaderMatches: []l7.HeaderMatch{{Name: "X-Key", Value: "v", Mismatch: l7.MismatchReplace}}}},
			req: hdrReq("X-Key: v\r\nX-Other: o\r\n"), allowed: true, seen: []string{"X-Key: v", "X-Other: o"}},
		{name: "headerMatch action on framing header refused", rules: []l7.HTTPRuleSpec{{HeaderMatches: []l7.HeaderMatch{{Name: "Content-Length", Value: "5", Mismatch: l7.MismatchReplace}}}},
			req: hdrReq("")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, p, ev := setup(t, Config{}, newPolicyVar(mkPolicy(t, c.rules...)))
			cl := dial(t, p.Addr())
			resp, body := cl.do(c.req)
			events := ev.wait(t, 1)
			e := events[0]
			if !c.allowed {
				want403(t, resp, body)
				if n := len(b.requests()); n != 0 {
					t.Fatalf("backend saw %d requests of a denied one", n)
				}
				if e.Verdict != VerdictDenied || e.Status != 403 {
					t.Fatalf("event %+v, want denied 403", e)
				}
				// The connection stays usable.
				resp, body = cl.do(c.req)
				want403(t, resp, body)
				return
			}
			wantStatus(t, resp, body, 200)
			reqs := b.requests()
			if len(reqs) != 1 {
				t.Fatalf("backend saw %d requests, want 1", len(reqs))
			}
			lines := strings.Split(body, "\n")
			has := func(l string) bool {
				for _, x := range lines {
					if x == l {
						return true
					}
				}
				return false
			}
			for _, s := range c.seen {
				if !has(s) {
					t.Errorf("backend did not see %q; it saw %q", s, lines)
				}
			}
			for _, s := range c.notSeen {
				if has(s) {
					t.Errorf("backend saw %q; it saw %q", s, lines)
				}
			}
			if e.Verdict != VerdictForwarded || e.Status != 200 || e.Rule == "" {
				t.Fatalf("event %+v, want forwarded 200 with a rule", e)
			}
			if c.reason != "" && !strings.Contains(e.Reason, c.reason) {
				t.Fatalf("event reason %q, want %q", e.Reason, c.reason)
			}
		})
	}
}

func TestEventFields(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Method: "GET", Path: "/ok"}))
	b, p, ev := setup(t, Config{}, pv)
	cl := dial(t, p.Addr())
	cl.do(get("/ok", "svc.local"))
	cl.do("DELETE /nope HTTP/1.1\r\nHost: svc.local\r\n\r\n")
	events := ev.wait(t, 2)
	local := netip.MustParseAddrPort(cl.c.LocalAddr().String())
	for i, e := range events {
		if e.SrcIdentity != 1001 || e.DstIdentity != 1002 || e.SrcEndpoint != 11 || e.DstEndpoint != 12 {
			t.Errorf("event %d identities/endpoints: %+v", i, e)
		}
		if e.Src != local || e.Dst != b.addr() {
			t.Errorf("event %d addresses %v -> %v, want %v -> %v", i, e.Src, e.Dst, local, b.addr())
		}
		if e.Host != "svc.local" || e.Latency <= 0 || e.Time.IsZero() {
			t.Errorf("event %d: %+v", i, e)
		}
	}
	if e := events[0]; e.Method != "GET" || e.URL != "/ok" || e.Status != 200 || e.Verdict != VerdictForwarded || !strings.Contains(e.Rule, "path=/ok") {
		t.Errorf("first event %+v", e)
	}
	if e := events[1]; e.Method != "DELETE" || e.URL != "/nope" || e.Status != 403 || e.Verdict != VerdictDenied || e.Rule != "" || !strings.Contains(e.Reason, "endpoint 12") {
		t.Errorf("second event %+v", e)
	}
	st := p.Stats()
	if st.Requests != 2 || st.Forwarded != 1 || st.Denied != 1 || st.Accepted != 1 {
		t.Errorf("stats %+v", st)
	}
}

func TestKeepAliveMixed(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Method: "GET", Path: "/a.*"}, l7.HTTPRuleSpec{Method: "POST", Path: "/upload"}))
	b, p, ev := setup(t, Config{}, pv)
	cl := dial(t, p.Addr())
	steps := []struct {
		req    string
		status int
		body   string
	}{
		{get("/a1", "s"), 200, "hello GET /a1"},
		{get("/b", "s"), 403, "Access denied"},
		{"POST /b HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nhello", 403, "Access denied"},
		{"POST /b HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 403, "Access denied"},
		{get("/a2", "s"), 200, "hello GET /a2"},
		{"POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\n\r\nabc", 200, "len=3 sha=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"POST /upload HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n1;ext=1\r\na\r\n2\r\nbc\r\n0\r\nX-Trailer: t\r\n\r\n", 200, "len=3 sha=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"HEAD /b HTTP/1.1\r\nHost: s\r\n\r\n", 403, ""},
		{get("/a3", "s"), 200, "hello GET /a3"},
	}
	for i, s := range steps {
		resp, body := cl.do(s.req)
		if resp.StatusCode != s.status || body != s.body {
			t.Fatalf("step %d: %d %q, want %d %q", i, resp.StatusCode, body, s.status, s.body)
		}
		if resp.Close {
			t.Fatalf("step %d: proxy closes the connection", i)
		}
	}
	if n := b.conns.Load(); n != 1 {
		t.Errorf("backend saw %d connections, want 1", n)
	}
	var uris []string
	for _, r := range b.requests() {
		uris = append(uris, r.Method+" "+r.URI)
	}
	if got, want := strings.Join(uris, ","), "GET /a1,GET /a2,POST /upload,POST /upload,GET /a3"; got != want {
		t.Errorf("backend saw %s, want %s", got, want)
	}
	ev.wait(t, len(steps))
	time.Sleep(50 * time.Millisecond)
	if n := len(ev.all()); n != len(steps) {
		t.Errorf("%d events, want one per request: %d", n, len(steps))
	}
}

func TestPipelining(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/ok.*"}))
	b, p, ev := setup(t, Config{}, pv)
	cl := dial(t, p.Addr())
	var all strings.Builder
	var want []string
	for i := 0; i < 40; i++ {
		switch i % 4 {
		case 0, 1:
			fmt.Fprintf(&all, "GET /ok%d HTTP/1.1\r\nHost: s\r\n\r\n", i)
			want = append(want, fmt.Sprintf("200 hello GET /ok%d", i))
		case 2:
			fmt.Fprintf(&all, "POST /no%d HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\n\r\nbody", i)
			want = append(want, "403 Access denied")
		case 3:
			fmt.Fprintf(&all, "POST /ok%d HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", i)
			want = append(want, fmt.Sprintf("200 hello POST /ok%d", i))
		}
	}
	cl.send(all.String())
	for i, w := range want {
		method := "GET"
		if strings.Contains(w, "POST") {
			method = "POST"
		}
		resp, body := cl.read(method)
		if got := fmt.Sprintf("%d %s", resp.StatusCode, body); got != w {
			t.Fatalf("response %d: %q, want %q", i, got, w)
		}
	}
	if n := len(b.requests()); n != 30 {
		t.Errorf("backend saw %d requests, want 30", n)
	}
	events := ev.wait(t, len(want))
	for i, e := range events {
		if got := fmt.Sprintf("%d %s", e.Status, e.Verdict); (e.Status == 403) != strings.HasPrefix(want[i], "403") || !strings.Contains(want[i], e.URL) && e.Status != 403 {
			t.Errorf("event %d: %s %s, response %q", i, got, e.URL, want[i])
		}
	}
}

func TestPolicyChangeBetweenRequests(t *testing.T) {
	allowA := mkPolicy(t, l7.HTTPRuleSpec{Path: "/a"})
	allowB := mkPolicy(t, l7.HTTPRuleSpec{Path: "/b"})
	pv := newPolicyVar(allowA)
	b, p, _ := setup(t, Config{}, pv)
	cl := dial(t, p.Addr())
	resp, body := cl.do(get("/a", "s"))
	wantStatus(t, resp, body, 200)
	pv.p.Store(allowB)
	resp, body = cl.do(get("/a", "s"))
	want403(t, resp, body)
	resp, body = cl.do(get("/b", "s"))
	wantStatus(t, resp, body, 200)
	pv.p.Store(nil) // no policy at all: deny
	resp, body = cl.do(get("/b", "s"))
	want403(t, resp, body)
	if n := b.conns.Load(); n != 1 {
		t.Errorf("backend saw %d connections, want 1", n)
	}
}

// TestRepeatedRequests checks that identical requests on one connection
// are decided alike, and that one differing only by a header the rules
// look at is decided on its own.
func TestRepeatedRequests(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t,
		l7.HTTPRuleSpec{Path: "/headers", Headers: []string{"X-Token: s3cret"},
			HeaderMatches: []l7.HeaderMatch{{Name: "X-Added", Value: "yes", Mismatch: l7.MismatchAdd}}}))
	_, p, _ := setup(t, Config{}, pv)
	cl := dial(t, p.Addr())
	good := "GET /headers HTTP/1.1\r\nHost: s\r\nX-Token: s3cret\r\n\r\n"
	bad := "GET /headers HTTP/1.1\r\nHost: s\r\nX-Token: guess\r\n\r\n"
	for i, step := range []struct {
		req    string
		status int
	}{{good, 200}, {good, 200}, {bad, 403}, {bad, 403}, {good, 200}} {
		resp, body := cl.do(step.req)
		if resp.StatusCode != step.status {
			t.Fatalf("request %d: %d %q, want %d", i, resp.StatusCode, body, step.status)
		}
		if step.status == 200 && !strings.Contains(body, "X-Added: yes") {
			t.Fatalf("request %d: header action not applied: %q", i, body)
		}
	}
}

func TestEveryCheckMustAllow(t *testing.T) {
	b := startBackend(t)
	egress := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Method: "GET"}))
	ingress := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/in"}))
	res := &fakeResolver{dst: b.addr(), checks: []Check{
		{EndpointID: 11, Port: testPort, Policy: egress.get},
		{EndpointID: 12, Port: testPort, Policy: ingress.get},
	}}
	p, ev := startProxy(t, Config{}, res)
	cl := dial(t, p.Addr())
	resp, body := cl.do(get("/in", "s"))
	wantStatus(t, resp, body, 200)
	resp, body = cl.do(get("/out", "s")) // egress allows, ingress denies
	want403(t, resp, body)
	resp, body = cl.do("POST /in HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\n\r\n") // ingress allows, egress denies
	want403(t, resp, body)
	events := ev.wait(t, 3)
	if r := events[0].Rule; !strings.Contains(r, "method=GET") || !strings.Contains(r, "path=/in") {
		t.Errorf("rule %q names both rules", r)
	}
	if !strings.Contains(events[1].Reason, "endpoint 12") || !strings.Contains(events[2].Reason, "endpoint 11") {
		t.Errorf("reasons %q, %q", events[1].Reason, events[2].Reason)
	}
	if n := len(b.requests()); n != 1 {
		t.Errorf("backend saw %d requests, want 1", n)
	}

	// No checks at all: nothing passes.
	res2 := &fakeResolver{dst: b.addr()}
	p2, _ := startProxy(t, Config{}, res2)
	cl2 := dial(t, p2.Addr())
	resp, body = cl2.do(get("/in", "s"))
	want403(t, resp, body)
}

func TestDeniedOnlyConnectionNeverDialsUpstream(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/never"}))
	b, p, _ := setup(t, Config{}, pv)
	cl := dial(t, p.Addr())
	for i := 0; i < 3; i++ {
		resp, body := cl.do(get("/x", "s"))
		want403(t, resp, body)
	}
	if n := b.conns.Load(); n != 0 {
		t.Errorf("backend saw %d connections", n)
	}
}

func TestHopByHopHeaders(t *testing.T) {
	heads := make(chan string, 4)
	dst := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			head.WriteString(line)
			if line == "\r\n" {
				break
			}
		}
		heads <- head.String()
		io.WriteString(c, "HTTP/1.1 200 OK\r\nConnection: X-Bar\r\nX-Bar: 1\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nX-End: e\r\nContent-Length: 2\r\n\r\nok")
	})
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/"}))
	p, _ := startProxy(t, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
	cl := dial(t, p.Addr())
	resp, body := cl.do("GET / HTTP/1.1\r\nHost: s\r\nConnection: X-Foo, keep-alive\r\nX-Foo: 1\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\nTE: trailers, deflate\r\nUpgrade: h2c\r\nX-End: e\r\n\r\n")
	wantStatus(t, resp, body, 200)
	got := <-heads
	want := "GET / HTTP/1.1\r\nHost: s\r\nX-End: e\r\nTE: trailers\r\n\r\n"
	if got != want {
		t.Errorf("upstream got\n%q\nwant\n%q", got, want)
	}
	for _, h := range []string{"X-Bar", "Keep-Alive", "Proxy-Connection", "Connection"} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("client got %s: %s", h, v)
		}
	}
	if resp.Header.Get("X-End") != "e" || body != "ok" {
		t.Errorf("client got %v %q", resp.Header, body)
	}
}

func TestHTTP10(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/.*"}))
	b, p, _ := setup(t, Config{}, pv)

	t.Run("without keep-alive", func(t *testing.T) {
		cl := dial(t, p.Addr())
		resp, body := cl.do("GET /one HTTP/1.0\r\n\r\n")
		wantStatus(t, resp, body, 200)
		if body != "hello GET /one" {
			t.Fatalf("body %q", body)
		}
		cl.expectClosed()
	})
	t.Run("keep-alive", func(t *testing.T) {
		before := b.conns.Load()
		cl := dial(t, p.Addr())
		for i := 0; i < 3; i++ {
			resp, body := cl.do("GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
			wantStatus(t, resp, body, 200)
			if resp.Close || !strings.EqualFold(resp.Header.Get("Connection"), "keep-alive") {
				t.Fatalf("request %d: response %v would close", i, resp.Header)
			}
		}
		resp, body := cl.do("GET /nope/../x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
		wantStatus(t, resp, body, 400)
		if n := b.conns.Load() - before; n != 1 {
			t.Errorf("backend saw %d connections, want 1", n)
		}
	})
	t.Run("denied keep-alive", func(t *testing.T) {
		pv2 := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/only"}))
		_, p2, _ := setup(t, Config{}, pv2)
		cl := dial(t, p2.Addr())
		resp, body := cl.do("GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
		want403(t, resp, body)
		if resp.Close {
			t.Fatalf("403 closes a keep-alive HTTP/1.0 connection")
		}
		resp, body = cl.do("GET /only HTTP/1.0\r\n\r\n")
		wantStatus(t, resp, body, 200)
		cl.expectClosed()
	})
	t.Run("chunked response de-chunked", func(t *testing.T) {
		cl := dial(t, p.Addr())
		cl.send("GET /download?n=100000&mode=chunked HTTP/1.0\r\n\r\n")
		all, err := io.ReadAll(cl.br)
		if err != nil {
			t.Fatal(err)
		}
		head, body, _ := strings.Cut(string(all), "\r\n\r\n")
		if strings.Contains(strings.ToLower(head), "chunked") || len(body) != 100000 {
			t.Fatalf("head %q, body %d bytes", head, len(body))
		}
		for i := range body {
			if body[i] != pattern(int64(i)) {
				t.Fatalf("byte %d differs", i)
			}
		}
	})
}

func TestHEADAndBodylessResponses(t *testing.T) {
	dst := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			switch {
			case req.Method == "HEAD":
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
			case req.URL.Path == "/304":
				io.WriteString(c, "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: x\r\n\r\n")
			case req.URL.Path == "/204":
				io.WriteString(c, "HTTP/1.1 204 No Content\r\n\r\n")
			default:
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
			}
		}
	})
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/.*"}))
	p, _ := startProxy(t, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
	cl := dial(t, p.Addr())
	resp, body := cl.do("HEAD /x HTTP/1.1\r\nHost: s\r\n\r\n")
	if resp.StatusCode != 200 || resp.ContentLength != 1000 || body != "" {
		t.Fatalf("HEAD: %d length %d body %q", resp.StatusCode, resp.ContentLength, body)
	}
	resp, body = cl.do(get("/304", "s"))
	if resp.StatusCode != 304 || resp.Header.Get("Content-Length") != "50" || body != "" {
		t.Fatalf("304: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	resp, body = cl.do(get("/204", "s"))
	if resp.StatusCode != 204 || body != "" {
		t.Fatalf("204: %d %q", resp.StatusCode, body)
	}
	resp, body = cl.do(get("/x", "s"))
	if resp.StatusCode != 200 || body != "body" {
		t.Fatalf("GET after HEAD: %d %q", resp.StatusCode, body)
	}
}

func TestCloseDelimitedResponse(t *testing.T) {
	dst := rawBackend(t, func(c net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
		writePattern(c, 3<<20)
	})
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/.*"}))
	p, _ := startProxy(t, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
	cl := dial(t, p.Addr())
	cl.send(get("/", "s") + get("/second", "s"))
	resp, err := http.ReadResponse(cl.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Close || resp.ContentLength != -1 {
		t.Fatalf("response close=%v length=%d", resp.Close, resp.ContentLength)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil || n != 3<<20 {
		t.Fatalf("read %d bytes, %v", n, err)
	}
	cl.expectClosed()
}

func TestExpectContinue(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/upload"}))
	b, p, _ := setup(t, Config{}, pv)

	t.Run("allowed", func(t *testing.T) {
		cl := dial(t, p.Addr())
		cl.send("POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
		resp, err := http.ReadResponse(cl.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 100 {
			t.Fatalf("got %d before the body, want 100", resp.StatusCode)
		}
		cl.send("abc")
		resp2, body := cl.read("POST")
		wantStatus(t, resp2, body, 200)
		if !strings.HasPrefix(body, "len=3 ") {
			t.Fatalf("body %q", body)
		}
		resp2, body = cl.do(get("/upload", "s"))
		wantStatus(t, resp2, body, 200)
	})
	t.Run("denied", func(t *testing.T) {
		before := len(b.requests())
		cl := dial(t, p.Addr())
		cl.send("POST /other HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
		resp, body := cl.read("POST")
		want403(t, resp, body)
		if !resp.Close {
			t.Fatalf("403 to an Expect: 100-continue request keeps the connection")
		}
		cl.expectClosed()
		if n := len(b.requests()) - before; n != 0 {
			t.Fatalf("backend saw %d requests", n)
		}
	})
}

func TestDeniedBodies(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/ok"}))
	b, p, _ := setup(t, Config{MaxDiscardBytes: 64 << 10}, pv)
	t.Run("small body skipped", func(t *testing.T) {
		cl := dial(t, p.Addr())
		resp, body := cl.do(fmt.Sprintf("POST /no HTTP/1.1\r\nHost: s\r\nContent-Length: %d\r\n\r\n%s", 60<<10, strings.Repeat("x", 60<<10)))
		want403(t, resp, body)
		if resp.Close {
			t.Fatal("connection closed after a skippable body")
		}
		resp, body = cl.do(get("/ok", "s"))
		wantStatus(t, resp, body, 200)
	})
	t.Run("large body closes", func(t *testing.T) {
		cl := dial(t, p.Addr())
		// The client writes its whole 4 MiB body while the proxy answers
		// and closes: it must still read the 403 (no reset).
		go func() {
			io.WriteString(cl.c, fmt.Sprintf("POST /no HTTP/1.1\r\nHost: s\r\nContent-Length: %d\r\n\r\n", 4<<20))
			io.Copy(cl.c, &patternReader{n: 4 << 20})
		}()
		resp, body := cl.read("POST")
		want403(t, resp, body)
		if !resp.Close {
			t.Fatal("403 to an unskippable body keeps the connection")
		}
		cl.expectClosed()
	})
	t.Run("large chunked body closes", func(t *testing.T) {
		cl := dial(t, p.Addr())
		go func() {
			io.WriteString(cl.c, "POST /no HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n")
			for i := 0; i < 100; i++ {
				if _, err := io.WriteString(cl.c, "1000\r\n"+strings.Repeat("y", 0x1000)+"\r\n"); err != nil {
					return
				}
			}
			io.WriteString(cl.c, "0\r\n\r\n")
		}()
		resp, body := cl.read("POST")
		want403(t, resp, body)
		if !resp.Close {
			t.Fatal("403 to an unskippable body keeps the connection")
		}
		cl.expectClosed()
	})
	if n := len(b.requests()); n != 1 {
		t.Errorf("backend saw %d requests, want 1", n)
	}
}

func TestUpgrade(t *testing.T) {
	dst := rawBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.Header.Get("Upgrade") != "websocket" || !strings.EqualFold(req.Header.Get("Connection"), "upgrade") {
				io.WriteString(c, "HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno")
				continue
			}
			if req.URL.Path == "/refuse" {
				io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 7\r\n\r\nrefused")
				continue
			}
			io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n")
			// Echo, upper-cased, until the client ends its side.
			buf := make([]byte, 4096)
			for {
				n, err := br.Read(buf)
				if n > 0 {
					c.Write([]byte(strings.ToUpper(string(buf[:n]))))
				}
				if err != nil {
					c.(*net.TCPConn).CloseWrite()
					return
				}
			}
		}
	})
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/ws|/refuse"}))
	p, ev := startProxy(t, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
	upReq := func(path string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n"
	}
	t.Run("denied", func(t *testing.T) {
		cl := dial(t, p.Addr())
		resp, body := cl.do(upReq("/chat"))
		want403(t, resp, body)
	})
	t.Run("refused by server, connection goes on", func(t *testing.T) {
		cl := dial(t, p.Addr())
		resp, body := cl.do(upReq("/refuse"))
		if resp.StatusCode != 400 || body != "refused" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		resp, body = cl.do(get("/ws", "s"))
		if resp.StatusCode != 426 {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})
	t.Run("h2c is not let through", func(t *testing.T) {
		cl := dial(t, p.Addr())
		// Forwarded as a plain request: the backend sees no upgrade and
		// answers 426; the HTTP2-Settings field named by Connection is dropped.
		resp, body := cl.do("GET /ws HTTP/1.1\r\nHost: s\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
		if resp.StatusCode != 426 || body != "no" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		resp, body = cl.do(get("/refuse", "s"))
		if resp.StatusCode != 426 {
			t.Fatalf("connection not usable after h2c attempt: %d %q", resp.StatusCode, body)
		}
	})
	t.Run("echo", func(t *testing.T) {
		cl := dial(t, p.Addr())
		// Bytes sent right behind the upgrade request belong to the new
		// protocol and must not be parsed as HTTP.
		cl.send(upReq("/ws") + "GET /not-http HTTP/1.1\r\n\r\n")
		resp, err := http.ReadResponse(cl.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "websocket" || resp.Header.Get("Sec-Websocket-Accept") != "x" {
			t.Fatalf("upgrade response %d %v", resp.StatusCode, resp.Header)
		}
		want := "GET /NOT-HTTP HTTP/1.1\r\n\r\n"
		got := make([]byte, len(want))
		if _, err := io.ReadFull(cl.br, got); err != nil || string(got) != want {
			t.Fatalf("echo %q, %v", got, err)
		}
		for i := 0; i < 50; i++ {
			msg := fmt.Sprintf("message %d;", i)
			cl.send(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(cl.br, got); err != nil || string(got) != strings.ToUpper(msg) {
				t.Fatalf("echo %q, %v", got, err)
			}
		}
		// A large transfer through the tunnel.
		go func() {
			io.Copy(cl.c, &patternReader{n: 8 << 20})
			cl.c.(*net.TCPConn).CloseWrite()
		}()
		n, err := io.Copy(io.Discard, cl.br)
		if err != nil || n != 8<<20 {
			t.Fatalf("tunnel carried %d bytes, %v", n, err)
		}
	})
	events := ev.all()
	var got []string
	for _, e := range events {
		got = append(got, fmt.Sprintf("%s %d %s", e.URL, e.Status, e.Verdict))
	}
	if want := "/chat 403 denied,/refuse 400 forwarded,/ws 426 forwarded,/ws 426 forwarded,/refuse 426 forwarded,/ws 101 forwarded"; strings.Join(got, ",") != want {
		t.Errorf("events %s, want %s", strings.Join(got, ","), want)
	}
}

func TestUpstreamFailures(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/.*"}))
	t.Run("connection refused", func(t *testing.T) {
		p, ev := startProxy(t, Config{}, &fakeResolver{dst: closedAddr(t), checks: []Check{checkOf(pv)}})
		cl := dial(t, p.Addr())
		for i := 0; i < 2; i++ {
			resp, body := cl.do("POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 2\r\n\r\nhi")
			if resp.StatusCode != 503 || body != "upstream connect error: connection refused" || resp.Close {
				t.Fatalf("%d %q close=%v", resp.StatusCode, body, resp.Close)
			}
		}
		e := ev.wait(t, 2)[0]
		if e.Verdict != VerdictError || e.Status != 503 || !strings.Contains(e.Reason, "connection refused") {
			t.Fatalf("event %+v", e)
		}
		if st := p.Stats(); st.UpstreamErrors != 2 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("response timeout", func(t *testing.T) {
		dst := rawBackend(t, func(c net.Conn) { io.Copy(io.Discard, c) })
		p, ev := startProxy(t, Config{ResponseHeaderTimeout: 300 * time.Millisecond}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
		cl := dial(t, p.Addr())
		start := time.Now()
		// A second request pipelined behind the one that times out gets
		// no response, but an event.
		cl.send(get("/", "s") + get("/second", "s"))
		resp, body := cl.read("GET")
		if resp.StatusCode != 502 || body != "upstream response timeout" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		if d := time.Since(start); d < 250*time.Millisecond || d > 5*time.Second {
			t.Fatalf("502 after %v", d)
		}
		cl.expectClosed()
		events := ev.wait(t, 2)
		if e := events[0]; e.Verdict != VerdictError || e.Status != 502 {
			t.Fatalf("event %+v", e)
		}
		if e := events[1]; e.URL != "/second" || e.Verdict != VerdictError || e.Status != 0 || e.Reason != "connection closed before the response" {
			t.Fatalf("event %+v", e)
		}
	})
	t.Run("closed before responding", func(t *testing.T) {
		dst := rawBackend(t, func(c net.Conn) {
			http.ReadRequest(bufio.NewReader(c))
		})
		p, _ := startProxy(t, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
		cl := dial(t, p.Addr())
		resp, body := cl.do(get("/", "s"))
		if resp.StatusCode != 502 || !strings.Contains(body, "before responding") {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
		cl.expectClosed()
	})
	t.Run("gone mid-head", func(t *testing.T) {
		dst := rawBackend(t, func(c net.Conn) {
			http.ReadRequest(bufio.NewReader(c))
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Le")
		})
		p, _ := startProxy(t, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
		cl := dial(t, p.Addr())
		resp, body := cl.do(get("/", "s"))
		if resp.StatusCode != 502 {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})
	t.Run("gone mid-body", func(t *testing.T) {
		dst := rawBackend(t, func(c net.Conn) {
			http.ReadRequest(bufio.NewReader(c))
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
		})
		p, _ := startProxy(t, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
		cl := dial(t, p.Addr())
		cl.send(get("/", "s"))
		resp, err := http.ReadResponse(cl.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		if err == nil || string(b) != "partial" {
			t.Fatalf("body %q, err %v: the client must see the truncation", b, err)
		}
		if st := p.Stats(); st.Errors != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("invalid response", func(t *testing.T) {
		dst := rawBackend(t, func(c net.Conn) {
			http.ReadRequest(bufio.NewReader(c))
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
		})
		p, _ := startProxy(t, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
		cl := dial(t, p.Addr())
		resp, body := cl.do(get("/", "s"))
		if resp.StatusCode != 502 || body != "invalid response from upstream" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})
	t.Run("server closes idle connection", func(t *testing.T) {
		dst := rawBackend(t, func(c net.Conn) {
			http.ReadRequest(bufio.NewReader(c))
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
			time.Sleep(100 * time.Millisecond)
		})
		p, _ := startProxy(t, Config{}, &fakeResolver{dst: dst, checks: []Check{checkOf(pv)}})
		cl := dial(t, p.Addr())
		resp, body := cl.do(get("/", "s"))
		wantStatus(t, resp, body, 200)
		// The server closes; the client's connection closes too.
		cl.expectClosed()
	})
}

func TestResolverError(t *testing.T) {
	b := startBackend(t)
	res := &fakeResolver{dst: b.addr(), err: errors.New("no identity for 127.0.0.1")}
	p, ev := startProxy(t, Config{}, res)
	// The proxy resets the connection: the dial itself, the write or the
	// read fail, and no byte ever comes back.
	if c, err := net.DialTimeout("tcp", p.Addr().String(), 5*time.Second); err == nil {
		defer c.Close()
		_, _ = io.WriteString(c, get("/", "s"))
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || isTimeout(err) {
			t.Fatalf("read %d bytes, %v: connection not closed", n, err)
		}
	}
	if n := b.conns.Load(); n != 0 {
		t.Fatalf("backend saw %d connections", n)
	}
	if st := p.Stats(); st.ResolveErrors != 1 || res.calls.Load() != 1 {
		t.Fatalf("stats %+v, calls %d", st, res.calls.Load())
	}
	if n := len(ev.all()); n != 0 {
		t.Fatalf("%d events", n)
	}
}

func TestMalformedRequests(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/.*"}))
	b, p, ev := setup(t, Config{MaxHeaderBytes: 4096}, pv)
	cases := []struct {
		name   string
		req    string
		status int
	}{
		{"bad request line", "GET /\r\nHost: s\r\n\r\n", 400},
		{"two spaces", "GET  / HTTP/1.1\r\nHost: s\r\n\r\n", 400},
		{"lower-case version", "GET / http/1.1\r\nHost: s\r\n\r\n", 400},
		{"HTTP/2", "GET / HTTP/2.0\r\nHost: s\r\n\r\n", 505},
		{"bad method", "G(T / HTTP/1.1\r\nHost: s\r\n\r\n", 400},
		{"space in target", "GET /a b HTTP/1.1\r\nHost: s\r\n\r\n", 400},
		{"non-ASCII target", "GET /\xff HTTP/1.1\r\nHost: s\r\n\r\n", 400},
		{"fragment in target", "GET /a#b HTTP/1.1\r\nHost: s\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\nHost : s\r\n\r\n", 400},
		{"no colon", "GET / HTTP/1.1\r\nHost: s\r\nBroken\r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: s\r\nX-A: 1\r\n 2\r\n\r\n", 400},
		{"NUL in value", "GET / HTTP/1.1\r\nHost: s\r\nX-A: a\x00b\r\n\r\n", 400},
		{"CR in value", "GET / HTTP/1.1\r\nHost: s\r\nX-A: a\rb\r\n\r\n", 400},
		{"bare LF", "GET / HTTP/1.1\nHost: s\n\n", 400},
		{"bare LF in fields", "GET / HTTP/1.1\r\nHost: s\nX-A: 1\r\n\r\n", 400},
		{"missing host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"two hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
		{"bad host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400},
		{"absolute form host mismatch", "GET http://a/x HTTP/1.1\r\nHost: b\r\n\r\n", 400},
		{"conflicting content-length", "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400},
		{"content-length list", "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 3, 3\r\n\r\nabc", 400},
		{"signed content-length", "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: +3\r\n\r\nabc", 400},
		{"underscore framing header", "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"CL and TE", "POST / HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE not final chunked", "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400},
		{"TE twice chunked", "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE unknown", "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
		{"TE obfuscated", "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 501},
		{"TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"invalid chunk size", "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400},
		{"chunk size with space", "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400},
		{"chunk size overflow", "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n", 400},
		{"chunk data too long", "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n", 400},
		{"chunk bare LF", "POST / HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", 400},
		{"dot segment", "GET /public/../admin HTTP/1.1\r\nHost: s\r\n\r\n", 400},
		{"encoded dot segment", "GET /public/%2e%2E/admin HTTP/1.1\r\nHost: s\r\n\r\n", 400},
		{"backslash dot segment", "GET /public\\..\\admin HTTP/1.1\r\nHost: s\r\n\r\n", 400},
		{"asterisk not OPTIONS", "GET * HTTP/1.1\r\nHost: s\r\n\r\n", 400},
		{"too many empty lines", "\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: s\r\n\r\n", 400},
		{"oversized header", "GET / HTTP/1.1\r\nHost: s\r\nX-Big: " + strings.Repeat("a", 5000) + "\r\n\r\n", 431},
		{"oversized request line", "GET /" + strings.Repeat("a", 5000) + " HTTP/1.1\r\nHost: s\r\n\r\n", 431},
		{"too many headers", "GET / HTTP/1.1\r\nHost: s\r\n" + strings.Repeat("A: b\r\n", 300) + "\r\n", 431},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := len(ev.all())
			cl := dial(t, p.Addr())
			// A valid request first: the error must not break earlier ones.
			resp, body := cl.do(get("/first", "s"))
			wantStatus(t, resp, body, 200)
			cl.send(c.req)
			resp, body = cl.read("GET")
			if resp.StatusCode != c.status || !resp.Close {
				t.Fatalf("got %d (%q) close=%v, want %d and close", resp.StatusCode, body, resp.Close, c.status)
			}
			cl.expectClosed()
			e := ev.wait(t, n+2)[n+1]
			if e.Verdict != VerdictError || e.Status != c.status {
				t.Fatalf("event %+v", e)
			}
		})
	}
	// Bodies are streamed: a request whose head passed may reach the
	// backend before its chunked body turns out malformed (then the
	// upstream connection is cut). Nothing else may reach it.
	for _, r := range b.requests() {
		if r.URI != "/first" && (r.Method != "POST" || r.URI != "/") {
			t.Errorf("backend saw %s %s", r.Method, r.URI)
		}
	}
}

func TestValidEdgeRequests(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/.*|\\*"}))
	b, p, _ := setup(t, Config{}, pv)
	cl := dial(t, p.Addr())
	for _, req := range []string{
		"\r\nGET /leading-crlf HTTP/1.1\r\nHost: s\r\n\r\n",
		"GET /x HTTP/1.1\r\nhOsT: s\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: s\r\n\r\n",
		"GET http://s/abs?q=1 HTTP/1.1\r\nHost: s\r\n\r\n",
		"POST /cl HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
		"GET /a/.well-known/x?../.. HTTP/1.1\r\nHost: s\r\n\r\n",
		"GET /%2Fencoded%2Fslash HTTP/1.1\r\nHost: s\r\n\r\n",
	} {
		resp, body := cl.do(req)
		if resp.StatusCode != 200 {
			t.Fatalf("%q: %d %q", req, resp.StatusCode, body)
		}
	}
	// Go's server answers OPTIONS * itself, without the handler.
	if n := len(b.requests()); n != 6 {
		t.Fatalf("backend saw %d requests", n)
	}
}

func TestSlowloris(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/.*"}))
	b, p, ev := setup(t, Config{HeaderTimeout: 300 * time.Millisecond, IdleTimeout: 2 * time.Second}, pv)
	t.Run("partial head", func(t *testing.T) {
		cl := dial(t, p.Addr())
		start := time.Now()
		go func() {
			for _, c := range "GET / HTTP/1.1\r\nHost: s\r\nX-Slow: 1" {
				if _, err := cl.c.Write([]byte(string(c))); err != nil {
					return
				}
				time.Sleep(30 * time.Millisecond)
			}
		}()
		resp, body := cl.read("GET")
		if resp.StatusCode != 408 || !resp.Close {
			t.Fatalf("%d %q close=%v", resp.StatusCode, body, resp.Close)
		}
		if d := time.Since(start); d < 250*time.Millisecond || d > 3*time.Second {
			t.Fatalf("408 after %v", d)
		}
		cl.expectClosed()
	})
	t.Run("silent connection", func(t *testing.T) {
		cl := dial(t, p.Addr())
		cl.expectClosed() // closed without a response after HeaderTimeout
	})
	t.Run("idle keep-alive", func(t *testing.T) {
		cl := dial(t, p.Addr())
		resp, body := cl.do(get("/", "s"))
		wantStatus(t, resp, body, 200)
		start := time.Now()
		cl.expectClosed()
		if d := time.Since(start); d < 1500*time.Millisecond {
			t.Fatalf("idle connection closed after %v, want the 2s idle timeout", d)
		}
	})
	t.Run("slow response is not idle", func(t *testing.T) {
		cl := dial(t, p.Addr())
		resp, body := cl.do(get("/slow?ms=2500", "s"))
		if resp.StatusCode != 200 || body != "slow" {
			t.Fatalf("%d %q", resp.StatusCode, body)
		}
	})
	if n := len(b.requests()); n != 2 {
		t.Errorf("backend saw %d requests", n)
	}
	var n408 int
	for _, e := range ev.all() {
		if e.Status == 408 {
			n408++
		}
	}
	if n408 != 1 {
		t.Errorf("%d 408 events, want 1", n408)
	}
}

func TestConcurrentConnections(t *testing.T) {
	pv := newPolicyVar(mkPolicy(t, l7.HTTPRuleSpec{Path: "/ok.*"}))
	b, p, ev := setup(t, Config{}, pv)
	const conns = 1000
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	start := make(chan struct{})
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", p.Addr().String(), 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(60 * time.Second))
			br := bufio.NewReader(c)
			<-start
			for j, path := range []string{fmt.Sprintf("/ok/%d", i), "/denied", fmt.Sprintf("/ok/%d/again", i)} {
				if _, err := io.WriteString(c, get(path, "s")); err != nil {
					errs <- err
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					errs <- fmt.Errorf("conn %d request %d: %w", i, j, err)
					return
				}
				body, _ := io.ReadAll(resp.Body)
				want := "hello GET " + path
				if j == 1 {
					want = "Access denied"
				}
				if string(body) != want {
					errs <- fmt.Errorf("conn %d request %d: %q, want %q", i, j, body, want)
					return
				}
			}
		}(i)
	}
	// All connections are open at once before any request.
	deadline := time.Now().Add(20 * time.Second)
	for p.Stats().Active < conns && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if a := p.Stats().Active; a < conns {
		t.Fatalf("%d connections active, want %d", a, conns)
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := len(b.requests()); n != 2*conns {
		t.Errorf("backend saw %d requests", n)
	}
	ev.wait(t, 3*conns)
}
