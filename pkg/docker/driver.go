package docker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/membrane-net/membrane/pkg/agent"
	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/ipam"
)

// refPrefix marks the endpoints this plugin made: their ContainerID is
// "docker:<network id>:<endpoint id>" (Docker's IDs, 64 hex digits each).
const refPrefix = "docker:"

// ref is a Docker endpoint: the network and endpoint IDs libnetwork uses.
type ref struct{ network, endpoint string }

func (r ref) String() string { return refPrefix + r.network + ":" + r.endpoint }

// name is the endpoint's name in Membrane.
func (r ref) name() string { return "docker-" + short(r.endpoint) }

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// parseRef reads a ContainerID the plugin wrote.
func parseRef(s string) (ref, bool) {
	rest, ok := strings.CutPrefix(s, refPrefix)
	if !ok {
		return ref{}, false
	}
	nid, eid, ok := strings.Cut(rest, ":")
	if !ok || nid == "" || eid == "" {
		return ref{}, false
	}
	return ref{nid, eid}, true
}

// peerName is the name of a prepared endpoint's container-side veth while
// it is in the host namespace (see endpoint.Veth.PeerName).
func peerName(hostIf string) string { return "tmp" + strings.TrimPrefix(hostIf, "lxc") }

// endpointByRef finds the agent's endpoint for a Docker endpoint.
func (p *Plugin) endpointByRef(ctx context.Context, r ref) *api.Endpoint {
	want := r.String()
	for _, ep := range p.agent.ListEndpoints(ctx) {
		if ep.ContainerID == want {
			return &ep
		}
	}
	return nil
}

// ---- requests and replies of the libnetwork remote driver protocol -----

type ipamData struct {
	AddressSpace string
	Pool         string
	Gateway      string
	AuxAddresses map[string]string
}

type createNetworkRequest struct {
	NetworkID string
	Options   map[string]any
	IPv4Data  []ipamData
	IPv6Data  []ipamData
}

type endpointInterface struct {
	Address     string `json:",omitempty"`
	AddressIPv6 string `json:",omitempty"`
	MacAddress  string `json:",omitempty"`
}

type createEndpointRequest struct {
	NetworkID  string
	EndpointID string
	Interface  *endpointInterface
	Options    map[string]any
}

type endpointRequest struct {
	NetworkID  string
	EndpointID string
}

type joinRequest struct {
	NetworkID  string
	EndpointID string
	SandboxKey string
	Options    map[string]any
}

type interfaceName struct {
	SrcName   string
	DstPrefix string
}

type joinResponse struct {
	InterfaceName         interfaceName
	Gateway               string `json:",omitempty"`
	DisableGatewayService bool
}

// ---- network driver ----------------------------------------------------

func (p *Plugin) capabilities(context.Context, []byte) (any, error) {
	return map[string]string{"Scope": "local", "ConnectivityScope": "local"}, nil
}

func (p *Plugin) allocateNetwork(context.Context, []byte) (any, error) {
	return nil, errors.New("allocate network: swarm (global scope) networks are not supported")
}

// createNetwork accepts a network whose IPv4 pool is the agent's: every
// endpoint is routed by the agent through the host, so a network is only
// a name for the agent's pool. Nothing is made.
func (p *Plugin) createNetwork(ctx context.Context, body []byte) (any, error) {
	var req createNetworkRequest
	if err := decode(body, &req); err != nil {
		return nil, fmt.Errorf("create network: %w", err)
	}
	if len(req.IPv6Data) > 0 {
		return nil, errors.New("create network: IPv6 is not supported yet (drop --ipv6)")
	}
	pool, gw := p.agent.Pool()
	if len(req.IPv4Data) != 1 {
		return nil, fmt.Errorf("create network: want one IPv4 pool, got %d (use --ipam-driver %s)", len(req.IPv4Data), p.name)
	}
	d := req.IPv4Data[0]
	got, err := netip.ParsePrefix(d.Pool)
	if err != nil || got.Masked() != pool {
		return nil, fmt.Errorf("create network: IPv4 pool %q is not the agent's pool %s (use --ipam-driver %s, and no --subnet or --subnet %s)", d.Pool, pool, p.name, pool)
	}
	if d.Gateway != "" {
		if g, err := netip.ParsePrefix(d.Gateway); err != nil || g.Addr() != gw {
			return nil, fmt.Errorf("create network: gateway %q: the gateway is the agent's host address %s", d.Gateway, gw)
		}
	}
	p.log.Info("docker network created", "network", short(req.NetworkID), "pool", pool, "gateway", gw)
	return struct{}{}, nil
}

