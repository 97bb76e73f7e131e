package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/membrane-net/membrane/pkg/demo"
	"github.com/membrane-net/membrane/pkg/monitor"
	"github.com/membrane-net/membrane/pkg/nsutil"
)

// serveHTTP runs an HTTP server on port inside a namespace; the handler
// also reports the client address it saw.
func serveHTTP(t *testing.T, ns string, port int, h http.Handler) {
	t.Helper()
	ln, err := nsutil.Listen(ns, "tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// httpClient makes connections from inside a namespace.
func httpClient(ns string, keepAlive bool) *http.Client {
	return &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: !keepAlive,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return nsutil.Dial(ctx, ns, network, addr)
			},
		},
	}
}

// do sends a request; status 0 means no answer.
func do(c *http.Client, method, url string, hdr ...string) (int, string) {
	req, _ := http.NewRequest(method, url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

func deathstar() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/request-landing", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "Ship landed")
	})
	mux.HandleFunc("PUT /v1/exhaust-port", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "Panic: deathstar exploded")
	})
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprint(w, host)
	})
	return mux
}

func TestPrivilegedL7StarWars(t *testing.T) {
	a := startAgent(t)
	ds := a.addEndpoint("deathstar", "org=empire,class=deathstar")
	tie := a.addEndpoint("tiefighter", "org=empire,class=tiefighter")
	xw := a.addEndpoint("xwing", "org=alliance,class=xwing")
	serveHTTP(t, ds.NS, 80, deathstar())
	base := fmt.Sprintf("http://%s", ds.IPv4)
	a.importPolicy("sw_l3_l4_l7_policy.yaml", demo.SWL3L4L7Policy)
	events := watchMonitor(t, a, monitor.TypeL7)

	tc := httpClient(tie.NS, true)
	if st, body := do(tc, "POST", base+"/v1/request-landing"); st != 200 || body != "Ship landed" {
		t.Fatalf("tiefighter landing: %d %q", st, body)
	}
	if st, body := do(tc, "PUT", base+"/v1/exhaust-port"); st != 403 || body != "Access denied" {
		t.Fatalf("tiefighter exhaust-port: %d %q", st, body)
	}
	// The same keep-alive connection stays usable after a denial.
	if st, _ := do(tc, "POST", base+"/v1/request-landing"); st != 200 {
		t.Fatalf("landing after a denial on the same connection: %d", st)
	}
	if st, _ := do(httpClient(xw.NS, false), "POST", base+"/v1/request-landing"); st != 0 {
		t.Fatalf("xwing got %d, want dropped", st)
	}
	var sawDenied, sawForwarded bool
	for _, e := range events() {
		if e.Method == "PUT" && e.Verdict == "denied" && e.Status == 403 {
			sawDenied = true
		}
		if e.Method == "POST" && e.Verdict == "forwarded" && e.Status == 200 && e.SrcIdentity == uint32(tie.Identity) && e.DstIdentity == uint32(ds.Identity) {
			sawForwarded = true
		}
	}
	if !sawDenied || !sawForwarded {
		t.Errorf("monitor --type l7: denied=%v forwarded=%v", sawDenied, sawForwarded)
	}
}

func TestPrivilegedL7EgressAndClientAddress(t *testing.T) {
	a := startAgent(t)
	app1 := a.addEndpoint("app1", "id=app1")
	app2 := a.addEndpoint("app2", "id=app2")
	app3 := a.addEndpoint("app3", "id=app3")
	mux := http.NewServeMux()
	mux.HandleFunc("/public", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "public") })
	mux.HandleFunc("/private", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "private") })
	mux.HandleFunc("/whoami", func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprint(w, host)
	})
	serveHTTP(t, app1.NS, 80, mux)
	url := fmt.Sprintf("http://%s", app1.IPv4)
	// Egress L7 on app2 (the client side), early Cilium's JSON rule list.
	a.importPolicy("egress_l7.json", `[{
	  "endpointSelector": {"matchLabels":{"id":"app2"}},
	  "egress": [{
	    "toEndpoints": [{"matchLabels":{"id":"app1"}}],
	    "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}],
	                 "rules": {"HTTP": [{"method": "GET", "path": "/public"}, {"method": "GET", "path": "/whoami"}]}}]
	  }]
	}]`)
	c2 := httpClient(app2.NS, true)
	if st, body := do(c2, "GET", url+"/public"); st != 200 || body != "public" {
		t.Fatalf("app2 GET /public: %d %q", st, body)
	}
	if st, body := do(c2, "GET", url+"/private"); st != 403 || body != "Access denied" {
		t.Fatalf("app2 GET /private: %d %q", st, body)
	}
	if st, body := do(c2, "GET", url+"/whoami"); st != 200 || body != app2.IPv4.String() {
		t.Fatalf("server saw client %q (status %d), want %s", body, st, app2.IPv4)
	}
	// app3 is not under L7 policy: straight through.
	if st, _ := do(httpClient(app3.NS, false), "GET", url+"/private"); st != 200 {
		t.Fatalf("app3 GET /private: %d", st)
	}
	// A policy change applies to the next request on an open connection.
	a.importPolicy("egress_l7.json", `[{
	  "endpointSelector": {"matchLabels":{"id":"app2"}},
	  "egress": [{
	    "toEndpoints": [{"matchLabels":{"id":"app1"}}],
	    "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}],
	                 "rules": {"HTTP": [{"method": "GET", "path": "/private"}]}}]
	  }]
	}]`)
	if st, _ := do(c2, "GET", url+"/private"); st != 200 {
		t.Fatalf("app2 GET /private after the change: %d", st)
	}
	if st, _ := do(c2, "GET", url+"/public"); st != 403 {
		t.Fatalf("app2 GET /public after the change: %d", st)
	}
}

