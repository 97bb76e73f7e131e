package conformance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/membrane-net/membrane/pkg/agent"
	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/endpoint"
)

// privatePool holds the addresses of every case's pods (10.244.x.y).
var privatePool = netip.MustParsePrefix("10.244.0.0/16")

// privateAgent is an agent run in this process for the run's duration,
// with its own socket, state, bpffs directory, host device and pool.
type privateAgent struct {
	a       *agent.Agent
	cancel  context.CancelFunc
	done    chan error
	tmp     string
	bpffs   string
	hostIf  string
	logPath string
	logf    *os.File
	socket  string
}

// names of what a private agent of process pid makes.
func privateBPFFS(pid int) string  { return fmt.Sprintf("/sys/fs/bpf/membrane-conformance-%d", pid) }
func privateHostIf(pid int) string { return fmt.Sprintf("mbc%d_host", pid) }
func privateTmpPrefix(pid int) string {
	return fmt.Sprintf("membrane-conformance-%d-", pid)
}

// startPrivateAgent starts an agent and waits until it answers.
func startPrivateAgent(ctx context.Context, log *slog.Logger) (_ *privateAgent, err error) {
	pid := os.Getpid()
	tmp, err := os.MkdirTemp("", privateTmpPrefix(pid))
	if err != nil {
		return nil, fmt.Errorf("start private agent: %w", err)
	}
	p := &privateAgent{
		tmp: tmp, bpffs: privateBPFFS(pid), hostIf: privateHostIf(pid),
		socket: filepath.Join(tmp, "membrane.sock"), logPath: filepath.Join(tmp, "agent.log"),
	}
	defer func() {
		if err != nil {
			p.stop()
		}
	}()
	if p.logf, err = os.Create(p.logPath); err != nil {
		return nil, fmt.Errorf("start private agent: %w", err)
	}
	proxyPort, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("start private agent: proxy port: %w", err)
	}
	cfg := agent.Config{
		Socket: p.socket, StateDir: filepath.Join(tmp, "state"), BPFFSDir: p.bpffs,
		IPv4Pool: privatePool, HostIfName: p.hostIf, ProxyPort: proxyPort, Version: "conformance",
	}
	a, err := agent.New(cfg, slog.New(slog.NewTextHandler(p.logf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		return nil, fmt.Errorf("start private agent: %w", err)
	}
	p.a = a
	actx, cancel := context.WithCancel(context.Background())
	p.cancel, p.done = cancel, make(chan error, 1)
	go func() { p.done <- a.Run(actx) }()
	c := api.NewClient(p.socket)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.Status(ctx); err == nil {
			break
		}
		select {
		case err := <-p.done:
			p.done <- err
			return nil, fmt.Errorf("start private agent: it stopped: %w", err)
		case <-ctx.Done():
			return nil, fmt.Errorf("start private agent: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, errors.New("start private agent: it did not answer within 20s")
		}
	}
	log.Debug("private agent ready", "socket", p.socket, "bpffs", p.bpffs, "log", p.logPath)
	return p, nil
}

// freePort finds a TCP port free on the host for the agent's L7 proxy.
func freePort() (uint16, error) {
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port), nil
}

// stop ends the agent and removes everything it made: its pins, its host
// device and its state.
func (p *privateAgent) stop() error {
	var errs []error
	if p.cancel != nil {
		p.cancel()
		<-p.done
		p.cancel = nil
	}
	if p.a != nil {
		errs = append(errs, p.a.Close())
		p.a = nil
	}
	if err := os.RemoveAll(p.bpffs); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", p.bpffs, err))
	}
	errs = append(errs, endpoint.DeleteHostLink(p.hostIf))
	if p.logf != nil {
		p.logf.Close()
		p.logf = nil
	}
	if err := os.RemoveAll(filepath.Join(p.tmp, "state")); err != nil {
		errs = append(errs, err)
	}
	_ = os.Remove(p.socket)
	return errors.Join(errs...)
}

// removeTmp removes the agent's directory; keepLog moves the log out
// first, to savedLog.
func (p *privateAgent) removeTmp(keepLog bool) {
	if keepLog {
		_ = os.Rename(p.logPath, p.savedLog())
	}
	_ = os.RemoveAll(p.tmp)
}

// savedLog is where a kept log goes.
func (p *privateAgent) savedLog() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("membrane-conformance-agent-%d.log", os.Getpid()))
}
