package mapstate

import "github.com/membrane-net/membrane/pkg/identity"

// Match says which lookup decided, as the datapath reports it.
type Match uint8

// Lookups, as bpf/common.h numbers them.
const (
	MatchNone     Match = 0
	MatchIdentity Match = 1
	MatchAny      Match = 2
	MatchCIDR     Match = 3
)

// Peer is what the ipcache says of the peer's address.
type Peer struct {
	Identity identity.NumericIdentity
	// CIDRIdentity is the identity of the most specific policy CIDR holding
	// the address, 0 when none.
	CIDRIdentity identity.NumericIdentity
	// InCluster is set when the address is an endpoint's or the host's.
	InCluster bool
}

// Decision is the verdict of Decide.
type Decision struct {
	Allowed   bool
	Denied    bool // an explicit deny entry, rather than no entry
	ProxyPort uint16
	Cookie    uint32
	Key       Key // the deciding entry's key, when an entry decided
	Match     Match
}

// Lookup returns the most specific entry for identity id, as the kernel's
// LPM trie does.
func (ms MapState) Lookup(id identity.NumericIdentity, egress bool, proto uint8, port uint16) (Key, Entry, bool) {
	var best Key
	var bestE Entry
	found := false
	try := func(k Key) {
		if e, ok := ms[k]; ok && (!found || k.PrefixLen() > best.PrefixLen()) {
			best, bestE, found = k, e, true
		}
	}
	try(Key{Identity: id, Egress: egress})
	if proto != ProtoAny {
		for plen := uint8(0); plen <= 16; plen++ {
			try(Key{Identity: id, Egress: egress, Protocol: proto, Port: port & portMask(plen), PortPrefixLen: plen})
		}
	}
	return best, bestE, found
}

// Decide restates the datapath's lookup precedence (bpf/membrane.c,
// policy_decide): a deny from any of the three lookups wins; otherwise the
// most specific allow decides, identity before CIDR before any-identity on
// a tie; otherwise default deny.
func (ms MapState) Decide(peer Peer, egress bool, proto uint8, port uint16) Decision {
	type found struct {
		k Key
		e Entry
		m Match
	}
	var fs []found
	if k, e, ok := ms.Lookup(peer.Identity, egress, proto, port); ok {
		fs = append(fs, found{k, e, MatchIdentity})
	}
	if peer.CIDRIdentity != 0 {
		cid := peer.CIDRIdentity
		if peer.InCluster {
			cid += identity.CIDRInClusterOffset
		}
		if k, e, ok := ms.Lookup(cid, egress, proto, port); ok {
			fs = append(fs, found{k, e, MatchCIDR})
		}
	}
	if k, e, ok := ms.Lookup(0, egress, proto, port); ok {
		fs = append(fs, found{k, e, MatchAny})
	}
	var best *found
	for i := range fs {
		f := &fs[i]
		if f.e.Deny {
			return Decision{Denied: true, Cookie: f.e.Cookie, Key: f.k, Match: f.m}
		}
		if best == nil || f.k.PrefixLen() > best.k.PrefixLen() {
			best = f
		}
	}
	if best == nil {
		return Decision{}
	}
	return Decision{Allowed: true, ProxyPort: best.e.ProxyPort, Cookie: best.e.Cookie, Key: best.k, Match: best.m}
}
