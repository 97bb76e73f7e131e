package identity

import (
	"context"
	"testing"

	"github.com/membrane-net/membrane/pkg/labels"
)

func mustLabels(t *testing.T, s string) labels.Labels {
	t.Helper()
	ls, err := labels.Parse(s, labels.SourceUnspec)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

func TestAllocateReleaseReuse(t *testing.T) {
	ctx := context.Background()
	a := NewLocalAllocator()
	app1, isNew, err := a.Allocate(ctx, mustLabels(t, "id=app1"))
	if err != nil || !isNew || app1.ID != MinUser {
		t.Fatalf("first identity: %+v %v %v", app1, isNew, err)
	}
	again, isNew, _ := a.Allocate(ctx, mustLabels(t, "id=app1"))
	if isNew || again.ID != app1.ID || again.Refs != 2 {
		t.Fatalf("same labels: %+v new=%v", again, isNew)
	}
	app2, _, _ := a.Allocate(ctx, mustLabels(t, "id=app2"))
	if app2.ID != MinUser+1 {
		t.Fatalf("second identity %d", app2.ID)
	}
	if rel, _ := a.Release(ctx, app1.ID); rel {
		t.Fatal("released with a reference left")
	}
	if rel, _ := a.Release(ctx, app1.ID); !rel {
		t.Fatal("not released after the last reference")
	}
	if a.Lookup(app1.ID) != nil || a.LookupByLabels(mustLabels(t, "id=app1")) != nil {
		t.Fatal("released identity still found")
	}
	// Numbers are not reused at once.
	app3, _, _ := a.Allocate(ctx, mustLabels(t, "id=app3"))
	if app3.ID == app1.ID {
		t.Fatalf("number %d reused at once", app3.ID)
	}
	cidr, _, _ := a.Allocate(ctx, labels.New(labels.Label{Source: labels.SourceCIDR, Key: "10.0.0.0/8"}))
	if !cidr.ID.IsLocal() {
		t.Fatalf("CIDR identity %d is not node-local", cidr.ID)
	}
	// Reserved identities are listed and never released.
	list := a.List()
	if list[0].ID != Host || list[5].ID != RemoteNode {
		t.Fatalf("reserved identities not listed first: %+v", list[:6])
	}
	if rel, err := a.Release(ctx, World); rel || err != nil {
		t.Fatalf("released world: %v %v", rel, err)
	}
	if id := ForLabels(ReservedLabels(Init)); id != Init {
		t.Fatalf("reserved:init -> %d", id)
	}
	if _, _, err := a.Allocate(ctx, mustLabels(t, "reserved:host,id=x")); err == nil {
		t.Fatal("reserved label mixed with others accepted")
	}
}

func TestRestoreKeepsNumbers(t *testing.T) {
	ctx := context.Background()
	a := NewLocalAllocator()
	x, _, _ := a.Allocate(ctx, mustLabels(t, "id=x"))
	y, _, _ := a.Allocate(ctx, mustLabels(t, "id=y"))
	b := NewLocalAllocator()
	if err := b.Restore([]*Identity{y, x}); err != nil {
		t.Fatal(err)
	}
	if got := b.LookupByLabels(mustLabels(t, "id=y")); got == nil || got.ID != y.ID {
		t.Fatalf("restored y: %+v", got)
	}
	z, _, _ := b.Allocate(ctx, mustLabels(t, "id=z"))
	if z.ID <= y.ID {
		t.Fatalf("new identity %d collides with restored ones", z.ID)
	}
	if err := b.Restore([]*Identity{{ID: x.ID, Labels: mustLabels(t, "id=other")}}); err == nil {
		t.Fatal("restoring a used number with other labels was accepted")
	}
}
