package policy

import (
	"net/netip"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
)

// The selector cache keeps, for every selector some rule uses, the set of
// known identities it selects (as Cilium's selectorcache does), and updates
// the sets when an identity comes or goes, so that resolving an endpoint
// never matches selectors against every identity.
//
// Its indexes keep every change proportional to what it touches, not to
// identities x selectors (10,000 CIDRs in policies make 10,000 CIDR
// identities and 10,000 CIDR selectors): CIDR selectors are found by their
// prefix, CIDR identities by prefix length, and each identity knows the
// selectors that hold it.

// identRecord is what the cache knows of one identity.
type identRecord struct {
	id         identity.NumericIdentity
	labels     labels.Labels // effective labels (see effectiveLabels)
	raw        labels.Labels
	class      idClass
	prefix     netip.Prefix // CIDR identities
	namedPorts []NamedPort
}

// idSelector is a selector the cache can hold.
type idSelector interface {
	key() string
	selects(*identRecord) bool
}

type cachedSelector struct {
	sel      idSelector
	selected map[identity.NumericIdentity]*identRecord
	refs     int
}

type selSet map[*cachedSelector]struct{}

type selectorCache struct {
	ids  map[identity.NumericIdentity]*identRecord
	sels map[string]*cachedSelector
	// byLabels finds the identity of a label set (policy trace).
	byLabels map[string]identity.NumericIdentity

	// cidrSels holds CIDR selectors by their prefix; otherSels the rest
	// (CIDR selectors only ever select CIDR identities).
	cidrSels  map[netip.Prefix]selSet
	otherSels selSet
	// cidrIDs holds CIDR identities by prefix length, then prefix.
	cidrIDs map[int]map[netip.Prefix]*identRecord
	// memberOf holds, for each identity, the selectors selecting it.
	memberOf map[identity.NumericIdentity]selSet
}

func newSelectorCache() *selectorCache {
	return &selectorCache{
		ids:       map[identity.NumericIdentity]*identRecord{},
		sels:      map[string]*cachedSelector{},
		byLabels:  map[string]identity.NumericIdentity{},
		cidrSels:  map[netip.Prefix]selSet{},
		otherSels: selSet{},
		cidrIDs:   map[int]map[netip.Prefix]*identRecord{},
		memberOf:  map[identity.NumericIdentity]selSet{},
	}
}

func (c *selectorCache) set(cs *cachedSelector, r *identRecord) {
	cs.selected[r.id] = r
	m := c.memberOf[r.id]
	if m == nil {
		m = selSet{}
		c.memberOf[r.id] = m
	}
	m[cs] = struct{}{}
}

func (c *selectorCache) unset(cs *cachedSelector, id identity.NumericIdentity) {
	delete(cs.selected, id)
	if m := c.memberOf[id]; m != nil {
		delete(m, cs)
		if len(m) == 0 {
			delete(c.memberOf, id)
		}
	}
}

// cidrCandidates calls fn for each known CIDR identity whose prefix lies
// within p.
func (c *selectorCache) cidrCandidates(p netip.Prefix, fn func(*identRecord)) {
	for bits, byPrefix := range c.cidrIDs {
		if bits < p.Bits() {
			continue
		}
		// Few sub-prefixes of this length: look each up; else scan.
		if extra := bits - p.Bits(); extra <= 8 && 1<<extra < len(byPrefix) {
			subPrefixes(p, bits, func(q netip.Prefix) {
				if r, ok := byPrefix[q]; ok {
					fn(r)
				}
			})
			continue
		}
		for q, r := range byPrefix {
			if prefixWithin(q, p) {
				fn(r)
			}
		}
	}
}

// subPrefixes calls fn for every prefix of length bits within p.
func subPrefixes(p netip.Prefix, bits int, fn func(netip.Prefix)) {
	n := 1 << (bits - p.Bits())
	a := p.Addr()
	for i := 0; i < n; i++ {
		q := netip.PrefixFrom(a, bits)
		fn(q)
		a = nextPrefixAddr(a, bits)
	}
}

// nextPrefixAddr adds one at bit position bits of a (the next prefix of
// that length).
func nextPrefixAddr(a netip.Addr, bits int) netip.Addr {
	b := a.AsSlice()
	i := bits - 1
	for i >= 0 {
		byteIdx, bit := i/8, 7-uint(i%8)
		if b[byteIdx]&(1<<bit) == 0 {
			b[byteIdx] |= 1 << bit
			break
		}
		b[byteIdx] &^= 1 << bit
		i--
	}
	out, _ := netip.AddrFromSlice(b)
	return out
}

