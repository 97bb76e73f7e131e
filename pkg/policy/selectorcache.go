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

type selectorCache struct {
	ids  map[identity.NumericIdentity]*identRecord
	sels map[string]*cachedSelector
	// byLabels finds the identity of a label set (policy trace).
	byLabels map[string]identity.NumericIdentity
}

func newSelectorCache() *selectorCache {
	return &selectorCache{
		ids:      map[identity.NumericIdentity]*identRecord{},
		sels:     map[string]*cachedSelector{},
		byLabels: map[string]identity.NumericIdentity{},
	}
}

// acquire returns the cached selection of sel, computing it on first use.
func (c *selectorCache) acquire(sel idSelector) *cachedSelector {
	k := sel.key()
	if cs, ok := c.sels[k]; ok {
		cs.refs++
		return cs
	}
	cs := &cachedSelector{sel: sel, selected: map[identity.NumericIdentity]*identRecord{}, refs: 1}
	for id, r := range c.ids {
		if sel.selects(r) {
			cs.selected[id] = r
		}
	}
	c.sels[k] = cs
	return cs
}

func (c *selectorCache) release(cs *cachedSelector) {
	cs.refs--
	if cs.refs <= 0 {
		delete(c.sels, cs.sel.key())
	}
}

func (c *selectorCache) upsert(r *identRecord) {
	if old, ok := c.ids[r.id]; ok {
		delete(c.byLabels, old.raw.String())
	}
	c.ids[r.id] = r
	c.byLabels[r.raw.String()] = r.id
	for _, cs := range c.sels {
		if cs.sel.selects(r) {
			cs.selected[r.id] = r
		} else {
			delete(cs.selected, r.id)
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
	for _, cs := range c.sels {
		delete(cs.selected, id)
	}
}

// mostSpecificCIDR returns the CIDR identity of the most specific known
// policy prefix holding addr, as the ipcache would.
func (c *selectorCache) mostSpecificCIDR(addr netip.Addr) (*identRecord, bool) {
	var best *identRecord
	for _, r := range c.ids {
		if r.class != classCIDR || !r.prefix.IsValid() || !r.prefix.Contains(addr) {
			continue
		}
		if best == nil || r.prefix.Bits() > best.prefix.Bits() {
			best = r
		}
	}
	return best, best != nil
}
