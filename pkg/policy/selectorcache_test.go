package policy

import (
	"fmt"
	"math/rand"
	"net/netip"
	"testing"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
)

// TestSelectorCacheIndexes drives the cache with random identities and
// selectors and checks every cached selection against a brute-force
// computation.
func TestSelectorCacheIndexes(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	randPrefix := func() netip.Prefix {
		bits := []int{0, 8, 16, 22, 24, 30, 32}[rng.Intn(7)]
		a := netip.AddrFrom4([4]byte{10, byte(rng.Intn(2)), byte(rng.Intn(4)), byte(rng.Intn(8))})
		p, _ := a.Prefix(bits)
		return p
	}
	for round := 0; round < 30; round++ {
		c := newSelectorCache()
		var held []*cachedSelector
		nextCIDR := identity.LocalScope
		for step := 0; step < 200; step++ {
			switch rng.Intn(6) {
			case 0, 1: // a CIDR identity comes
				p := randPrefix()
				if c.mostSpecificExact(p) {
					continue
				}
				nextCIDR++
				c.upsert(&identRecord{id: nextCIDR, class: classCIDR, prefix: p,
					raw: labels.New(labels.Label{Source: labels.SourceCIDR, Key: p.String()})})
			case 2: // a user identity comes or changes labels
				id := identity.NumericIdentity(256 + rng.Intn(5))
				ls := labels.New(labels.Label{Source: labels.SourceK8s, Key: "app", Value: fmt.Sprint(rng.Intn(3))})
				c.upsert(&identRecord{id: id, class: classUser, raw: ls, labels: ls})
			case 3: // an identity goes
				for id := range c.ids {
					if rng.Intn(4) == 0 {
						c.remove(id)
					}
				}
			case 4: // a selector is acquired
				var sel idSelector
				if rng.Intn(3) > 0 {
					cs := &cidrSelector{prefix: randPrefix()}
					if rng.Intn(2) == 0 {
						cs.except = []netip.Prefix{randPrefix()}
					}
					sel = cs
				} else {
					sel = clusterSelector{}
				}
				held = append(held, c.acquire(sel))
			case 5: // one is released
				if len(held) > 0 {
					i := rng.Intn(len(held))
					c.release(held[i])
					held = append(held[:i], held[i+1:]...)
				}
			}
			for _, cs := range c.sels {
				for id, r := range c.ids {
					_, got := cs.selected[id]
					if want := cs.sel.selects(r); got != want {
						t.Fatalf("round %d step %d: selector %s, identity %d (%s): cached %v, want %v",
							round, step, cs.sel.key(), id, r.prefix, got, want)
					}
				}
				for id := range cs.selected {
					if _, ok := c.ids[id]; !ok {
						t.Fatalf("round %d step %d: selector %s holds gone identity %d", round, step, cs.sel.key(), id)
					}
				}
			}
		}
	}
}

// mostSpecificExact reports whether a CIDR identity has exactly prefix p.
func (c *selectorCache) mostSpecificExact(p netip.Prefix) bool {
	_, ok := c.cidrIDs[p.Bits()][p]
	return ok
}
