package policy

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The fast path of Parse must agree with the located decoder on every
// document: give the same policies when it reads one, and leave the rest to
// the decoder (which then gives the same errors as before).

// checkFastParse parses data with and without the fast path and fails when
// they differ in any way.
func checkFastParse(t *testing.T, file string, data []byte) {
	t.Helper()
	fast, ferr := parse(file, data, true)
	slow, serr := parse(file, data, false)
	if (ferr == nil) != (serr == nil) || (ferr != nil && ferr.Error() != serr.Error()) {
		t.Fatalf("%s: fast path error %v, decoder error %v\n%s", file, ferr, serr, data)
	}
	if !reflect.DeepEqual(fast, slow) {
		t.Fatalf("%s: fast path and decoder disagree\nfast: %s\nslow: %s\n%s", file, dumpPolicies(fast), dumpPolicies(slow), data)
	}
	for _, p := range slow {
		fp, ferr := parseObject(p.File, p.Document, p.Object, true)
		sp, serr := parseObject(p.File, p.Document, p.Object, false)
		if (ferr == nil) != (serr == nil) || (ferr != nil && ferr.Error() != serr.Error()) || !reflect.DeepEqual(fp, sp) {
			t.Fatalf("%s: ParseObject: fast %v (%v), decoder %v (%v)\n%s", file, dumpPolicies([]*Policy{fp}), ferr, dumpPolicies([]*Policy{sp}), serr, p.Object)
		}
	}
}

func dumpPolicies(pols []*Policy) string {
	var b strings.Builder
	for _, p := range pols {
		if p == nil {
			b.WriteString("<nil>\n")
			continue
		}
		fmt.Fprintf(&b, "%s file=%s doc=%d prefixes=%v object=%s\n", p, p.File, p.Document, p.prefixes, p.Object)
		for _, s := range p.specs {
			fmt.Fprintf(&b, "  %s subject=%s dd=%v labels=%q desc=%q\n", s.path, s.subject, s.defaultDeny, s.labels, s.description)
			for _, it := range s.items {
				fmt.Fprintf(&b, "    %s peers=%v ports=%v requires=%v knp=%v\n", it.path, it.peers, it.ports, it.requires, it.knp)
			}
		}
	}
	return b.String()
}

// fastParseCorpus is documents of every kind and feature, valid and not.
func fastParseCorpus(t testing.TB) map[string][]byte {
	files := map[string][]byte{}
	add := func(name string, data string) { files[name] = []byte(data) }
	for i := 0; i < 200; i += 10 {
		j, _ := json.Marshal(benchPolicy(i, 8000+i))
		add(fmt.Sprintf("bench-%d.json", i), string(j))
	}
	add("update.json", string(updatePolicyJSON(20)))
	add("cnp.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web
  namespace: ns1
  labels: {a: b}
  annotations: {x: "y"}
  uid: 1234
  resourceVersion: "7"
spec:
  description: "web \"rule\" é"
  endpointSelector:
    matchLabels: {app: web, "k8s:tier": front}
    matchExpressions:
    - {key: env, operator: In, values: [prod, staging]}
    - {key: canary, operator: DoesNotExist}
  enableDefaultDeny: {ingress: false, egress: null}
  labels: ["k8s:a=b", {key: c, value: d, source: k8s}, {key: e}]
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}, {}]
    fromRequires: [{matchLabels: {env: prod}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}, {port: http, protocol: TCP}, {port: 8080}]
      rules:
        http:
        - {method: GET, path: "/api/.*", host: "a.example", headers: ["X-A: b"]}
        - headerMatches: [{name: X-B, value: c, mismatch: LOG}]
  - fromCIDR: [10.0.0.0/8, 192.168.1.1, "2001:db8::/32"]
  - fromCIDRSet: [{cidr: 172.16.0.0/12, except: [172.16.1.0/24]}]
  - fromEntities: [world, host, cluster]
    toPorts: [{ports: [{port: "1000", endPort: 2000, protocol: UDP}]}]
  - icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv4}, {type: 128, family: IPv6}]}]
  - {}
  ingressDeny:
  - fromEntities: [world]
    toPorts: [{ports: [{port: "25"}]}]
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}]}]
  - toCIDR: [1.1.1.1/32]
  - toEntities: [all]
  - toRequires: [{matchLabels: {env: prod}}]
  egressDeny:
  - toCIDRSet: [{cidr: 8.8.8.0/24}]
status: {state: ok}
`)
	add("specs.yaml", `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: cw}
specs:
- endpointSelector: {}
  ingress: [{fromEndpoints: [{matchLabels: {"io.cilium.k8s.namespace.labels.team": a}}]}]
