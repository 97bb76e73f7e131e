package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/policy"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// parseFiles parses every file; any error rejects them all, listing each
// problem.
func parseFiles(files []api.PolicyFile) ([]*policy.Policy, error) {
	if len(files) == 0 {
		return nil, badRequest(errors.New("no policy file given"))
	}
	var pols []*policy.Policy
	var problems []string
	for _, f := range files {
		ps, err := policy.Parse(f.Name, []byte(f.Content))
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if strings.TrimSpace(line) != "" {
					problems = append(problems, line)
				}
			}
			continue
		}
		pols = append(pols, ps...)
	}
	if len(problems) > 0 {
		msg := problems[0]
		if len(problems) > 1 {
			msg = fmt.Sprintf("%s (and %d more problems)", msg, len(problems)-1)
		}
		return nil, &api.StatusError{Code: http.StatusBadRequest, Err: errors.New(msg), Details: problems}
	}
	if len(pols) == 0 {
		return nil, badRequest(errors.New("the files hold no policy"))
	}
	return pols, nil
}

func refs(pols []*policy.Policy) []api.PolicyRef {
	out := make([]api.PolicyRef, 0, len(pols))
	for _, p := range pols {
		out = append(out, api.PolicyRef{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name, File: p.File, Document: p.Document})
	}
	return out
}

// ValidatePolicy parses files without importing them.
func (a *Agent) ValidatePolicy(ctx context.Context, req api.PolicyRequest) (*api.PolicyResult, error) {
	pols, err := parseFiles(req.Files)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	rev := a.repo.Revision()
	a.mu.Unlock()
	return &api.PolicyResult{Revision: rev, Policies: refs(pols)}, nil
}

// ImportPolicy adds or replaces policies. It returns once every endpoint
// enforces them; if anything is wrong (a bad document, a policy that does
// not fit an endpoint's map) nothing changes.
func (a *Agent) ImportPolicy(ctx context.Context, req api.PolicyRequest) (*api.PolicyResult, error) {
	t0 := time.Now()
	pols, err := parseFiles(req.Files)
	if err != nil {
		return nil, err
	}
	a.log.Debug("enforce policy", "step", "parse", "elapsed", time.Since(t0))
	a.mu.Lock()
	defer a.mu.Unlock()
	err = a.changePolicy(func() error {
		t1 := time.Now()
		_, err := a.repo.Import(pols)
		a.log.Debug("enforce policy", "step", "repository", "elapsed", time.Since(t1))
		return err
	})
	if err != nil {
		return nil, err
	}
	a.log.Info("policy imported", "policies", len(pols), "revision", a.repo.Revision())
	return &api.PolicyResult{Revision: a.repo.Revision(), Policies: refs(pols)}, nil
}

// changePolicy runs a change of the repository and brings the kernel to
// it. When the change cannot be enforced (capacity), the repository goes
// back to what it was and nothing was written. The caller holds mu.
func (a *Agent) changePolicy(change func() error) error {
	before := a.repo.List()
	rev := a.repo.Revision()
	if err := change(); err != nil {
		return api.WithStatus(http.StatusBadRequest, err)
	}
	defer a.releaseMemoryWhenQuiet()
	err := a.enforcePolicy()
	if err == nil {
		return nil
	}
	// Nothing may change when a change cannot be enforced: back to the
	// policies of before, and the kernel with them.
	if rerr := a.repo.Restore(before, rev); rerr != nil {
		a.log.Error("roll back policy repository", "error", rerr)
	}
	if rerr := a.enforcePolicy(); rerr != nil {
		a.log.Error("re-enforce the policy of before a failed change", "error", rerr)
	}
	return err
}

// memQuiet is how long policy must stay unchanged before the agent gives
// the memory its changes left behind back to the system.
const memQuiet = 2 * time.Second

// releaseMemoryWhenQuiet returns the free heap to the system once no
// policy change has come for memQuiet: importing or deleting thousands of
// rules makes tens of MB of temporaries that Go's background scavenger
// would give back only slowly, and the resident size of an idle agent is
// what its host pays for. The timer is reset by every change, so a burst
// of changes pays for one collection at its end. The caller holds mu.
func (a *Agent) releaseMemoryWhenQuiet() {
	if a.memTimer == nil {
		a.memTimer = time.AfterFunc(memQuiet, debug.FreeOSMemory)
		return
	}
	a.memTimer.Reset(memQuiet)
}

// enforcePolicy brings identities, the kernel's maps and the ipcache to
// the repository, then persists. The caller holds mu.
func (a *Agent) enforcePolicy() error {
	t0 := time.Now()
	step := func(name string) { a.log.Debug("enforce policy", "step", name, "elapsed", time.Since(t0)) }
	if err := a.syncCIDRIdentities(); err != nil {
		return err
	}
	step("cidr identities")
	resolved, err := a.resolveAll()
	if err != nil {
		return err
	}
	step("resolve")
	if err := a.apply(resolved); err != nil {
		return err
	}
	step("apply")
	if err := a.publishCIDRs(); err != nil {
		return err
	}
	step("ipcache")
	a.refreshOrigins()
	err = a.persistPolicies()
	step("persist")
	return err
}

