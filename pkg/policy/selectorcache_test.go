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
// computation, and that a selector's generation changes exactly when its
// selection does.
func TestSelectorCacheIndexes(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	randPrefix := func() netip.Prefix {
		bits := []int{0, 8, 16, 22, 24, 30, 32}[rng.Intn(7)]
		a := netip.AddrFrom4([4]byte{10, byte(rng.Intn(2)), byte(rng.Intn(4)), byte(rng.Intn(8))})
		p, _ := a.Prefix(bits)
		return p
	}
	randReq := func() labels.Requirement {
		key := []string{"app", "tier", nsKey, "1.2.3.4/32"}[rng.Intn(4)]
		src := []string{labels.SourceAny, labels.SourceK8s, labels.SourceCIDR}[rng.Intn(3)]
		vals := []string{fmt.Sprint(rng.Intn(3))}
		if rng.Intn(3) == 0 {
			vals = append(vals, fmt.Sprint(rng.Intn(3)))
		}
		switch op := []string{labels.OpIn, labels.OpIn, labels.OpExists, labels.OpNotIn, labels.OpDoesNotExist}[rng.Intn(5)]; op {
		case labels.OpIn, labels.OpNotIn:
			return labels.Requirement{Source: src, Key: key, Operator: op, Values: vals}
		default:
			return labels.Requirement{Source: src, Key: key, Operator: op}
		}
	}
	randLabels := func() labels.Labels {
		var ls []labels.Label
		for _, k := range []string{"app", "tier", nsKey} {
			if rng.Intn(3) > 0 {
				ls = append(ls, labels.Label{Source: []string{labels.SourceK8s, labels.SourceContainer}[rng.Intn(2)], Key: k, Value: fmt.Sprint(rng.Intn(3))})
			}
		}
		return labels.New(ls...)
	}
	type snap struct {
		gen uint64
		sel map[identity.NumericIdentity]*identRecord
	}
	for round := 0; round < 40; round++ {
		c := newSelectorCache()
		var held []*cachedSelector
		nextCIDR := identity.LocalScope
		snaps := map[*cachedSelector]snap{}
		for step := 0; step < 200; step++ {
			switch rng.Intn(8) {
			case 0, 1: // a CIDR identity comes
				p := randPrefix()
				if c.mostSpecificExact(p) {
					continue
				}
				nextCIDR++
				raw := labels.New(labels.Label{Source: labels.SourceCIDR, Key: p.String()})
				if rng.Intn(4) == 0 {
					raw = labels.New(labels.Label{Source: labels.SourceCIDR, Key: p.String()}, labels.Label{Source: labels.SourceCIDR, Key: "1.2.3.4/32"})
				}
				c.upsert(&identRecord{id: nextCIDR, class: classCIDR, prefix: p, raw: raw, labels: raw})
			case 2, 3: // a user or reserved identity comes, or changes labels or named ports
				id := identity.NumericIdentity(256 + rng.Intn(5))
				class := classUser
				if rng.Intn(4) == 0 {
					id, class = identity.NumericIdentity(1+rng.Intn(3)), classReserved
				}
				ls := randLabels()
				rec := &identRecord{id: id, class: class, raw: ls, labels: effectiveLabels(ls, class)}
				if rng.Intn(2) == 0 {
					rec.namedPorts = []NamedPort{{Name: "http", Port: uint16(80 + rng.Intn(2)), Protocol: 6}}
				}
				if old := c.ids[id]; old != nil && rng.Intn(3) == 0 {
					cp := *old // the same again
					rec = &cp
				}
				c.upsert(rec)
			case 4: // an identity goes
				for id := range c.ids {
					if rng.Intn(4) == 0 {
						c.remove(id)
					}
				}
			case 5, 6: // a selector is acquired
				var sel idSelector
				switch rng.Intn(4) {
				case 0:
					cs := &cidrSelector{prefix: randPrefix()}
					if rng.Intn(2) == 0 {
						cs.except = []netip.Prefix{randPrefix()}
					}
					sel = cs
				case 1:
					sel = clusterSelector{}
				default:
					var rs []labels.Requirement
					for range rng.Intn(3) {
						rs = append(rs, randReq())
					}
					sel = &labelSelector{sel: labels.NewSelector(nil, rs), userOnly: rng.Intn(4) == 0, none: rng.Intn(10) == 0}
				}
				held = append(held, c.acquire(sel))
			case 7: // one is released
				if len(held) > 0 {
					i := rng.Intn(len(held))
					c.release(held[i])
					held = append(held[:i], held[i+1:]...)
				}
			}
			var all []*cachedSelector
			c.selectors(func(cs *cachedSelector) { all = append(all, cs) })
			for _, cs := range all {
				for id, r := range c.ids {
					got, ok := cs.selected[id]
					if want := cs.sel.selects(r); ok != want || (ok && got != r) {
						t.Fatalf("round %d step %d: selector %s, identity %d (%s %s): cached %v, want %v",
							round, step, cs.sel.key(), id, r.prefix, r.labels, ok, want)
					}
				}
				for id := range cs.selected {
					if _, ok := c.ids[id]; !ok {
						t.Fatalf("round %d step %d: selector %s holds gone identity %d", round, step, cs.sel.key(), id)
					}
				}
				prev, seen := snaps[cs]
				changed := !seen || len(prev.sel) != len(cs.selected)
				for id, r := range cs.selected {
					if prev.sel[id] != r {
						changed = true
					}
				}
				switch {
				case seen && changed && cs.gen <= prev.gen:
					t.Fatalf("round %d step %d: selector %s changed its selection but kept generation %d", round, step, cs.sel.key(), cs.gen)
				case seen && !changed && cs.gen != prev.gen:
					t.Fatalf("round %d step %d: selector %s kept its selection but changed generation", round, step, cs.sel.key())
				}
				cp := make(map[identity.NumericIdentity]*identRecord, len(cs.selected))
				for id, r := range cs.selected {
					cp[id] = r
				}
				snaps[cs] = snap{cs.gen, cp}
			}
		}
	}
}

// mostSpecificExact reports whether a CIDR identity has exactly prefix p.
func (c *selectorCache) mostSpecificExact(p netip.Prefix) bool {
	_, ok := c.cidrIDs[p.Bits()][p]
	return ok
}
