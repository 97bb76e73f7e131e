package proxy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/internal/testutil"
	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/policy/l7"
)

// The privileged tests build, in three network namespaces of their own:
//
//	client ns            "host" ns (the proxy)              server ns
//	eth0 10.201.1.2 ---- vC 10.201.1.1   vS 10.201.2.1 ---- eth0 10.201.2.3
//
// and emulate the datapath's redirect with the TPROXY recipe (notes, facts
// 10 and 13): packets from the client to ports 80/81/8080 are assigned to
// the proxy's transparent listener and marked 0x200, established flows of
// transparent sockets are marked 0x200 (replies to the upstream sockets
// included), and the mark routes them to the local table. Nothing is done
// in the namespace the tests run in, so they cannot disturb the machine.

const (
	privClientIP = "10.201.1.2"
	privServerIP = "10.201.2.3"
	privToProxy  = "0x200/0xf00"
	privUpMark   = 0xb00
	privRouteTab = "2004"
)

// netns is a named network namespace that the test deletes when it ends.
type netns struct{ name string }

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func newNetns(t *testing.T, name string) *netns {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		testutil.Unavailable(t, fmt.Sprintf("ip netns add: %v: %s", err, out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return &netns{name: name}
}

func (n *netns) run(t *testing.T, args ...string) {
	t.Helper()
	run(t, "ip", append([]string{"netns", "exec", n.name}, args...)...)
}

// do runs f on a thread switched into the namespace: the sockets f
// creates belong to it.
func (n *netns) do(f func() error) error {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own netns: %w", err)
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + n.name)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", n.name, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", n.name, err)
	}
	ferr := f()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		// Leave the thread locked: it dies with its goroutine.
		return fmt.Errorf("restore netns: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// privTopology is the three namespaces with their links and rules.
type privTopology struct {
	host, cli, srv *netns
}

func newPrivTopology(t *testing.T) *privTopology {
	t.Helper()
	testutil.RequirePrivileged(t)
	for _, bin := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			testutil.Unavailable(t, bin+" not found: "+err.Error())
		}
	}
	var rb [3]byte
	_, _ = rand.Read(rb[:])
	id := "mpx" + hex.EncodeToString(rb[:]) // 9 characters: names stay under 15
	top := &privTopology{host: newNetns(t, id+"h"), cli: newNetns(t, id+"c"), srv: newNetns(t, id+"s")}
	h := top.host
	for _, x := range []struct {
		peer           *netns
		dev            string
		hostIP, peerIP string
		subnet         string
	}{
		{top.cli, id + "C", "10.201.1.1", privClientIP, "10.201.1.0/24"},
		{top.srv, id + "S", "10.201.2.1", privServerIP, "10.201.2.0/24"},
	} {
		h.run(t, "ip", "link", "add", x.dev, "type", "veth", "peer", "name", "eth0", "netns", x.peer.name)
		h.run(t, "ip", "addr", "add", x.hostIP+"/24", "dev", x.dev)
		h.run(t, "ip", "link", "set", x.dev, "up")
		x.peer.run(t, "ip", "addr", "add", x.peerIP+"/24", "dev", "eth0")
		x.peer.run(t, "ip", "link", "set", "eth0", "up")
		x.peer.run(t, "ip", "link", "set", "lo", "up")
		x.peer.run(t, "ip", "route", "add", "default", "via", x.hostIP)
		h.run(t, "sysctl", "-qw", "net.ipv4.conf."+x.dev+".rp_filter=0")
	}
	h.run(t, "ip", "link", "set", "lo", "up")
	h.run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	h.run(t, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
	h.run(t, "ip", "rule", "add", "fwmark", privToProxy, "lookup", privRouteTab, "pref", "9")
	h.run(t, "ip", "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", privRouteTab)
	// Established flows of transparent sockets (accepted client
	// connections and the upstream connections' replies).
	h.run(t, "iptables", "-t", "mangle", "-N", "DIVERT")
	h.run(t, "iptables", "-t", "mangle", "-A", "DIVERT", "-j", "MARK", "--set-xmark", "0x200/0xffffffff")
	h.run(t, "iptables", "-t", "mangle", "-A", "DIVERT", "-j", "ACCEPT")
	h.run(t, "iptables", "-t", "mangle", "-A", "PREROUTING", "-p", "tcp", "-m", "socket", "--transparent", "--nowildcard", "-j", "DIVERT")
	// Count upstream packets that carry the proxy's mark.
	h.run(t, "iptables", "-t", "mangle", "-A", "POSTROUTING", "-o", id+"S", "-p", "tcp", "-m", "mark", "--mark", strconv.Itoa(privUpMark), "-j", "ACCEPT")
	return top
}

