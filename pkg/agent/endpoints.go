package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/datapath"
	"github.com/membrane-net/membrane/pkg/endpoint"
	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/ipam"
	"github.com/membrane-net/membrane/pkg/ipcache"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/state"
)

func badRequest(err error) error { return api.WithStatus(http.StatusBadRequest, err) }

func parseLabels(ss []string) (labels.Labels, error) {
	var parts []string
	for _, s := range ss {
		for _, p := range strings.Split(s, ",") {
			if strings.TrimSpace(p) != "" {
				parts = append(parts, p)
			}
		}
	}
	lbls, err := labels.ParseList(parts, labels.SourceUnspec)
	if err != nil {
		return nil, badRequest(fmt.Errorf("labels: %w", err))
	}
	if identity.ForLabels(lbls) == identity.Init {
		// A runtime wiring a container whose labels it does not know yet.
		return lbls, nil
	}
	for _, l := range lbls {
		if l.Source == labels.SourceReserved || l.Source == labels.SourceCIDR {
			return nil, badRequest(fmt.Errorf("labels: %s: source %s is Membrane's own (only reserved:init alone is accepted)", l, l.Source))
		}
	}
	return lbls, nil
}

func validIfName(n string) error {
	if n == "" || len(n) > 15 || strings.ContainsAny(n, "/ \t\n:") || n == "." || n == ".." {
		return fmt.Errorf("interface name %q: 1 to 15 characters, no '/', ':' or spaces", n)
	}
	return nil
}

// netnsKey identifies a namespace file by device and inode.
func netnsKey(path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", err
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino), nil
}

// AddEndpoint wires a namespace as an endpoint. When it returns the
// endpoint's policy is enforced; on any failure nothing is left behind.
func (a *Agent) AddEndpoint(ctx context.Context, req api.EndpointRequest) (*api.Endpoint, error) {
	lbls, err := parseLabels(req.Labels)
	if err != nil {
		return nil, err
	}
	if req.Netns == "" {
		return nil, badRequest(errors.New("netns: a network namespace path is required"))
	}
	spec, err := a.endpointSpec(req, lbls)
	if err != nil {
		return nil, err
	}
	out, _, err := a.createEndpoint(ctx, spec)
	return out, err
}

// PrepareRequest asks for an endpoint whose container side a runtime
// configures (Docker's libnetwork moves the peer into the sandbox and
// gives it its address and routes).
type PrepareRequest struct {
	Name        string
	ContainerID string
	// Labels may be reserved:init while the container's labels are not
	// known yet.
	Labels labels.Labels
	IPv4   netip.Addr
	// AddressAllocated: IPv4 came from AllocateAddress for this endpoint.
	AddressAllocated bool
}

// PrepareEndpoint creates an endpoint whose veth peer stays in the host
// namespace, named PeerName, for a runtime to move into the container.
// Policy is enforced on the endpoint when it returns.
func (a *Agent) PrepareEndpoint(ctx context.Context, req PrepareRequest) (*api.Endpoint, string, error) {
	if !req.IPv4.Is4() {
		return nil, "", badRequest(errors.New("prepare endpoint: an IPv4 address is required"))
	}
	if err := identity.Validate(req.Labels); err != nil {
		return nil, "", badRequest(err)
	}
	spec := endpointSpec{
		name: req.Name, labels: req.Labels, ipv4: req.IPv4, containerID: req.ContainerID,
		contIf: endpoint.DefaultContainerIfName, prepared: true, addressAllocated: req.AddressAllocated,
	}
	if spec.name == "" {
		spec.name = req.ContainerID
	}
	if err := validName(spec.name); err != nil {
		return nil, "", err
	}
	return a.createEndpoint(ctx, spec)
}

// SetEndpointNetns records the namespace a runtime put a prepared
// endpoint in.
func (a *Agent) SetEndpointNetns(id uint32, path string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.eps[id]
	if !ok {
		return api.Errorf(http.StatusNotFound, "endpoint %d: %v", id, errNotFound)
	}
	s.ep.Netns = path
	return a.persistEndpoints()
}