// deleteNetwork removes what is left of the network's endpoints (Docker
// removes a network only once its endpoints are gone, so normally none).
func (p *Plugin) deleteNetwork(ctx context.Context, body []byte) (any, error) {
	var req endpointRequest
	if err := decode(body, &req); err != nil {
		return nil, fmt.Errorf("delete network: %w", err)
	}
	var errs []error
	for _, ep := range p.agent.ListEndpoints(ctx) {
		if r, ok := parseRef(ep.ContainerID); ok && r.network == req.NetworkID {
			p.cancelWorker(r.endpoint)
			if err := p.agent.DeleteEndpoint(ctx, ep.ID); err != nil && !isNotFound(err) {
				errs = append(errs, fmt.Errorf("delete endpoint %d: %w", ep.ID, err))
			}
		}
	}
	p.log.Info("docker network deleted", "network", short(req.NetworkID))
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("delete network: %w", err)
	}
	return struct{}{}, nil
}

// initLabels are an endpoint's labels until its container's are known.
var initLabels = identity.ReservedLabels(identity.Init)

// createEndpoint makes the endpoint with the init identity and its veth
// pair, the peer left in the host namespace for libnetwork to move into
// the sandbox. The datapath is attached before anything can pass.
func (p *Plugin) createEndpoint(ctx context.Context, body []byte) (any, error) {
	var req createEndpointRequest
	if err := decode(body, &req); err != nil {
		return nil, fmt.Errorf("create endpoint: %w", err)
	}
	r := ref{req.NetworkID, req.EndpointID}
	if r.network == "" || r.endpoint == "" {
		return nil, errors.New("create endpoint: network and endpoint IDs are required")
	}
	if req.Interface == nil || req.Interface.Address == "" {
		return nil, fmt.Errorf("create endpoint: no IPv4 address given (create the network with --ipam-driver %s)", p.name)
	}
	if req.Interface.AddressIPv6 != "" {
		return nil, errors.New("create endpoint: IPv6 is not supported yet")
	}
	if req.Interface.MacAddress != "" {
		return nil, errors.New("create endpoint: --mac-address is not supported (the agent chooses the MAC address)")
	}
	pfx, err := netip.ParsePrefix(req.Interface.Address)
	if err != nil || !pfx.Addr().Is4() {
		return nil, fmt.Errorf("create endpoint: address %q is not IPv4/prefix", req.Interface.Address)
	}
	addr := pfx.Addr()
	pool, _ := p.agent.Pool()
	if !pool.Contains(addr) {
		return nil, fmt.Errorf("create endpoint: address %s is outside the agent's pool %s", addr, pool)
	}
	// A retried call finds its endpoint.
	if ep := p.endpointByRef(ctx, r); ep != nil {
		return map[string]any{"Interface": endpointInterface{MacAddress: ep.MAC}}, nil
	}
	for _, ep := range p.agent.ListEndpoints(ctx) {
		if ep.IPv4 == addr {
			return nil, fmt.Errorf("create endpoint: address %s is held by endpoint %d (%s)", addr, ep.ID, ep.Name)
		}
	}
	// The address normally comes from this plugin's IPAM and is held for
	// it; after an agent restart it may not be: hold it now.
	reserved := false
	if err := p.agent.ReserveAddress(addr, "docker endpoint "+short(r.endpoint)); err == nil {
		reserved = true
	} else if !errors.Is(err, ipam.ErrInUse) {
		return nil, fmt.Errorf("create endpoint: reserve %s: %w", addr, err)
	}
	ep, _, err := p.agent.PrepareEndpoint(ctx, agent.PrepareRequest{
		Name: r.name(), ContainerID: r.String(), Labels: initLabels, IPv4: addr, AddressAllocated: true,
	})
	if err != nil {
		if reserved {
			p.agent.ReleaseAddress(addr)
		}
		return nil, fmt.Errorf("create endpoint: %w", err)
	}
	p.log.Info("docker endpoint created", "endpoint", ep.ID, "docker_endpoint", short(r.endpoint), "ipv4", addr, "identity", ep.Identity)
	return map[string]any{"Interface": endpointInterface{MacAddress: ep.MAC}}, nil
}

