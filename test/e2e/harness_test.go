// Package e2e holds Membrane's end-to-end tests: the real membrane binary
// runs as the agent, endpoints are real network namespaces wired with real
// veth pairs, the kernel enforces with the real eBPF programs, and traffic
// is real TCP, UDP and ICMP. Every test cleans up what it makes.
package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/membrane-net/membrane/internal/agenttest"
	"github.com/membrane-net/membrane/internal/testutil"
	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/nsutil"
)

var membraneBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "membrane-e2e-bin-")
	if err != nil {
		panic(err)
	}
	membraneBin = filepath.Join(dir, "membrane")
	out, err := exec.Command("go", "build", "-o", membraneBin, "../../cmd/membrane").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build membrane: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var testSeq atomic.Int32

// Agent is a membrane agent process run by a test.
type Agent struct {
	*agenttest.Proc
	t *testing.T
}

// startAgent runs `membrane agent` with its own socket, state, bpffs
// directory, host interface and pool, and tears everything down at the end
// of the test.
func startAgent(t *testing.T, extra ...string) *Agent {
	t.Helper()
	n := int(testSeq.Add(1)) + os.Getpid()%100*3
	p := agenttest.Start(t, agenttest.Options{Bin: membraneBin, Prefix: "e2e", N: n, Args: extra})
	return &Agent{Proc: p, t: t}
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (a *Agent) start()                             { a.Proc.Start() }
func (a *Agent) kill()                              { a.Proc.Kill() }
func (a *Agent) restart()                           { a.Proc.Restart() }
func (a *Agent) cli(args ...string) (string, error) { return a.Proc.CLI(args...) }
func (a *Agent) mustCLI(args ...string) string {
	a.t.Helper()
	return a.Proc.MustCLI(args...)
}

// Endpoint is a namespace wired as an endpoint.
type Endpoint struct {
	api.Endpoint
	NS string
}

// addEndpoint makes a namespace and wires it with the CLI.
func (a *Agent) addEndpoint(name, labels string, extra ...string) *Endpoint {
	a.t.Helper()
	path := newNetns(a.t, name)
	args := append([]string{"endpoint", "add", "--netns", path, "--name", name, "--labels", labels, "-o", "json"}, extra...)
	out := a.mustCLI(args...)
	var ep api.Endpoint
	if err := json.Unmarshal([]byte(out), &ep); err != nil {
		a.t.Fatalf("endpoint add output: %v\n%s", err, out)
	}
	return &Endpoint{Endpoint: ep, NS: path}
}

var nsSeq atomic.Int32

// newNetns makes a uniquely named namespace, deleted at the end of the
// test.
func newNetns(t *testing.T, hint string) string {
	t.Helper()
	name := fmt.Sprintf("mbre2e-%d-%d-%s", os.Getpid(), nsSeq.Add(1), sanitize(hint))
	path, err := nsutil.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nsutil.Delete(name) })
	return path
}

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		}
	}
	if b.Len() > 12 {
		return b.String()[:12]
	}
	return b.String()
}

// importPolicy writes content to a file and imports it with the CLI.
func (a *Agent) importPolicy(name, content string) string {
	a.t.Helper()
	p := filepath.Join(a.t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		a.t.Fatal(err)
	}
	return a.mustCLI("policy", "import", p)
}

// ---- traffic ------------------------------------------------------------

// serveTCP echoes a greeting on a TCP port inside a namespace.
func serveTCP(t *testing.T, ns string, port int) { testutil.ServeTCPEcho(t, ns, port) }

// serveUDP echoes datagrams on a UDP port inside a namespace.
func serveUDP(t *testing.T, ns string, port int) {
	t.Helper()
	pc, err := nsutil.ListenPacket(ns, "udp4", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo(buf[:n], from)
		}
	}()
}

const probeTimeout = 700 * time.Millisecond

// tcpOK reports whether a TCP connection from ns to addr completes and
// echoes a message.
func tcpOK(ns, addr string) bool {
	c, err := nsutil.DialTimeout(ns, "tcp4", addr, probeTimeout)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(probeTimeout))
	if _, err := c.Write([]byte("ping")); err != nil {
		return false
	}
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	return err == nil && string(buf) == "ping"
}

// udpOK reports whether a datagram from ns to addr is echoed.
func udpOK(ns, addr string) bool {
	c, err := nsutil.DialTimeout(ns, "udp4", addr, probeTimeout)
	if err != nil {
		return false
	}
	defer c.Close()
	for i := 0; i < 2; i++ {
		c.SetDeadline(time.Now().Add(probeTimeout / 2))
		if _, err := c.Write([]byte("ping")); err != nil {
			return false
		}
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		if err == nil && string(buf[:n]) == "ping" {
			return true
		}
	}
	return false
}

// expectTCP checks a TCP probe's outcome. A probe expected to pass gets a
// few tries on a loaded machine; one expected to be dropped gets one (a
// slow answer can only make it look dropped, never wrongly allowed).
func expectTCP(t *testing.T, from *Endpoint, to string, want bool) {
	t.Helper()
	if got := retryOK(want, func() bool { return tcpOK(from.NS, to) }); got != want {
		t.Errorf("TCP %s -> %s: connected=%v, want %v", from.Name, to, got, want)
	}
}

func expectUDP(t *testing.T, from *Endpoint, to string, want bool) {
	t.Helper()
	if got := retryOK(want, func() bool { return udpOK(from.NS, to) }); got != want {
		t.Errorf("UDP %s -> %s: answered=%v, want %v", from.Name, to, got, want)
	}
}

func retryOK(want bool, probe func() bool) bool {
	tries := 1
	if want {
		tries = 4
	}
	for i := 0; i < tries; i++ {
		if probe() {
			return true
		}
	}
	return false
}

func addr(ep *Endpoint, port int) string { return fmt.Sprintf("%s:%d", ep.IPv4, port) }

// ---- leftovers ----------------------------------------------------------

func linkExists(name string) bool {
	return exec.Command("ip", "link", "show", name).Run() == nil
}

func pinsOf(a *Agent, id uint32) []string {
	m, _ := filepath.Glob(filepath.Join(a.BPFFS, "endpoints", fmt.Sprint(id), "*"))
	return m
}

var _ sync.Mutex

func dialTimeoutNS(ns, to string, d time.Duration) (net.Conn, error) {
	return nsutil.DialTimeout(ns, "tcp4", to, d)
}

// logTail returns the end of the agent's log.
func (a *Agent) logTail() string { return a.LogTail(30) }
