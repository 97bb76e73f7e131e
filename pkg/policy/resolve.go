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
// and the identities the repository knows.
func (r *Repository) Resolve(ep Endpoint) (*Resolved, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	res, err := r.resolveLocked(&ep)
	if err != nil {
		return nil, fmt.Errorf("resolve policy of endpoint %d: %w", ep.ID, err)
	}
	return res, nil
}

func (r *Repository) resolveLocked(ep *Endpoint) (*Resolved, error) {
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
	for _, egress := range []bool{false, true} {
		b := newBuilder(r, ep, egress)
		enforced := r.mode == EnforcementAlways
		allowReqs, denyReqs := requirements(selected, egress)
		for _, s := range selected {
			if s.spec.defaultDeny[dirOf(egress)] {
				enforced = true
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
		if err := b.finish(enforced, res); err != nil {
			return nil, err
		}
		if egress {
			res.EgressEnforced = enforced
		} else {
			res.IngressEnforced = enforced
		}
	}
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
func (r *Repository) peerIDs(ip *instPeer, reqs []*labelSelector, fn func(identity.NumericIdentity, *identRecord)) {
	p := ip.p
	if p.kind == peerSelector && len(reqs) > 0 {
		// Requirements narrow the selector: wildcards stop being wildcards.
		src := ip.cs.selected
		if ip.wildcard {
			src = r.cache.ids
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
		fn(id, r.cache.ids[id])
	}
	if ip.cs == nil {
		return
	}
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
