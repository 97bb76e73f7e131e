package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// TestResolveMemoized: Resolve returns the same *Resolved while nothing the
// endpoint's policy depends on changes, and a new one when something does.
func TestResolveMemoized(t *testing.T) {
	w := newUnitWorld(t, EnforcementDefault,
		"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n"+
			"  endpointSelector: {matchLabels: {app: web}}\n"+
			"  ingress: [{fromEndpoints: [{matchLabels: {app: db}}], toPorts: [{ports: [{port: http}]}]}]\n"+
			"  egress: [{toEndpoints: [{matchLabels: {app: db}}], toPorts: [{ports: [{port: http, protocol: TCP}]}]}, {toCIDR: [10.0.0.0/8]}]\n",
		"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: other, namespace: x}\nspec:\n"+
			"  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEntities: [host]}]\n")
	web := w.eps["web.x"]
	web.ID = 1
	resolve := func(ep Endpoint) *Resolved {
		t.Helper()
		res, err := w.repo.Resolve(ep)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	steps := []struct {
		name   string
		change func(ep *Endpoint)
		same   bool
	}{
		{"nothing", func(*Endpoint) {}, true},
		{"a policy selecting another endpoint", func(*Endpoint) {
			mustImport(t, w.repo, "a.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: 'y'}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n")
		}, true},
		{"that policy deleted", func(*Endpoint) {
			if _, _, err := w.repo.Delete("y/a"); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"an identity no peer selects", func(*Endpoint) {
			w.repo.UpsertIdentity(SelectableIdentity{ID: 300, Labels: lbls(t, "k8s:app=cli,k8s:io.kubernetes.pod.namespace=x")})
		}, true},
		{"a CIDR identity outside the rule's CIDRs", func(*Endpoint) {
			w.repo.UpsertIdentity(SelectableIdentity{ID: identity.LocalScope + 100, Prefix: netip.MustParsePrefix("192.168.0.0/16"),
				Labels: labels.New(labels.Label{Source: labels.SourceCIDR, Key: "192.168.0.0/16"})})
		}, true},
		{"an identity told again as it is", func(*Endpoint) {
			w.repo.UpsertIdentity(SelectableIdentity{ID: 257, Labels: lbls(t, unitPods[1].lbls), NamedPorts: unitPods[1].named})
		}, true},
		{"a rule of another policy changed", func(*Endpoint) {
			mustImport(t, w.repo, "other.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: other, namespace: x}\nspec:\n"+
				"  endpointSelector: {matchLabels: {app: db}}\n  ingress: [{fromEntities: [world]}]\n")
		}, true},
		{"the endpoint's ID", func(ep *Endpoint) { ep.ID = 2 }, false},
		{"a rule selecting the endpoint added", func(*Endpoint) {
			mustImport(t, w.repo, "b.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: b, namespace: x}\nspec:\n"+
				"  endpointSelector: {matchLabels: {app: web}}\n  ingress: [{fromEntities: [world], toPorts: [{ports: [{port: '443'}]}]}]\n")
		}, false},
		{"an identity a peer selector selects", func(*Endpoint) {
			w.repo.UpsertIdentity(SelectableIdentity{ID: 301, Labels: lbls(t, "k8s:app=db,k8s:io.kubernetes.pod.namespace=x")})
		}, false},
		{"a CIDR identity inside the rule's CIDR", func(*Endpoint) {
			w.repo.UpsertIdentity(SelectableIdentity{ID: identity.LocalScope + 101, Prefix: netip.MustParsePrefix("10.9.0.0/16"),
				Labels: labels.New(labels.Label{Source: labels.SourceCIDR, Key: "10.9.0.0/16"})})
		}, false},
		{"the named ports of a peer", func(*Endpoint) {
			w.repo.UpsertIdentity(SelectableIdentity{ID: 301, Labels: lbls(t, "k8s:app=db,k8s:io.kubernetes.pod.namespace=x"),
				NamedPorts: []NamedPort{{"http", 8081, mapstate.ProtoTCP}}})
		}, false},
		{"the named ports of an identity no peer selects", func(*Endpoint) {
			w.repo.UpsertIdentity(SelectableIdentity{ID: 300, Labels: lbls(t, "k8s:app=cli,k8s:io.kubernetes.pod.namespace=x"),
				NamedPorts: []NamedPort{{"http", 8082, mapstate.ProtoTCP}}})
		}, true},
		{"the endpoint's own named ports", func(ep *Endpoint) { ep.NamedPorts = []NamedPort{{"http", 81, mapstate.ProtoTCP}} }, false},
		{"a peer identity removed", func(*Endpoint) { w.repo.RemoveIdentity(301) }, false},
		{"the endpoint's identity relabeled", func(*Endpoint) {
			w.repo.UpsertIdentity(SelectableIdentity{ID: 256, Labels: lbls(t, "k8s:app=web,k8s:io.kubernetes.pod.namespace=x,k8s:tier=front")})
		}, false},
		{"the endpoint relabeled", func(ep *Endpoint) {
			ep.Labels = lbls(t, "k8s:app=web,k8s:io.kubernetes.pod.namespace=x,k8s:tier=front")
		}, false},
		{"nothing again", func(*Endpoint) {}, true},
		{"the endpoint's identity changed", func(ep *Endpoint) {
			ep.Identity = 302
			w.repo.UpsertIdentity(SelectableIdentity{ID: 302, Labels: ep.Labels})
		}, false},
		{"a policy selecting it deleted", func(*Endpoint) {
			if _, _, err := w.repo.Delete("x/b"); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"every policy restored as it is", func(*Endpoint) {
			if err := w.repo.Restore(w.repo.List(), w.repo.Revision()); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"every policy deleted", func(*Endpoint) { w.repo.DeleteAll() }, false},
		{"still nothing", func(*Endpoint) {}, true},
	}
	prev := resolve(web)
	for _, st := range steps {
		st.change(&web)
		got := resolve(web)
		if same := got == prev; same != st.same {
			t.Errorf("%s: same result %v, want %v", st.name, same, st.same)
		}
		checkFresh(t, w.repo, web, got, st.name)
		prev = got
	}
}

// checkFresh fails when res is not what resolving ep from scratch gives.
func checkFresh(t *testing.T, r *Repository, ep Endpoint, res *Resolved, where string) {
	t.Helper()
	r.mu.RLock()
	want, err := r.resolveLocked(&ep, nil)
	r.mu.RUnlock()
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	if !sameResolved(res, want) {
		t.Fatalf("%s: endpoint %d: memoized result differs from a fresh one\ngot:  %s\nwant: %s", where, ep.ID, renderResolved(res), renderResolved(want))
	}
}

func sameResolved(a, b *Resolved) bool {
	return reflect.DeepEqual(a.MapState, b.MapState) && reflect.DeepEqual(a.L7, b.L7) &&
		a.IngressEnforced == b.IngressEnforced && a.EgressEnforced == b.EgressEnforced
}

func renderResolved(r *Resolved) string {
	var b strings.Builder
	fmt.Fprintf(&b, "in=%v eg=%v", r.IngressEnforced, r.EgressEnforced)
	for _, k := range r.MapState.Keys() {
		fmt.Fprintf(&b, " %s:%+v", k, r.MapState[k])
	}
	return b.String()
}

// normalized renders a result without cookies and with the L7 selections
// in a canonical order: two repositories holding the same policies and
// identities give the same, whatever their history.
func normalized(r *Resolved) string {
	var b strings.Builder
	fmt.Fprintf(&b, "in=%v eg=%v\n", r.IngressEnforced, r.EgressEnforced)
	for _, k := range r.MapState.Keys() {
		e := r.MapState[k]
		fmt.Fprintf(&b, "%s deny=%v proxy=%d\n", k, e.Deny, e.ProxyPort)
	}
	var ports []string
	for pk, sels := range r.L7.Ports {
		var ss []string
		for _, s := range sels {
			ids := make([]int, 0, len(s.Identities))
			for id := range s.Identities {
				ids = append(ids, int(id))
			}
			sort.Ints(ids)
			rules := make([]string, len(s.Rules))
			for i, hr := range s.Rules {
				rules[i] = hr.String()
			}
			ss = append(ss, fmt.Sprintf("any=%v ids=%v rules=%q origin=%s", s.AnyPeer, ids, rules, s.Origin))
		}
		sort.Strings(ss)
		ports = append(ports, fmt.Sprintf("%+v: %s", pk, strings.Join(ss, "; ")))
	}
	sort.Strings(ports)
	b.WriteString(strings.Join(ports, "\n"))
	return b.String()
}

// memoWorld is the state a differential run keeps beside the repository:
// enough to build the same repository from scratch.
type memoWorld struct {
	mode  string
	repo  *Repository
	ids   map[identity.NumericIdentity]SelectableIdentity
	eps   []Endpoint
	cidrs map[netip.Prefix]identity.NumericIdentity
	next  identity.NumericIdentity
}

func (w *memoWorld) upsert(si SelectableIdentity) {
	w.ids[si.ID] = si
	w.repo.UpsertIdentity(si)
}

func (w *memoWorld) remove(id identity.NumericIdentity) {
	delete(w.ids, id)
	w.repo.RemoveIdentity(id)
}

// syncCIDRs gives the repository's prefixes CIDR identities and drops the
// others, as the agent does.
func (w *memoWorld) syncCIDRs(rng *rand.Rand) {
	want := map[netip.Prefix]bool{}
	var add []SelectableIdentity
	for _, pf := range w.repo.Prefixes() {
		want[pf] = true
		if _, ok := w.cidrs[pf]; ok {
			continue
		}
		w.next++
		w.cidrs[pf] = w.next
		add = append(add, SelectableIdentity{ID: w.next, Prefix: pf, Labels: labels.New(labels.Label{Source: labels.SourceCIDR, Key: pf.String()})})
	}
	if rng.IntN(2) == 0 {
		for _, si := range add {
			w.upsert(si)
		}
	} else {
		for _, si := range add {
			w.ids[si.ID] = si
		}
		w.repo.UpsertIdentities(add)
	}
	for pf, id := range w.cidrs {
		if !want[pf] && rng.IntN(2) == 0 {
			delete(w.cidrs, pf)
			w.remove(id)
		}
	}
}

// fresh builds the repository from scratch.
func (w *memoWorld) fresh(t *testing.T) *Repository {
	r := newTestRepo(t, w.mode)
	for _, si := range w.ids {
		r.UpsertIdentity(si)
	}
	if _, err := r.Import(w.repo.List()); err != nil {
		t.Fatal(err)
	}
	return r
}

func deleteName(p *Policy) string {
	switch p.Kind {
	case KindCNP:
		return "cnp/" + p.Namespace + "/" + p.Name
	case KindKNP:
		return "netpol/" + p.Namespace + "/" + p.Name
	case KindCCNP:
		return "ccnp/" + p.Name
	}
	return "rules/" + p.Name
}

// TestResolveMemoDifferential: through long random sequences of changes
// (imports, deletes, restores; identities coming, going, relabeled, with
// other named ports; endpoints changing), every Resolve agrees with a
// resolution from scratch of the same repository and with a repository
// built from scratch, and memoization does return earlier results.
func TestResolveMemoDifferential(t *testing.T) {
	runs, steps := 30, 60
	if testing.Short() {
		runs = 6
	}
	hits, total := 0, 0
	for run := 0; run < runs; run++ {
		rng := rand.New(rand.NewPCG(uint64(run), 99))
		h, n := memoDifferential(t, rng, steps)
		hits += h
		total += n
	}
	t.Logf("%d of %d resolutions memoized", hits, total)
	if hits == 0 || hits == total {
		t.Fatalf("%d of %d resolutions memoized", hits, total)
	}
}

func memoDifferential(t *testing.T, rng *rand.Rand, steps int) (hits, total int) {
	randBytes := func() []byte {
		b := make([]byte, 120)
		for i := range b {
			b[i] = byte(rng.UintN(256))
		}
		return b
	}
	mode, _ := genPolicies(&chooser{data: randBytes()})
	w := &memoWorld{mode: mode, repo: newTestRepo(t, mode), ids: map[identity.NumericIdentity]SelectableIdentity{},
		cidrs: map[netip.Prefix]identity.NumericIdentity{}, next: identity.LocalScope}
	for _, id := range identity.Reserved() {
		w.upsert(SelectableIdentity{ID: id.ID, Labels: id.Labels})
	}
	for i, p := range mPods {
		w.upsert(SelectableIdentity{ID: p.id, Labels: p.labels(), NamedPorts: p.named})
		w.eps = append(w.eps, Endpoint{ID: uint64(i + 1), Identity: p.id, Labels: p.labels(), NamedPorts: p.named})
	}
	randPolicies := func() []*Policy {
		_, mps := genPolicies(&chooser{data: randBytes()})
		var out []*Policy
		for n, data := range renderFiles(mps) {
			pols, err := Parse(n, data)
			if err != nil {
				t.Fatalf("parse %s: %v", n, err)
			}
			out = append(out, pols...)
		}
		rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
		return out[:1+rng.IntN(len(out))]
	}
	prev := make([]*Resolved, len(w.eps))
	var history []string
	for step := 0; step < steps; step++ {
		var what string
		switch rng.IntN(12) {
		case 0, 1, 2:
			pols := randPolicies()
			if _, err := w.repo.Import(pols); err != nil {
				t.Fatalf("import: %v", err)
			}
			what = fmt.Sprintf("import %v", pols)
		case 3:
			if pols := w.repo.List(); len(pols) > 0 {
				p := pols[rng.IntN(len(pols))]
				if _, _, err := w.repo.Delete(deleteName(p)); err != nil {
					t.Fatalf("delete %s: %v", p, err)
				}
				what = "delete " + p.String()
			}
		case 4:
			if rng.IntN(3) == 0 {
				w.repo.DeleteAll()
				what = "delete all"
			} else {
				pols := w.repo.List()
				rng.Shuffle(len(pols), func(i, j int) { pols[i], pols[j] = pols[j], pols[i] })
				pols = pols[:rng.IntN(len(pols)+1)]
				if err := w.repo.Restore(pols, w.repo.Revision()+1); err != nil {
					t.Fatal(err)
				}
				what = fmt.Sprintf("restore %v", pols)
			}
		case 5, 6:
			w.syncCIDRs(rng)
			what = "sync CIDR identities"
		case 7: // a pod's identity relabeled or with other named ports
			p := mPods[rng.IntN(len(mPods))]
			si := w.ids[p.id]
			if si.ID == 0 {
				si = SelectableIdentity{ID: p.id, Labels: p.labels(), NamedPorts: p.named}
			}
			switch rng.IntN(3) {
			case 0:
				app := []string{"web", "db", "cli"}[rng.IntN(3)]
				var ls []labels.Label
				for _, l := range si.Labels {
					if l.Key == "app" {
						l.Value = app
					}
					ls = append(ls, l)
				}
				si.Labels = labels.New(ls...)
			case 1:
				si.NamedPorts = []NamedPort{{[]string{"http", "dns", "metrics"}[rng.IntN(3)], uint16([]int{53, 80, 8080, 9000}[rng.IntN(4)]), mapstate.ProtoTCP}}
			default:
				si.NamedPorts = nil
			}
			w.upsert(si)
			what = fmt.Sprintf("upsert %d %s %v", si.ID, si.Labels, si.NamedPorts)
		case 8: // an identity goes, or comes back
			p := mPods[rng.IntN(len(mPods))]
			if _, ok := w.ids[p.id]; ok {
				w.remove(p.id)
				what = fmt.Sprintf("remove %d", p.id)
			} else {
				w.upsert(SelectableIdentity{ID: p.id, Labels: p.labels(), NamedPorts: p.named})
				what = fmt.Sprintf("add %d", p.id)
			}
		case 9: // an identity told again as it is
			for id, si := range w.ids {
				w.repo.UpsertIdentity(si)
				what = fmt.Sprintf("upsert %d again", id)
				break
			}
		case 10: // an endpoint changes: its named ports, labels or identity
			i := rng.IntN(len(w.eps))
			ep := &w.eps[i]
			switch rng.IntN(3) {
			case 0:
				ep.NamedPorts = slices.Clone(mPods[rng.IntN(len(mPods))].named)
			case 1:
				ep.Labels = mPods[rng.IntN(len(mPods))].labels()
			default:
				ep.Identity = mPods[rng.IntN(len(mPods))].id
			}
			what = fmt.Sprintf("endpoint %d: %d %s %v", ep.ID, ep.Identity, ep.Labels, ep.NamedPorts)
		case 11: // nothing
			what = "nothing"
		}
		history = append(history, what)
		fresh := w.fresh(t)
		for i, ep := range w.eps {
			where := fmt.Sprintf("step %d (%s)", step, strings.Join(history, "; "))
			got, err := w.repo.Resolve(ep)
			if err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			total++
			if got == prev[i] {
				hits++
			}
			prev[i] = got
			checkFresh(t, w.repo, ep, got, where)
			want, err := fresh.Resolve(ep)
			if err != nil {
				t.Fatal(err)
			}
			if g, f := normalized(got), normalized(want); g != f {
				t.Fatalf("%s: endpoint %d: result differs from a repository built from scratch\ngot:\n%s\nwant:\n%s", where, ep.ID, g, f)
			}
		}
	}
	return hits, total
}

// TestResolveMemoForgets: memos of endpoints no longer resolved go.
func TestResolveMemoForgets(t *testing.T) {
	w := newUnitWorld(t, EnforcementDefault)
	ep := w.eps["web.x"]
	if _, err := w.repo.Resolve(ep); err != nil {
		t.Fatal(err)
	}
	w.repo.ForgetEndpoint(ep.ID)
	if len(w.repo.memos) != 0 {
		t.Fatalf("%d memos after ForgetEndpoint", len(w.repo.memos))
	}
	if _, err := w.repo.Resolve(ep); err != nil {
		t.Fatal(err)
	}
	other := w.eps["db.x"]
	for i := 0; i < 2*memoKeepRounds; i++ {
		w.repo.UpsertIdentity(SelectableIdentity{ID: 400, Labels: lbls(t, fmt.Sprintf("k8s:n=%d", i))})
		if _, err := w.repo.Resolve(other); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := w.repo.memos[ep.ID]; ok || len(w.repo.memos) != 1 {
		t.Fatalf("memos of endpoints not resolved for %d rounds are kept: %d memos", 2*memoKeepRounds, len(w.repo.memos))
	}
}

// TestResolveMemoWildcardRequires: a wildcard narrowed by fromRequires
// depends on every identity.
func TestResolveMemoWildcardRequires(t *testing.T) {
	w := newUnitWorld(t, EnforcementDefault, `[{"endpointSelector": {"matchLabels": {"k8s:app": "web"}},
  "ingress": [{"fromEndpoints": [{}], "fromRequires": [{"matchLabels": {"k8s:tier": "front"}}]}]}]`)
	ep := w.eps["web.x"]
	before, err := w.repo.Resolve(ep)
	if err != nil {
		t.Fatal(err)
	}
	w.repo.UpsertIdentity(SelectableIdentity{ID: 310, Labels: lbls(t, "k8s:tier=front")})
	after, err := w.repo.Resolve(ep)
	if err != nil {
		t.Fatal(err)
	}
	if after == before {
		t.Fatal("an identity the narrowed wildcard selects did not change the result")
	}
	if _, ok := after.MapState[mapstate.Key{Identity: 310}]; !ok {
		t.Fatalf("no entry for the new identity: %s", renderResolved(after))
	}
	checkFresh(t, w.repo, ep, after, "after")
}