- endpointSelector: {matchLabels: {"reserved:host": ""}}
  egress: [{toEndpoints: [{matchLabels: {"reserved:world": ""}}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: both}
spec: {endpointSelector: {}, ingress: [{fromEndpoints: []}], egress: null}
specs: [{endpointSelector: {}, egressDeny: [{toPorts: [{ports: [{port: "0"}]}]}]}]
`)
	add("knp.yaml", `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: ns1}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    ports: [{port: 5432}, {port: db, protocol: TCP}, {port: 1000, endPort: 2000, protocol: UDP}, {protocol: SCTP}]
  - {}
  egress:
  - to: [{namespaceSelector: {}}]
  - ports: [{port: 53, protocol: UDP}]
---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {name: deny-all}
spec: {podSelector: {}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: nulls, namespace: null}
spec: {podSelector: null, ingress: null, egress: [{to: null, ports: [{port: null, protocol: null}]}]}
`)
	add("rules.json", `[{"endpointSelector": {"matchLabels": {"id.app": "web"}},
  "Labels": [{"key": "name", "value": "l3", "source": "unspec"}],
  "Ingress": [{"FromEndpoints": [{"MatchLabels": {"id.client": ""}}],
     "toports": [{"PORTS": [{"Port": "80", "Protocol": "tcp"}], "Rules": {"HTTP": [{"Method": "GET"}]}}]}]},
 {"endpointSelector": {"matchLabels": {"reserved:host": ""}}, "egress": [{"toCIDR": ["10.0.0.1"]}],
  "labels": ["name=l3"]}]
[{"endpointSelector": {}, "ingress": [{}]}]
`)
	add("list.yaml", `apiVersion: v1
kind: List
items:
- apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: a}
  spec: {endpointSelector: {}}
`)
	add("escapes.json", `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"e\u0073c","namespace":"n"},
"spec":{"endpointSelector":{"matchLabels":{"a\/b":"\u00e9\ud83d\ude00"}},"description":"tab\there \"q\" \\ \ud800",
"ingress":[{"fromCIDR":["10.0.0.0/8"],"toPorts":[{"ports":[{"port":80,"protocol":"TCP"},{"port":8e1},{"port":80.0},{"port":-1}]}]}]}}`)
	add("dup.json", `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"d"},
"spec":{"endpointSelector":{},"ingress":[{"fromCIDR":["10.0.0.0/8"]}],"ingress":[{"fromCIDR":["11.0.0.0/8"]}]}}`)
	add("meta.json", `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"m","creationTimestamp":null,"generation":3},
