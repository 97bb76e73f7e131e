// Package e2e holds Membrane's end-to-end tests: the real membrane binary
// runs as the agent, endpoints are real network namespaces wired with real
// veth pairs, the kernel enforces with the real eBPF programs, and traffic
// is real TCP, UDP and ICMP. Every test cleans up what it makes.
package e2e

import (
	"bytes"
	"context"
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
	"syscall"
	"testing"
	"time"

	"github.com/membrane-net/membrane/internal/testutil"
	"github.com/membrane-net/membrane/pkg/agent"
	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/endpoint"
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
	t         *testing.T
	Socket    string
	StateDir  string
	BPFFS     string
	HostIf    string
	Pool      string
	ProxyPort int
	Client    *api.Client
	cmd       *exec.Cmd
	logPath   string
	extra     []string
	// Env is added to the agent's environment at its next start.
	Env []string
}

// startAgent runs `membrane agent` with its own socket, state, bpffs
// directory, host interface and pool, and tears everything down at the end
// of the test.
func startAgent(t *testing.T, extra ...string) *Agent {
	t.Helper()
	testutil.RequirePrivileged(t)
	n := int(testSeq.Add(1)) + os.Getpid()%100*3
	dir := t.TempDir()
	a := &Agent{
		t: t, Socket: filepath.Join(dir, "membrane.sock"), StateDir: filepath.Join(dir, "state"),
		BPFFS: fmt.Sprintf("/sys/fs/bpf/membrane-e2e-%d-%d", os.Getpid(), n), HostIf: fmt.Sprintf("mbrt%d_host", n%1000),
		Pool: fmt.Sprintf("10.%d.%d.0/24", 100+n/250%50, n%250), logPath: filepath.Join(dir, "agent.log"), extra: extra,
		ProxyPort: 16000 + n%1000,
	}
	a.Client = api.NewClient(a.Socket)
	a.start()
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			if b, err := os.ReadFile(a.logPath); err == nil {
				t.Logf("agent log:\n%s", lastLines(string(b), 60))
			}
		}
		_ = os.RemoveAll(a.BPFFS)
		_ = exec.Command("ip", "link", "del", a.HostIf).Run()
		endpoint.DeleteSpares(agent.SpareTag(a.StateDir))
	})
	return a
}

// stop ends the agent with SIGTERM (it deletes its spare interfaces), or
// SIGKILL if it does not end in time.
func (a *Agent) stop() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _, _ = a.cmd.Process.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
	a.cmd = nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (a *Agent) start() {
	a.t.Helper()
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		a.t.Fatal(err)
	}
	args := append([]string{"agent", "--socket", a.Socket, "--state-dir", a.StateDir, "--bpffs-dir", a.BPFFS,
		"--ipv4-pool", a.Pool, "--host-ifname", a.HostIf, "--proxy-port", fmt.Sprint(a.ProxyPort), "--docker-plugin=", "--log-level", "debug"}, a.extra...)
	cmd := exec.Command(membraneBin, args...)
	cmd.Env = append(os.Environ(), a.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	logf.Close()
	a.cmd = cmd
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := a.Client.Status(context.Background()); err == nil {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(a.logPath)
			a.t.Fatalf("agent did not come up:\n%s", b)
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// kill stops the agent with SIGKILL, as a crash would.
func (a *Agent) kill() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Signal(syscall.SIGKILL)
	_, _ = a.cmd.Process.Wait()
	a.cmd = nil
}

// restart kills the agent and starts it again on the same state.
func (a *Agent) restart() {
	a.kill()
	a.start()
}

// cli runs the membrane CLI against this agent.
func (a *Agent) cli(args ...string) (string, error) {
	cmd := exec.Command(membraneBin, append([]string{"--socket", a.Socket}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (a *Agent) mustCLI(args ...string) string {
	a.t.Helper()
	out, err := a.cli(args...)
	if err != nil {
		a.t.Fatalf("membrane %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
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
func serveTCP(t *testing.T, ns string, port int) {
	t.Helper()
	ln, err := nsutil.Listen(ns, "tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				buf := make([]byte, 4096)
				for {
					c.SetDeadline(time.Now().Add(30 * time.Second))
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}(c)
		}
	}()
}

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
func (a *Agent) logTail() string {
	b, _ := os.ReadFile(a.logPath)
	return lastLines(string(b), 30)
}
