package policy

import (
	"net/netip"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy/l7"
)

// The evaluator decides one flow rule by rule, without a map state: the
// rules selecting the subject, each matched against the peer and the port.
// Trace uses it to say which rules decide; tests hold it against the map
// state that Resolve computes.

// flowPeer is the other end of a flow as the rules see it.
type flowPeer struct {
	id     identity.NumericIdentity // 0: a label set without identity
	labels labels.Labels            // effective labels
	class  idClass
	// cidr is the most specific policy prefix holding the address (its
	// CIDR identity is cidrID); invalid when none does or no address.
	cidr      netip.Prefix
	cidrID    identity.NumericIdentity
	inCluster bool
	named     []NamedPort
}

// ruleHit is a rule that matches a flow.
type ruleHit struct {
	ii   *instItem
	l7   bool // matched only through ports with L7 rules
	http []*l7.HTTPRule
}

type evalResult struct {
	enforced       bool
	denies, allows []ruleHit
}

func (e evalResult) denied() bool  { return len(e.denies) > 0 }
func (e evalResult) allowed() bool { return !e.denied() && (len(e.allows) > 0 || !e.enforced) }

// redirect reports whether the flow goes to the L7 proxy: it is allowed
// and every rule allowing it has L7 rules.
func (e evalResult) redirect() bool {
	if e.denied() || len(e.allows) == 0 {
		return false
	}
	for _, h := range e.allows {
		if !h.l7 {
			return false
		}
	}
	return true
}

func (r *Repository) evaluate(subjLabels labels.Labels, subjID identity.NumericIdentity, subjNamed []NamedPort,
	egress bool, peer *flowPeer, proto uint8, port uint16) evalResult {
	if r.mode == EnforcementNever {
		return evalResult{}
	}
	selected := r.selecting(subjLabels, subjID)
	res := evalResult{enforced: r.mode == EnforcementAlways}
	allowReqs, denyReqs := requirements(selected, egress)
	for _, s := range selected {
		if s.spec.defaultDeny[dirOf(egress)] {
			res.enforced = true
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
			hit, ok := r.itemMatches(ii, reqs, egress, subjNamed, peer, proto, port)
			if !ok {
				continue
			}
			if ii.it.deny {
				res.denies = append(res.denies, hit)
			} else {
				res.allows = append(res.allows, hit)
			}
		}
	}
	return res
}

func (r *Repository) itemMatches(ii *instItem, reqs []*labelSelector, egress bool, subjNamed []NamedPort,
	peer *flowPeer, proto uint8, port uint16) (ruleHit, bool) {
	hit := ruleHit{ii: ii}
	matchedPlain, matchedL7 := false, false
	tryPorts := func(unionNamed bool) {
		if ii.it.ports == nil {
			matchedPlain = true
			return
		}
		named := subjNamed
		if egress {
			named = peer.named
			if unionNamed {
				named = r.allNamedPorts()
			}
		}
		for _, ps := range ii.it.ports {
			if !ps.covers(proto, port, named) {
				continue
			}
			if ps.l7 {
				matchedL7 = true
				hit.http = append(hit.http, ps.http...)
			} else {
				matchedPlain = true
			}
		}
	}
	if ii.it.peers == nil {
		tryPorts(true)
	}
	for i := range ii.peers {
		ip := &ii.peers[i]
		var peerReqs []*labelSelector
		if ip.p.kind == peerSelector {
			peerReqs = reqs
		}
		if ok, wildcard := peerMatches(ip, peerReqs, peer); ok {
			tryPorts(wildcard || ip.p.kind == peerCIDR)
		}
	}
	if !matchedPlain && !matchedL7 {
		return hit, false
	}
	hit.l7 = !matchedPlain
	if !hit.l7 {
		hit.http = nil
	}
	return hit, true
}

// peerMatches reports whether a rule's peer matches, and whether it matched
// as a wildcard (identity 0 in the map).
func peerMatches(ip *instPeer, reqs []*labelSelector, peer *flowPeer) (ok, wildcard bool) {
	p := ip.p
	switch p.kind {
	case peerSelector:
		if ip.wildcard && len(reqs) == 0 {
			return true, true
		}
		if !p.sel.matches(peer.labels, peer.class) {
			return false, false
		}
		for _, q := range reqs {
			if !q.matches(peer.labels, peer.class) {
				return false, false
			}
		}
		return true, false
	case peerEntity:
		if p.entity == EntityAll {
			return true, true
		}
		return entityMatches(p.entity, peer.id, peer.class), false
	case peerCIDR:
		if peer.inCluster && !p.anyAddress {
			return false, false
		}
		return p.cidr.holds(peer.cidr), false
	}
	return false, false
}