// AllocateAddress takes an address from the pool (IPAM for runtimes).
func (a *Agent) AllocateAddress(owner string) (netip.Addr, error) {
	return a.pool.Allocate(owner)
}

// ReserveAddress takes a given address (IPAM for runtimes).
func (a *Agent) ReserveAddress(addr netip.Addr, owner string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.hostIPs[addr] {
		return api.Errorf(http.StatusConflict, "ipv4 %s: address in use by the host", addr)
	}
	return a.pool.Reserve(addr, owner)
}

// ReleaseAddress gives an address back unless an endpoint holds it.
func (a *Agent) ReleaseAddress(addr netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.epByIP(addr) == nil {
		a.pool.Release(addr)
	}
}

// Pool is the address pool's prefix and gateway (the host's address).
func (a *Agent) Pool() (netip.Prefix, netip.Addr) { return a.pool.Prefix(), a.pool.Gateway() }

type endpointSpec struct {
	name, netns, contIf, containerID string
	labels                           labels.Labels
	namedPorts                       []endpoint.NamedPort
	ipv4                             netip.Addr
	audit                            bool
	prepared                         bool // the runtime configures the container side
	addressAllocated                 bool
}

func validName(name string) error {
	if name == "" || len(name) > 253 || strings.ContainsAny(name, "\x00\n") {
		return badRequest(fmt.Errorf("name %q: 1 to 253 characters, no NUL or newline", name))
	}
	return nil
}

// endpointSpec validates a request.
func (a *Agent) endpointSpec(req api.EndpointRequest, lbls labels.Labels) (endpointSpec, error) {
	spec := endpointSpec{labels: lbls, containerID: req.ContainerID, audit: req.Audit, contIf: req.Interface}
	var err error
	if spec.namedPorts, err = endpoint.ValidateNamedPorts(req.NamedPorts); err != nil {
		return spec, badRequest(err)
	}
	if spec.contIf == "" {
		spec.contIf = endpoint.DefaultContainerIfName
	}
	if err := validIfName(spec.contIf); err != nil {
		return spec, badRequest(err)
	}
	if req.IPv4 != "" {
		if spec.ipv4, err = netip.ParseAddr(req.IPv4); err != nil || !spec.ipv4.Is4() {
			return spec, badRequest(fmt.Errorf("ipv4 %q is not an IPv4 address", req.IPv4))
		}
	}
	if spec.netns, err = filepath.Abs(req.Netns); err != nil {
		return spec, badRequest(fmt.Errorf("netns %q: %w", req.Netns, err))
	}
	if _, err := os.Stat(spec.netns); err != nil {
		return spec, badRequest(fmt.Errorf("netns %s: %w", spec.netns, err))
	}
	spec.name = req.Name
	if spec.name == "" {
		spec.name = filepath.Base(spec.netns)
	}
	return spec, validName(spec.name)
}

