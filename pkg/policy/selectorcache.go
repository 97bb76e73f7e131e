package policy

import (
	"net/netip"
	"slices"
	"strings"

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
// identities and 10,000 CIDR selectors):
//   - CIDR selectors are found by their prefix, among the prefix lengths
//     some selector has; CIDR identities by prefix length, then prefix;
//   - label selectors are found by one requirement a label must meet (the
//     label key and value of an In, or the key of an Exists), so an
//     identity is only matched against the selectors one of its labels
//     names (and the few selectors with no such requirement);
//   - endpoints' and reserved identities are found by label key, so a new
//     label selector is only matched against the identities that have the
//     key it needs.
//
// Every change of a selection stamps the selector with a new generation
// (gen), which lets Resolve tell whether a result it memoized still holds.

// identRecord is what the cache knows of one identity. Records are not
// changed once in the cache: an update replaces the record.
type identRecord struct {
	id         identity.NumericIdentity
	labels     labels.Labels // effective labels (see effectiveLabels)
	raw        labels.Labels
	class      idClass
	prefix     netip.Prefix // CIDR identities
	namedPorts []NamedPort
}

// same reports whether two records say the same of an identity.
func (r *identRecord) same(o *identRecord) bool {
	if r.id != o.id || r.class != o.class || r.prefix != o.prefix || !r.raw.Equal(o.raw) || !r.labels.Equal(o.labels) ||
		len(r.namedPorts) != len(o.namedPorts) {
		return false
	}
	for i := range r.namedPorts {
		if r.namedPorts[i] != o.namedPorts[i] {
			return false
		}
	}
	return true
}

// add puts a record in the selection.
func (cs *cachedSelector) add(r *identRecord) {
	if cs.selected == nil {
		cs.selected = map[identity.NumericIdentity]*identRecord{}
	}
	cs.selected[r.id] = r
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
	// gen is the cache generation of the last change of selected: an
	// identity added or removed, or the record of one replaced.
	gen uint64
	// idx is where the selector is indexed.
	idx selIndex
}

// selIndex says where a selector is indexed: by the CIDR of a CIDR
// selector; by label key and values (In), by label key (Exists); among
// the selectors matched against every identity (scan) or every endpoint
// identity (scanUser); nowhere (a selector selecting nothing).
type selIndex struct {
	kind   selIndexKind
	key    string
	values []string
	prefix netip.Prefix
}

type selIndexKind uint8

const (
	idxNone selIndexKind = iota
	idxCIDR
	idxIn
	idxExists
	idxScan
	idxScanUser
)

type selSet map[*cachedSelector]struct{}

type labelKV struct{ key, value string }

type selectorCache struct {
	ids map[identity.NumericIdentity]*identRecord
	// sels holds the selectors by key, but the CIDR selectors without
	// except (10,000 CIDRs in a policy make as many): cidrSels has them.
	sels map[string]*cachedSelector
	// byLabels finds the identity of a label set (policy trace); CIDR
	// identities are found by their prefix instead.
	byLabels map[string]identity.NumericIdentity

	// Selectors: CIDR selectors by prefix, with how many there are of
	// each length ([0] IPv4, [1] IPv6); label selectors by the label a
	// requirement needs.
	cidrSels    map[netip.Prefix]cidrSelList
	cidrSelLens [2][129]int
	selByKV     map[labelKV]selSet
	selByKey    map[string]selSet
	selScan     selSet
	selScanUser selSet

	// Identities: CIDR identities by prefix length, then prefix; the
	// others by the keys of their effective labels. cidrKeys counts the
	// label keys of CIDR identities but their cidr:PREFIX label, so that a
	// label selector needing one (or a key that is a prefix) knows it must
	// look at them too.
	cidrIDs  [129]map[netip.Prefix]*identRecord
	idsByKey map[string]map[identity.NumericIdentity]*identRecord
	cidrKeys map[string]int

	// gen counts changes; cs.gen and the fields below take its value.
	gen uint64
	// idsGen: the last change of any identity.
	idsGen uint64
	// namedGen: the last change of the union of named ports.
	namedGen uint64
	// namedCount counts the identities defining each named port; named
	// is their union.
	namedCount map[NamedPort]int
	named      []NamedPort
}

func newSelectorCache() *selectorCache {
	return &selectorCache{
		ids:         map[identity.NumericIdentity]*identRecord{},
		sels:        map[string]*cachedSelector{},
		byLabels:    map[string]identity.NumericIdentity{},
		cidrSels:    map[netip.Prefix]cidrSelList{},
		selByKV:     map[labelKV]selSet{},
		selByKey:    map[string]selSet{},
		selScan:     selSet{},
		selScanUser: selSet{},
		idsByKey:    map[string]map[identity.NumericIdentity]*identRecord{},
		cidrKeys:    map[string]int{},
		namedCount:  map[NamedPort]int{},
	}
}

func (c *selectorCache) next() uint64 {
	c.gen++
	return c.gen
}

func family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 0
	}
	return 1
}