// GetPolicy lists the repository.
func (a *Agent) GetPolicy(ctx context.Context) api.PolicyList {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := api.PolicyList{Revision: a.repo.Revision(), Policies: []api.Policy{}}
	for _, p := range a.repo.List() {
		out.Policies = append(out.Policies, api.Policy{
			PolicyRef: api.PolicyRef{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name, File: p.File, Document: p.Document},
			Object:    p.Object,
		})
	}
	return out
}

// DeletePolicy deletes policies by NAME or NAMESPACE/NAME.
func (a *Agent) DeletePolicy(ctx context.Context, name string) (*api.PolicyResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var deleted []*policy.Policy
	err := a.changePolicy(func() error {
		var err error
		_, deleted, err = a.repo.Delete(name)
		return err
	})
	if err != nil {
		var se *api.StatusError
		if errors.As(err, &se) && se.Code == http.StatusBadRequest && len(deleted) == 0 {
			se.Code = http.StatusNotFound
		}
		return nil, err
	}
	a.log.Info("policy deleted", "name", name, "revision", a.repo.Revision())
	return &api.PolicyResult{Revision: a.repo.Revision(), Policies: refs(deleted)}, nil
}

// DeleteAllPolicies empties the repository.
func (a *Agent) DeleteAllPolicies(ctx context.Context) (*api.PolicyResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var deleted []*policy.Policy
	err := a.changePolicy(func() error {
		_, deleted = a.repo.DeleteAll()
		return nil
	})
	if err != nil {
		return nil, err
	}
	a.log.Info("all policies deleted", "count", len(deleted), "revision", a.repo.Revision())
	return &api.PolicyResult{Revision: a.repo.Revision(), Policies: refs(deleted)}, nil
}

// parseDPort reads `80`, `80/TCP`, `8/ICMP`.
func parseDPort(s string) (uint16, uint8, error) {
	portStr, protoStr, ok := strings.Cut(s, "/")
	if !ok {
		protoStr = "TCP"
	}
	var proto uint8
	switch strings.ToUpper(protoStr) {
	case "TCP":
		proto = mapstate.ProtoTCP
	case "UDP":
		proto = mapstate.ProtoUDP
	case "SCTP":
		proto = mapstate.ProtoSCTP
	case "ICMP":
		proto = mapstate.ProtoICMP
	default:
		return 0, 0, fmt.Errorf("--dport %q: protocol %q: want TCP, UDP, SCTP or ICMP", s, protoStr)
	}
	n, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || (n == 0 && proto != mapstate.ProtoICMP) {
		return 0, 0, fmt.Errorf("--dport %q: %q is not a port", s, portStr)
	}
	return uint16(n), proto, nil
}

// tracePeer builds one side of a trace from an endpoint id, labels or an
// address.
func (a *Agent) tracePeer(side string, epID uint32, lbls []string, ip string) (policy.TracePeer, error) {
	set := 0
	for _, b := range []bool{epID != 0, len(lbls) > 0, ip != ""} {
		if b {
			set++
		}
	}
	if set != 1 {
		return policy.TracePeer{}, badRequest(fmt.Errorf("trace: give exactly one of --%s-endpoint, --%s-labels, --%s-ip", side, side, side))
	}
	switch {
	case epID != 0:
		s, ok := a.eps[epID]
		if !ok {
			return policy.TracePeer{}, api.Errorf(http.StatusNotFound, "trace: %s endpoint %d: %v", side, epID, errNotFound)
		}
		pe := a.policyEndpoint(s)
		v := a.ipc.Lookup(s.ep.IPv4)
		return policy.TracePeer{Endpoint: &pe, IP: s.ep.IPv4, CIDRIdentity: identity.NumericIdentity(v.CIDRIdentity), InCluster: true}, nil
	case len(lbls) > 0:
		ls, err := parseLabels(lbls)
		if err != nil {
			return policy.TracePeer{}, err
		}
		return policy.TracePeer{Labels: ls, InCluster: true}, nil
	default:
		addr, err := netip.ParseAddr(ip)
		if err != nil || !addr.Is4() {
			return policy.TracePeer{}, badRequest(fmt.Errorf("trace: --%s-ip %q is not an IPv4 address", side, ip))
		}
		v := a.ipc.Lookup(addr)
		tp := policy.TracePeer{IP: addr, Identity: identity.NumericIdentity(v.Identity), CIDRIdentity: identity.NumericIdentity(v.CIDRIdentity), InCluster: v.InCluster}
		// An address of a local endpoint is that endpoint.
		for _, s := range a.eps {
			if s.ep.IPv4 == addr {
				pe := a.policyEndpoint(s)
				tp.Endpoint = &pe
			}
		}
		return tp, nil
	}
}

// TracePolicy explains the verdicts of a flow.
func (a *Agent) TracePolicy(ctx context.Context, req api.TraceRequest) (*policy.TraceResult, error) {
	port, proto, err := parseDPort(req.DPort)
	if err != nil {
		return nil, badRequest(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	src, err := a.tracePeer("src", req.SrcEndpoint, req.SrcLabels, req.SrcIP)
	if err != nil {
		return nil, err
	}
	dst, err := a.tracePeer("dst", req.DstEndpoint, req.DstLabels, req.DstIP)
	if err != nil {
		return nil, err
	}
	res, err := a.repo.Trace(policy.TraceRequest{From: src, To: dst, Port: port, Protocol: proto})
	if err != nil {
		return nil, badRequest(err)
	}
	return res, nil
}