// redirect sends the client's new TCP connections to ports to the proxy
// listening on proxyPort (the datapath's job, emulated).
func (top *privTopology) redirect(t *testing.T, proxyPort int, ports ...int) {
	t.Helper()
	dev := strings.TrimSuffix(top.host.name, "h") + "C"
	for _, port := range ports {
		args := []string{"iptables", "-t", "mangle", "-A", "PREROUTING", "-i", dev, "-p", "tcp", "--dport", strconv.Itoa(port),
			"-j", "TPROXY", "--on-port", strconv.Itoa(proxyPort), "--on-ip", "0.0.0.0", "--tproxy-mark", privToProxy}
		out, err := exec.Command("ip", append([]string{"netns", "exec", top.host.name}, args...)...).CombinedOutput()
		if err != nil {
			testutil.Unavailable(t, fmt.Sprintf("iptables TPROXY: %v: %s", err, out))
		}
	}
}

// markedUpstreamPackets reads the counter of packets to the server that
// carry the upstream mark.
func (top *privTopology) markedUpstreamPackets(t *testing.T) int {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", top.host.name, "iptables", "-t", "mangle", "-L", "POSTROUTING", "-v", "-n", "-x").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables -L: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == "ACCEPT" && strings.Contains(line, "mark match") {
			n, _ := strconv.Atoi(f[0])
			return n
		}
	}
	t.Fatalf("no mark counter in %s", out)
	return 0
}

// privHTTPServer is an HTTP server in the server namespace that records the
// peer address of every request.
type privHTTPServer struct {
	mu      sync.Mutex
	remotes []string
	paths   []string
}

func (s *privHTTPServer) seen() ([]string, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.remotes...), append([]string(nil), s.paths...)
}

func startPrivServer(t *testing.T, ns *netns, ports ...int) *privHTTPServer {
	t.Helper()
	s := &privHTTPServer{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.remotes = append(s.remotes, r.RemoteAddr)
		s.paths = append(s.paths, r.URL.Path)
		s.mu.Unlock()
		io.WriteString(w, "from server: "+r.URL.Path+" seen from "+r.RemoteAddr)
	})}
	for _, port := range ports {
		var ln net.Listener
		if err := ns.do(func() (err error) {
			ln, err = net.Listen("tcp", net.JoinHostPort(privServerIP, strconv.Itoa(port)))
			return err
		}); err != nil {
			t.Fatalf("server listen: %v", err)
		}
		go srv.Serve(ln)
	}
	t.Cleanup(func() { srv.Close() })
	return s
}

