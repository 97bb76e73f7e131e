// Package docker owns Membrane's Docker integration: a libnetwork remote
// network driver and IPAM driver served on a plugin socket that dockerd
// discovers (/run/docker/plugins/<name>.sock), the reading of container
// labels from the Docker Engine API, and the reconciliation of the agent's
// endpoints with the containers Docker runs. It wires nothing itself: the
// agent makes endpoints, addresses and identities; this package only
// translates Docker's calls into the agent's methods. It must not touch
// the datapath, policies or kernel state directly.
package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/membrane-net/membrane/pkg/agent"
	"github.com/membrane-net/membrane/pkg/api"
)

// DefaultSocket is where dockerd looks for the plugin named membrane.
const DefaultSocket = "/run/docker/plugins/membrane.sock"

// DefaultDockerHost is the Docker Engine API the plugin reads labels from.
const DefaultDockerHost = "unix:///var/run/docker.sock"

// Defaults of the timing knobs.
const (
	DefaultReconcileInterval = 30 * time.Second
	DefaultLabelTimeout      = 2 * time.Minute
	// DefaultGrace protects endpoints this process made a moment ago,
	// which libnetwork may not list yet, from the reconciliation.
	DefaultGrace = 20 * time.Second
)

// Config configures the plugin.
type Config struct {
	// Socket is the plugin socket; its base name without ".sock" is the
	// driver name given to `docker network create --driver`.
	Socket string
	// DockerHost is the Docker Engine API (unix:///path or tcp://h:p).
	DockerHost string
	// ReconcileInterval is how often endpoints are compared with Docker's
	// containers (also after every reconnection to dockerd).
	ReconcileInterval time.Duration
	// LabelTimeout bounds the wait for a container to be visible.
	LabelTimeout time.Duration
	// Grace keeps the reconciliation off endpoints this process made
	// less than Grace ago.
	Grace time.Duration
}

// Agent is what the plugin needs of the agent (*agent.Agent).
type Agent interface {
	PrepareEndpoint(ctx context.Context, req agent.PrepareRequest) (*api.Endpoint, string, error)
	SetEndpointNetns(id uint32, path string) error
	UpdateEndpoint(ctx context.Context, id uint32, upd api.EndpointUpdate) (*api.Endpoint, error)
	DeleteEndpoint(ctx context.Context, id uint32) error
	ListEndpoints(ctx context.Context) []api.Endpoint
	AllocateAddress(owner string) (netip.Addr, error)
	ReserveAddress(addr netip.Addr, owner string) error
	ReleaseAddress(addr netip.Addr)
	Pool() (netip.Prefix, netip.Addr)
}

// Plugin is the network and IPAM driver.
type Plugin struct {
	cfg     Config
	name    string
	agent   Agent
	engine  Engine
	log     *slog.Logger
	started time.Time

	ln  net.Listener
	srv *http.Server

	mu sync.Mutex
	// workers are the label lookups running, by Docker endpoint ID.
	workers map[string]context.CancelFunc
	// baseCtx ends when the plugin stops; workers derive from it.
	baseCtx context.Context
	stop    context.CancelFunc
	wg      sync.WaitGroup
	kick    chan struct{}
}

// New listens on the plugin socket. engine may be nil: a client for
// cfg.DockerHost is made.
func New(cfg Config, a Agent, engine Engine, log *slog.Logger) (*Plugin, error) {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.DockerHost == "" {
		cfg.DockerHost = DefaultDockerHost
	}
	if cfg.ReconcileInterval <= 0 {
		cfg.ReconcileInterval = DefaultReconcileInterval
	}
	if cfg.LabelTimeout <= 0 {
		cfg.LabelTimeout = DefaultLabelTimeout
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	name := strings.TrimSuffix(filepath.Base(cfg.Socket), ".sock")
	if name == "" || name == "." || strings.ContainsAny(name, ":/ ") {
		return nil, fmt.Errorf("docker plugin socket %q: its base name is the driver name (e.g. membrane.sock)", cfg.Socket)
	}
	if engine == nil {
		ec, err := NewEngineClient(cfg.DockerHost)
		if err != nil {
			return nil, err
		}
		engine = ec
	}
	p := &Plugin{
		cfg: cfg, name: name, agent: a, engine: engine, log: log, started: time.Now(),
		workers: map[string]context.CancelFunc{}, kick: make(chan struct{}, 1),
	}
	p.baseCtx, p.stop = context.WithCancel(context.Background())
	ln, err := listen(cfg.Socket)
	if err != nil {
		p.stop()
		return nil, err
	}
	p.ln = ln
	p.srv = &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 10 * time.Second}
	return p, nil
}

// listen takes the socket, replacing a stale one but not a live one.
func listen(socket string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return nil, fmt.Errorf("docker plugin socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", socket, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("docker plugin socket %s: another process is listening", socket)
	}
	_ = os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", socket, err)
	}
	return ln, nil
}

