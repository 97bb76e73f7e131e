// Package agent owns the Membrane agent: it composes the identity
// allocator, the policy repository, the ipcache, the address pool, the
// endpoint wiring and the datapath, keeps them consistent, persists them
// and serves them through the API. Every change goes one way: labels ->
// identity -> selectors -> policy -> map state -> kernel maps, and returns
// only once the kernel enforces it.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/datapath"
	"github.com/membrane-net/membrane/pkg/endpoint"
	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/ipam"
	"github.com/membrane-net/membrane/pkg/ipcache"
	"github.com/membrane-net/membrane/pkg/monitor"
	"github.com/membrane-net/membrane/pkg/policy"
	"github.com/membrane-net/membrane/pkg/proxy"
	"github.com/membrane-net/membrane/pkg/state"
)

// Config is the agent's configuration; flags of `membrane agent`.
type Config struct {
	Socket   string
	StateDir string
	BPFFSDir string
	IPv4Pool netip.Prefix
	// EnablePolicy is default, always or never.
	EnablePolicy string
	// Audit puts every endpoint in audit mode.
	Audit               bool
	PolicyMapMaxEntries uint32
	// HostIfName is the host side of the veth pair holding the host's
	// address in the pool.
	HostIfName string
	// ProxyPort is the L7 proxy's listening port; 0 disables L7 policy.
	ProxyPort uint16
	Version   string
}

// Defaults of the configuration.
const (
	DefaultStateDir   = "/var/lib/membrane"
	DefaultBPFFSDir   = "/sys/fs/bpf/membrane"
	DefaultHostIfName = "membrane_host"
)

// DefaultIPv4Pool is the pool when none is given.
var DefaultIPv4Pool = netip.MustParsePrefix("10.200.0.0/16")

// Agent is the running agent.
type Agent struct {
	cfg Config
	log *slog.Logger

	// mu serialises every change and every read of the state below.
	mu      sync.Mutex
	dp      *datapath.Datapath
	ids     *identity.LocalAllocator
	repo    *policy.Repository
	ipc     *ipcache.IPCache
	pool    *ipam.Pool
	store   *state.Store
	eps     map[uint32]*epState
	nextID  uint32
	cidrIDs map[netip.Prefix]identity.NumericIdentity
	hostIPs map[netip.Addr]bool
	// pending are endpoints being created, on disk before the kernel is
	// touched.
	pending map[uint32]state.Pending

	hub *monitor.Hub
	// names maps endpoint ids to names for events, read without mu;
	// ifnames to their host interfaces.
	names   sync.Map
	ifnames sync.Map

	srv     *api.Server
	started time.Time

	proxy      *proxy.Proxy
	l7         l7Store
	socketRule bool
	spares     sparePool

	// stored are the policies written to the state directory, by file.
	stored map[string]*policy.Policy
	// cidrDirty: the CIDR identities changed since they were written.
	cidrDirty bool
	// synced are the repository's IPv4 prefixes at the last
	// syncCIDRIdentities (sorted as the repository sorts them; nil before
	// the first); stale the CIDR identities no policy names any more and
	// unpublished those not yet in the ipcache, both until publishCIDRs.
	synced []netip.Prefix
	// memTimer gives memory back after policy changes (policy.go).
	memTimer    *time.Timer
	stale       map[netip.Prefix]identity.NumericIdentity
	unpublished map[netip.Prefix]identity.NumericIdentity
}

type epState struct {
	ep       endpoint.Endpoint
	resolved *policy.Resolved
	revision uint64
}

