package cni

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/endpoint"
)

// Versions are the CNI spec versions the plugin speaks. GC and STATUS
// exist from 1.1.0 on.
var Versions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Agent is what the plugin asks of the agent (*api.Client).
type Agent interface {
	Status(ctx context.Context) (*api.Status, error)
	AddEndpoint(ctx context.Context, req api.EndpointRequest) (*api.Endpoint, error)
	ListEndpoints(ctx context.Context) ([]api.Endpoint, error)
	UpdateEndpoint(ctx context.Context, id uint32, upd api.EndpointUpdate) (*api.Endpoint, error)
	DeleteEndpoint(ctx context.Context, id uint32) error
}

// Plugin runs the CNI commands. Its fields are the outside world, so
// that tests can replace them.
type Plugin struct {
	Stdout io.Writer
	Log    *slog.Logger
	// Agent returns a client for the agent on socket.
	Agent func(socket string) Agent
	// PodmanUp reports whether a podman API answers on socket.
	PodmanUp func(socket string) bool
	// Spawn starts the background job that gives the endpoint the
	// runtime's labels once the runtime shows them.
	Spawn func(job Job, logFile string) error
	// CheckNetns verifies the interface in the namespace (CHECK).
	CheckNetns func(netns, ifName string, addr netip.Addr) error
	// Timeout bounds one command.
	Timeout time.Duration
}

// Funcs are the plugin's commands for skel.PluginMainFuncs.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC}
}

func (p *Plugin) ctx() (context.Context, context.CancelFunc) {
	t := p.Timeout
	if t <= 0 {
		t = 2 * time.Minute
	}
	return context.WithTimeout(context.Background(), t)
}

// agentError turns an agent failure into a CNI error: code 11 (try again
// later) when the agent cannot be reached, naming the socket.
func agentError(step, socket string, err error) error {
	var ae *api.APIError
	if errors.As(err, &ae) {
		return types.NewError(types.ErrInternal, fmt.Sprintf("%s: membrane agent: %s", step, ae.Message), "")
	}
	if errors.Is(err, api.ErrAgentNotRunning) {
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("%s: %v", step, err), "socket "+socket)
	}
	return types.NewError(types.ErrTryAgainLater,
		fmt.Sprintf("%s: cannot reach the membrane agent on %s: %v", step, socket, err), "socket "+socket)
}

func confError(err error) error {
	return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
}

// find returns the endpoints of one attachment.
func find(eps []api.Endpoint, ref, ifName string) []api.Endpoint {
	var out []api.Endpoint
	for _, ep := range eps {
		if ep.ContainerID == ref && (ifName == "" || ep.ContainerInterface == ifName) {
			out = append(out, ep)
		}
	}
	return out
}

// PendingLabels are an endpoint's labels while its runtime's labels are
// awaited, when the agent does not take reserved:init from its API: a
// label set no policy names, so that only what policies give every
// endpoint passes.
var PendingLabels = []string{"container:io.membrane.labels=pending"}

// initLabels is what the endpoint gets first when its labels come later.
var initLabels = []string{"reserved:init"}

