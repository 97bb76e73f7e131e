package policy

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// TestTraceAgreesWithDecide: for random rule sets (the fuzz model) and many
// random flows between endpoints, label sets and outside addresses, Trace's
// rule-by-rule verdicts agree with mapstate.Decide on the resolved maps.
func TestTraceAgreesWithDecide(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	rounds := 150
	if testing.Short() {
		rounds = 30
	}
	checked := 0
	for round := 0; round < rounds; round++ {
		data := make([]byte, 200)
		for i := range data {
			data[i] = byte(rng.UintN(256))
		}
		mode, pols := genPolicies(&chooser{data: data})
		repo := newTestRepo(t, mode)
		for name, b := range renderFiles(pols) {
			ps, err := Parse(name, b)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := repo.Import(ps); err != nil {
				t.Fatal(err)
			}
		}
		upsertReserved(repo)
		eps := map[identity.NumericIdentity]*Endpoint{}
		for _, p := range mPods {
			repo.UpsertIdentity(SelectableIdentity{ID: p.id, Labels: p.labels(), NamedPorts: p.named})
			eps[p.id] = &Endpoint{ID: uint64(p.id), Identity: p.id, Labels: p.labels(), NamedPorts: p.named}
		}
		cidrs := upsertCIDRs(repo)
		peers := modelPeers()
		for n := 0; n < 40; n++ {
			src := &peers[rng.IntN(len(peers))]
			dst := &peers[rng.IntN(len(peers))]
			fl := modelFlows[rng.IntN(len(modelFlows))]
			req := TraceRequest{From: tracePeerOf(src, eps, rng), To: tracePeerOf(dst, eps, rng), Protocol: fl.proto, Port: fl.port}
			tr, err := repo.Trace(req)
			if err != nil {
				t.Fatalf("trace: %v", err)
			}
			check := func(dt *DirectionTrace, subj, peer *mPeerEnd, egress bool) {
				if (dt != nil) != (subj.pod != nil) {
					t.Fatalf("%s trace present=%v for %s", dirName(egress), dt != nil, subj.name)
				}
				if dt == nil {
					return
				}
				res, err := repo.Resolve(*eps[subj.id])
				if err != nil {
					t.Fatal(err)
				}
				d := res.MapState.Decide(mapstate.Peer{Identity: peer.id, CIDRIdentity: cidrOf(cidrs, peer.addr), InCluster: peer.inCluster}, egress, fl.proto, fl.port)
				checked++
				where := fmt.Sprintf("%s of %s, peer %s, %d/%s", dirName(egress), subj.name, peer.name, fl.port, mapstate.ProtoName(fl.proto))
				if dt.Allowed != d.Allowed {
					t.Fatalf("%s: trace %s, map %+v\n%s", where, dt.Verdict, d, tr)
				}
				if dt.Verdict == VerdictRedirected && d.ProxyPort == 0 {
					t.Fatalf("%s: trace redirects, map does not: %+v\n%s", where, d, tr)
				}
				if dt.Verdict == VerdictDenied && !d.Denied {
					t.Fatalf("%s: trace denies by rule, map has no deny: %+v\n%s", where, d, tr)
				}
				if dt.Map != nil && (dt.Map.Allowed != d.Allowed || dt.Map.ProxyPort != d.ProxyPort) {
					t.Fatalf("%s: trace map decision %+v, map %+v", where, dt.Map, d)
				}
			}
			check(tr.Egress, src, dst, true)
			check(tr.Ingress, dst, src, false)
			want := true
			for _, dt := range []*DirectionTrace{tr.Egress, tr.Ingress} {
				if dt != nil && !dt.Allowed {
					want = false
				}
			}
			if tr.Allowed != want {
				t.Fatalf("final verdict %v, want %v\n%s", tr.Allowed, want, tr)
			}
		}
	}
	t.Logf("%d direction verdicts checked", checked)
}