// New starts the agent's parts: it opens the datapath (reusing pinned
// maps), restores endpoints, identities and policies from the state
// directory and reconciles the kernel with them. It does not serve yet.
func New(cfg Config, log *slog.Logger) (_ *Agent, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	a := &Agent{
		cfg: cfg, log: log,
		ids:         identity.NewLocalAllocator(),
		eps:         map[uint32]*epState{},
		cidrIDs:     map[netip.Prefix]identity.NumericIdentity{},
		stale:       map[netip.Prefix]identity.NumericIdentity{},
		unpublished: map[netip.Prefix]identity.NumericIdentity{},
		hostIPs:     map[netip.Addr]bool{},
		pending:     map[uint32]state.Pending{},
		started:     time.Now(),
		spares:      sparePool{tag: spareTag(cfg.StateDir), kick: make(chan struct{}, 1)},
	}
	if a.pool, err = ipam.New(cfg.IPv4Pool); err != nil {
		return nil, fmt.Errorf("address pool: %w", err)
	}
	if a.store, err = state.Open(cfg.StateDir); err != nil {
		return nil, err
	}
	st, err := a.store.Load()
	if err != nil {
		return nil, err
	}
	if a.dp, err = datapath.Open(datapath.Config{BPFFSDir: cfg.BPFFSDir, PolicyMapMaxEntries: cfg.PolicyMapMaxEntries}, log); err != nil {
		return nil, fmt.Errorf("datapath: %w", err)
	}
	defer func() {
		if err != nil {
			a.dp.Close()
		}
	}()
	a.hub = monitor.NewHub(func(want bool) {
		if err := a.dp.SetVerdictEvents(want); err != nil {
			a.log.Warn("switch verdict events", "error", err)
		}
	})
	if err := a.dp.SetVerdictEvents(false); err != nil {
		return nil, err
	}
	pcfg := policy.Config{EnforcementMode: cfg.EnablePolicy}
	if cfg.ProxyPort != 0 {
		port := cfg.ProxyPort
		pcfg.ProxyPort = func(bool) uint16 { return port }
		if err := a.startProxy(); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				a.proxy.Close()
			}
		}()
	}
	a.repo = policy.NewRepository(pcfg, log)
	a.ipc = ipcache.New(a.dp)
	if err := a.restore(st); err != nil {
		return nil, fmt.Errorf("restore state: %w", err)
	}
	return a, nil
}

func (c *Config) validate() error {
	switch c.EnablePolicy {
	case "":
		c.EnablePolicy = "default"
	case "default", "always", "never":
	default:
		return fmt.Errorf("--enable-policy %q: want default, always or never", c.EnablePolicy)
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.BPFFSDir == "" {
		c.BPFFSDir = DefaultBPFFSDir
	}
	if !c.IPv4Pool.IsValid() {
		c.IPv4Pool = DefaultIPv4Pool
	}
	if c.HostIfName == "" {
		c.HostIfName = DefaultHostIfName
	}
	if len(c.HostIfName) > 15 || len(c.HostIfName) < 6 || c.HostIfName[len(c.HostIfName)-5:] != "_host" {
		return fmt.Errorf("--host-ifname %q: 6 to 15 characters ending in _host", c.HostIfName)
	}
	if c.Socket == "" {
		c.Socket = api.DefaultSocket
	}
	return nil
}

// Run serves the API and the background work until ctx ends. Enforcement
// continues after it returns: maps and links stay pinned.
func (a *Agent) Run(ctx context.Context) error {
	srv, err := api.NewServer(a.cfg.Socket, a, a.log)
	if err != nil {
		return err
	}
	a.srv = srv
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(5)
	go func() {
		defer wg.Done()
		a.serveProxy(ctx)
	}()
	go func() {
		defer wg.Done()
		a.keepSpares(ctx)
	}()
	go func() {
		defer wg.Done()
		if err := a.dp.ReadEvents(ctx, a.onDatapathEvent); err != nil {
			a.log.Error("datapath events stopped", "error", err)
		}
	}()
	go func() {
		defer wg.Done()
		a.gcLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		a.watchHostAddrs(ctx)
	}()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve() }()
	a.log.Info("agent ready", "socket", a.cfg.Socket, "pool", a.cfg.IPv4Pool, "endpoints", len(a.eps))
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = srv.Shutdown(sctx)
	scancel()
	cancel()
	wg.Wait()
	return err
}

