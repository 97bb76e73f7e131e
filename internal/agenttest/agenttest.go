// Package agenttest runs `membrane agent` processes for end-to-end tests:
// each with its own socket, state directory, bpffs directory, host
// interface, address pool and proxy port, started, killed (as a crash
// would), restarted and stopped, and everything it made removed when the
// test ends. It is separate from internal/testutil because it depends on
// the agent, which the datapath's tests (users of testutil) may not.
package agenttest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-net/membrane/internal/testutil"
	"github.com/membrane-net/membrane/pkg/agent"
	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/endpoint"
)

// Options name an agent's resources; N must be unique among the agents a
// machine runs at once (use it for nothing else).
type Options struct {
	Bin    string // the membrane binary
	Prefix string // short tag in bpffs and interface names, e.g. "e2e"
	N      int
	// Args are added to the command line at every start (a later flag
	// wins over the defaults, e.g. --docker-plugin).
	Args []string
}

// Proc is one agent process.
type Proc struct {
	T         *testing.T
	Dir       string
	Socket    string
	StateDir  string
	BPFFS     string
	HostIf    string
	Pool      string
	ProxyPort int
	Client    *api.Client
	LogPath   string
	Args      []string
	// Env is added to the agent's environment at its next start.
	Env []string

	bin    string
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start runs an agent and tears it and everything it made down when the
// test ends (SIGTERM, then its pins, host device and spare interfaces).
func Start(t *testing.T, o Options) *Proc {
	t.Helper()
	testutil.RequirePrivileged(t)
	dir := t.TempDir()
	n := o.N
	// Pools of different test packages never overlap: e2e 10.100-149,
	// runtimes 10.150-199, others 10.200-249.
	base := 200
	switch o.Prefix {
	case "e2e":
		base = 100
	case "rt":
		base = 150
	}
	p := &Proc{
		T: t, Dir: dir, Socket: filepath.Join(dir, "membrane.sock"), StateDir: filepath.Join(dir, "state"),
		BPFFS:  fmt.Sprintf("/sys/fs/bpf/membrane-%s-%d-%d", o.Prefix, os.Getpid(), n),
		HostIf: fmt.Sprintf("mb%s%d_host", o.Prefix[:1], n%10000), Pool: fmt.Sprintf("10.%d.%d.0/24", base+n/250%50, n%250),
		ProxyPort: 16000 + n%4000, LogPath: filepath.Join(dir, "agent.log"), Args: o.Args, bin: o.Bin,
	}
	p.Client = api.NewClient(p.Socket)
	p.Start()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("agent log (last lines):\n%s", p.LogTail(80))
		}
		_ = os.RemoveAll(p.BPFFS)
		_ = exec.Command("ip", "link", "del", p.HostIf).Run()
		endpoint.DeleteSpares(agent.SpareTag(p.StateDir))
	})
	return p
}

// Start starts the agent (again) and waits until it answers.
func (p *Proc) Start() {
	p.T.Helper()
	logf, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.T.Fatal(err)
	}
	defer logf.Close()
	args := append([]string{"agent", "--socket", p.Socket, "--state-dir", p.StateDir, "--bpffs-dir", p.BPFFS,
		"--ipv4-pool", p.Pool, "--host-ifname", p.HostIf, "--proxy-port", fmt.Sprint(p.ProxyPort),
		"--docker-plugin=", "--log-level", "debug"}, p.Args...)
	cmd := exec.Command(p.bin, args...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		p.T.Fatal(err)
	}
	p.cmd = cmd
	exited := make(chan struct{})
	p.exited = exited
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := p.Client.Status(context.Background()); err == nil {
			return
		}
		select {
		case <-exited:
			p.T.Fatalf("agent exited at start:\n%s", p.LogTail(40))
		default:
		}
		if time.Now().After(deadline) {
			p.T.Fatalf("agent did not come up:\n%s", p.LogTail(40))
		}
		time.Sleep(30 * time.Millisecond)
	}
}

// Exited is closed when the running agent has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Kill stops the agent with SIGKILL, as a crash would.
func (p *Proc) Kill() { p.signal(syscall.SIGKILL) }

// Stop ends the agent with SIGTERM (it cleans up its spare interfaces), or
// SIGKILL if it does not end in time.
func (p *Proc) Stop() { p.signal(syscall.SIGTERM) }

func (p *Proc) signal(sig syscall.Signal) {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.exited
	}
	p.cmd = nil
}

// Restart kills the agent and starts it again on the same state.
func (p *Proc) Restart() {
	p.Kill()
	p.Start()
}

// CLI runs the membrane command line against this agent.
func (p *Proc) CLI(args ...string) (string, error) {
	cmd := exec.Command(p.bin, append([]string{"--socket", p.Socket}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// MustCLI is CLI failing the test on error.
func (p *Proc) MustCLI(args ...string) string {
	p.T.Helper()
	out, err := p.CLI(args...)
	if err != nil {
		p.T.Fatalf("membrane %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// LogTail returns the last n lines of the agent's log.
func (p *Proc) LogTail(n int) string {
	b, _ := os.ReadFile(p.LogPath)
	lines := strings.Split(string(b), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