// acquire returns the cached selection of sel, computing it on first use.
func (c *selectorCache) acquire(sel idSelector) *cachedSelector {
	k := sel.key()
	if cs, ok := c.sels[k]; ok {
		cs.refs++
		return cs
	}
	cs := &cachedSelector{sel: sel, selected: map[identity.NumericIdentity]*identRecord{}, refs: 1}
	if cidr, ok := sel.(*cidrSelector); ok {
		c.cidrCandidates(cidr.prefix, func(r *identRecord) {
			if sel.selects(r) {
				c.set(cs, r)
			}
		})
		set := c.cidrSels[cidr.prefix]
		if set == nil {
			set = selSet{}
			c.cidrSels[cidr.prefix] = set
		}
		set[cs] = struct{}{}
	} else {
		for _, r := range c.ids {
			if sel.selects(r) {
				c.set(cs, r)
			}
		}
		c.otherSels[cs] = struct{}{}
	}
	c.sels[k] = cs
	return cs
}

func (c *selectorCache) release(cs *cachedSelector) {
	cs.refs--
	if cs.refs > 0 {
		return
	}
	delete(c.sels, cs.sel.key())
	if cidr, ok := cs.sel.(*cidrSelector); ok {
		if set := c.cidrSels[cidr.prefix]; set != nil {
			delete(set, cs)
			if len(set) == 0 {
				delete(c.cidrSels, cidr.prefix)
			}
		}
	} else {
		delete(c.otherSels, cs)
	}
	for id := range cs.selected {
		c.unset(cs, id)
	}
}

func (c *selectorCache) upsert(r *identRecord) {
	if old, ok := c.ids[r.id]; ok {
		delete(c.byLabels, old.raw.String())
		c.dropCIDR(old)
	}
	c.ids[r.id] = r
	c.byLabels[r.raw.String()] = r.id
	if r.class == classCIDR && r.prefix.IsValid() {
		m := c.cidrIDs[r.prefix.Bits()]
		if m == nil {
			m = map[netip.Prefix]*identRecord{}
			c.cidrIDs[r.prefix.Bits()] = m
		}
		m[r.prefix] = r
	}
	// Selectors that held the identity may no longer; the candidates that
	// may hold it now are the non-CIDR selectors and, for a CIDR identity,
	// the CIDR selectors of the prefixes holding it.
	check := func(cs *cachedSelector) {
		if cs.sel.selects(r) {
			c.set(cs, r)
		} else {
			c.unset(cs, r.id)
		}
	}
	for cs := range c.memberOf[r.id] {
		check(cs)
	}
	for cs := range c.otherSels {
		check(cs)
	}
	if r.class == classCIDR && r.prefix.IsValid() {
		for bits := r.prefix.Bits(); bits >= 0; bits-- {
			q, _ := r.prefix.Addr().Prefix(bits)
			for cs := range c.cidrSels[q] {
				check(cs)
			}
		}
	}
}

func (c *selectorCache) dropCIDR(r *identRecord) {
	if r.class != classCIDR || !r.prefix.IsValid() {
		return
	}
	if m := c.cidrIDs[r.prefix.Bits()]; m != nil && m[r.prefix] == r {
		delete(m, r.prefix)
		if len(m) == 0 {
			delete(c.cidrIDs, r.prefix.Bits())
		}
	}
}

func (c *selectorCache) remove(id identity.NumericIdentity) {
	old, ok := c.ids[id]
	if !ok {
		return
	}
	delete(c.byLabels, old.raw.String())
	delete(c.ids, id)
	c.dropCIDR(old)
	for cs := range c.memberOf[id] {
		delete(cs.selected, id)
	}
	delete(c.memberOf, id)
}

// mostSpecificCIDR returns the CIDR identity of the most specific known
// policy prefix holding addr, as the ipcache would.
func (c *selectorCache) mostSpecificCIDR(addr netip.Addr) (*identRecord, bool) {
	for bits := addr.BitLen(); bits >= 0; bits-- {
		if m := c.cidrIDs[bits]; m != nil {
			q, _ := addr.Prefix(bits)
			if r, ok := m[q]; ok {
				return r, true
			}
		}
	}
	return nil, false
}
