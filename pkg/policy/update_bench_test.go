package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
)

// Benchmarks of a policy update as the agent makes it (Membrane issue 6:
// `policy import` to enforcement): parse the file, import it, give every
// new CIDR a CIDR identity, resolve every endpoint. The standing state is
// the bench's (bench/cmd/membrane-bench): role=server accepts 1,000 CIDRs,
// role=other 9,000 more; the update is one CiliumNetworkPolicy of N ingress
// rules selecting role=server, N-1 of them a new /32 each and the last one
// role=client.
//
//	go test -run '^$' -bench 'Parse|PolicyUpdate|ResolveUnchanged' -benchmem -benchtime=1x ./pkg/policy/

type benchObj = map[string]any

func benchCNP(name, role string, ingress []benchObj) []byte {
	b, err := json.Marshal(benchObj{
		"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": benchObj{"name": name, "namespace": "default"},
		"spec": benchObj{
			"endpointSelector": benchObj{"matchLabels": benchObj{"role": role}},
			"ingress":          ingress,
		},
	})
	if err != nil {
		panic(err)
	}
	return b
}

func benchPorts(proto string, ports ...int) []benchObj {
	var ps []benchObj
	for _, p := range ports {
		ps = append(ps, benchObj{"port": fmt.Sprint(p), "protocol": proto})
	}
	return []benchObj{{"ports": ps}}
}

func benchAddr(v uint32) string {
	return fmt.Sprintf("%d.%d.%d.%d/32", v>>24, v>>16&255, v>>8&255, v&255)
}

func benchCIDRs(base uint32, from, to int) []string {
	out := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, benchAddr(base+uint32(i)))
	}
	return out
}

const (
	benchMainBase = 0xc6120000 // 198.18.0.0: the standing CIDRs
	benchUpdBase  = 0xc6130000 // 198.19.0.0: the update's
)

// updatePolicyJSON is the update of n rules.
func updatePolicyJSON(n int) []byte {
	rules := make([]benchObj, 0, n)
	for i := 0; i < n-1; i++ {
		rules = append(rules, benchObj{"fromCIDR": []string{benchAddr(benchUpdBase + uint32(i))}, "toPorts": benchPorts("UDP", 7000)})
	}
	rules = append(rules, benchObj{"fromEndpoints": []benchObj{{"matchLabels": benchObj{"role": "client"}}}, "toPorts": benchPorts("UDP", 7000)})
	return benchCNP("upd", "server", rules)
}

func standingPoliciesJSON() [][]byte {
	return [][]byte{
		benchCNP("server", "server", []benchObj{
			{"fromCIDR": benchCIDRs(benchMainBase, 0, 1000), "toPorts": benchPorts("TCP", 5001)},
			{"fromEndpoints": []benchObj{{"matchLabels": benchObj{"role": "client"}}}, "toPorts": benchPorts("TCP", 5001, 5002, 8080)},
			{"fromEntities": []string{"host"}, "toPorts": benchPorts("TCP", 8080)},
			{"fromEndpoints": []benchObj{{"matchLabels": benchObj{"role": "eptest"}}}, "toPorts": benchPorts("UDP", 7001)},
		}),
		benchCNP("other", "other", []benchObj{
			{"fromCIDR": benchCIDRs(benchMainBase, 1000, 10000), "toPorts": benchPorts("TCP", 5001)},
		}),
	}
}

// updateFixture is an agent's view of the standing state.
type updateFixture struct {
	repo    *Repository
	eps     []Endpoint
	cidrIDs map[netip.Prefix]identity.NumericIdentity
	nextID  identity.NumericIdentity
	// repoTime: the time syncCIDRs spent in the repository (Prefixes,
	// UpsertIdentity, RemoveIdentity), the rest being the agent's.
	repoTime time.Duration
}

func newUpdateFixture(tb testing.TB) *updateFixture {
	tb.Helper()
	f := &updateFixture{repo: NewRepository(testConfig(EnforcementDefault), nil),
		cidrIDs: map[netip.Prefix]identity.NumericIdentity{}, nextID: identity.LocalScope}
	upsertReserved(f.repo)
	for i, role := range []string{"client", "server", "other"} {
		ls := labels.New(labels.Label{Source: labels.SourceK8s, Key: "role", Value: role},
			labels.Label{Source: labels.SourceK8s, Key: labels.PodNamespaceLabel, Value: "default"})
		id := identity.MinUser + identity.NumericIdentity(i)
		f.repo.UpsertIdentity(SelectableIdentity{ID: id, Labels: ls})
		f.eps = append(f.eps, Endpoint{ID: uint64(i + 1), Identity: id, Labels: ls})
	}
	var pols []*Policy
	for i, j := range standingPoliciesJSON() {
		ps, err := Parse(fmt.Sprintf("standing-%d.json", i), j)
		if err != nil {
			tb.Fatal(err)
		}
		pols = append(pols, ps...)
	}
	if _, err := f.repo.Import(pols); err != nil {
		tb.Fatal(err)
	}
	f.syncCIDRs()
	f.resolveAll(tb)
	return f
}

