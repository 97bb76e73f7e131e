package ipam

import (
	"errors"
	"net/netip"
	"testing"
)

func TestPool(t *testing.T) {
	p, err := New(netip.MustParsePrefix("10.9.0.0/29"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Gateway() != netip.MustParseAddr("10.9.0.1") {
		t.Fatalf("gateway %s", p.Gateway())
	}
	var got []string
	for i := 0; i < 5; i++ {
		a, err := p.Allocate("ep")
		if err != nil {
			t.Fatalf("allocate %d: %v", i, err)
		}
		got = append(got, a.String())
	}
	want := []string{"10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("allocated %v, want %v", got, want)
		}
	}
	if _, err := p.Allocate("ep"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full pool: %v", err)
	}
	p.Release(netip.MustParseAddr("10.9.0.4"))
	if a, err := p.Allocate("ep"); err != nil || a.String() != "10.9.0.4" {
		t.Fatalf("after release: %v %v", a, err)
	}
	if err := p.Reserve(netip.MustParseAddr("10.9.0.3"), "x"); !errors.Is(err, ErrInUse) {
		t.Fatalf("reserve taken: %v", err)
	}
	if err := p.Reserve(netip.MustParseAddr("10.9.0.1"), "x"); !errors.Is(err, ErrInUse) {
		t.Fatalf("reserve gateway: %v", err)
	}
	if err := p.Reserve(netip.MustParseAddr("10.9.0.7"), "x"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("reserve broadcast: %v", err)
	}
	if err := p.Reserve(netip.MustParseAddr("192.168.7.7"), "x"); err != nil {
		t.Fatalf("reserve outside the pool: %v", err)
	}
	if _, err := New(netip.MustParsePrefix("10.0.0.0/31")); err == nil {
		t.Fatal("a /31 pool was accepted")
	}
}