// Add wires the namespace as an endpoint and prints the result. On any
// failure nothing it made is left.
func (p *Plugin) Add(args *skel.CmdArgs) (err error) {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return confError(err)
	}
	ra, err := ParseArgs(args.Args)
	if err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
	}
	base, err := BaseLabels(conf, ra)
	if err != nil {
		return confError(err)
	}
	ctx, cancel := p.ctx()
	defer cancel()
	ag := p.Agent(conf.Socket)
	ref := Ref(conf.Name, args.ContainerID)

	eps, err := ag.ListEndpoints(ctx)
	if err != nil {
		return agentError("add: list endpoints", conf.Socket, err)
	}
	// An attachment the runtime retries after a failure the agent did not
	// see: start again from nothing.
	for _, old := range find(eps, ref, args.IfName) {
		p.Log.Warn("add: replacing an endpoint left for this attachment", "endpoint", old.ID)
		if err := ag.DeleteEndpoint(ctx, old.ID); err != nil && !isNotFound(err) {
			return agentError("add: delete the old endpoint", conf.Socket, err)
		}
	}
	name := EndpointName(ra, args.ContainerID)
	for _, ep := range eps {
		if ep.Name == name && ep.ContainerID != ref {
			name += "-" + short(args.ContainerID)
			break
		}
	}

	pending := *conf.PodmanSocket != "" && p.PodmanUp(*conf.PodmanSocket)
	req := api.EndpointRequest{
		Netns: args.Netns, Interface: args.IfName, ContainerID: ref, Name: name, Labels: base,
	}
	if pending {
		req.Labels = initLabels
	}
	ep, err := ag.AddEndpoint(ctx, req)
	if pending && isBadRequest(err) {
		// This agent takes no reserved label from its API.
		req.Labels = PendingLabels
		ep, err = ag.AddEndpoint(ctx, req)
	}
	if err != nil {
		var ae *api.APIError
		if !errors.As(err, &ae) {
			// The agent may have made the endpoint and died answering:
			// take it back if it is there (an agent that restarts cleans
			// up what it had not finished).
			p.rollback(ag, ref, args.IfName)
		}
		return agentError("add: create endpoint", conf.Socket, err)
	}
	defer func() {
		if err != nil {
			p.rollback(ag, ref, args.IfName)
		}
	}()
	if pending {
		job := Job{
			Socket: conf.Socket, Podman: *conf.PodmanSocket, Ref: ref, IfName: args.IfName,
			ContainerID: args.ContainerID, Base: base, Timeout: conf.labelTimeout,
		}
		if err := p.Spawn(job, conf.LogFile); err != nil {
			return types.NewError(types.ErrInternal, fmt.Sprintf("add: start the label lookup: %v", err), "")
		}
	}
	res, err := result(ep, args.Netns).GetAsVersion(conf.CNIVersion)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("add: result for version %s: %v", conf.CNIVersion, err), "")
	}
	if err := res.PrintTo(p.Stdout); err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("add: print result: %v", err), "")
	}
	return nil
}

// rollback deletes what an ADD made, as far as the agent answers.
func (p *Plugin) rollback(ag Agent, ref, ifName string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	eps, err := ag.ListEndpoints(ctx)
	if err != nil {
		p.Log.Warn("add: roll back: agent unreachable; it removes unfinished endpoints when it restarts", "error", err)
		return
	}
	for _, ep := range find(eps, ref, ifName) {
		if err := ag.DeleteEndpoint(ctx, ep.ID); err != nil && !isNotFound(err) {
			p.Log.Warn("add: roll back", "endpoint", ep.ID, "error", err)
		}
	}
}

// result is the CNI result of an endpoint: the host side, the container
// side, its /32 address and the default route through the link-local
// gateway, as the agent configured them.
func result(ep *api.Endpoint, netns string) *current.Result {
	gw := net.IP(endpoint.GatewayIP.AsSlice())
	return &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: ep.Interface},
			{Name: ep.ContainerInterface, Mac: ep.MAC, Sandbox: netns},
		},
		IPs: []*current.IPConfig{{
			Interface: current.Int(1),
			Address:   net.IPNet{IP: ep.IPv4.AsSlice(), Mask: net.CIDRMask(32, 32)},
			Gateway:   gw,
		}},
		Routes: []*types.Route{{Dst: net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, GW: gw}},
	}
}

// Del deletes the attachment's endpoint; one that is gone is success.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return confError(err)
	}
	ctx, cancel := p.ctx()
	defer cancel()
	ag := p.Agent(conf.Socket)
	eps, err := ag.ListEndpoints(ctx)
	if err != nil {
		return agentError("del: list endpoints", conf.Socket, err)
	}
	for _, ep := range find(eps, Ref(conf.Name, args.ContainerID), args.IfName) {
		if err := ag.DeleteEndpoint(ctx, ep.ID); err != nil && !isNotFound(err) {
			return agentError(fmt.Sprintf("del: delete endpoint %d", ep.ID), conf.Socket, err)
		}
	}
	return nil
}