// privClient is an HTTP client whose connections start in the client
// namespace.
func privClient(t *testing.T, ns *netns) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.do(func() (err error) {
				c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
		MaxIdleConnsPerHost: 1,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// startPrivProxy starts a transparent proxy in the host namespace.
func startPrivProxy(t *testing.T, top *privTopology, cfg Config, res Resolver) (*Proxy, *eventLog) {
	t.Helper()
	cfg.Transparent = true
	cfg.ListenAddr = "0.0.0.0:0"
	ev := &eventLog{}
	var p *Proxy
	if err := top.host.do(func() (err error) {
		p, err = New(cfg, res, ev.add, testLogger(t))
		return err
	}); err != nil {
		t.Fatalf("new transparent proxy: %v", err)
	}
	p.inNetns = top.host.do
	done := make(chan error, 1)
	go func() { done <- p.Serve(context.Background()) }()
	t.Cleanup(func() {
		p.Close()
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return p, ev
}

// privResolver resolves like the agent would: the client is identity 1001,
// the server 1002, and the server's ingress policy is checked.
type privResolver struct {
	pol   *l7.EndpointPolicy
	mu    sync.Mutex
	calls []string
}

func (r *privResolver) Resolve(client, origDst netip.AddrPort) (*ConnInfo, error) {
	r.mu.Lock()
	r.calls = append(r.calls, client.Addr().String()+" -> "+origDst.String())
	r.mu.Unlock()
	port := l7.PortKey{Protocol: 6, Port: origDst.Port()}
	return &ConnInfo{
		SrcIdentity: 1001, DstIdentity: 1002, DstEndpoint: 3,
		Checks: []Check{{EndpointID: 3, Port: port, Peer: l7.Peer{Identity: identity.NumericIdentity(1001)},
			Policy: func() *l7.EndpointPolicy { return r.pol }}},
	}, nil
}

func privPolicy(t *testing.T, ports ...uint16) *l7.EndpointPolicy {
	r, err := l7.Compile(l7.HTTPRuleSpec{Method: "GET", Path: "/public.*"})
	if err != nil {
		t.Fatal(err)
	}
	pol := &l7.EndpointPolicy{Ports: map[l7.PortKey][]*l7.Selection{}}
	for _, port := range ports {
		pol.Ports[l7.PortKey{Protocol: 6, Port: port}] = []*l7.Selection{{
			Identities: map[identity.NumericIdentity]bool{1001: true}, Rules: []*l7.HTTPRule{r}, Origin: "priv"}}
	}
	return pol
}

func TestPrivilegedTransparentProxy(t *testing.T) {
	top := newPrivTopology(t)
	srv := startPrivServer(t, top.srv, 80, 8080)
	res := &privResolver{pol: privPolicy(t, 80, 81, 8080)}
	p, ev := startPrivProxy(t, top, Config{}, res)
	top.redirect(t, p.Addr().(*net.TCPAddr).Port, 80, 81)
	pKeep, evKeep := startPrivProxy(t, top, Config{KeepClientPort: true}, res)
	top.redirect(t, pKeep.Addr().(*net.TCPAddr).Port, 8080)
	cl := privClient(t, top.cli)

	getBody := func(url string) (int, string) {
		t.Helper()
		resp, err := cl.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s body: %v", url, err)
		}
		return resp.StatusCode, string(b)
	}

	t.Run("allowed and denied on one connection", func(t *testing.T) {
		for i, c := range []struct {
			path   string
			status int
		}{{"/public/a", 200}, {"/private", 403}, {"/public/b", 200}, {"/admin", 403}} {
			status, body := getBody("http://" + privServerIP + "/" + strings.TrimPrefix(c.path, "/"))
			if status != c.status {
				t.Fatalf("request %d %s: %d %q", i, c.path, status, body)
			}
			if status == 200 && !strings.HasPrefix(body, "from server: "+c.path+" seen from "+privClientIP+":") {
				t.Fatalf("request %d: body %q", i, body)
			}
			if status == 403 && body != "Access denied" {
				t.Fatalf("request %d: body %q", i, body)
			}
		}
		remotes, paths := srv.seen()
		if strings.Join(paths, ",") != "/public/a,/public/b" {
			t.Fatalf("server saw %v", paths)
		}
		for _, r := range remotes {
			// The server sees the client's own address.
			if ap := netip.MustParseAddrPort(r); ap.Addr().String() != privClientIP {
				t.Fatalf("server saw the request from %s, want %s", r, privClientIP)
			}
		}
		res.mu.Lock()
		calls := append([]string(nil), res.calls...)
		res.mu.Unlock()
		if len(calls) != 1 || calls[0] != privClientIP+" -> "+privServerIP+":80" {
			t.Fatalf("resolver calls %v: want one, with the original destination", calls)
		}
		events := ev.wait(t, 4)
		for _, e := range events {
			if e.Src.Addr().String() != privClientIP || e.Dst.String() != privServerIP+":80" || e.SrcIdentity != 1001 || e.DstIdentity != 1002 {
				t.Fatalf("event %+v", e)
			}
		}
		if events[1].Verdict != VerdictDenied || events[0].Verdict != VerdictForwarded {
			t.Fatalf("events %+v", events)
		}
		if n := top.markedUpstreamPackets(t); n == 0 {
			t.Fatalf("no upstream packet carried mark %#x", privUpMark)
		}
	})

	t.Run("upstream refuses", func(t *testing.T) {
		status, body := getBody("http://" + privServerIP + ":81/public/x")
		if status != 503 || body != "upstream connect error: connection refused" {
			t.Fatalf("%d %q", status, body)
		}
	})

	t.Run("connection to the proxy itself is closed", func(t *testing.T) {
		res.mu.Lock()
		before := len(res.calls)
		res.mu.Unlock()
		var conn net.Conn
		addr := net.JoinHostPort("10.201.1.1", strconv.Itoa(p.Addr().(*net.TCPAddr).Port))
		if err := top.host.do(func() (err error) {
			conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cc := &client{t: t, c: conn, br: bufio.NewReader(conn)}
		_, _ = io.WriteString(conn, get("/public/loop", privServerIP))
		cc.expectClosed()
		res.mu.Lock()
		after := len(res.calls)
		res.mu.Unlock()
		if after != before {
			t.Fatalf("resolver called for a connection to the proxy's own port")
		}
	})

	t.Run("client port kept", func(t *testing.T) {
		var conn net.Conn
		if err := top.cli.do(func() (err error) {
			conn, err = net.DialTimeout("tcp", privServerIP+":8080", 5*time.Second)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cc := &client{t: t, c: conn, br: bufio.NewReader(conn)}
		resp, body := cc.do(get("/public/port", privServerIP))
		wantStatus(t, resp, body, 200)
		want := "from server: /public/port seen from " + conn.LocalAddr().String()
		if body != want {
			t.Fatalf("body %q, want %q", body, want)
		}
		if e := evKeep.wait(t, 1)[0]; e.Src.String() != conn.LocalAddr().String() {
			t.Fatalf("event %+v", e)
		}
	})
}
