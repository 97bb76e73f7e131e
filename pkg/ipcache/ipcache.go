// Package ipcache owns the mapping from addresses to identities that the
// datapath's ipcache map holds. It merges two kinds of prefixes into one
// LPM map: security prefixes (endpoint addresses, the host's addresses,
// world as 0.0.0.0/0; later the endpoints of other hosts) give an address's
// security identity, and policy CIDRs give its CIDR identity. Every written
// entry carries both: the security identity of the longest security prefix
// holding it and the CIDR identity of the longest policy CIDR holding it,
// so that one lookup answers both questions for any address.
package ipcache

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"

	"github.com/membrane-net/membrane/pkg/datapath"
	"github.com/membrane-net/membrane/pkg/identity"
)

// Writer is where entries go: the datapath, or a fake in tests. Upserts
// are written before deletes.
type Writer interface {
	ApplyIPCache(upserts []datapath.IPCacheEntry, deletes []netip.Prefix) error
}

// Security is what a security prefix says.
type Security struct {
	Identity identity.NumericIdentity
	// InCluster: an endpoint, the host or a node; false for world.
	InCluster bool
	// Source says who owns the entry ("endpoint", "host", "world", ...).
	Source string
}

// IPCache is the merged view. Its methods are safe for concurrent use.
type IPCache struct {
	mu      sync.Mutex
	w       Writer
	sec     map[netip.Prefix]Security
	cidr    map[netip.Prefix]identity.NumericIdentity
	written map[netip.Prefix]datapath.IPCacheValue
}

// WorldPrefix is the fallback entry.
var WorldPrefix = netip.MustParsePrefix("0.0.0.0/0")

// New returns an ipcache holding only world.
func New(w Writer) *IPCache {
	return &IPCache{
		w:       w,
		sec:     map[netip.Prefix]Security{WorldPrefix: {Identity: identity.World, Source: "world"}},
		cidr:    map[netip.Prefix]identity.NumericIdentity{},
		written: map[netip.Prefix]datapath.IPCacheValue{},
	}
}

// Adopt tells the cache what the kernel map already holds (after a
// restart), so that Sync writes only the differences.
func (c *IPCache) Adopt(existing map[netip.Prefix]datapath.IPCacheValue) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.written = map[netip.Prefix]datapath.IPCacheValue{}
	for p, v := range existing {
		c.written[p] = v
	}
}

// UpsertSecurity sets the security identity of a prefix.
func (c *IPCache) UpsertSecurity(p netip.Prefix, s Security) error {
	p = p.Masked()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sec[p] = s
	return c.syncUnder(p)
}

// DeleteSecurity removes a security prefix (world cannot be removed).
func (c *IPCache) DeleteSecurity(p netip.Prefix) error {
	p = p.Masked()
	if p == WorldPrefix {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.sec[p]; !ok {
		return nil
	}
	delete(c.sec, p)
	return c.syncUnder(p)
}

// SetCIDRs replaces the set of policy CIDRs and their identities.
func (c *IPCache) SetCIDRs(cidrs map[netip.Prefix]identity.NumericIdentity) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var remove []netip.Prefix
	for p := range c.cidr {
		if _, ok := cidrs[p]; !ok {
			remove = append(remove, p)
		}
	}
	return c.updateCIDRs(cidrs, remove)
}

// UpdateCIDRs adds or changes the policy CIDRs of set and removes those of
// remove (a prefix in both is set), leaving the others as they are: its
// cost grows with the change, not with the number of CIDRs.
func (c *IPCache) UpdateCIDRs(set map[netip.Prefix]identity.NumericIdentity, remove []netip.Prefix) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.updateCIDRs(set, remove)
}

func (c *IPCache) updateCIDRs(set map[netip.Prefix]identity.NumericIdentity, remove []netip.Prefix) error {
	changed := map[netip.Prefix]bool{}
	for _, p := range remove {
		p = p.Masked()
		if _, ok := c.cidr[p]; ok {
			delete(c.cidr, p)
			changed[p] = true
		}
	}
	for p, id := range set {
		p = p.Masked()
		if old, ok := c.cidr[p]; !ok || old != id {
			c.cidr[p] = id
			changed[p] = true
		}
	}
	if len(changed) == 0 {
		return nil
	}
	return c.syncKeys(c.keysUnderAny(changed))
}

// Sync writes every entry that differs from what was written.
func (c *IPCache) Sync() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.syncKeys(nil)
}

// Lookup answers for one address as the datapath would.
func (c *IPCache) Lookup(a netip.Addr) datapath.IPCacheValue {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.valueFor(netip.PrefixFrom(a, a.BitLen()))
}

// Entry is one row of the merged view.
type Entry struct {
	Prefix netip.Prefix
	datapath.IPCacheValue
	Source string
}

// List returns the merged view, by prefix.
func (c *IPCache) List() []Entry {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []Entry
	for _, p := range c.keys() {
		s, _ := c.longestSec(p)
		src := s.Source
		if _, ok := c.sec[p]; !ok {
			src = "policy-cidr"
		}
		out = append(out, Entry{Prefix: p, IPCacheValue: c.valueFor(p), Source: src})
	}
	return out
}