// Name is the driver name (`docker network create --driver NAME`).
func (p *Plugin) Name() string { return p.name }

// Run serves dockerd and keeps endpoints in line with Docker's containers
// until ctx ends; then it closes the socket.
func (p *Plugin) Run(ctx context.Context) error {
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		p.watchEvents(ctx)
	}()
	go func() {
		defer p.wg.Done()
		p.reconcileLoop(ctx)
	}()
	errc := make(chan error, 1)
	go func() { errc <- p.srv.Serve(p.ln) }()
	p.log.Info("docker plugin ready", "socket", p.cfg.Socket, "driver", p.name, "docker", p.cfg.DockerHost)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
	}
	p.Close()
	return err
}

// Close stops serving, cancels the label lookups and removes the socket.
func (p *Plugin) Close() {
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = p.srv.Shutdown(sctx)
	p.stop()
	p.wg.Wait()
	_ = os.Remove(p.cfg.Socket)
}

// ---- HTTP plumbing --------------------------------------------------------

// mimeType is the content type of plugin replies.
const mimeType = "application/vnd.docker.plugins.v1.2+json"

// Handler routes the plugin protocol (exported for tests).
func (p *Plugin) Handler() http.Handler {
	m := http.NewServeMux()
	m.HandleFunc("POST /Plugin.Activate", func(w http.ResponseWriter, r *http.Request) {
		reply(w, map[string][]string{"Implements": {"NetworkDriver", "IpamDriver"}})
	})
	for path, h := range map[string]func(context.Context, []byte) (any, error){
		"NetworkDriver.GetCapabilities":             p.capabilities,
		"NetworkDriver.CreateNetwork":               p.createNetwork,
		"NetworkDriver.DeleteNetwork":               p.deleteNetwork,
		"NetworkDriver.AllocateNetwork":             p.allocateNetwork,
		"NetworkDriver.FreeNetwork":                 empty,
		"NetworkDriver.CreateEndpoint":              p.createEndpoint,
		"NetworkDriver.EndpointOperInfo":            p.endpointInfo,
		"NetworkDriver.DeleteEndpoint":              p.deleteEndpoint,
		"NetworkDriver.Join":                        p.join,
		"NetworkDriver.Leave":                       p.leave,
		"NetworkDriver.DiscoverNew":                 empty,
		"NetworkDriver.DiscoverDelete":              empty,
		"NetworkDriver.ProgramExternalConnectivity": empty,
		"NetworkDriver.RevokeExternalConnectivity":  empty,
		"IpamDriver.GetCapabilities":                p.ipamCapabilities,
		"IpamDriver.GetDefaultAddressSpaces":        p.addressSpaces,
		"IpamDriver.RequestPool":                    p.requestPool,
		"IpamDriver.ReleasePool":                    empty,
		"IpamDriver.RequestAddress":                 p.requestAddress,
		"IpamDriver.ReleaseAddress":                 p.releaseAddress,
	} {
		method, h := path, h
		m.HandleFunc("POST /"+method, func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			if err != nil {
				replyError(w, http.StatusBadRequest, fmt.Errorf("%s: read request: %w", method, err))
				return
			}
			p.log.Debug("docker plugin call", "method", method, "request", string(body))
			out, err := h(r.Context(), body)
			if err != nil {
				p.log.Warn("docker plugin call failed", "method", method, "error", err)
				replyError(w, http.StatusInternalServerError, err)
				return
			}
			reply(w, out)
		})
	}
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		replyError(w, http.StatusNotFound, fmt.Errorf("%s: not implemented by membrane", r.URL.Path))
	})
	return m
}

func empty(context.Context, []byte) (any, error) { return struct{}{}, nil }

// decode reads a request body; an empty body or `null` leaves v as is.
func decode(body []byte, v any) error {
	if len(body) == 0 || string(body) == "null" {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode request: %w", err)
	}
	return nil
}

func reply(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", mimeType)
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(v)
}

// replyError answers in both error shapes: network drivers read "Err",
// IPAM drivers "Error".
func replyError(w http.ResponseWriter, code int, err error) {
	w.Header().Set("Content-Type", mimeType)
	w.WriteHeader(code)
	msg := "membrane: " + err.Error()
	_ = json.NewEncoder(w).Encode(map[string]string{"Err": msg, "Error": msg})
}

// Start runs a plugin next to the agent: it returns once the socket
// listens, and stop ends it and waits.
func Start(ctx context.Context, cfg Config, a Agent, log *slog.Logger) (stop func(), err error) {
	p, err := New(cfg, a, nil, log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := p.Run(ctx); err != nil {
			log.Error("docker plugin stopped", "error", err)
		}
	}()
	return func() { cancel(); <-done }, nil
}
