package policy

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/membrane-net/membrane/pkg/policy/l7"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// The parsed form of every policy kind: a policy is a list of specRules
// (Cilium's api.Rule; a Kubernetes NetworkPolicy is one), each selecting
// endpoints and holding ingress/egress items.

const (
	dirIngress = 0
	dirEgress  = 1
)

func dirName(egress bool) string {
	if egress {
		return "egress"
	}
	return "ingress"
}

// specRule is one rule: a subject selector, whether it puts its subjects in
// default deny per direction, and its items.
type specRule struct {
	path        string // "spec", "specs[1]", "[0]"
	description string
	subject     *labelSelector
	defaultDeny [2]bool // [dirIngress], [dirEgress]
	items       []*item
	labels      []string
}

// item is one ingress, ingressDeny, egress or egressDeny rule.
type item struct {
	path   string // spec.ingress[0]
	egress bool
	deny   bool
	// peers: nil selects every peer; non-nil and empty selects none.
	peers []peer
	// ports: nil matches every protocol and port (an L3-only rule).
	ports []portSpec
	// requires: fromRequires/toRequires, which constrain the endpoint
	// selectors of every rule of the same kind (allow or deny) that selects
	// the same endpoint, in this direction.
	requires []*labelSelector
	// knp: the item is a Kubernetes NetworkPolicy rule, which Cilium's
	// requirements do not constrain (Kubernetes semantics stay exact).
	knp bool
}

type peerKind uint8

const (
	peerSelector peerKind = iota // endpoints by labels
	peerEntity
	peerCIDR
)

type peer struct {
	kind   peerKind
	sel    *labelSelector // peerSelector
	entity string         // peerEntity
	cidr   *cidrSelector  // peerCIDR
	// anyAddress: the CIDR matches cluster addresses too (Kubernetes
	// ipBlock); Cilium's CIDR rules match only addresses outside the
	// cluster.
	anyAddress bool
}

func (p peer) String() string {
	switch p.kind {
	case peerEntity:
		return "entity " + p.entity
	case peerCIDR:
		if p.anyAddress {
			return "ipBlock " + p.cidr.String()
		}
		return "CIDR " + p.cidr.String()
	}
	return p.sel.String()
}

// portSpec is one port (or range, or named port, or ICMP type).
type portSpec struct {
	proto   uint8  // mapstate.ProtoAny: TCP, UDP and SCTP
	port    uint16 // with name == "" and not ICMP: 0 is every port
	endPort uint16 // 0: port alone
	name    string // a named port, resolved per endpoint
	// l7: the port has HTTP rules (http may still be empty: no rule
	// allows every request, the proxy only observes).
	l7   bool
	http []*l7.HTTPRule
}

func isICMP(proto uint8) bool { return proto == mapstate.ProtoICMP || proto == protoICMPv6 }

// protoICMPv6 is ICMPv6's protocol number (the datapath enforces IPv4 only
// for now).
const protoICMPv6 uint8 = 58

func (ps portSpec) String() string {
	proto := mapstate.ProtoName(ps.proto)
	if ps.proto == protoICMPv6 {
		proto = "ICMPv6"
	}
	switch {
	case isICMP(ps.proto):
		return fmt.Sprintf("%s type %d", proto, ps.port)
	case ps.name != "":
		return ps.name + "/" + proto
	case ps.port == 0:
		return "any/" + proto
	case ps.endPort > ps.port:
		return fmt.Sprintf("%d-%d/%s", ps.port, ps.endPort, proto)
	}
	return fmt.Sprintf("%d/%s", ps.port, proto)
}

// protos returns the protocols a port spec applies to.
func (ps portSpec) protos() []uint8 {
	if ps.proto == mapstate.ProtoAny {
		return []uint8{mapstate.ProtoTCP, mapstate.ProtoUDP, mapstate.ProtoSCTP}
	}
	return []uint8{ps.proto}
}

// covers reports whether the spec matches proto/port, with named ports
// resolved against named.
func (ps portSpec) covers(proto uint8, port uint16, named []NamedPort) bool {
	if isICMP(ps.proto) {
		return proto == ps.proto && port == ps.port
	}
	if ps.proto != mapstate.ProtoAny && ps.proto != proto {
		return false
	}
	if ps.proto == mapstate.ProtoAny && proto != mapstate.ProtoTCP && proto != mapstate.ProtoUDP && proto != mapstate.ProtoSCTP {
		return false
	}
	if ps.name != "" {
		for _, np := range named {
			if np.Name == ps.name && np.Port == port && np.Protocol == proto {
				return true
			}
		}
		return false
	}
	if ps.port == 0 {
		return true
	}
	end := ps.endPort
	if end < ps.port {
		end = ps.port
	}
	return port >= ps.port && port <= end
}

// prefixes returns the policy-map port prefixes of the spec for one
// protocol, with a named port resolved against named.
func (ps portSpec) prefixes(proto uint8, named []NamedPort) []mapstate.PortPrefix {
	if isICMP(ps.proto) {
		return []mapstate.PortPrefix{{Port: ps.port, PrefixLen: 16}}
	}
	if ps.name != "" {
		var out []mapstate.PortPrefix
		for _, np := range named {
			if np.Name == ps.name && np.Protocol == proto {
				out = append(out, mapstate.PortPrefix{Port: np.Port, PrefixLen: 16})
			}
		}
		return out
	}
	if ps.port == 0 {
		return []mapstate.PortPrefix{{}}
	}
	end := ps.endPort
	if end < ps.port {
		end = ps.port
	}
	return mapstate.PortRangePrefixes(ps.port, end)
}

// prefixesOf returns every CIDR a spec names.
func (s *specRule) prefixes(add func(netip.Prefix)) {
	for _, it := range s.items {
		for _, p := range it.peers {
			if p.kind == peerCIDR {
				add(p.cidr.prefix)
				for _, e := range p.cidr.except {
					add(e)
				}
			}
		}
	}
}

func (it *item) kindName() string {
	var b strings.Builder
	b.WriteString(dirName(it.egress))
	if it.deny {
		b.WriteString(" deny")
	}
	return b.String()
}
