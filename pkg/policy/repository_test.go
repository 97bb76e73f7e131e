package policy

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

func names(pols []*Policy) string {
	var out []string
	for _, p := range pols {
		out = append(out, p.String())
	}
	return strings.Join(out, ", ")
}

func TestImportDelete(t *testing.T) {
	r := newTestRepo(t, "")
	if r.Revision() != 1 {
		t.Fatalf("initial revision %d", r.Revision())
	}
	rev, err := r.Import(mustParse(t, "a.yaml", cnp("  endpointSelector: {}\n")+"---\n"+knp("  podSelector: {}\n")+
		"---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np1, namespace: other}\nspec: {podSelector: {}}\n"))
	if err != nil || rev != 2 {
		t.Fatalf("import: %d %v", rev, err)
	}
	mustImport(t, r, "l3_policy.json", `[{"endpointSelector": {}}]`)
	if got := names(r.List()); got != "CiliumNetworkPolicy ns1/rule1, CiliumRuleList l3_policy, NetworkPolicy ns1/np1, NetworkPolicy other/np1" {
		t.Fatalf("list: %s", got)
	}
	// Replacing keeps one policy per kind, namespace and name.
	mustImport(t, r, "b.yaml", cnp("  endpointSelector: {matchLabels: {a: b}}\n"))
	if got := len(r.List()); got != 4 || r.Revision() != 4 {
		t.Fatalf("after replace: %d policies, revision %d", got, r.Revision())
	}
	// Deleting.
	if _, _, err := r.Delete("np1"); !errors.Is(err, ErrAmbiguous) || !strings.Contains(err.Error(), "NetworkPolicy ns1/np1, NetworkPolicy other/np1") {
		t.Errorf("ambiguous delete: %v", err)
	}
	if _, _, err := r.Delete("nothing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete of nothing: %v", err)
	}
	if r.Revision() != 4 {
		t.Errorf("failed deletes changed the revision: %d", r.Revision())
	}
	rev, del, err := r.Delete("other/np1")
	if err != nil || rev != 5 || names(del) != "NetworkPolicy other/np1" {
		t.Fatalf("delete ns/name: %d %s %v", rev, names(del), err)
	}
	if _, del, err = r.Delete("l3_policy"); err != nil || names(del) != "CiliumRuleList l3_policy" {
		t.Fatalf("delete rule list: %s %v", names(del), err)
	}
	if _, del, err = r.Delete("netpol/ns1/np1"); err != nil || names(del) != "NetworkPolicy ns1/np1" {
		t.Fatalf("delete kind/ns/name: %s %v", names(del), err)
	}
	rev, del = r.DeleteAll()
	if names(del) != "CiliumNetworkPolicy ns1/rule1" || len(r.List()) != 0 || rev != r.Revision() {
		t.Fatalf("delete all: %s", names(del))
	}
}

func TestImportAtomic(t *testing.T) {
	r := newTestRepo(t, "")
	pols := mustParse(t, "a.yaml", cnp("  endpointSelector: {}\n"))
	pols = append(pols, mustParse(t, "b.yaml", cnp("  endpointSelector: {}\n"))...)
	if _, err := r.Import(pols); !errors.Is(err, ErrConflict) {
		t.Fatalf("duplicate: %v", err)
	}
	if len(r.List()) != 0 || r.Revision() != 1 {
		t.Fatal("a failed import changed the repository")
	}
}

func TestCookies(t *testing.T) {
	r := newTestRepo(t, "")
	v1 := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  description: first\n  endpointSelector: {}\n  ingress: [{fromEntities: [host]}, {fromEntities: [world]}]\n  egressDeny: [{toEntities: [world]}]\n"
	mustImport(t, r, "a.yaml", v1)
	ep := Endpoint{ID: 1, Identity: 256, Labels: lbls(t, "app=web,io.kubernetes.pod.namespace=x")}
	res, err := r.Resolve(ep)
	if err != nil {
		t.Fatal(err)
	}
	cookieOf := func(res *Resolved, id uint32, egress bool) uint32 {
		for k, e := range res.MapState {
			if uint32(k.Identity) == id && k.Egress == egress {
				return e.Cookie
			}
		}
		return 0
	}
	host, world, deny := cookieOf(res, 1, false), cookieOf(res, 2, false), cookieOf(res, 2, true)
	if host == 0 || world == 0 || deny == 0 || host == world || world == deny {
		t.Fatalf("cookies %d %d %d", host, world, deny)
	}
	o, ok := r.Origin(world)
	if !ok || o.String() != "CiliumNetworkPolicy x/a spec.ingress[1] (first)" || o.File != "a.yaml" || o.Document != 1 {
		t.Fatalf("origin %+v", o)
	}
	if o, _ := r.Origin(deny); !o.Deny || !o.Egress || o.Path != "spec.egressDeny[0]" {
		t.Fatalf("deny origin %+v", o)
	}
	// Re-importing keeps the cookies; an unrelated import does too.
	mustImport(t, r, "a.yaml", strings.Replace(v1, "first", "second", 1))
	mustImport(t, r, "b.yaml", knp("  podSelector: {}\n  ingress: [{}]\n"))
	res2, _ := r.Resolve(ep)
	if cookieOf(res2, 1, false) != host || cookieOf(res2, 2, false) != world || cookieOf(res2, 2, true) != deny {
		t.Fatalf("cookies changed")
	}
	if o, _ := r.Origin(world); o.Description != "second" {
		t.Errorf("origin not updated: %+v", o)
	}
	// A rule that goes away frees its cookie.
	mustImport(t, r, "a.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEntities: [host]}]\n")
	if _, ok := r.Origin(world); ok {
		t.Errorf("cookie of a removed rule still resolves")
	}
	if _, ok := r.Origin(host); !ok {
		t.Errorf("cookie of a kept rule lost")
	}
	r.DeleteAll()
	if _, ok := r.Origin(host); ok {
		t.Errorf("cookie of a deleted policy still resolves")
	}
}

