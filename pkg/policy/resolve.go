package policy

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy/l7"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// Resolved is the policy of one endpoint: its desired policy map, its L7
// policy, and whether it is in default deny in each direction.
type Resolved struct {
	MapState        mapstate.MapState
	L7              *l7.EndpointPolicy
	IngressEnforced bool
	EgressEnforced  bool
	// Revision is the policy revision the result reflects.
	Revision uint64
}

type resolvedEntryJSON struct {
	mapstate.Key
	mapstate.Entry
}

type resolvedL7JSON struct {
	l7.PortKey
	Selections []*l7.Selection `json:"selections"`
}

// MarshalJSON renders the map state and the L7 ports as lists in key
// order (their Go maps have struct keys, which JSON objects cannot have).
func (r *Resolved) MarshalJSON() ([]byte, error) {
	out := struct {
		Entries         []resolvedEntryJSON `json:"entries"`
		L7              []resolvedL7JSON    `json:"l7,omitempty"`
		IngressEnforced bool                `json:"ingressEnforced"`
		EgressEnforced  bool                `json:"egressEnforced"`
		Revision        uint64              `json:"revision"`
	}{IngressEnforced: r.IngressEnforced, EgressEnforced: r.EgressEnforced, Revision: r.Revision}
	for _, k := range r.MapState.Keys() {
		out.Entries = append(out.Entries, resolvedEntryJSON{k, r.MapState[k]})
	}
	if r.L7 != nil {
		keys := make([]l7.PortKey, 0, len(r.L7.Ports))
		for k := range r.L7.Ports {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			a, b := keys[i], keys[j]
			if a.Egress != b.Egress {
				return !a.Egress
			}
			if a.Protocol != b.Protocol {
				return a.Protocol < b.Protocol
			}
			return a.Port < b.Port
		})
		for _, k := range keys {
			out.L7 = append(out.L7, resolvedL7JSON{k, r.L7.Ports[k]})
		}
	}
	return json.Marshal(out)
}

// Resolve computes the policy of an endpoint from the rules that select it
// and the identities the repository knows. While nothing the result
// depends on changes (see memo.go), it returns the same *Resolved again,
// at almost no cost: a caller may skip an endpoint whose result is the
// pointer it already has. The result must not be modified; its Revision is
// the revision it was computed at.
func (r *Repository) Resolve(ep Endpoint) (*Resolved, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if res := r.memoized(&ep); res != nil {
		return res, nil
	}
	m := r.newMemo(&ep)
	res, err := r.resolveLocked(&ep, m)
	if err != nil {
		return nil, fmt.Errorf("resolve policy of endpoint %d: %w", ep.ID, err)
	}
	m.res = res
	r.remember(m)
	return res, nil
}

// resolveLocked computes the policy of an endpoint; it notes what it
// reads in m when m is not nil. The caller holds r.mu.
func (r *Repository) resolveLocked(ep *Endpoint, m *memo) (*Resolved, error) {
	res := &Resolved{
		MapState: mapstate.MapState{},
		L7:       &l7.EndpointPolicy{Ports: map[l7.PortKey][]*l7.Selection{}},
		Revision: r.revision,
	}
	if r.mode == EnforcementNever {
		res.MapState[mapstate.Key{Egress: false}] = mapstate.Entry{}
		res.MapState[mapstate.Key{Egress: true}] = mapstate.Entry{}
		return res, nil
	}
	selected := r.selecting(ep.Labels, ep.Identity)
	var deps *resolveDeps
	if m != nil {
		m.specs, deps = selected, &m.deps
	}
	// Both directions add their entries first, so that the map state is
	// made once at its size.
	var bs [2]*builder
	var enforced [2]bool
	for d, egress := range []bool{false, true} {
		b := newBuilder(r, ep, egress, selected)
		b.deps = deps
		bs[d] = b
		enforced[d] = r.mode == EnforcementAlways
		allowReqs, denyReqs := requirements(selected, egress)
		for _, s := range selected {
			if s.spec.defaultDeny[dirOf(egress)] {
				enforced[d] = true
			}
			for _, ii := range s.items {
				if ii.it.egress != egress {
					continue
				}
				reqs := allowReqs
				if ii.it.deny {
					reqs = denyReqs
				}
				if ii.it.knp {
					reqs = nil
				}
				b.addItem(ii, reqs)
			}
		}
	}
	res.MapState = make(mapstate.MapState, len(bs[0].entries)+len(bs[1].entries)+2)
	for d, b := range bs {
		if err := b.finish(enforced[d], res); err != nil {
			return nil, err
		}
		if m != nil {
			m.proxyFor[d] = b.proxyPort
		}
	}
	res.IngressEnforced, res.EgressEnforced = enforced[0], enforced[1]
	return res, nil
}

func dirOf(egress bool) int {
	if egress {
		return dirEgress
	}
	return dirIngress
}

// selecting returns the specs whose subject selects an endpoint: from the
// selector cache when the endpoint's identity is known with these labels,
// else by matching the labels.
func (r *Repository) selecting(lbls labels.Labels, id identity.NumericIdentity) []*instSpec {
	if rec, ok := r.cache.ids[id]; ok && id != identity.Unknown && rec.raw.Equal(lbls) {
		var out []*instSpec
		for _, s := range r.specs {
			if _, ok := s.subjectCS.selected[id]; ok {
				out = append(out, s)
			}
		}
		return out
	}
	class := classOf(id)
	eff := effectiveLabels(lbls, class)
	var out []*instSpec
	for _, s := range r.specs {
		if s.subject.matches(eff, class) {
			out = append(out, s)
		}
	}
	return out
}

// requirements collects the fromRequires (toRequires) of the allow and of
// the deny rules selecting an endpoint in a direction; Cilium adds each set
// to every endpoint selector of the rules of the same kind.
func requirements(specs []*instSpec, egress bool) (allow, deny []*labelSelector) {
	for _, s := range specs {
		for _, ii := range s.items {
			if ii.it.egress != egress {
				continue
			}
			if ii.it.deny {
				deny = append(deny, ii.it.requires...)
			} else {
				allow = append(allow, ii.it.requires...)
			}
		}
	}
	return allow, deny
}

// peerIDs calls fn for every map identity a peer stands for, with the
// identity's record when the repository knows it (nil for identity 0 and
// unknown reserved identities).
func (r *Repository) peerIDs(ip *instPeer, reqs []*labelSelector, deps *resolveDeps, fn func(identity.NumericIdentity, *identRecord)) {
	p := ip.p
	if p.kind == peerSelector && len(reqs) > 0 {
		// Requirements narrow the selector: wildcards stop being wildcards.
		src := ip.cs.selected
		if ip.wildcard {
			src = r.cache.ids
			if deps != nil {
				deps.allIDs = true
			}
		} else {
			deps.sel(ip.cs)
		}
		for id, rec := range src {
			if meetsAll(rec, reqs) {
				fn(id, rec)
			}
		}
		return
	}
	if ip.wildcard {
		fn(0, nil)
		return
	}
	for _, id := range ip.fixed {
		rec := r.cache.ids[id]
		deps.fixedID(id, rec)
		fn(id, rec)
	}
	if ip.cs == nil {
		return
	}
	deps.sel(ip.cs)
	for id, rec := range ip.cs.selected {
		fn(id, rec)
		if p.kind == peerCIDR && p.anyAddress {
			fn(id+identity.CIDRInClusterOffset, rec)
		}
	}
}

func meetsAll(rec *identRecord, reqs []*labelSelector) bool {
	for _, q := range reqs {
		if !q.selects(rec) {
			return false
		}
	}
	return true
}