// createEndpoint makes an endpoint: address, identity, policy everywhere,
// veth, datapath, ipcache, then the wiring. Its intent is written to the
// state file first, so that an agent killed half way cleans up on restart.
func (a *Agent) createEndpoint(ctx context.Context, spec endpointSpec) (_ *api.Endpoint, peer string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	t0 := time.Now()
	step := func(name string) { a.log.Debug("endpoint add", "step", name, "elapsed", time.Since(t0)) }
	var nsKey string
	if !spec.prepared {
		if nsKey, err = netnsKey(spec.netns); err != nil {
			return nil, "", badRequest(fmt.Errorf("netns %s: %w", spec.netns, err))
		}
	}
	for _, s := range a.eps {
		if s.ep.Name == spec.name {
			return nil, "", api.Errorf(http.StatusConflict, "name %q: in use by endpoint %d", spec.name, s.ep.ID)
		}
		if nsKey != "" {
			if k, err := netnsKey(s.ep.Netns); err == nil && k == nsKey {
				return nil, "", api.Errorf(http.StatusConflict, "netns %s: already endpoint %d (%s)", spec.netns, s.ep.ID, s.ep.Name)
			}
		}
	}

	id := a.nextID
	ep := endpoint.Endpoint{
		ID: id, Name: spec.name, Netns: spec.netns, Labels: spec.labels, NamedPorts: spec.namedPorts,
		Interface: endpoint.HostIfName(a.cfg.StateDir, spec.name, id), ContainerInterface: spec.contIf,
		ContainerID: spec.containerID, Audit: spec.audit, Created: time.Now().UTC(),
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	owner := fmt.Sprintf("endpoint %d (%s)", id, spec.name)
	switch {
	case spec.addressAllocated:
		ep.IPv4 = spec.ipv4
	case spec.ipv4.IsValid():
		if a.hostIPs[spec.ipv4] {
			return nil, "", api.Errorf(http.StatusConflict, "ipv4 %s: address in use by the host", spec.ipv4)
		}
		if err := a.pool.Reserve(spec.ipv4, owner); err != nil {
			if errors.Is(err, ipam.ErrInUse) {
				return nil, "", api.WithStatus(http.StatusConflict, err)
			}
			return nil, "", badRequest(err)
		}
		ep.IPv4 = spec.ipv4
	default:
		if ep.IPv4, err = a.pool.Allocate(owner); err != nil {
			return nil, "", api.WithStatus(http.StatusServiceUnavailable, err)
		}
	}
	undo = append(undo, func() { a.pool.Release(ep.IPv4) })

	// The intent goes to disk before anything is made in the kernel.
	a.nextID++
	a.pending[id] = state.Pending{ID: id, Interface: ep.Interface}
	undo = append(undo, func() { delete(a.pending, id); _ = a.persistEndpoints() })
	if err := a.persistEndpoints(); err != nil {
		return nil, "", err
	}

	step("pending")
	ident, isNew, err := a.ids.Allocate(ctx, spec.labels)
	if err != nil {
		return nil, "", badRequest(fmt.Errorf("identity: %w", err))
	}
	ep.Identity = ident.ID
	undo = append(undo, func() { a.releaseIdentity(ident.ID) })

	s := &epState{ep: ep}
	a.eps[id] = s
	undo = append(undo, func() { delete(a.eps, id) })
	// Every endpoint's map learns of the identity (and of its named ports)
	// before the endpoint's address can carry it. An identity other
	// endpoints already hold, with no new named port, changes no map.
	if isNew || len(spec.namedPorts) > 0 {
		a.repo.UpsertIdentity(a.selectable(ident))
		resolved, err := a.resolveAll()
		if err != nil {
			return nil, "", err
		}
		delete(resolved, id)
		if err := a.apply(resolved); err != nil {
			return nil, "", err
		}
	}

	step("identity")
	var veth *endpoint.Veth
	var att *datapath.Attachment
	if sp := a.takeSpare(); sp != nil {
		defer a.refillSpares()
		veth, att = sp.veth, sp.att
		undo = append(undo, func() { att.Close() })
		nsPath := spec.netns
		if spec.prepared {
			nsPath = ""
		}
		err = veth.Adopt(nsPath, ep.Interface, spec.contIf)
	} else if spec.prepared {
		veth, err = endpoint.PrepareHostVeth(ep.Interface)
	} else {
		veth, err = endpoint.PrepareVeth(spec.netns, ep.Interface, spec.contIf)
	}
	if veth != nil {
		defer veth.Close()
		v := veth
		undo = append(undo, func() { _ = v.Delete() })
	}
	if err != nil {
		if errors.Is(err, endpoint.ErrNetns) || errors.Is(err, endpoint.ErrIfaceExists) {
			return nil, "", badRequest(err)
		}
		return nil, "", err
	}
	a.faultPoint("endpoint-after-veth")
	s.ep.IfIndex = veth.HostIndex
	s.ep.MAC = veth.ContMAC.String()

	step("veth")
	res, err := a.repo.Resolve(a.policyEndpoint(s))
	if err != nil {
		return nil, "", fmt.Errorf("resolve policy: %w", err)
	}
	if n, max := len(res.MapState), a.dp.PolicyMapMaxEntries(); n > max {
		return nil, "", api.Errorf(http.StatusUnprocessableEntity, "endpoint %d (%s): policy needs %d policy map entries, capacity %d", id, spec.name, n, max)
	}
	step("resolve")
	// The datapath attaches (RCU grace periods) while the namespace side
	// is wired; the host side comes up only once both are done.
	attached := make(chan error, 1)
	go func() { attached <- a.dp.AddAttachedEndpoint(a.dpEndpoint(s), res.MapState, att) }()
	var nsErr error
	if !spec.prepared {
		nsErr = veth.ConfigureNetns(ep.IPv4)
	}
	if err := <-attached; err != nil {
		return nil, "", err
	}
	undo = append(undo, func() { _ = a.dp.RemoveEndpoint(id, s.ep.IfIndex) })
	if nsErr != nil {
		return nil, "", nsErr
	}
	step("datapath")
	a.faultPoint("endpoint-after-attach")
	s.resolved, s.revision = res, a.repo.Revision()
	a.l7.set(id, res)
	undo = append(undo, func() { a.l7.del(id) })

	prefix := netip.PrefixFrom(ep.IPv4, 32)
	if err := a.ipc.UpsertSecurity(prefix, ipcache.Security{Identity: ep.Identity, InCluster: true, Source: "endpoint"}); err != nil {
		return nil, "", err
	}
	undo = append(undo, func() { _ = a.ipc.DeleteSecurity(prefix) })

	if err := veth.ConfigureHost(ep.IPv4, a.pool.Gateway()); err != nil {
		return nil, "", err
	}
	if spec.prepared {
		peer = veth.PeerName()
	}
	step("wired")
	delete(a.pending, id)
	a.names.Store(id, spec.name)
	a.ifnames.Store(id, ep.Interface)
	if err := a.persistEndpoints(); err != nil {
		return nil, "", err
	}
	a.log.Info("endpoint added", "id", id, "name", spec.name, "ipv4", ep.IPv4, "identity", ep.Identity, "labels", spec.labels.String())
	out := a.apiEndpoint(s)
	return &out, peer, nil
}

// releaseIdentity drops a reference; when the identity goes, the
// repository forgets it and policies drop its entries.
func (a *Agent) releaseIdentity(id identity.NumericIdentity) {
	released, err := a.ids.Release(context.Background(), id)
	if err != nil {
		a.log.Warn("release identity", "identity", id, "error", err)
		return
	}
	if released {
		a.repo.RemoveIdentity(id)
		if err := a.regenerate(); err != nil {
			a.log.Error("regenerate policy after releasing an identity", "identity", id, "error", err)
		}
		return
	}
	if ident := a.ids.Lookup(id); ident != nil {
		// Named ports of the identity may have changed.
		a.repo.UpsertIdentity(a.selectable(ident))
	}
}

// DeleteEndpoint removes an endpoint and everything made for it.
func (a *Agent) DeleteEndpoint(ctx context.Context, id uint32) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.eps[id]
	if !ok {
		return api.Errorf(http.StatusNotFound, "endpoint %d: %v", id, errNotFound)
	}
	var errs []error
	if err := endpoint.DeleteHostLink(s.ep.Interface); err != nil {
		errs = append(errs, err)
	}
	if err := a.dp.RemoveEndpoint(id, s.ep.IfIndex); err != nil {
		errs = append(errs, err)
	}
	if err := a.ipc.DeleteSecurity(netip.PrefixFrom(s.ep.IPv4, 32)); err != nil {
		errs = append(errs, err)
	}
	a.pool.Release(s.ep.IPv4)
	delete(a.eps, id)
	a.names.Delete(id)
	a.ifnames.Delete(id)
	a.l7.del(id)
	a.releaseIdentity(s.ep.Identity)
	if err := a.persistEndpoints(); err != nil {
		errs = append(errs, err)
	}
	a.log.Info("endpoint deleted", "id", id, "name", s.ep.Name)
	return errors.Join(errs...)
}