func TestSelectorCacheReleased(t *testing.T) {
	r := newTestRepo(t, "")
	mustImport(t, r, "a.yaml", cnp("  endpointSelector: {}\n  ingress: [{fromEndpoints: [{matchLabels: {a: b}}]}, {fromCIDR: [10.0.0.0/8]}, {fromEntities: [cluster]}]\n"))
	mustImport(t, r, "a.yaml", cnp("  endpointSelector: {}\n  ingress: [{fromEndpoints: [{matchLabels: {a: b}}]}]\n"))
	if n := r.cache.size(); n != 2 {
		t.Errorf("%d cached selectors after replace, want 2 (subject and peer)", n)
	}
	r.DeleteAll()
	if n := r.cache.size(); n != 0 {
		t.Errorf("%d cached selectors after delete, want 0", n)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{EnforcementMode: "sometimes"}).Validate(); err == nil {
		t.Error("bad mode accepted")
	}
	r := NewRepository(Config{EnforcementMode: "sometimes"}, nil)
	res, err := r.Resolve(Endpoint{ID: 1, Identity: 256})
	if err != nil || !res.IngressEnforced || len(res.MapState) != 0 {
		t.Errorf("invalid mode does not fail closed: %+v %v", res, err)
	}
}

// TestConcurrent exercises the locks under -race.
func TestConcurrent(t *testing.T) {
	r := newTestRepo(t, "")
	upsertReserved(r)
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for j := 0; j < 20; j++ {
				mustImport(t, r, "a.yaml", cnp("  endpointSelector: {}\n  ingress: [{fromEndpoints: [{}]}]\n"))
				r.UpsertIdentity(SelectableIdentity{ID: 300, Labels: lbls(t, "app=x")})
				if _, err := r.Resolve(Endpoint{ID: 1, Identity: 300, Labels: lbls(t, "app=x")}); err != nil {
					t.Error(err)
				}
				r.RemoveIdentity(300)
				_, _ = r.Trace(TraceRequest{From: TracePeer{Labels: lbls(t, "app=x")}, To: TracePeer{Labels: lbls(t, "app=y")}, Protocol: 6, Port: 80})
				_ = r.Prefixes()
			}
		}(i)
	}
	wg.Wait()
}

func TestRestore(t *testing.T) {
	r := newTestRepo(t, "")
	a := mustParse(t, "a.yaml", cnp("  endpointSelector: {}\n  ingress: [{fromEntities: [host]}]\n"))
	b := mustParse(t, "b.yaml", knp("  podSelector: {}\n  ingress: [{}]\n"))
	if _, err := r.Import(append(a, b...)); err != nil {
		t.Fatal(err)
	}
	ep := Endpoint{ID: 1, Identity: 256, Labels: lbls(t, "io.kubernetes.pod.namespace=ns1")}
	before, _ := r.Resolve(ep)
	if err := r.Restore(a, 57); err != nil {
		t.Fatal(err)
	}
	if r.Revision() != 57 || names(r.List()) != "CiliumNetworkPolicy ns1/rule1" {
		t.Fatalf("revision %d, policies %s", r.Revision(), names(r.List()))
	}
	after, _ := r.Resolve(ep)
	k := mapstate.Key{Identity: 1}
	if before.MapState[k].Cookie == 0 || after.MapState[k] != before.MapState[k] {
		t.Errorf("cookie not kept: %v -> %v", before.MapState[k], after.MapState[k])
	}
	if err := r.Restore(append(a, a...), 58); !errors.Is(err, ErrConflict) || r.Revision() != 57 {
		t.Errorf("bad restore: %v, revision %d", err, r.Revision())
	}
	if err := r.Restore(nil, 60); err != nil || len(r.List()) != 0 || r.cache.size() != 0 {
		t.Errorf("restore of nothing: %v", err)
	}
}

func TestPrefixDiff(t *testing.T) {
	ps := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	for _, tc := range []struct {
		prev, next, added, removed []netip.Prefix
	}{
		{nil, nil, nil, nil},
		{nil, ps("10.0.0.0/8", "10.0.0.1/32"), ps("10.0.0.0/8", "10.0.0.1/32"), nil},
		{ps("10.0.0.0/8", "10.0.0.1/32"), nil, nil, ps("10.0.0.0/8", "10.0.0.1/32")},
		{ps("10.0.0.0/8", "10.0.0.1/32", "192.168.0.0/16"), ps("10.0.0.0/8", "10.0.0.0/16", "192.168.0.0/16", "192.168.1.1/32"),
			ps("10.0.0.0/16", "192.168.1.1/32"), ps("10.0.0.1/32")},
	} {
		// Sorted as Prefixes sorts them, so the test does not depend on
		// the order written above.
		for _, l := range [][]netip.Prefix{tc.prev, tc.next, tc.added, tc.removed} {
			slices.SortFunc(l, comparePrefixes)
		}
		added, removed := PrefixDiff(tc.prev, tc.next)
		if !slices.Equal(added, tc.added) || !slices.Equal(removed, tc.removed) {
			t.Errorf("PrefixDiff(%v, %v) = %v, %v; want %v, %v", tc.prev, tc.next, added, removed, tc.added, tc.removed)
		}
	}
}