// Check verifies that the endpoint exists, matches the previous result,
// and that the interface in the namespace holds its address and route.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return confError(err)
	}
	ctx, cancel := p.ctx()
	defer cancel()
	ag := p.Agent(conf.Socket)
	eps, err := ag.ListEndpoints(ctx)
	if err != nil {
		return agentError("check: list endpoints", conf.Socket, err)
	}
	found := find(eps, Ref(conf.Name, args.ContainerID), args.IfName)
	if len(found) == 0 {
		return types.NewError(types.ErrUnknownContainer,
			fmt.Sprintf("check: no membrane endpoint for container %s interface %s in network %s", args.ContainerID, args.IfName, conf.Name), "")
	}
	ep := found[0]
	if ep.State != "ready" {
		return types.NewError(types.ErrInternal, fmt.Sprintf("check: endpoint %d is %s", ep.ID, ep.State), "")
	}
	if conf.PrevResult != nil {
		prev, err := current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("check: prevResult: %v", err), "")
		}
		if err := matchPrev(prev, &ep, args.IfName); err != nil {
			return types.NewError(types.ErrInternal, "check: "+err.Error(), "")
		}
	}
	if err := p.CheckNetns(args.Netns, args.IfName, ep.IPv4); err != nil {
		return types.NewError(types.ErrInternal, fmt.Sprintf("check: endpoint %d: %v", ep.ID, err), "")
	}
	return nil
}

// matchPrev compares the previous result with the endpoint.
func matchPrev(prev *current.Result, ep *api.Endpoint, ifName string) error {
	idx := -1
	for i, in := range prev.Interfaces {
		if in.Name == ifName && in.Sandbox != "" {
			idx = i
		}
	}
	if idx < 0 {
		return fmt.Errorf("prevResult has no interface %s in a sandbox", ifName)
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface == nil || *ipc.Interface != idx {
			continue
		}
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if ok && a.Unmap() == ep.IPv4 {
			return nil
		}
	}
	return fmt.Errorf("prevResult does not give %s the endpoint's address %s", ifName, ep.IPv4)
}

// Status reports whether the agent can serve ADD.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return confError(err)
	}
	ctx, cancel := p.ctx()
	defer cancel()
	st, err := p.Agent(conf.Socket).Status(ctx)
	if err != nil {
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("status: membrane agent on %s: %v", conf.Socket, err), "")
	}
	if !st.Healthy {
		var bad []string
		for _, part := range st.Parts {
			if !part.Healthy {
				bad = append(bad, part.Name+": "+part.State)
			}
		}
		return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("status: membrane agent on %s is unhealthy: %v", conf.Socket, bad), "")
	}
	return nil
}

// GC deletes the endpoints this network's plugin made for attachments
// the runtime no longer lists.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return confError(err)
	}
	valid := map[[2]string]bool{}
	for _, a := range conf.ValidAttachments {
		valid[[2]string{a.ContainerID, a.IfName}] = true
	}
	ctx, cancel := p.ctx()
	defer cancel()
	ag := p.Agent(conf.Socket)
	eps, err := ag.ListEndpoints(ctx)
	if err != nil {
		return agentError("gc: list endpoints", conf.Socket, err)
	}
	var errs []error
	for _, ep := range eps {
		network, cid, ok := ParseRef(ep.ContainerID)
		if !ok || network != conf.Name || valid[[2]string{cid, ep.ContainerInterface}] {
			continue
		}
		p.Log.Info("gc: deleting endpoint", "endpoint", ep.ID, "container", cid, "interface", ep.ContainerInterface)
		if err := ag.DeleteEndpoint(ctx, ep.ID); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete endpoint %d: %w", ep.ID, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return agentError("gc", conf.Socket, err)
	}
	return nil
}

func isNotFound(err error) bool {
	var ae *api.APIError
	return errors.As(err, &ae) && ae.Code == http.StatusNotFound
}

func isBadRequest(err error) bool {
	var ae *api.APIError
	return errors.As(err, &ae) && ae.Code == http.StatusBadRequest
}