func (p *Plugin) endpointInfo(ctx context.Context, body []byte) (any, error) {
	var req endpointRequest
	if err := decode(body, &req); err != nil {
		return nil, fmt.Errorf("endpoint info: %w", err)
	}
	v := map[string]any{}
	if ep := p.endpointByRef(ctx, ref{req.NetworkID, req.EndpointID}); ep != nil {
		v["membrane.endpoint"] = ep.ID
		v["membrane.identity"] = ep.Identity
		v["membrane.interface"] = ep.Interface
	}
	return map[string]any{"Value": v}, nil
}

// deleteEndpoint removes the endpoint and everything made for it; an
// endpoint that is gone already is not an error.
func (p *Plugin) deleteEndpoint(ctx context.Context, body []byte) (any, error) {
	var req endpointRequest
	if err := decode(body, &req); err != nil {
		return nil, fmt.Errorf("delete endpoint: %w", err)
	}
	r := ref{req.NetworkID, req.EndpointID}
	p.cancelWorker(r.endpoint)
	ep := p.endpointByRef(ctx, r)
	if ep == nil {
		return struct{}{}, nil
	}
	if err := p.agent.DeleteEndpoint(ctx, ep.ID); err != nil && !isNotFound(err) {
		return nil, fmt.Errorf("delete endpoint %d: %w", ep.ID, err)
	}
	p.log.Info("docker endpoint deleted", "endpoint", ep.ID, "docker_endpoint", short(r.endpoint))
	return struct{}{}, nil
}

// join hands libnetwork the peer to move into the sandbox. The container
// gets its address with the pool's prefix, and a default route through
// the pool's gateway, the host's address; the host answers ARP for it and
// (proxy ARP on the host side of every prepared endpoint) for the other
// endpoints, so container-to-container and container-to-host traffic all
// goes through the host side of the veth, where the datapath enforces.
// Returning a gateway also keeps libnetwork from adding docker_gwbridge.
func (p *Plugin) join(ctx context.Context, body []byte) (any, error) {
	var req joinRequest
	if err := decode(body, &req); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	r := ref{req.NetworkID, req.EndpointID}
	ep := p.endpointByRef(ctx, r)
	if ep == nil {
		return nil, fmt.Errorf("join: docker endpoint %s has no membrane endpoint", short(r.endpoint))
	}
	if req.SandboxKey != "" {
		if err := p.agent.SetEndpointNetns(ep.ID, req.SandboxKey); err != nil {
			return nil, fmt.Errorf("join: record sandbox of endpoint %d: %w", ep.ID, err)
		}
	}
	_, gw := p.agent.Pool()
	if hasInitLabels(ep) {
		p.startWorker(r, ep.ID)
	}
	return joinResponse{
		InterfaceName:         interfaceName{SrcName: peerName(ep.Interface), DstPrefix: "eth"},
		Gateway:               gw.String(),
		DisableGatewayService: true,
	}, nil
}

func (p *Plugin) leave(ctx context.Context, body []byte) (any, error) {
	var req endpointRequest
	if err := decode(body, &req); err != nil {
		return nil, fmt.Errorf("leave: %w", err)
	}
	if ep := p.endpointByRef(ctx, ref{req.NetworkID, req.EndpointID}); ep != nil {
		if err := p.agent.SetEndpointNetns(ep.ID, ""); err != nil && !isNotFound(err) {
			return nil, fmt.Errorf("leave: endpoint %d: %w", ep.ID, err)
		}
	}
	return struct{}{}, nil
}

func hasInitLabels(ep *api.Endpoint) bool { return ep.Labels.Equal(initLabels) }

func isNotFound(err error) bool {
	var se *api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}