// TestPrivilegedL7Robustness sends bad and hostile requests through the
// real datapath redirect and the proxy.
func TestPrivilegedL7Robustness(t *testing.T) {
	a := startAgent(t)
	srv := a.addEndpoint("srv", "id=srv")
	cli := a.addEndpoint("cli", "id=cli")
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
	serveHTTP(t, srv.NS, 80, mux)
	a.importPolicy("l7.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7}
spec:
  endpointSelector: {matchLabels: {id: srv}}
  ingress:
  - fromEndpoints: [{matchLabels: {id: cli}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}, {port: "81", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/ok.*", headers: ["X-Token: secret"]}
        - {method: POST, path: "/submit", host: "api\\.example\\.com"}
`)
	raw := func(req string) string {
		c, err := dialNS(cli.NS, addr(srv, 80))
		if err != nil {
			return "dial: " + err.Error()
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		c.Write([]byte(req))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	status := func(resp string) string {
		line, _, _ := strings.Cut(resp, "\r\n")
		return line
	}
	cases := []struct {
		name, req, want string
	}{
		{"header rule met", "GET /ok HTTP/1.1\r\nHost: x\r\nX-Token: secret\r\nConnection: close\r\n\r\n", "HTTP/1.1 200"},
		{"header rule unmet", "GET /ok HTTP/1.1\r\nHost: x\r\nX-Token: wrong\r\nConnection: close\r\n\r\n", "HTTP/1.1 403"},
		{"host rule met", "POST /submit HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "HTTP/1.1 200"},
		{"host rule unmet", "POST /submit HTTP/1.1\r\nHost: evil.example.com\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "HTTP/1.1 403"},
		{"malformed", "GARBAGE\r\n\r\n", "HTTP/1.1 400"},
		{"oversized headers", "GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 200<<10) + "\r\n\r\n", "HTTP/1.1 431"},
		{"http/1.0", "GET /ok HTTP/1.0\r\nX-Token: secret\r\n\r\n", "HTTP/1.0 200"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := status(raw(c.req)); !strings.HasPrefix(got, c.want) {
				t.Fatalf("status line %q, want %s", got, c.want)
			}
		})
	}
	// Port 81 is allowed with L7 but nothing listens: the proxy answers 503.
	t.Run("upstream refuses", func(t *testing.T) {
		c, err := dialNS(cli.NS, addr(srv, 81))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("GET /ok HTTP/1.1\r\nHost: x\r\nX-Token: secret\r\nConnection: close\r\n\r\n"))
		b, _ := io.ReadAll(c)
		if got := status(string(b)); !strings.HasPrefix(got, "HTTP/1.1 503") {
			t.Fatalf("status %q, want 503", got)
		}
	})
	// Without the proxy (the agent is down) nothing redirected passes.
	t.Run("proxy down fails closed", func(t *testing.T) {
		a.kill()
		if tcpOK(cli.NS, addr(srv, 80)) {
			t.Fatal("a connection that needs L7 checks passed while the proxy is down")
		}
		a.start()
		if got := status(raw("GET /ok HTTP/1.1\r\nHost: x\r\nX-Token: secret\r\nConnection: close\r\n\r\n")); !strings.HasPrefix(got, "HTTP/1.1 200") {
			t.Fatalf("after restart: %q", got)
		}
	})
}