func (c *IPCache) keys() []netip.Prefix {
	seen := make(map[netip.Prefix]bool, len(c.sec)+len(c.cidr))
	for p := range c.sec {
		seen[p] = true
	}
	for p := range c.cidr {
		seen[p] = true
	}
	out := make([]netip.Prefix, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Addr().Compare(out[j].Addr()); c != 0 {
			return c < 0
		}
		return out[i].Bits() < out[j].Bits()
	})
	return out
}

func (c *IPCache) longestSec(p netip.Prefix) (Security, bool) {
	for bits := p.Bits(); bits >= 0; bits-- {
		q, _ := p.Addr().Prefix(bits)
		if s, ok := c.sec[q]; ok {
			return s, true
		}
	}
	return Security{}, false
}

func (c *IPCache) longestCIDR(p netip.Prefix) identity.NumericIdentity {
	if len(c.cidr) == 0 {
		return 0
	}
	for bits := p.Bits(); bits >= 0; bits-- {
		q, _ := p.Addr().Prefix(bits)
		if id, ok := c.cidr[q]; ok {
			return id
		}
	}
	return 0
}

func (c *IPCache) valueFor(p netip.Prefix) datapath.IPCacheValue {
	s, ok := c.longestSec(p)
	if !ok {
		s = Security{Identity: identity.World}
	}
	return datapath.IPCacheValue{Identity: uint32(s.Identity), CIDRIdentity: uint32(c.longestCIDR(p)), InCluster: s.InCluster}
}

// keysUnderAny returns the keys (and former keys) inside any of the
// changed prefixes: only their values can change. Each key is checked
// against the changed prefixes or against its own enclosing prefixes,
// whichever is fewer, so a change of many CIDRs stays linear.
func (c *IPCache) keysUnderAny(changed map[netip.Prefix]bool) []netip.Prefix {
	// Mostly host prefixes change: under a host prefix the only key is
	// that prefix.
	hosts := true
	for q := range changed {
		if !q.IsSingleIP() {
			hosts = false
			break
		}
	}
	if hosts {
		out := make([]netip.Prefix, 0, len(changed))
		for q := range changed {
			_, s := c.sec[q]
			_, p := c.cidr[q]
			_, w := c.written[q]
			if s || p || w {
				out = append(out, q)
			}
		}
		return out
	}
	var out []netip.Prefix
	under := func(p netip.Prefix) bool {
		if len(changed) <= p.Bits()+1 {
			for q := range changed {
				if q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
					return true
				}
			}
			return false
		}
		for bits := p.Bits(); bits >= 0; bits-- {
			q, _ := p.Addr().Prefix(bits)
			if changed[q] {
				return true
			}
		}
		return false
	}
	seen := make(map[netip.Prefix]bool, len(c.sec)+len(c.cidr))
	for _, m := range []func(func(netip.Prefix)){
		func(fn func(netip.Prefix)) {
			for p := range c.sec {
				fn(p)
			}
		},
		func(fn func(netip.Prefix)) {
			for p := range c.cidr {
				fn(p)
			}
		},
		func(fn func(netip.Prefix)) {
			for p := range c.written {
				fn(p)
			}
		},
	} {
		m(func(p netip.Prefix) {
			if !seen[p] {
				seen[p] = true
				if under(p) {
					out = append(out, p)
				}
			}
		})
	}
	return out
}

func (c *IPCache) syncUnder(p netip.Prefix) error {
	if p.Bits() == p.Addr().BitLen() {
		return c.syncKeys([]netip.Prefix{p})
	}
	return c.syncKeys(c.keysUnderAny(map[netip.Prefix]bool{p: true}))
}

// syncKeys writes the entries of keys (nil: all) that differ from what was
// written: upserts before deletes, so an address never loses its entry on
// the way.
func (c *IPCache) syncKeys(keys []netip.Prefix) error {
	if keys == nil {
		for p := range c.written {
			keys = append(keys, p)
		}
		keys = append(keys, c.keys()...)
	}
	var dels []netip.Prefix
	var ups []datapath.IPCacheEntry
	for _, p := range keys {
		_, isSec := c.sec[p]
		_, isCIDR := c.cidr[p]
		old, wasWritten := c.written[p]
		if !isSec && !isCIDR {
			if wasWritten {
				dels = append(dels, p)
			}
			continue
		}
		v := c.valueFor(p)
		if wasWritten && old == v {
			continue
		}
		ups = append(ups, datapath.IPCacheEntry{Prefix: p, Value: v})
	}
	if len(ups) == 0 && len(dels) == 0 {
		return nil
	}
	if err := c.w.ApplyIPCache(ups, dels); err != nil {
		return fmt.Errorf("ipcache: %w", err)
	}
	for _, e := range ups {
		c.written[e.Prefix] = e.Value
	}
	for _, p := range dels {
		delete(c.written, p)
	}
	return nil
}
