package agent

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"sort"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/datapath"
	"github.com/membrane-net/membrane/pkg/endpoint"
	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

func sortedIDs(m map[uint32]*epState) []uint32 {
	ids := make([]uint32, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func (a *Agent) policyEndpoint(s *epState) policy.Endpoint {
	pe := policy.Endpoint{ID: uint64(s.ep.ID), Identity: s.ep.Identity, Labels: s.ep.Labels}
	for _, np := range s.ep.NamedPorts {
		proto, _ := endpoint.ProtocolNumber(np.Protocol)
		pe.NamedPorts = append(pe.NamedPorts, policy.NamedPort{Name: np.Name, Port: np.Port, Protocol: proto})
	}
	return pe
}

func (a *Agent) dpEndpoint(s *epState) datapath.Endpoint {
	audit := s.ep.Audit || a.cfg.Audit
	return datapath.Endpoint{
		ID: s.ep.ID, IfIndex: s.ep.IfIndex, Identity: uint32(s.ep.Identity), IPv4: s.ep.IPv4,
		AuditIngress: audit, AuditEgress: audit,
	}
}

// resolveAll computes the policy of every endpoint and checks that each
// fits its map, writing nothing. The caller holds mu.
func (a *Agent) resolveAll() (map[uint32]*policy.Resolved, error) {
	out := make(map[uint32]*policy.Resolved, len(a.eps))
	var over []string
	for _, id := range sortedIDs(a.eps) {
		s := a.eps[id]
		res, err := a.repo.Resolve(a.policyEndpoint(s))
		if err != nil {
			return nil, fmt.Errorf("endpoint %d (%s): resolve policy: %w", id, s.ep.Name, err)
		}
		if n, max := len(res.MapState), a.dp.PolicyMapMaxEntries(); n > max {
			over = append(over, fmt.Sprintf("endpoint %d (%s): %d policy map entries, capacity %d", id, s.ep.Name, n, max))
		}
		out[id] = res
	}
	if len(over) > 0 {
		return nil, &api.StatusError{
			Code:    http.StatusUnprocessableEntity,
			Err:     fmt.Errorf("policy does not fit the policy map of %d endpoint(s): %s", len(over), over[0]),
			Details: over,
		}
	}
	return out, nil
}

// apply writes resolved policies to the kernel, then resets the tracked
// connections whose verdict the new policy changes, so that a new deny
// also applies to connections already open. The caller holds mu.
func (a *Agent) apply(resolved map[uint32]*policy.Resolved) error {
	rev := a.repo.Revision()
	var changed []uint32
	for _, id := range sortedIDs(a.eps) {
		res, ok := resolved[id]
		if !ok {
			continue
		}
		s := a.eps[id]
		if res == s.resolved {
			// The repository gave back what this endpoint enforces
			// already (its resolution is memoized): nothing to diff.
			s.revision = rev
			continue
		}
		n, restrictive, err := a.dp.SyncPolicy(id, res.MapState)
		if err != nil {
			return fmt.Errorf("endpoint %d: %w", id, err)
		}
		if restrictive {
			changed = append(changed, id)
		}
		if n > 0 {
			a.log.Debug("policy map updated", "endpoint", id, "writes", n, "entries", len(res.MapState), "revision", rev)
		}
		s.resolved, s.revision = res, rev
		a.l7.set(id, res)
	}
	if len(changed) > 0 {
		a.flushChangedConnections(changed)
	}
	a.syncSocketRule()
	return nil
}

// regenerate resolves and applies the policy of every endpoint.
func (a *Agent) regenerate() error {
	res, err := a.resolveAll()
	if err != nil {
		return err
	}
	return a.apply(res)
}

// flushChangedConnections deletes the conntrack entries of the given
// endpoints whose verdict under the current policy differs from the one
// they were created with (allowed -> denied, or a different L7 redirect).
func (a *Agent) flushChangedConnections(ids []uint32) {
	want := map[uint32]mapstate.MapState{}
	for _, id := range ids {
		if s, ok := a.eps[id]; ok && s.resolved != nil {
			want[id] = s.resolved.MapState
		}
	}
	n, err := a.dp.FlushCT(func(e datapath.CTEntry) bool {
		ms, ok := want[e.EndpointID]
		if !ok || e.Audit || e.ProxyUpstream {
			return false
		}
		src, dst, dir := e.Original()
		egress := dir == "egress"
		peerAddr := src.Addr()
		port := dst.Port()
		if egress {
			peerAddr = dst.Addr()
		}
		v := a.ipc.Lookup(peerAddr)
		peer := mapstate.Peer{Identity: identity.NumericIdentity(v.Identity), CIDRIdentity: identity.NumericIdentity(v.CIDRIdentity), InCluster: v.InCluster}
		if e.Protocol == mapstate.ProtoICMP {
			port = 8 // echo: the only ICMP tracked as a connection
		}
		d := ms.Decide(peer, egress, e.Protocol, port)
		// A connection that now needs L7 checks must start again through
		// the proxy; one on the proxy stays there (the proxy then applies
		// the new policy to its next request).
		return !d.Allowed || (e.ProxyPort == 0 && d.ProxyPort != 0)
	})
	if err != nil {
		a.log.Warn("reset connections after a policy change", "error", err)
	} else if n > 0 {
		a.log.Info("reset connections the new policy no longer allows", "connections", n)
	}
}

// syncCIDRIdentities gives every CIDR of the repository an identity and
// marks those of CIDRs no policy names any more as stale. It works on the
// difference between the repository's prefixes now and at its last run,
// so its cost grows with the change, not with all the CIDRs. New
// identities are told to the repository; the caller then regenerates and,
// after that, calls publishCIDRs (so map entries exist before addresses
// map to them). Only IPv4 prefixes get identities: the datapath enforces
// IPv4 only (IPv6 is dropped whatever the policy says).
func (a *Agent) syncCIDRIdentities() error {
	next := a.repo.Prefixes()
	v4 := next[:0]
	for _, p := range next {
		if p.Addr().Is4() {
			v4 = append(v4, p.Masked())
		}
	}
	next = v4
	if next == nil {
		next = []netip.Prefix{} // synced: seen, and empty
	}
	var added, removed []netip.Prefix
	if a.synced == nil {
		// The first run (after a restart): every known CIDR identity no
		// policy needs is stale.
		added = next
		want := make(map[netip.Prefix]bool, len(next))
		for _, p := range next {
			want[p] = true
		}
		for p, id := range a.cidrIDs {
			if !want[p] {
				a.stale[p] = id
			}
		}
	} else {
		added, removed = policy.PrefixDiff(a.synced, next)
	}
	var upserts []policy.SelectableIdentity
	for _, p := range added {
		if id, ok := a.stale[p]; ok {
			// Named again before it was released: it stays.
			delete(a.stale, p)
			a.unpublished[p] = id
			continue
		}
		if id, ok := a.cidrIDs[p]; ok {
			a.unpublished[p] = id
			continue
		}
		id, _, err := a.ids.Allocate(context.Background(), labels.New(labels.Label{Source: labels.SourceCIDR, Key: p.String()}))
		if err != nil {
			// The identities allocated so far are kept and told to the
			// repository; the next run sees their prefixes as added
			// again and finds them.
			a.repo.UpsertIdentities(upserts)
			return fmt.Errorf("identity for CIDR %s: %w", p, err)
		}
		a.cidrIDs[p] = id.ID
		a.unpublished[p] = id.ID
		a.cidrDirty = true
		upserts = append(upserts, policy.SelectableIdentity{ID: id.ID, Labels: id.Labels, Prefix: p})
	}
	for _, p := range removed {
		if id, ok := a.cidrIDs[p]; ok {
			a.stale[p] = id
			delete(a.unpublished, p)
		}
	}
	a.repo.UpsertIdentities(upserts)
	a.synced = next
	return nil
}

// publishCIDRs points the ipcache at the new CIDR identities and away from
// the stale ones, then releases the stale ones and removes their entries
// from the policy maps.
func (a *Agent) publishCIDRs() error {
	remove := make([]netip.Prefix, 0, len(a.stale))
	for p := range a.stale {
		remove = append(remove, p)
	}
	if err := a.ipc.UpdateCIDRs(a.unpublished, remove); err != nil {
		return err
	}
	clear(a.unpublished)
	if len(a.stale) == 0 {
		return nil
	}
	gone := make([]identity.NumericIdentity, 0, len(a.stale))
	for p, id := range a.stale {
		delete(a.cidrIDs, p)
		a.cidrDirty = true
		if _, err := a.ids.Release(context.Background(), id); err != nil {
			a.log.Warn("release CIDR identity", "cidr", p, "error", err)
		}
		gone = append(gone, id)
	}
	clear(a.stale)
	a.repo.RemoveIdentities(gone)
	return a.regenerate()
}
