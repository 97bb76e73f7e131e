package policy

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"testing"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/policy/l7"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// FuzzResolve: random rule sets over a small universe; for every subject
// endpoint, direction, peer and port, the verdict of the resolved map state
// (mapstate.Decide, what the kernel does), the L7 policy the proxy checks,
// and the rule-by-rule evaluator behind Trace must all agree with the
// reference evaluator of fuzzmodel_test.go.
//
//	go test -run '^$' -fuzz FuzzResolve -fuzztime 5m ./pkg/policy/
func FuzzResolve(f *testing.F) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 8; i++ {
		b := make([]byte, 64+rng.IntN(128))
		for j := range b {
			b[j] = byte(rng.UintN(256))
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkAgainstReference(t, data)
	})
}

// TestResolveMatchesReference runs the fuzz check on many random inputs in
// every `go test`.
func TestResolveMatchesReference(t *testing.T) {
	n := 400
	if testing.Short() {
		n = 60
	}
	rng := rand.New(rand.NewPCG(42, 7))
	for i := 0; i < n; i++ {
		b := make([]byte, 200)
		for j := range b {
			b[j] = byte(rng.UintN(256))
		}
		if !t.Run(fmt.Sprint(i), func(t *testing.T) { checkAgainstReference(t, b) }) {
			return
		}
	}
}

type flowName struct {
	subj   identity.NumericIdentity
	egress bool
	peer   string
	fl     probeFlow
}

func (f flowName) String() string {
	return fmt.Sprintf("pod %d %s %s %d/%s", f.subj, dirName(f.egress), f.peer, f.fl.port, mapstate.ProtoName(f.fl.proto))
}

type probeFlow struct {
	proto uint8
	port  uint16
}

var modelFlows = func() []probeFlow {
	var out []probeFlow
	for _, proto := range []uint8{mapstate.ProtoTCP, mapstate.ProtoUDP, mapstate.ProtoSCTP} {
		for _, port := range []uint16{53, 80, 81, 443, 8080, 9000} {
			out = append(out, probeFlow{proto, port})
		}
	}
	return append(out, probeFlow{mapstate.ProtoICMP, 0}, probeFlow{mapstate.ProtoICMP, 8})
}()

var modelRequests = []struct{ method, path string }{{"GET", "/a"}, {"GET", "/b"}, {"POST", "/a"}, {"POST", "/ab"}}

func checkAgainstReference(t *testing.T, data []byte) {
	c := &chooser{data: data}
	mode, pols := genPolicies(c)
	files := renderFiles(pols)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var all []*Policy
	for _, n := range names {
		ps, err := Parse(n, files[n])
		if err != nil {
			t.Fatalf("parse %s: %v\n%s", n, err, files[n])
		}
		all = append(all, ps...)
	}
	repo := newTestRepo(t, mode)
	// warm: the endpoints are resolved before the policies come, so that
	// the final resolutions go through memoization's invalidation.
	warm := c.coin()
	upsertPods := func() {
		upsertReserved(repo)
		for _, p := range mPods {
			repo.UpsertIdentity(SelectableIdentity{ID: p.id, Labels: p.labels(), NamedPorts: p.named})
		}
	}
	if warm {
		upsertPods()
		for si, p := range mPods {
			if _, err := repo.Resolve(Endpoint{ID: uint64(si + 1), Identity: p.id, Labels: p.labels(), NamedPorts: p.named}); err != nil {
				t.Fatalf("resolve: %v", err)
			}
		}
	}
	if _, err := repo.Import(all); err != nil {
		t.Fatalf("import: %v", err)
	}
	if !warm {
		upsertPods()
	}
	cidrs := upsertCIDRs(repo)
	dump := func() string {
		s := "mode " + mode + "\n"
		for _, n := range names {
			s += n + ":\n" + string(files[n]) + "\n"
		}
		return s
	}
	peers := modelPeers()
	for si := range mPods {
		subj := &mPods[si]
		ep := Endpoint{ID: uint64(si + 1), Identity: subj.id, Labels: subj.labels(), NamedPorts: subj.named}
		res, err := repo.Resolve(ep)
		if err != nil {
			t.Fatalf("resolve: %v", err)
		}
		for _, egress := range []bool{false, true} {
			wantPort := testIngressProxy
			if egress {
				wantPort = testEgressProxy
			}
			for pi := range peers {
				peer := &peers[pi]
				mp := mapstate.Peer{Identity: peer.id, CIDRIdentity: cidrOf(cidrs, peer.addr), InCluster: peer.inCluster}
				fp := repo.flowPeerForTest(peer.id, peer.addr, peer.inCluster)
				for _, fl := range modelFlows {
					want := refDecide(mode, pols, subj, egress, peer, fl.proto, fl.port)
					got := res.MapState.Decide(mp, egress, fl.proto, fl.port)
					where := flowName{subj.id, egress, peer.name, fl}
					if got.Allowed != want.allowed {
						t.Fatalf("%s: map allowed=%v (%+v), reference %v\n%s", where, got.Allowed, got, want.allowed, dump())
					}
					ev := repo.evaluate(ep.Labels, ep.Identity, ep.NamedPorts, egress, fp, fl.proto, fl.port)
					if ev.allowed() != want.allowed || ev.redirect() != (want.allowed && want.l7) {
						t.Fatalf("%s: evaluator allowed=%v redirect=%v, reference %+v\n%s", where, ev.allowed(), ev.redirect(), want, dump())
					}
					if !got.Allowed {
						continue
					}
					if want.l7 && got.ProxyPort != wantPort {
						t.Fatalf("%s: L7 rules apply but the map sends to proxy port %d (%+v)\n%s", where, got.ProxyPort, got, dump())
					}
					if got.ProxyPort == 0 {
						continue
					}
					if got.ProxyPort != wantPort {
						t.Fatalf("%s: proxy port %d, want %d", where, got.ProxyPort, wantPort)
					}
					for _, rq := range modelRequests {
						v := res.L7.Check(l7.PortKey{Egress: egress, Protocol: fl.proto, Port: fl.port},
							l7.Peer{Identity: mp.Identity, CIDRIdentity: mp.CIDRIdentity, InCluster: mp.InCluster},
							&l7.Request{Method: rq.method, Path: rq.path, Header: http.Header{}})
						wantHTTP := !want.l7 || refHTTPAllows(want.http, rq.method, rq.path)
						if v.Allowed != wantHTTP {
							t.Fatalf("%s %s %s: proxy allows=%v, reference %v (%+v)\n%s", where, rq.method, rq.path, v.Allowed, wantHTTP, want, dump())
						}
					}
				}
			}
		}
	}
}