// Close releases the agent's handles; the kernel keeps enforcing.
func (a *Agent) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.memTimer != nil {
		a.memTimer.Stop()
	}
	if a.proxy != nil {
		a.proxy.Close()
	}
	return a.dp.Close()
}

func (a *Agent) gcLoop(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	fwd := time.NewTicker(2 * time.Second)
	defer fwd.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-fwd.C:
			a.keepForwarding()
		case <-t.C:
			if n, err := a.dp.GCCT(); err != nil {
				a.log.Warn("conntrack gc", "error", err)
			} else if n > 0 {
				a.log.Debug("conntrack gc", "deleted", n)
			}
		}
	}
}

// keepForwarding turns forwarding back on for endpoints' host interfaces:
// writing net.ipv4.ip_forward (as some tools do) resets every interface's
// forwarding, which would cut endpoints off from each other. It reads the
// interfaces without the agent's lock, so a long policy import does not
// delay it.
func (a *Agent) keepForwarding() {
	a.ifnames.Range(func(k, v any) bool {
		name := v.(string)
		p := "/proc/sys/net/ipv4/conf/" + name + "/forwarding"
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == "0" {
			if err := os.WriteFile(p, []byte("1"), 0o644); err == nil {
				a.log.Warn("forwarding was turned off on an endpoint's interface (net.ipv4.ip_forward written?); turned it back on", "endpoint", k, "interface", name)
			}
		}
		return true
	})
}

// persist writes both state files; the caller holds mu.
func (a *Agent) persist() error {
	if err := a.persistEndpoints(); err != nil {
		return err
	}
	return a.persistPolicies()
}

// persistEndpoints writes the endpoints file: endpoints, pending creations
// and the identities of label sets. The caller holds mu.
func (a *Agent) persistEndpoints() error {
	st := &state.EndpointsFile{NextEndpointID: a.nextID}
	for _, p := range a.pending {
		st.Pending = append(st.Pending, p)
	}
	for _, id := range sortedIDs(a.eps) {
		ep := a.eps[id].ep
		st.Endpoints = append(st.Endpoints, &ep)
	}
	st.Identities = a.ids.Users()
	sort.Slice(st.Identities, func(i, j int) bool { return st.Identities[i].ID < st.Identities[j].ID })
	if err := a.store.SaveEndpoints(st); err != nil {
		a.log.Error("persist endpoints", "error", err)
		return err
	}
	return nil
}

// persistPolicies writes what changed of the policies: the files of
// policies imported or replaced since the last write (compared by
// pointer with what was stored), removes those of deleted ones, the
// revision, and the CIDR identities when they changed. The caller holds
// mu.
func (a *Agent) persistPolicies() error {
	now := map[string]*policy.Policy{}
	for _, p := range a.repo.List() {
		now[state.PolicyFileName(p.Kind, p.Namespace, p.Name)] = p
	}
	for name, p := range now {
		if a.stored[name] == p {
			continue
		}
		if err := a.store.SavePolicy(name, state.Policy{File: p.File, Document: p.Document, Object: p.Object}); err != nil {
			a.log.Error("persist policy", "error", err)
			return err
		}
	}
	for name := range a.stored {
		if _, ok := now[name]; !ok {
			if err := a.store.DeletePolicy(name); err != nil {
				a.log.Error("persist policy", "error", err)
				return err
			}
		}
	}
	a.stored = now
	if err := a.store.SaveRevision(a.repo.Revision()); err != nil {
		a.log.Error("persist policy revision", "error", err)
		return err
	}
	if a.cidrDirty {
		ids := make([]state.CIDRIdentity, 0, len(a.cidrIDs))
		for p, id := range a.cidrIDs {
			ids = append(ids, state.CIDRIdentity{Prefix: p.String(), ID: id})
		}
		if err := a.store.SaveCIDRIdentities(ids); err != nil {
			a.log.Error("persist CIDR identities", "error", err)
			return err
		}
		a.cidrDirty = false
	}
	return nil
}

var errNotFound = errors.New("not found")
