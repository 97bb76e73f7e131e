package policy

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// Benchmarks at the scale the agent must handle: 10,000 rules and 10,000
// identities. The setup is shared and built once; every benchmark is cheap
// enough for CI with -benchtime=1x:
//
//	go test -run '^$' -bench . -benchmem -benchtime=1x ./pkg/policy/

const (
	benchRules      = 10000
	benchIdentities = 10000
	benchApps       = 1000
	benchNamespaces = 50
)

var (
	benchOnce sync.Once
	benchRepo *Repository
	benchEP   Endpoint
)

func benchIdentityLabels(i int) labels.Labels {
	return labels.New(
		labels.Label{Source: labels.SourceK8s, Key: "app", Value: fmt.Sprintf("app-%d", i%benchApps)},
		labels.Label{Source: labels.SourceK8s, Key: "version", Value: fmt.Sprintf("v%d", i/benchApps)},
		labels.Label{Source: labels.SourceK8s, Key: labels.PodNamespaceLabel, Value: fmt.Sprintf("ns-%d", i%benchNamespaces)},
	)
}

// benchPolicy is rule i: app-i's pods accept app-(i+1) and app-(i+2) on a
// port, with every tenth rule denying a port to world, every hundredth
// using L7.
func benchPolicy(i int, port int) map[string]any {
	ns := fmt.Sprintf("ns-%d", i%benchNamespaces)
	in := map[string]any{
		"fromEndpoints": []any{
			map[string]any{"matchLabels": map[string]any{"app": fmt.Sprintf("app-%d", (i+50)%benchApps)}},
			map[string]any{"matchLabels": map[string]any{"app": fmt.Sprintf("app-%d", (i+100)%benchApps)}},
		},
		"toPorts": []any{map[string]any{"ports": []any{map[string]any{"port": fmt.Sprint(port), "protocol": "TCP"}}}},
	}
	if i%100 == 0 {
		in["toPorts"].([]any)[0].(map[string]any)["rules"] = map[string]any{"http": []any{map[string]any{"method": "GET"}}}
	}
	spec := map[string]any{
		"endpointSelector": map[string]any{"matchLabels": map[string]any{"app": fmt.Sprintf("app-%d", i%benchApps)}},
		"ingress":          []any{in},
	}
	if i%10 == 0 {
		spec["egressDeny"] = []any{map[string]any{"toEntities": []any{"world"}, "toPorts": []any{map[string]any{"ports": []any{map[string]any{"port": "25"}}}}}}
	}
	return map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": fmt.Sprintf("rule-%d", i), "namespace": ns}, "spec": spec}
}

func benchSetup(b *testing.B) {
	benchOnce.Do(func() {
		var sb strings.Builder
		for i := 0; i < benchRules; i++ {
			j, _ := json.Marshal(benchPolicy(i, 8000+i%100))
			sb.Write(j)
			sb.WriteByte('\n')
		}
		pols, err := Parse("bench.json", []byte(sb.String()))
		if err != nil {
			b.Fatal(err)
		}
		benchRepo = NewRepository(testConfig(EnforcementDefault), nil)
		upsertReserved(benchRepo)
		for i := 0; i < benchIdentities; i++ {
			benchRepo.UpsertIdentity(SelectableIdentity{ID: identity.MinUser + identity.NumericIdentity(i), Labels: benchIdentityLabels(i)})
		}
		if _, err := benchRepo.Import(pols); err != nil {
			b.Fatal(err)
		}
		benchEP = Endpoint{ID: 1, Identity: identity.MinUser + 7, Labels: benchIdentityLabels(7)}
	})
	b.ResetTimer()
}

// BenchmarkResolve resolves one endpoint among 10,000 rules.
func BenchmarkResolve(b *testing.B) {
	benchSetup(b)
	b.ReportAllocs()
	var entries int
	for b.Loop() {
		res, err := benchRepo.Resolve(benchEP)
		if err != nil {
			b.Fatal(err)
		}
		entries = len(res.MapState)
	}
	b.ReportMetric(float64(entries), "entries")
}

// BenchmarkImportOneAndResolve imports one more rule (a new policy, then
// replacing it) and resolves one endpoint: the work of one `policy import`
// for one endpoint.
func BenchmarkImportOneAndResolve(b *testing.B) {
	benchSetup(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p := benchPolicy(7, 9000+i%1000)
		p["metadata"].(map[string]any)["name"] = "extra"
		j, _ := json.Marshal(p)
		pols, err := Parse("extra.json", j)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := benchRepo.Import(pols); err != nil {
			b.Fatal(err)
		}
		if _, err := benchRepo.Resolve(benchEP); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkUpsertIdentity adds an identity: every cached selector (about
// 20,000) is matched against it once.
func BenchmarkUpsertIdentity(b *testing.B) {
	benchSetup(b)
	b.ReportAllocs()
	for b.Loop() {
		benchRepo.UpsertIdentity(SelectableIdentity{ID: identity.MinUser + benchIdentities + 1, Labels: benchIdentityLabels(benchIdentities + 1)})
		benchRepo.RemoveIdentity(identity.MinUser + benchIdentities + 1)
	}
}

// BenchmarkResolveWide resolves an endpoint a clusterwide rule opens to
// every one of the 10,000 identities.
func BenchmarkResolveWide(b *testing.B) {
	benchSetup(b)
	repo := NewRepository(testConfig(EnforcementDefault), nil)
	for i := 0; i < benchIdentities; i++ {
		repo.UpsertIdentity(SelectableIdentity{ID: identity.MinUser + identity.NumericIdentity(i), Labels: benchIdentityLabels(i)})
	}
	pols, err := Parse("wide.yaml", []byte("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: wide}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoints: [{}], toPorts: [{ports: [{port: '80', protocol: TCP}, {port: '443', protocol: TCP}]}]}]\n  ingressDeny: [{fromEndpoints: [{matchLabels: {version: v3}}], toPorts: [{ports: [{port: '443', protocol: TCP}]}]}]\n"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := repo.Import(pols); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	b.ReportAllocs()
	var entries int
	for b.Loop() {
		res, err := repo.Resolve(benchEP)
		if err != nil {
			b.Fatal(err)
		}
		entries = len(res.MapState)
	}
	b.ReportMetric(float64(entries), "entries")
}

// BenchmarkDiff diffs two policy maps of 100,000 entries that differ in 1%.
func BenchmarkDiff(b *testing.B) {
	const n = 100000
	old, cur := mapstate.MapState{}, mapstate.MapState{}
	for i := 0; i < n; i++ {
		k := mapstate.Key{Identity: identity.NumericIdentity(256 + i/10), Protocol: mapstate.ProtoTCP, Port: uint16(8000 + i%10), PortPrefixLen: 16}
		old[k] = mapstate.Entry{Cookie: uint32(i)}
		switch {
		case i%200 == 0: // 0.5% removed
		case i%200 == 1: // 0.5% changed
			cur[k] = mapstate.Entry{Deny: true, Cookie: uint32(i)}
		default:
			cur[k] = old[k]
		}
		if i%200 == 2 { // 0.5% added
			cur[mapstate.Key{Identity: identity.NumericIdentity(256 + i/10), Egress: true}] = mapstate.Entry{}
		}
	}
	b.ResetTimer()
	b.ReportAllocs()
	var changes int
	for b.Loop() {
		changes = len(mapstate.Diff(old, cur))
	}
	b.ReportMetric(float64(changes), "changes")
}
