package agent

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/membrane-net/membrane/pkg/endpoint"
	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/ipcache"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy"
	"github.com/membrane-net/membrane/pkg/state"
)

// restore rebuilds the agent from its state file and brings the kernel in
// line, writing only differences, so enforcement never stops.
func (a *Agent) restore(st *state.State) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nextID = st.NextEndpointID
	endpoint.DeleteSpares(a.spares.tag)
	// Endpoints an earlier agent died creating: remove what it made.
	for _, p := range st.Pending {
		a.log.Warn("cleaning up an endpoint the previous agent did not finish", "endpoint", p.ID, "interface", p.Interface)
		if err := endpoint.DeleteHostLink(p.Interface); err != nil {
			a.log.Warn("delete interface", "interface", p.Interface, "error", err)
		}
		if err := a.dp.RemoveEndpoint(p.ID, 0); err != nil {
			a.log.Warn("remove pins", "endpoint", p.ID, "error", err)
		}
	}
	restored := append([]*identity.Identity{}, st.Identities...)
	for _, c := range st.CIDRIdentities {
		restored = append(restored, &identity.Identity{ID: c.ID, Refs: 1,
			Labels: labels.New(labels.Label{Source: labels.SourceCIDR, Key: c.Prefix})})
	}
	if err := a.ids.Restore(restored); err != nil {
		return err
	}
	// Policies, as they were imported.
	var pols []*policy.Policy
	for _, sp := range st.Policies {
		p, err := policy.ParseObject(sp.File, sp.Document, sp.Object)
		if err != nil {
			return fmt.Errorf("stored policy from %s document %d: %w", sp.File, sp.Document, err)
		}
		pols = append(pols, p)
	}
	if err := a.repo.Restore(pols, st.Revision); err != nil {
		return fmt.Errorf("stored policies: %w", err)
	}
	// What was read needs no writing back.
	a.stored = map[string]*policy.Policy{}
	for _, p := range a.repo.List() {
		a.stored[state.PolicyFileName(p.Kind, p.Namespace, p.Name)] = p
	}
	for _, sep := range st.Endpoints {
		a.eps[sep.ID] = &epState{ep: *sep}
		a.names.Store(sep.ID, sep.Name)
		a.ifnames.Store(sep.ID, sep.Interface)
		if err := a.pool.Reserve(sep.IPv4, fmt.Sprintf("endpoint %d", sep.ID)); err != nil {
			return fmt.Errorf("endpoint %d: %w", sep.ID, err)
		}
	}
	// CIDR identities of the stored policies: their numbers come back
	// with the identities.
	for _, id := range a.ids.List() {
		for _, l := range id.Labels {
			if l.Source == labels.SourceCIDR {
				if p, err := netip.ParsePrefix(l.Key); err == nil {
					a.cidrIDs[p] = id.ID
				}
			}
		}
	}
	if err := a.syncCIDRIdentities(); err != nil {
		return err
	}
	a.upsertAllIdentities()

	// The ipcache: what the kernel holds, then only the differences.
	existing, err := a.dp.ListIPCache()
	if err != nil {
		return err
	}
	a.ipc.Adopt(existing)
	if err := a.ensureHostDevice(); err != nil {
		return err
	}
	if err := a.syncHostAddrs(); err != nil {
		return err
	}

	// Endpoints whose interface is gone are removed; the others are
	// taken over with their pins.
	for _, id := range sortedIDs(a.eps) {
		s := a.eps[id]
		idx := endpoint.HostLinkIndex(s.ep.Interface)
		if idx == 0 {
			a.log.Warn("endpoint interface is gone, removing the endpoint", "endpoint", id, "interface", s.ep.Interface)
			a.forgetEndpoint(s)
			continue
		}
		s.ep.IfIndex = idx
		if err := a.ipc.UpsertSecurity(netip.PrefixFrom(s.ep.IPv4, 32), ipcache.Security{Identity: s.ep.Identity, InCluster: true, Source: "endpoint"}); err != nil {
			return err
		}
	}
	if err := a.ipc.SetCIDRs(a.cidrIDs); err != nil {
		return err
	}
	if err := a.ipc.Sync(); err != nil {
		return err
	}
	for _, id := range sortedIDs(a.eps) {
		s := a.eps[id]
		res, err := a.repo.Resolve(a.policyEndpoint(s))
		if err != nil {
			return fmt.Errorf("endpoint %d: resolve policy: %w", id, err)
		}
		if err := a.dp.RestoreEndpoint(a.dpEndpoint(s), res.MapState); err != nil {
			return err
		}
		s.resolved, s.revision = res, a.repo.Revision()
		a.l7.set(id, res)
	}
	a.syncSocketRule()
	pinned, err := a.dp.PinnedEndpoints()
	if err != nil {
		return err
	}
	for _, id := range pinned {
		if _, ok := a.eps[id]; !ok {
			a.log.Info("removing pins of an unknown endpoint", "endpoint", id)
			if err := a.dp.RemoveEndpoint(id, 0); err != nil {
				a.log.Warn("remove stale endpoint pins", "endpoint", id, "error", err)
			}
		}
	}
	if len(st.Endpoints) > 0 || len(st.Policies) > 0 {
		a.log.Info("restored state", "endpoints", len(a.eps), "policies", len(pols), "revision", a.repo.Revision())
	}
	return a.persist()
}

// forgetEndpoint drops an endpoint whose interface is gone (restore only:
// no policy regeneration yet).
func (a *Agent) forgetEndpoint(s *epState) {
	if err := a.dp.RemoveEndpoint(s.ep.ID, 0); err != nil {
		a.log.Warn("remove endpoint pins", "endpoint", s.ep.ID, "error", err)
	}
	a.pool.Release(s.ep.IPv4)
	if _, err := a.ids.Release(context.Background(), s.ep.Identity); err != nil {
		a.log.Warn("release identity", "identity", s.ep.Identity, "error", err)
	}
	delete(a.eps, s.ep.ID)
	a.names.Delete(s.ep.ID)
	a.ifnames.Delete(s.ep.ID)
}

// upsertAllIdentities tells the repository of every identity.
func (a *Agent) upsertAllIdentities() {
	for _, id := range a.ids.List() {
		a.repo.UpsertIdentity(a.selectable(id))
	}
}

// selectable describes an identity for the policy repository: a CIDR
// identity with its prefix, a user identity with the named ports of its
// endpoints.
func (a *Agent) selectable(id *identity.Identity) policy.SelectableIdentity {
	si := policy.SelectableIdentity{ID: id.ID, Labels: id.Labels}
	for _, l := range id.Labels {
		if l.Source != labels.SourceCIDR {
			continue
		}
		if p, err := netip.ParsePrefix(l.Key); err == nil && a.cidrIDs[p.Masked()] == id.ID {
			si.Prefix = p.Masked()
		}
	}
	if si.Prefix.IsValid() {
		return si // a CIDR identity: no endpoint has it
	}
	seen := map[string]bool{}
	for _, s := range a.eps {
		if s.ep.Identity != id.ID {
			continue
		}
		for _, np := range s.ep.NamedPorts {
			k := fmt.Sprintf("%s/%d/%s", np.Name, np.Port, np.Protocol)
			if seen[k] {
				continue
			}
			seen[k] = true
			proto, _ := endpoint.ProtocolNumber(np.Protocol)
			si.NamedPorts = append(si.NamedPorts, policy.NamedPort{Name: np.Name, Port: np.Port, Protocol: proto})
		}
	}
	return si
}