// syncCIDRs gives new prefixes identities and drops those of prefixes no
// policy names any more, as the agent's syncCIDRIdentities and
// publishCIDRs do. It returns how many identities it added.
func (f *updateFixture) syncCIDRs() int {
	want := map[netip.Prefix]bool{}
	var add []SelectableIdentity
	t0 := time.Now()
	prefixes := f.repo.Prefixes()
	f.repoTime += time.Since(t0)
	for _, p := range prefixes {
		want[p] = true
		if _, ok := f.cidrIDs[p]; ok {
			continue
		}
		f.nextID++
		f.cidrIDs[p] = f.nextID
		add = append(add, SelectableIdentity{ID: f.nextID, Prefix: p,
			Labels: labels.New(labels.Label{Source: labels.SourceCIDR, Key: p.String()})})
	}
	t0 = time.Now()
	for _, si := range add {
		f.repo.UpsertIdentity(si)
	}
	f.repoTime += time.Since(t0)
	for p, id := range f.cidrIDs {
		if !want[p] {
			delete(f.cidrIDs, p)
			t0 = time.Now()
			f.repo.RemoveIdentity(id)
			f.repoTime += time.Since(t0)
		}
	}
	return len(add)
}

func (f *updateFixture) resolveAll(tb testing.TB) []*Resolved {
	out := make([]*Resolved, len(f.eps))
	for i, ep := range f.eps {
		res, err := f.repo.Resolve(ep)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = res
	}
	return out
}

var updateFixtures sync.Map // "json/1000" -> []byte: the update policies

func updatePolicyCached(format string, n int) []byte {
	key := fmt.Sprintf("%s/%d", format, n)
	if v, ok := updateFixtures.Load(key); ok {
		return v.([]byte)
	}
	data := updatePolicyJSON(n)
	if format == "yaml" {
		var err error
		if data, err = yaml.JSONToYAML(data); err != nil {
			panic(err)
		}
	}
	updateFixtures.Store(key, data)
	return data
}

// cpuTime returns the CPU time the process used: on a shared machine it
// says more than the elapsed time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time per op since start as cpu-ms/op.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
}

// BenchmarkParse parses the update policy, as JSON and as YAML.
func BenchmarkParse(b *testing.B) {
	for _, format := range []string{"json", "yaml"} {
		for _, n := range []int{1000, 10000} {
			b.Run(fmt.Sprintf("%s/%d", format, n), func(b *testing.B) {
				data := updatePolicyCached(format, n)
				b.ReportAllocs()
				b.SetBytes(int64(len(data)))
				b.ResetTimer()
				cpu := cpuTime()
				for b.Loop() {
					if _, err := Parse("upd."+format, data); err != nil {
						b.Fatal(err)
					}
				}
				reportCPU(b, cpu)
			})
		}
	}
}

// BenchmarkPolicyUpdate: the agent's work for one `policy import` of the
// update on the standing state, step by step (ms/op of each step are
// reported as extra metrics). Between iterations the update is deleted
// again, outside the timer.
func BenchmarkPolicyUpdate(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			f := newUpdateFixture(b)
			data := updatePolicyCached("json", n)
			var parse, imp, ids, repoIDs, resolve time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			var cpu time.Duration
			for b.Loop() {
				c0 := cpuTime()
				t0 := time.Now()
				pols, err := Parse("upd.json", data)
				if err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if _, err := f.repo.Import(pols); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				before := f.repoTime
				if added := f.syncCIDRs(); added != n-1 {
					b.Fatalf("%d new CIDR identities, want %d", added, n-1)
				}
				t3 := time.Now()
				repoIDs += f.repoTime - before
				f.resolveAll(b)
				t4 := time.Now()
				cpu += cpuTime() - c0
				parse += t1.Sub(t0)
				imp += t2.Sub(t1)
				ids += t3.Sub(t2)
				resolve += t4.Sub(t3)

				b.StopTimer()
				if _, _, err := f.repo.Delete("default/upd"); err != nil {
					b.Fatal(err)
				}
				f.syncCIDRs()
				f.resolveAll(b)
				b.StartTimer()
			}
			b.ReportMetric(float64(cpu)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
			per := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(b.N) }
			b.ReportMetric(per(parse), "parse-ms/op")
			b.ReportMetric(per(imp), "import-ms/op")
			b.ReportMetric(per(ids), "identities-ms/op")
			b.ReportMetric(per(repoIDs), "upsert-ms/op")
			b.ReportMetric(per(resolve), "resolve-ms/op")
		})
	}
}

// BenchmarkResolveUnchanged resolves the standing state's endpoints again
// when nothing changed.
func BenchmarkResolveUnchanged(b *testing.B) {
	f := newUpdateFixture(b)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime()
	for b.Loop() {
		f.resolveAll(b)
	}
	reportCPU(b, cpu)
}
