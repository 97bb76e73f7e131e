package agent

import (
	"context"
	"fmt"
	"net/http"
	"sort"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// BPFPolicy reads an endpoint's policy map from the kernel.
func (a *Agent) BPFPolicy(ctx context.Context, id uint32) (*api.BPFPolicy, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.eps[id]; !ok {
		return nil, api.Errorf(http.StatusNotFound, "endpoint %d: %v", id, errNotFound)
	}
	ms, err := a.dp.ReadPolicy(id)
	if err != nil {
		return nil, err
	}
	out := &api.BPFPolicy{Endpoint: id, Capacity: a.dp.PolicyMapMaxEntries(), Entries: []api.BPFPolicyEntry{}}
	for _, k := range ms.Keys() {
		e := ms[k]
		be := api.BPFPolicyEntry{
			Identity: k.Identity, Direction: "ingress", Protocol: mapstate.ProtoName(k.Protocol),
			Verdict: "allow", ProxyPort: e.ProxyPort, Cookie: e.Cookie,
		}
		if k.Egress {
			be.Direction = "egress"
		}
		if e.Deny {
			be.Verdict = "deny"
		} else if e.ProxyPort != 0 {
			be.Verdict = "redirect"
		}
		switch lo, hi := k.PortRange(); {
		case k.Protocol == mapstate.ProtoAny || k.PortPrefixLen == 0:
			be.Ports = "any"
		case lo == hi:
			be.Ports = fmt.Sprint(lo)
		default:
			be.Ports = fmt.Sprintf("%d-%d", lo, hi)
		}
		if o, ok := a.repo.Origin(e.Cookie); ok {
			be.Rule = o.String()
		}
		lookup := k.Identity
		if lookup >= identity.LocalScope+identity.CIDRInClusterOffset {
			lookup -= identity.CIDRInClusterOffset
		}
		if ident := a.ids.Lookup(lookup); ident != nil {
			be.Labels = ident.Labels
		}
		out.Entries = append(out.Entries, be)
	}
	return out, nil
}

// BPFIPCache reads the kernel's ipcache.
func (a *Agent) BPFIPCache(ctx context.Context) ([]api.IPCacheEntry, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	kern, err := a.dp.ListIPCache()
	if err != nil {
		return nil, err
	}
	sources := map[string]string{}
	for _, e := range a.ipc.List() {
		sources[e.Prefix.String()] = e.Source
	}
	out := []api.IPCacheEntry{}
	for p, v := range kern {
		out = append(out, api.IPCacheEntry{
			Prefix: p.String(), Identity: identity.NumericIdentity(v.Identity),
			CIDRIdentity: identity.NumericIdentity(v.CIDRIdentity), InCluster: v.InCluster,
			Source: sources[p.String()],
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Prefix < out[j].Prefix })
	return out, nil
}

// BPFCT reads the kernel's conntrack map.
func (a *Agent) BPFCT(ctx context.Context) ([]api.CTEntry, error) {
	entries, err := a.dp.ListCT()
	if err != nil {
		return nil, err
	}
	if entries == nil {
		entries = []api.CTEntry{}
	}
	return entries, nil
}

// ListIdentities lists identities, reserved ones included.
func (a *Agent) ListIdentities(ctx context.Context) []api.Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	count := map[identity.NumericIdentity]int{}
	for _, s := range a.eps {
		count[s.ep.Identity]++
	}
	out := []api.Identity{}
	for _, id := range a.ids.List() {
		out = append(out, api.Identity{ID: id.ID, Labels: id.Labels, Reserved: id.ID.IsReserved(), Endpoints: count[id.ID]})
	}
	return out
}

// Status reports the health of each part.
func (a *Agent) Status(ctx context.Context) api.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := api.Status{Healthy: true, Version: a.cfg.Version}
	add := func(name string, ok bool, format string, args ...any) {
		st.Parts = append(st.Parts, api.Part{Name: name, Healthy: ok, State: fmt.Sprintf(format, args...)})
		st.Healthy = st.Healthy && ok
	}
	if c, err := a.dp.ReadCounters(); err != nil {
		add("datapath", false, "maps unreadable: %v", err)
	} else {
		var drops uint64
		for _, m := range c.Dropped {
			for _, n := range m {
				drops += n
			}
		}
		add("datapath", true, "ok: eBPF programs on TCX, maps pinned in %s; %d packets forwarded, %d dropped",
			a.cfg.BPFFSDir, c.Forwarded["ingress"]+c.Forwarded["egress"], drops)
	}
	broken := 0
	for _, s := range a.eps {
		if s.resolved == nil {
			broken++
		}
	}
	add("endpoints", broken == 0, "%d endpoints, %d without policy; pool %s (%d addresses used)", len(a.eps), broken, a.cfg.IPv4Pool, a.pool.Used())
	user := 0
	for _, id := range a.ids.List() {
		if !id.ID.IsReserved() {
			user++
		}
	}
	add("identities", true, "%d identities (and 6 reserved)", user)
	add("policy", true, "revision %d, %d policies, enforcement %s", a.repo.Revision(), len(a.repo.List()), a.cfg.EnablePolicy)
	return st
}
