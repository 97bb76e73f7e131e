package ipcache

import (
	"math/rand"
	"net/netip"
	"testing"

	"github.com/membrane-net/membrane/pkg/datapath"
	"github.com/membrane-net/membrane/pkg/identity"
)

// fakeLPM is an in-memory LPM map.
type fakeLPM map[netip.Prefix]datapath.IPCacheValue

func (f fakeLPM) ApplyIPCache(ups []datapath.IPCacheEntry, dels []netip.Prefix) error {
	for _, e := range ups {
		f[e.Prefix] = e.Value
	}
	for _, p := range dels {
		delete(f, p)
	}
	return nil
}
func (f fakeLPM) lookup(a netip.Addr) datapath.IPCacheValue {
	for bits := 32; bits >= 0; bits-- {
		q, _ := a.Prefix(bits)
		if v, ok := f[q]; ok {
			return v
		}
	}
	return datapath.IPCacheValue{}
}

func TestMergedLookup(t *testing.T) {
	w := fakeLPM{}
	c := New(w)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Sync())
	must(c.UpsertSecurity(netip.MustParsePrefix("10.244.2.20/32"), Security{Identity: 300, InCluster: true}))
	must(c.UpsertSecurity(netip.MustParsePrefix("10.244.2.30/32"), Security{Identity: 301, InCluster: true}))
	must(c.SetCIDRs(map[netip.Prefix]identity.NumericIdentity{
		netip.MustParsePrefix("10.244.0.0/16"):  identity.LocalScope + 1,
		netip.MustParsePrefix("10.244.2.20/32"): identity.LocalScope + 2,
	}))
	cases := map[string]datapath.IPCacheValue{
		"10.244.2.20": {Identity: 300, CIDRIdentity: uint32(identity.LocalScope + 2), InCluster: true},
		"10.244.2.30": {Identity: 301, CIDRIdentity: uint32(identity.LocalScope + 1), InCluster: true},
		"10.244.9.9":  {Identity: uint32(identity.World), CIDRIdentity: uint32(identity.LocalScope + 1)},
		"192.0.2.1":   {Identity: uint32(identity.World)},
	}
	for a, want := range cases {
		if got := w.lookup(netip.MustParseAddr(a)); got != want {
			t.Errorf("%s: kernel %+v, want %+v", a, got, want)
		}
		if got := c.Lookup(netip.MustParseAddr(a)); got != want {
			t.Errorf("%s: Lookup %+v, want %+v", a, got, want)
		}
	}
	// Removing the /16 leaves the endpoint 10.244.2.30 without a CIDR.
	must(c.SetCIDRs(map[netip.Prefix]identity.NumericIdentity{netip.MustParsePrefix("10.244.2.20/32"): identity.LocalScope + 2}))
	if got := w.lookup(netip.MustParseAddr("10.244.2.30")); got.CIDRIdentity != 0 || got.Identity != 301 {
		t.Errorf("after removing the /16: %+v", got)
	}
	if _, ok := w[netip.MustParsePrefix("10.244.0.0/16")]; ok {
		t.Error("the /16 entry is still written")
	}
	must(c.DeleteSecurity(netip.MustParsePrefix("10.244.2.20/32")))
	if got := w.lookup(netip.MustParseAddr("10.244.2.20")); got.Identity != uint32(identity.World) || got.CIDRIdentity != uint32(identity.LocalScope+2) || got.InCluster {
		t.Errorf("after deleting the endpoint: %+v", got)
	}
}

// TestRandomAgainstReference checks the written map against a direct
// computation for random sets of prefixes and random changes.
func TestRandomAgainstReference(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	randPrefix := func() netip.Prefix {
		bits := []int{8, 16, 24, 28, 32}[rng.Intn(5)]
		a := netip.AddrFrom4([4]byte{10, byte(rng.Intn(3)), byte(rng.Intn(3)), byte(rng.Intn(8))})
		p, _ := a.Prefix(bits)
		return p
	}
	for round := 0; round < 50; round++ {
		w := fakeLPM{}
		c := New(w)
		if err := c.Sync(); err != nil {
			t.Fatal(err)
		}
		sec := map[netip.Prefix]Security{WorldPrefix: {Identity: identity.World}}
		cidrs := map[netip.Prefix]identity.NumericIdentity{}
		for step := 0; step < 40; step++ {
			switch rng.Intn(5) {
			case 0:
				p := randPrefix()
				s := Security{Identity: identity.NumericIdentity(256 + rng.Intn(5)), InCluster: true}
				sec[p] = s
				c.UpsertSecurity(p, s)
			case 1:
				for p := range sec {
					if p != WorldPrefix && rng.Intn(3) == 0 {
						delete(sec, p)
						c.DeleteSecurity(p)
					}
				}
			default:
				cidrs = map[netip.Prefix]identity.NumericIdentity{}
				for i := 0; i < rng.Intn(5); i++ {
					cidrs[randPrefix()] = identity.LocalScope + identity.NumericIdentity(rng.Intn(4))
				}
				c.SetCIDRs(cidrs)
			case 4:
				// A change: some CIDRs go, some come or change identity.
				var remove []netip.Prefix
				for p := range cidrs {
					if rng.Intn(3) == 0 {
						delete(cidrs, p)
						remove = append(remove, p)
					}
				}
				set := map[netip.Prefix]identity.NumericIdentity{}
				for i := 0; i < rng.Intn(4); i++ {
					p, id := randPrefix(), identity.LocalScope+identity.NumericIdentity(rng.Intn(4))
					set[p] = id
					cidrs[p] = id // in set and remove: set wins
				}
				if err := c.UpdateCIDRs(set, remove); err != nil {
					t.Fatal(err)
				}
			}
			for i := 0; i < 30; i++ {
				a := netip.AddrFrom4([4]byte{10, byte(rng.Intn(3)), byte(rng.Intn(3)), byte(rng.Intn(8))})
				var want datapath.IPCacheValue
				for bits := 32; bits >= 0; bits-- {
					q, _ := a.Prefix(bits)
					if s, ok := sec[q]; ok {
						want.Identity, want.InCluster = uint32(s.Identity), s.InCluster
						break
					}
				}
				for bits := 32; bits >= 0; bits-- {
					q, _ := a.Prefix(bits)
					if id, ok := cidrs[q]; ok {
						want.CIDRIdentity = uint32(id)
						break
					}
				}
				if got := w.lookup(a); got != want {
					t.Fatalf("round %d step %d: %s: kernel %+v, want %+v", round, step, a, got, want)
				}
			}
		}
	}
}
