package l7

import (
	"github.com/membrane-net/membrane/pkg/identity"
)

// Peer is the peer of a proxied connection as the ipcache describes it.
type Peer struct {
	Identity     identity.NumericIdentity
	CIDRIdentity identity.NumericIdentity // 0 when no policy CIDR holds the address
	InCluster    bool
}

// Selection is one set of HTTP rules and the peers it applies to. Rules
// are OR'ed; a selection with no rules allows every request.
type Selection struct {
	// AnyPeer: the rules apply to every peer.
	AnyPeer bool `json:"anyPeer,omitempty"`
	// Identities the rules apply to. A CIDR identity that only matches
	// cluster addresses is stored with identity.CIDRInClusterOffset added,
	// as in the policy map.
	Identities map[identity.NumericIdentity]bool `json:"identities,omitempty"`
	Rules      []*HTTPRule                       `json:"-"`
	// Origin names the policy rule the selection comes from.
	Origin string `json:"origin"`
}

func (s *Selection) selects(p Peer) bool {
	if s.AnyPeer || s.Identities[p.Identity] {
		return true
	}
	if p.CIDRIdentity != 0 {
		cid := p.CIDRIdentity
		if p.InCluster {
			cid += identity.CIDRInClusterOffset
		}
		return s.Identities[cid]
	}
	return false
}

// PortKey names a port that L7 rules apply to.
type PortKey struct {
	Egress   bool   `json:"egress"`
	Protocol uint8  `json:"protocol"`
	Port     uint16 `json:"port"`
}

// EndpointPolicy is the L7 policy of one endpoint: for each redirected
// port, the selections that apply. The zero value allows nothing.
type EndpointPolicy struct {
	Ports map[PortKey][]*Selection
}

// Verdict is the outcome of Check.
type Verdict struct {
	Allowed bool
	// Rule is the rule that allowed the request, "" when denied.
	Rule string
	// Origin of the deciding selection, "" when none applied.
	Origin  string
	Actions []HeaderAction
}

// Check decides a request arriving through the proxy: allowed when any rule
// of any selection that applies to the peer matches it.
func (p *EndpointPolicy) Check(k PortKey, peer Peer, req *Request) Verdict {
	if p == nil {
		return Verdict{}
	}
	for _, s := range p.Ports[k] {
		if !s.selects(peer) {
			continue
		}
		if len(s.Rules) == 0 {
			return Verdict{Allowed: true, Rule: "any HTTP request", Origin: s.Origin}
		}
		for _, r := range s.Rules {
			if ok, actions := r.Matches(req); ok {
				return Verdict{Allowed: true, Rule: r.String(), Origin: s.Origin, Actions: actions}
			}
		}
	}
	return Verdict{}
}