"spec":{"endpointSelector":{}}}`)
	add("flow.json", `{apiVersion: cilium.io/v2, kind: CiliumNetworkPolicy, metadata: {name: flow}, spec: {endpointSelector: {}}}`)
	add("concat.json", `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"a"},"spec":{"endpointSelector":{}}}{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"b"},"spec":{"endpointSelector":{}}}
  `)
	// Random rule sets of the differential fuzz test.
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 60; i++ {
		b := make([]byte, 200)
		for j := range b {
			b[j] = byte(rng.UintN(256))
		}
		_, pols := genPolicies(&chooser{data: b})
		for n, data := range renderFiles(pols) {
			files[fmt.Sprintf("gen%d-%s", i, n)] = data
		}
	}
	// The conformance cases' policies.
	for _, d := range []string{os.Getenv("MEMBRANE_CONFORMANCE"), "../../test/conformance/cases"} {
		if d == "" {
			continue
		}
		cases, _ := filepath.Glob(filepath.Join(d, "*.yaml"))
		for _, f := range cases {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var c confCase
			if err := yaml.Unmarshal(data, &c); err != nil {
				continue
			}
			for i, raw := range c.Policies {
				files[fmt.Sprintf("%s-%d.json", filepath.Base(f), i)] = raw
			}
		}
		if len(cases) > 0 {
			break
		}
	}
	return files
}

// TestFastParseAgrees checks the fast path against the decoder on the
// corpus, as JSON and as YAML, and on random changes of its documents.
func TestFastParseAgrees(t *testing.T) {
	corpus := fastParseCorpus(t)
	names := make([]string, 0, len(corpus))
	for n := range corpus {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		checkFastParse(t, n, corpus[n])
		// The same documents as YAML.
		if strings.HasSuffix(n, ".json") {
			if y, err := yaml.JSONToYAML(corpus[n]); err == nil {
				checkFastParse(t, strings.TrimSuffix(n, ".json")+".yaml", y)
			}
		}
	}
	rng := rand.New(rand.NewPCG(5, 6))
	rounds := 30
	if testing.Short() {
		rounds = 5
	}
	for _, n := range names {
		docs, errs := splitDocuments(n, corpus[n], false)
		if len(errs) > 0 {
			continue
		}
		for _, d := range docs {
			for i := 0; i < rounds; i++ {
				tree, err := decodeTree(d.json)
				if err != nil {
					t.Fatal(err)
				}
				for k := 0; k <= rng.IntN(3); k++ {
					tree = mutateTree(rng, tree)
				}
				b, err := json.Marshal(tree)
				if err != nil {
					t.Fatal(err)
				}
				checkFastParse(t, fmt.Sprintf("%s-%d-%d.json", n, d.n, i), b)
			}
		}
	}
}

// mutateTree changes one node of a tree: a value replaced (by a scalar, an
// empty or odd container, or a copy of another node), or an object's key
// dropped, renamed (case changed, another field's name).
func mutateTree(rng *rand.Rand, tree any) any {
	count := 0
	var countNodes func(v any)
	countNodes = func(v any) {
		count++
		switch x := v.(type) {
		case map[string]any:
			for _, e := range x {
				countNodes(e)
			}
		case []any:
			for _, e := range x {
				countNodes(e)
			}
		}
	}
	countNodes(tree)
	target, donorAt := rng.IntN(count), rng.IntN(count)
	var donor any
	i := 0
	var find func(v any)
	find = func(v any) {
		if i == donorAt {
			donor = v
		}
		i++
		switch x := v.(type) {
		case map[string]any:
			for _, k := range sortedKeys(x) {
				find(x[k])
			}
		case []any:
			for _, e := range x {
				find(e)
			}
		}
	}
	find(tree)
	donor = deepCopy(donor)
	replacements := []any{nil, json.Number("0"), json.Number("80"), json.Number("-3"), json.Number("1.5"), json.Number("1e2"),
		json.Number("70000"), "", "x", "80", "TCP", "UDP", "10.0.0.0/8", "10.0.0.1", "Web", "world", "In", true, false,
		[]any{}, map[string]any{}, []any{nil}, []any{"a"}, []any{map[string]any{}},
		map[string]any{"matchLabels": map[string]any{"a": "b"}}, donor}
	fieldNames := append(append(append(append([]string{}, ruleFields...), ingressFields...), egressFields...), portFields...)
	i = 0
	var change func(v any) any
	change = func(v any) any {
		here := i == target
		i++
		if here {
			if m, ok := v.(map[string]any); ok && len(m) > 0 && rng.IntN(2) == 0 {
				ks := sortedKeys(m)
				k := ks[rng.IntN(len(ks))]
				e := m[k]
				delete(m, k)
				switch rng.IntN(4) {
				case 0: // dropped
				case 1:
					m[strings.ToUpper(k[:1])+k[1:]] = e
				case 2:
					m[strings.ToLower(k)] = e
				default:
					m[fieldNames[rng.IntN(len(fieldNames))]] = e
				}
				return m
			}
			return replacements[rng.IntN(len(replacements))]
		}
		switch x := v.(type) {
		case map[string]any:
			for _, k := range sortedKeys(x) {
				x[k] = change(x[k])
			}
		case []any:
			for j := range x {
				x[j] = change(x[j])
			}
		}
		return v
	}
	return change(tree)
}

func deepCopy(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = deepCopy(e)
		}
		return l
	}
	return v
}

// FuzzFastParse: on any input, the fast path and the decoder agree.
//
//	go test -run '^$' -fuzz FuzzFastParse -fuzztime 2m ./pkg/policy/
func FuzzFastParse(f *testing.F) {
	corpus := fastParseCorpus(f)
	names := make([]string, 0, len(corpus))
	for n := range corpus {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if len(corpus[n]) < 4096 {
			f.Add(n, corpus[n])
		}
	}
	f.Fuzz(func(t *testing.T, name string, data []byte) {
		if len(data) > 1<<13 {
			return
		}
		checkFastParse(t, name, data)
	})
}

// TestFastParseReads: the fast path reads every valid document of the
// corpus but the few it leaves to the decoder on purpose.
func TestFastParseReads(t *testing.T) {
	leaves := map[string]bool{
		"list.yaml": true, // a List
		"meta.json": true, // creationTimestamp, generation
		"dup.json":  true, // a duplicate key
	}
	corpus := fastParseCorpus(t)
	for n, data := range corpus {
		if _, err := parse(n, data, false); err != nil {
			continue
		}
		docs, errs := splitDocuments(n, data, true)
		if len(errs) > 0 {
			t.Fatalf("%s: %v", n, errs[0])
		}
		for _, d := range docs {
			if _, ok := parseDocumentFast(n, d.n, d.json); !ok && !leaves[n] {
				t.Errorf("%s: document %d is left to the decoder:\n%s", n, d.n, d.json)
			}
		}
	}
}
