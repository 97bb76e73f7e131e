// Package mapstate owns the desired state of one endpoint's policy map: the
// entries the policy engine computes and the datapath writes, with the
// lookup precedence of the kernel program restated in Go (Decide), so that
// policy trace, tests and fuzzers can ask what the kernel will do.
package mapstate

import (
	"fmt"
	"slices"
	"sort"

	"github.com/membrane-net/membrane/pkg/identity"
)

// Protocol numbers the datapath knows.
const (
	ProtoAny  uint8 = 0
	ProtoICMP uint8 = 1
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
)

// ProtoName names a protocol number.
func ProtoName(p uint8) string {
	switch p {
	case ProtoAny:
		return "ANY"
	case ProtoICMP:
		return "ICMP"
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoSCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", p)
}

// Key is one policy map key: traffic with a peer identity, in a direction,
// of a protocol (ProtoAny: every protocol, and then Port must be 0), to the
// ports that share the first PortPrefixLen bits of Port (16: one port, 0:
// every port). For ICMP the port is the ICMP type.
type Key struct {
	Identity      identity.NumericIdentity `json:"identity"`
	Egress        bool                     `json:"egress"`
	Protocol      uint8                    `json:"protocol"`
	Port          uint16                   `json:"port"`
	PortPrefixLen uint8                    `json:"portPrefixLen"`
}

// PrefixLen is the key's LPM prefix length in the kernel map: 32 bits of
// identity, 8 of direction, 8 of protocol, then port bits.
func (k Key) PrefixLen() uint32 {
	if k.Protocol == ProtoAny {
		return 40
	}
	return 48 + uint32(k.PortPrefixLen)
}

// Valid reports why a key cannot be written.
func (k Key) Valid() error {
	if k.PortPrefixLen > 16 {
		return fmt.Errorf("port prefix length %d > 16", k.PortPrefixLen)
	}
	if k.Protocol == ProtoAny && (k.PortPrefixLen != 0 || k.Port != 0) {
		return fmt.Errorf("a port needs a protocol")
	}
	if k.Port&^portMask(k.PortPrefixLen) != 0 {
		return fmt.Errorf("port %d has bits outside its /%d prefix", k.Port, k.PortPrefixLen)
	}
	return nil
}

func portMask(prefixLen uint8) uint16 {
	if prefixLen == 0 {
		return 0
	}
	return ^uint16(0) << (16 - prefixLen)
}

// CoversPort reports whether the key matches protocol proto and port.
func (k Key) CoversPort(proto uint8, port uint16) bool {
	if k.Protocol == ProtoAny {
		return true
	}
	return k.Protocol == proto && port&portMask(k.PortPrefixLen) == k.Port
}

// Covers reports whether every packet k2 matches also matches k (same
// identity and direction, equal or broader protocol and ports).
func (k Key) Covers(k2 Key) bool {
	if k.Identity != k2.Identity || k.Egress != k2.Egress {
		return false
	}
	if k.Protocol == ProtoAny {
		return true
	}
	if k.Protocol != k2.Protocol || k.PortPrefixLen > k2.PortPrefixLen {
		return false
	}
	return k2.Port&portMask(k.PortPrefixLen) == k.Port
}

// PortRange returns the first and last port the key matches.
func (k Key) PortRange() (lo, hi uint16) {
	if k.Protocol == ProtoAny || k.PortPrefixLen == 0 {
		return 0, 65535
	}
	return k.Port, k.Port | ^portMask(k.PortPrefixLen)
}

func (k Key) String() string {
	dir := "ingress"
	if k.Egress {
		dir = "egress"
	}
	port := "any"
	if k.Protocol != ProtoAny {
		switch lo, hi := k.PortRange(); {
		case k.PortPrefixLen == 0:
		case lo == hi:
			port = fmt.Sprint(lo)
		default:
			port = fmt.Sprintf("%d-%d", lo, hi)
		}
	}
	return fmt.Sprintf("%s identity=%s %s/%s", dir, k.Identity, port, ProtoName(k.Protocol))
}

// Entry is the value of a key.
type Entry struct {
	Deny bool `json:"deny,omitempty"`
	// ProxyPort, when not 0, sends the flow to the L7 proxy on that port.
	ProxyPort uint16 `json:"proxyPort,omitempty"`
	// Cookie names the rule the entry comes from (see the policy engine);
	// the datapath copies it into its events.
	Cookie uint32 `json:"cookie,omitempty"`
}

// MapState is the desired content of one endpoint's policy map.
type MapState map[Key]Entry

// PortPrefix is one aligned block of ports.
type PortPrefix struct {
	Port      uint16
	PrefixLen uint8
}

// PortRangePrefixes splits [lo, hi] into the fewest aligned prefixes; a
// range of every port is one prefix of length 0.
func PortRangePrefixes(lo, hi uint16) []PortPrefix {
	if lo > hi {
		return nil
	}
	var out []PortPrefix
	cur := uint32(lo)
	end := uint32(hi)
	for cur <= end {
		size := uint32(1)
		plen := uint8(16)
		// Grow the block while it stays aligned and inside the range.
		for plen > 0 {
			next := size << 1
			if cur%next != 0 || cur+next-1 > end {
				break
			}
			size = next
			plen--
		}
		out = append(out, PortPrefix{Port: uint16(cur), PrefixLen: plen})
		cur += size
	}
	return out
}

// Change is one write to a policy map: an upsert, or a delete when Delete.
type Change struct {
	Key    Key
	Entry  Entry
	Delete bool
}

// Diff returns the writes that turn old into new: upserts of new or changed
// entries first, then deletes. Applied in this order, every flow the change
// does not touch keeps its verdict at every moment: before the deletes its
// most specific entry is either its old or its new one, and both agree.
func Diff(old, new MapState) []Change {
	var ups, dels []Change
	for k, e := range new {
		if o, ok := old[k]; !ok || o != e {
			ups = append(ups, Change{Key: k, Entry: e})
		}
	}
	for k := range old {
		if _, ok := new[k]; !ok {
			dels = append(dels, Change{Key: k, Delete: true})
		}
	}
	sortChanges(ups)
	sortChanges(dels)
	return append(ups, dels...)
}

func sortChanges(cs []Change) {
	slices.SortFunc(cs, func(a, b Change) int {
		switch {
		case keyLess(a.Key, b.Key):
			return -1
		case keyLess(b.Key, a.Key):
			return 1
		}
		return 0
	})
}

func keyLess(a, b Key) bool {
	if a.Identity != b.Identity {
		return a.Identity < b.Identity
	}
	if a.Egress != b.Egress {
		return !a.Egress
	}
	if a.Protocol != b.Protocol {
		return a.Protocol < b.Protocol
	}
	if a.PortPrefixLen != b.PortPrefixLen {
		return a.PortPrefixLen < b.PortPrefixLen
	}
	return a.Port < b.Port
}

// Keys returns the keys in a stable order.
func (ms MapState) Keys() []Key {
	ks := make([]Key, 0, len(ms))
	for k := range ms {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return keyLess(ks[i], ks[j]) })
	return ks
}