// UpdateEndpoint replaces an endpoint's labels (a new identity, policies
// recomputed everywhere) or switches its audit mode; enforced on return.
func (a *Agent) UpdateEndpoint(ctx context.Context, id uint32, upd api.EndpointUpdate) (*api.Endpoint, error) {
	var lbls labels.Labels
	if upd.Labels != nil {
		var err error
		if lbls, err = parseLabels(upd.Labels); err != nil {
			return nil, err
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.eps[id]
	if !ok {
		return nil, api.Errorf(http.StatusNotFound, "endpoint %d: %v", id, errNotFound)
	}
	if upd.Audit != nil && *upd.Audit != s.ep.Audit {
		s.ep.Audit = *upd.Audit
		if err := a.dp.UpdateEndpoint(a.dpEndpoint(s)); err != nil {
			return nil, err
		}
	}
	if upd.Labels != nil && !lbls.Equal(s.ep.Labels) {
		if err := a.relabel(ctx, s, lbls); err != nil {
			return nil, err
		}
	}
	if err := a.persistEndpoints(); err != nil {
		return nil, err
	}
	out := a.apiEndpoint(s)
	return &out, nil
}

func (a *Agent) relabel(ctx context.Context, s *epState, lbls labels.Labels) error {
	ident, _, err := a.ids.Allocate(ctx, lbls)
	if err != nil {
		return badRequest(fmt.Errorf("identity: %w", err))
	}
	old := s.ep
	s.ep.Labels, s.ep.Identity = lbls, ident.ID
	a.repo.UpsertIdentity(a.selectable(ident))
	// Other endpoints learn the new identity, this one gets the policy of
	// its new labels; then its address carries the new identity.
	if err := a.regenerate(); err != nil {
		s.ep = old
		a.releaseIdentity(ident.ID)
		return err
	}
	if err := a.ipc.UpsertSecurity(netip.PrefixFrom(s.ep.IPv4, 32), ipcache.Security{Identity: ident.ID, InCluster: true, Source: "endpoint"}); err != nil {
		return err
	}
	if err := a.dp.UpdateEndpoint(a.dpEndpoint(s)); err != nil {
		return err
	}
	a.releaseIdentity(old.Identity)
	a.log.Info("endpoint labels updated", "id", s.ep.ID, "identity", ident.ID, "labels", lbls.String())
	return nil
}

// ListEndpoints lists endpoints by id.
func (a *Agent) ListEndpoints(ctx context.Context) []api.Endpoint {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := []api.Endpoint{}
	for _, id := range sortedIDs(a.eps) {
		out = append(out, a.apiEndpoint(a.eps[id]))
	}
	return out
}

// GetEndpoint returns one endpoint.
func (a *Agent) GetEndpoint(ctx context.Context, id uint32) (*api.Endpoint, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.eps[id]
	if !ok {
		return nil, api.Errorf(http.StatusNotFound, "endpoint %d: %v", id, errNotFound)
	}
	out := a.apiEndpoint(s)
	return &out, nil
}

func (a *Agent) apiEndpoint(s *epState) api.Endpoint {
	out := api.Endpoint{Endpoint: s.ep, State: "ready"}
	out.Audit = s.ep.Audit || a.cfg.Audit
	if s.resolved != nil {
		out.Policy = api.EndpointPolicy{
			IngressEnforced: s.resolved.IngressEnforced, EgressEnforced: s.resolved.EgressEnforced,
			Revision: s.revision, Entries: len(s.resolved.MapState),
		}
	}
	return out
}