// tracePeerOf describes a flow end to Trace: pods as endpoints or (at
// random) as label sets with their address, others as addresses.
func tracePeerOf(p *mPeerEnd, eps map[identity.NumericIdentity]*Endpoint, rng *rand.Rand) TracePeer {
	if p.pod != nil {
		if rng.IntN(2) == 0 {
			return TracePeer{Endpoint: eps[p.id], IP: p.addr}
		}
		return TracePeer{Labels: eps[p.id].Labels, IP: p.addr}
	}
	return TracePeer{IP: p.addr, Identity: p.id, InCluster: p.inCluster}
}

func TestTraceOutput(t *testing.T) {
	w := newUnitWorld(t, EnforcementDefault,
		"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: web, namespace: x}\nspec:\n  description: web serves GET from db\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: db}}]\n    toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET, path: /public}]}}]\n  ingressDeny:\n  - fromEntities: [world]\n",
		"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  egress: [{to: [{podSelector: {matchLabels: {app: web}}}]}]\n")
	db, web := w.eps["db.x"], w.eps["web.x"]
	tr, err := w.repo.Trace(TraceRequest{From: TracePeer{Endpoint: &db}, To: TracePeer{Endpoint: &web}, Protocol: mapstate.ProtoTCP, Port: 80})
	if err != nil {
		t.Fatal(err)
	}
	want := `Flow: 80/TCP (policy revision 2)
Egress of endpoint 257 (identity 257), to endpoint 256 (identity 256):
  policy enforced (default deny)
  allow    NetworkPolicy x/db spec.egress[0] [cookie 3]
  verdict: allowed
  policy map: allowed by egress identity=256 any/ANY (identity lookup) [cookie 3]
Ingress of endpoint 256 (identity 256), from endpoint 257 (identity 257):
  policy enforced (default deny)
  redirect CiliumNetworkPolicy x/web spec.ingress[0] (web serves GET from db) [cookie 1]
           HTTP: method=GET path=/public
  verdict: redirected (L7 proxy port 15001)
  policy map: allowed by ingress identity=257 80/TCP (identity lookup) [cookie 1], to the L7 proxy on port 15001
Final verdict: REDIRECTED
`
	if tr.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", tr, want)
	}
	// From outside: denied by rule.
	tr, err = w.repo.Trace(TraceRequest{From: TracePeer{IP: mustAddr("8.8.8.8")}, To: TracePeer{Endpoint: &web}, Protocol: mapstate.ProtoTCP, Port: 80})
	if err != nil || tr.Allowed || tr.Verdict != VerdictDenied || tr.Egress != nil || len(tr.Ingress.Rules) != 1 || tr.Ingress.Rules[0].Effect != "deny" {
		t.Fatalf("world: %v\n%s", err, tr)
	}
	// Labels of an identity that does not exist yet: default deny.
	tr, err = w.repo.Trace(TraceRequest{From: TracePeer{Labels: lbls(t, "app=new,io.kubernetes.pod.namespace=x")}, To: TracePeer{Endpoint: &web}, Protocol: mapstate.ProtoTCP, Port: 80})
	if err != nil || tr.Allowed || tr.Verdict != VerdictDefaultDeny || tr.Egress.Verdict != VerdictNotEnforced || tr.Ingress.Map != nil {
		t.Fatalf("new labels: %v\n%s", err, tr)
	}
	b, err := json.Marshal(tr)
	if err != nil || !strings.Contains(string(b), `"verdict":"default-deny"`) {
		t.Errorf("json: %s %v", b, err)
	}
	// Bad requests.
	if _, err := w.repo.Trace(TraceRequest{To: TracePeer{Endpoint: &web}}); err == nil {
		t.Error("trace without source accepted")
	}
	if _, err := w.repo.Trace(TraceRequest{From: TracePeer{IP: mustAddr("10.0.0.1"), InCluster: true}, To: TracePeer{Endpoint: &web}}); err == nil {
		t.Error("cluster address without identity accepted")
	}
}