// indexOf chooses where to index a selector: under the most selective
// requirement a label must meet.
func indexOf(sel idSelector) selIndex {
	switch s := sel.(type) {
	case *cidrSelector:
		return selIndex{kind: idxCIDR, prefix: s.prefix}
	case clusterSelector:
		return selIndex{kind: idxScanUser}
	case *labelSelector:
		if s.none {
			return selIndex{kind: idxNone}
		}
		best, score := -1, 0
		for i, r := range s.sel.Requirements {
			// In beats Exists, other keys beat the namespace (which every
			// endpoint has), and fewer values beat more.
			sc := 0
			switch r.Operator {
			case labels.OpIn:
				sc = 4 << 20
			case labels.OpExists:
				sc = 2 << 20
			default:
				continue
			}
			if r.Key != nsKey {
				sc += 1 << 20
			}
			sc -= len(r.Values)
			if sc > score {
				best, score = i, sc
			}
		}
		if best < 0 {
			if s.userOnly {
				return selIndex{kind: idxScanUser}
			}
			return selIndex{kind: idxScan}
		}
		r := s.sel.Requirements[best]
		if r.Operator == labels.OpIn {
			return selIndex{kind: idxIn, key: r.Key, values: r.Values}
		}
		return selIndex{kind: idxExists, key: r.Key}
	}
	return selIndex{kind: idxScan}
}

func addTo[K comparable](m map[K]selSet, k K, cs *cachedSelector) {
	set := m[k]
	if set == nil {
		set = selSet{}
		m[k] = set
	}
	set[cs] = struct{}{}
}

func dropFrom[K comparable](m map[K]selSet, k K, cs *cachedSelector) {
	if set := m[k]; set != nil {
		delete(set, cs)
		if len(set) == 0 {
			delete(m, k)
		}
	}
}

func (c *selectorCache) indexSelector(cs *cachedSelector) {
	switch ix := cs.idx; ix.kind {
	case idxCIDR:
		l := c.cidrSels[ix.prefix]
		if l.first == nil {
			l.first = cs
		} else {
			l.more = append(l.more, cs)
		}
		c.cidrSels[ix.prefix] = l
		c.cidrSelLens[family(ix.prefix)][ix.prefix.Bits()]++
	case idxIn:
		for _, v := range ix.values {
			addTo(c.selByKV, labelKV{ix.key, v}, cs)
		}
	case idxExists:
		addTo(c.selByKey, ix.key, cs)
	case idxScan:
		c.selScan[cs] = struct{}{}
	case idxScanUser:
		c.selScanUser[cs] = struct{}{}
	}
}

func (c *selectorCache) unindexSelector(cs *cachedSelector) {
	switch ix := cs.idx; ix.kind {
	case idxCIDR:
		l := c.cidrSels[ix.prefix]
		if l.first == cs {
			l.first = nil
			if len(l.more) > 0 {
				l.first = l.more[len(l.more)-1]
				l.more = l.more[:len(l.more)-1]
			}
		} else if i := slices.Index(l.more, cs); i >= 0 {
			l.more[i] = l.more[len(l.more)-1]
			l.more[len(l.more)-1] = nil
			l.more = l.more[:len(l.more)-1]
		}
		if l.first == nil {
			delete(c.cidrSels, ix.prefix)
		} else {
			c.cidrSels[ix.prefix] = l
		}
		c.cidrSelLens[family(ix.prefix)][ix.prefix.Bits()]--
	case idxIn:
		for _, v := range ix.values {
			dropFrom(c.selByKV, labelKV{ix.key, v}, cs)
		}
	case idxExists:
		dropFrom(c.selByKey, ix.key, cs)
	case idxScan:
		delete(c.selScan, cs)
	case idxScanUser:
		delete(c.selScanUser, cs)
	}
}

// candidates calls fn for every selector that may select the identity of
// record r (a selector may come more than once).
func (c *selectorCache) candidates(r *identRecord, fn func(*cachedSelector)) {
	if r.class == classCIDR && r.prefix.IsValid() {
		lens := &c.cidrSelLens[family(r.prefix)]
		for bits := r.prefix.Bits(); bits >= 0; bits-- {
			if lens[bits] == 0 {
				continue
			}
			q, _ := r.prefix.Addr().Prefix(bits)
			if l, ok := c.cidrSels[q]; ok {
				fn(l.first)
				for _, cs := range l.more {
					fn(cs)
				}
			}
		}
	}
	for _, l := range r.labels {
		if set := c.selByKV[labelKV{l.Key, l.Value}]; len(set) > 0 {
			for cs := range set {
				fn(cs)
			}
		}
		if set := c.selByKey[l.Key]; len(set) > 0 {
			for cs := range set {
				fn(cs)
			}
		}
	}
	if len(c.selScan) > 0 {
		for cs := range c.selScan {
			fn(cs)
		}
	}
	if r.class == classUser && len(c.selScanUser) > 0 {
		for cs := range c.selScanUser {
			fn(cs)
		}
	}
}

// cidrCandidates calls fn for each known CIDR identity whose prefix lies
// within p.
func (c *selectorCache) cidrCandidates(p netip.Prefix, fn func(*identRecord)) {
	for bits := p.Bits(); bits < len(c.cidrIDs); bits++ {
		byPrefix := c.cidrIDs[bits]
		if len(byPrefix) == 0 {
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

// identityCandidates calls fn for every identity a new selector may
// select (an identity may come more than once).
func (c *selectorCache) identityCandidates(cs *cachedSelector, fn func(*identRecord)) {
	switch ix := cs.idx; ix.kind {
	case idxNone:
	case idxCIDR:
		c.cidrCandidates(ix.prefix, fn)
	case idxIn, idxExists:
		for _, r := range c.idsByKey[ix.key] {
			fn(r)
		}
		if c.cidrKeys[ix.key] > 0 || isPrefixKey(ix.key) {
			for _, r := range c.ids {
				if r.class == classCIDR {
					fn(r)
				}
			}
		}
	case idxScanUser:
		for _, r := range c.ids {
			if r.class == classUser {
				fn(r)
			}
		}
	default:
		for _, r := range c.ids {
			fn(r)
		}
	}
}

// acquire returns the cached selection of sel, computing it on first use.
func (c *selectorCache) acquire(sel idSelector) *cachedSelector {
	var k string
	plain, isPlain := plainCIDR(sel)
	if isPlain {
		if cs := c.cidrSels[plain].plain(); cs != nil {
			cs.refs++
			return cs
		}
	} else {
		k = sel.key()
		if cs, ok := c.sels[k]; ok {
			cs.refs++
			return cs
		}
	}
	cs := &cachedSelector{sel: sel, refs: 1, gen: c.next(), idx: indexOf(sel)}
	c.identityCandidates(cs, func(r *identRecord) {
		if sel.selects(r) {
			cs.add(r)
		}
	})
	c.indexSelector(cs)
	if !isPlain {
		c.sels[k] = cs
	}
	return cs
}

// plainCIDR returns the prefix of a CIDR selector without except.
func plainCIDR(sel idSelector) (netip.Prefix, bool) {
	if cidr, ok := sel.(*cidrSelector); ok && len(cidr.except) == 0 {
		return cidr.prefix, true
	}
	return netip.Prefix{}, false
}

func (c *selectorCache) release(cs *cachedSelector) {
	cs.refs--
	if cs.refs > 0 {
		return
	}
	if _, ok := plainCIDR(cs.sel); !ok {
		delete(c.sels, cs.sel.key())
	}
	c.unindexSelector(cs)
}

// selectors calls fn for every cached selector.
func (c *selectorCache) selectors(fn func(*cachedSelector)) {
	for _, cs := range c.sels {
		fn(cs)
	}
	for _, l := range c.cidrSels {
		for _, cs := range append([]*cachedSelector{l.first}, l.more...) {
			if _, ok := plainCIDR(cs.sel); ok {
				fn(cs)
			}
		}
	}
}

// size is the number of cached selectors.
func (c *selectorCache) size() int {
	n := 0
	c.selectors(func(*cachedSelector) { n++ })
	return n
}

// cidrSelList is the CIDR selectors of one prefix.
type cidrSelList struct {
	first *cachedSelector
	more  []*cachedSelector
}

// plain returns the selector without except, if any.
func (l cidrSelList) plain() *cachedSelector {
	if l.first == nil {
		return nil
	}
	if _, ok := plainCIDR(l.first.sel); ok {
		return l.first
	}
	for _, cs := range l.more {
		if _, ok := plainCIDR(cs.sel); ok {
			return cs
		}
	}
	return nil
}

// indexIdentity adds (add) or removes a record from the identity indexes.
func (c *selectorCache) indexIdentity(r *identRecord, add bool) {
	if r.class == classCIDR {
		if r.prefix.IsValid() {
			m := c.cidrIDs[r.prefix.Bits()]
			switch {
			case add:
				if m == nil {
					m = map[netip.Prefix]*identRecord{}
					c.cidrIDs[r.prefix.Bits()] = m
				}
				m[r.prefix] = r
			case m[r.prefix] == r:
				delete(m, r.prefix)
			}
		}
		for _, l := range r.labels {
			if l.Source == labels.SourceCIDR && isPrefixKey(l.Key) {
				continue // selectors needing it look at CIDR identities
			}
			if add {
				c.cidrKeys[l.Key]++
			} else if c.cidrKeys[l.Key]--; c.cidrKeys[l.Key] <= 0 {
				delete(c.cidrKeys, l.Key)
			}
		}
	} else {
		if add {
			c.byLabels[r.raw.String()] = r.id
		} else if k := r.raw.String(); c.byLabels[k] == r.id {
			delete(c.byLabels, k)
		}
		for _, l := range r.labels {
			m := c.idsByKey[l.Key]
			if add {
				if m == nil {
					m = map[identity.NumericIdentity]*identRecord{}
					c.idsByKey[l.Key] = m
				}
				m[r.id] = r
			} else if m != nil && m[r.id] == r {
				delete(m, r.id)
				if len(m) == 0 {
					delete(c.idsByKey, l.Key)
				}
			}
		}
	}
	if len(r.namedPorts) > 0 {
		for _, np := range r.namedPorts {
			if add {
				c.namedCount[np]++
			} else if c.namedCount[np]--; c.namedCount[np] <= 0 {
				delete(c.namedCount, np)
			}
		}
		c.named = make([]NamedPort, 0, len(c.namedCount))
		for np := range c.namedCount {
			c.named = append(c.named, np)
		}
		c.namedGen = c.gen
	}
}

// upsert adds or replaces the record of an identity and updates the
// selections; it reports whether anything changed.
func (c *selectorCache) upsert(r *identRecord) bool {
	old := c.ids[r.id]
	if old != nil && old.same(r) {
		return false
	}
	g := c.next()
	c.idsGen = g
	if old != nil {
		c.indexIdentity(old, false)
	}
	c.ids[r.id] = r
	c.indexIdentity(r, true)
	// The selectors that may have held the identity, and those that may
	// hold it now.
	check := func(cs *cachedSelector) {
		prev, held := cs.selected[r.id]
		switch {
		case cs.sel.selects(r):
			if prev != r {
				cs.add(r)
				cs.gen = g
			}
		case held:
			delete(cs.selected, r.id)
			cs.gen = g
		}
	}
	if old != nil {
		c.candidates(old, check)
	}
	c.candidates(r, check)
	return true
}

// remove forgets an identity; it reports whether it knew it.
func (c *selectorCache) remove(id identity.NumericIdentity) bool {
	old, ok := c.ids[id]
	if !ok {
		return false
	}
	g := c.next()
	c.idsGen = g
	delete(c.ids, id)
	c.indexIdentity(old, false)
	c.candidates(old, func(cs *cachedSelector) {
		if _, held := cs.selected[id]; held {
			delete(cs.selected, id)
			cs.gen = g
		}
	})
	return true
}

// namedPorts returns the union of every identity's named ports.
func (c *selectorCache) namedPorts() []NamedPort { return c.named }

// identityOf returns the identity of a label set (policy trace).
func (c *selectorCache) identityOf(ls labels.Labels) identity.NumericIdentity {
	if id, ok := c.byLabels[ls.String()]; ok {
		return id
	}
	if pf := prefixFromLabels(ls); pf.IsValid() {
		if r, ok := c.cidrIDs[pf.Bits()][pf]; ok && r.raw.Equal(ls) {
			return r.id
		}
		for _, r := range c.ids {
			if r.class == classCIDR && r.raw.Equal(ls) {
				return r.id
			}
		}
	}
	return identity.Unknown
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

// isPrefixKey reports whether a label key is a prefix, as the cidr: labels
// of CIDR identities are (IPv6 with '-' for ':').
func isPrefixKey(k string) bool {
	if len(k) == 0 || !strings.Contains(k, "/") {
		return false
	}
	_, err := netip.ParsePrefix(strings.ReplaceAll(k, "-", ":"))
	return err == nil
}
