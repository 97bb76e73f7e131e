package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy/l7"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// TestConformance runs the shared conformance cases (K*, C*, L*, P*, S001)
// at the policy level: identities from each case's topology, its policies
// parsed and resolved, and every probe checked with mapstate.Decide on the
// egress side of the source and the ingress side of the destination, and
// Trace must agree with the maps on every pod-to-pod probe. SCTP probes are
// skipped by default (the test machine's kernel has no SCTP, and the
// packet-level run reports them apart); MEMBRANE_CONFORMANCE_SCTP=1 checks
// them too. The cases live in test/conformance/cases in the repository;
// MEMBRANE_CONFORMANCE overrides the folder.

type confCase struct {
	ID       string            `json:"id"`
	Name     string            `json:"name"`
	Level    string            `json:"level"`
	Topology *confTopology     `json:"topology"`
	Policies []json.RawMessage `json:"policies"`
	Expected confExpected      `json:"expected"`
}

type confTopology struct {
	Namespaces  map[string]struct{ Labels map[string]string } `json:"namespaces"`
	Pods        []confPod                                     `json:"pods"`
	ServedPorts []confServed                                  `json:"servedPorts"`
	Identities  []confIdentity                                `json:"identities"`
	Nodes       []struct {
		Name       string `json:"name"`
		InternalIP string `json:"internalIP"`
	} `json:"nodes"`
	External []struct {
		Name       string   `json:"name"`
		ResolvesTo []string `json:"resolvesTo"`
	} `json:"external"`
}

type confPod struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels"`
	IP          string            `json:"ip"`
	Derived     map[string]string `json:"ciliumDerivedLabels"`
	ServedPorts []confServed      `json:"servedPorts"`
}

type confServed struct {
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	Name     string `json:"name"`
}

type confIdentity struct {
	Name      string `json:"name"`
	Labels    any    `json:"labels"`
	ExampleIP string `json:"exampleIP"`
	Role      string `json:"role"`
}

type confExpected struct {
	Probes          []confProbe `json:"probes"`
	MapState        []confEntry `json:"mapState"`
	SelectorMatches []struct {
		Name     string                `json:"name"`
		Selector *metav1.LabelSelector `json:"selector"`
		Labels   map[string]string     `json:"labels"`
		Match    bool                  `json:"match"`
	} `json:"selectorMatches"`
}

type confProbe struct {
	From            string            `json:"from"`
	To              string            `json:"to"`
	Port            any               `json:"port"`
	Protocol        string            `json:"protocol"`
	Allowed         *bool             `json:"allowed"`
	IngressAllowed  *bool             `json:"ingressAllowed"`
	EgressAllowed   *bool             `json:"egressAllowed"`
	LoopbackIgnored bool              `json:"loopbackIgnored"`
	Result          string            `json:"result"`
	Method          string            `json:"method"`
	Path            string            `json:"path"`
	Headers         map[string]string `json:"headers"`
	EntityOfTarget  string            `json:"entityOfTarget"`
	PeerIdentity    string            `json:"peerIdentity"`
	Direction       string            `json:"direction"`
}

type confEntry struct {
	Identity  string `json:"identity"`
	Direction string `json:"direction"`
	Entry     string `json:"entry"`
}

func conformanceDir(t *testing.T) string {
	if d := os.Getenv("MEMBRANE_CONFORMANCE"); d != "" {
		return d
	}
	for _, d := range []string{"../../test/conformance/cases"} {
		if _, err := os.Stat(d); err == nil {
			return d
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("conformance cases not found (set MEMBRANE_CONFORMANCE)")
	}
	t.Skip("conformance cases not found (set MEMBRANE_CONFORMANCE)")
	return ""
}

func loadCase(t *testing.T, path string) *confCase {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c confCase
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &c
}

func TestConformance(t *testing.T) {
	dir := conformanceDir(t)
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no cases in %s: %v", dir, err)
	}
	stats := map[string]int{}
	for _, f := range files {
		id := filepath.Base(f)[:4]
		switch id[0] {
		case 'K', 'C', 'L', 'P':
		case 'S':
			if id != "S001" {
				continue
			}
		default:
			continue // A*: ClusterNetworkPolicy, not implemented
		}
		c := loadCase(t, f)
		t.Run(strings.TrimSuffix(filepath.Base(f), ".yaml"), func(t *testing.T) {
			switch {
			case c.Level == "selector":
				runSelectorCase(t, c)
			case c.Level == "identity":
				runIdentityCase(t, c, stats)
			default:
				runPodCase(t, c, stats)
			}
		})
	}
	t.Logf("probes: %v", stats)
}

func runSelectorCase(t *testing.T, c *confCase) {
	for _, m := range c.Expected.SelectorMatches {
		var p problems
		sel := &labelSelector{none: true}
		if s, ok := convertSelector(&p, "selector", m.Selector, anySourcePrefix); ok {
			sel = &labelSelector{sel: s}
		}
		if !p.empty() {
			// A selector Kubernetes rejects selects nothing (and a
			// policy holding it is refused at parse time).
			sel = &labelSelector{none: true}
		}
		var ls []labels.Label
		for k, v := range m.Labels {
			ls = append(ls, labels.Label{Source: labels.SourceK8s, Key: k, Value: v})
		}
		if got := sel.matches(labels.New(ls...), classUser); got != m.Match {
			t.Errorf("%s: match = %v, want %v", m.Name, got, m.Match)
		}
	}
}

// casePolicies renders a case's policies as one file and parses it. Cilium
// policies without a namespace are applied in the pods' namespace, as
// cilium-cli applies them in its test namespace.
func casePolicies(t *testing.T, c *confCase, mutate func(obj map[string]any)) ([]*Policy, error) {
	t.Helper()
	if len(c.Policies) == 0 {
		return nil, nil
	}
	ns := ""
	if c.Topology != nil && len(c.Topology.Pods) > 0 {
		ns = c.Topology.Pods[0].Namespace
	}
	var docs []string
	for _, raw := range c.Policies {
		var obj map[string]any
		if err := json.Unmarshal(raw, &obj); err != nil {
			t.Fatal(err)
		}
		if obj["kind"] == KindCNP && ns != "" {
			md, _ := obj["metadata"].(map[string]any)
			if _, ok := md["namespace"]; !ok {
				md["namespace"] = ns
			}
		}
		if mutate != nil {
			mutate(obj)
		}
		y, err := yaml.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(y))
	}
	return Parse(c.ID+".yaml", []byte(strings.Join(docs, "---\n")))
}

// stripUnsupported removes toFQDNs rules and DNS rules (L004), which
// Membrane does not implement yet.
func stripUnsupported(obj map[string]any) {
	spec, _ := obj["spec"].(map[string]any)
	eg, _ := spec["egress"].([]any)
	var kept []any
	for _, e := range eg {
		r := e.(map[string]any)
		if _, ok := r["toFQDNs"]; ok {
			continue
		}
		tps, _ := r["toPorts"].([]any)
		for _, tp := range tps {
			pr := tp.(map[string]any)
			if rules, ok := pr["rules"].(map[string]any); ok {
				delete(rules, "dns")
				if len(rules) == 0 {
					delete(pr, "rules")
				}
			}
		}
		kept = append(kept, r)
	}
	if eg != nil {
		spec["egress"] = kept
	}
}

type confWorld struct {
	repo   *Repository
	cidrs  map[netip.Prefix]identity.NumericIdentity
	eps    map[string]*Endpoint
	ips    map[string]netip.Addr
	res    map[string]*Resolved
	nextID identity.NumericIdentity
	byLbl  map[string]identity.NumericIdentity
}

func newConfWorld(t *testing.T) *confWorld {
	w := &confWorld{repo: newTestRepo(t, EnforcementDefault), nextID: identity.MinUser,
		byLbl: map[string]identity.NumericIdentity{}, cidrs: map[netip.Prefix]identity.NumericIdentity{}}
	upsertReserved(w.repo)
	return w
}

func (w *confWorld) resolve(t *testing.T, name string) *Resolved {
	if r, ok := w.res[name]; ok {
		return r
	}
	r, err := w.repo.Resolve(*w.eps[name])
	if err != nil {
		t.Fatalf("resolve %s: %v", name, err)
	}
	w.res[name] = r
	return r
}

// apply brings the world to a case's state: its policies (importing new
// and changed ones, deleting those gone), its pods' identities (new label
// sets get new identities, unused ones are removed) and the CIDR
// identities of the policies' prefixes.
func (w *confWorld) apply(t *testing.T, c *confCase, pols []*Policy) {
	if len(pols) > 0 {
		if _, err := w.repo.Import(pols); err != nil {
			t.Fatalf("import: %v", err)
		}
	}
	keep := map[policyKey]bool{}
	for _, p := range pols {
		keep[p.key()] = true
	}
	for _, p := range w.repo.List() {
		if !keep[p.key()] {
			if _, _, err := w.repo.Delete(strings.Join([]string{p.Kind, p.Namespace, p.Name}, "/")); err != nil {
				t.Fatalf("delete %s: %v", p, err)
			}
		}
	}
	for pf, id := range w.cidrs {
		w.repo.RemoveIdentity(id)
		delete(w.cidrs, pf)
	}
	w.cidrs = upsertCIDRs(w.repo)
	w.eps, w.ips, w.res = map[string]*Endpoint{}, map[string]netip.Addr{}, map[string]*Resolved{}
	used := map[identity.NumericIdentity]bool{}
	for i, p := range c.Topology.Pods {
		ls := podLabels(c, p)
		served := p.ServedPorts
		if served == nil {
			served = c.Topology.ServedPorts
		}
		var named []NamedPort
		for _, s := range served {
			named = append(named, NamedPort{Name: s.Name, Port: s.Port, Protocol: protoNum(s.Protocol)})
		}
		id, ok := w.byLbl[ls.String()]
		if !ok {
			id = w.nextID
			w.nextID++
			w.byLbl[ls.String()] = id
		}
		used[id] = true
		w.repo.UpsertIdentity(SelectableIdentity{ID: id, Labels: ls, NamedPorts: named})
		w.eps[p.Name] = &Endpoint{ID: uint64(i + 1), Identity: id, Labels: ls, NamedPorts: named}
		w.ips[p.Name] = netip.MustParseAddr(p.IP)
	}
	for k, id := range w.byLbl {
		if !used[id] {
			w.repo.RemoveIdentity(id)
			delete(w.byLbl, k)
		}
	}
}

func podLabels(c *confCase, p confPod) labels.Labels {
	var ls []labels.Label
	for k, v := range p.Labels {
		ls = append(ls, labels.Label{Source: labels.SourceK8s, Key: k, Value: v})
	}
	ls = append(ls, labels.Label{Source: labels.SourceK8s, Key: labels.PodNamespaceLabel, Value: p.Namespace})
	for k, v := range c.Topology.Namespaces[p.Namespace].Labels {
		ls = append(ls, labels.Label{Source: labels.SourceK8s, Key: labels.NamespaceLabelsPrefix + k, Value: v})
	}
	for k, v := range p.Derived {
		ls = append(ls, labels.Label{Source: labels.SourceK8s, Key: k, Value: v})
	}
	return labels.New(ls...)
}

func podCasePolicies(t *testing.T, c *confCase) []*Policy {
	var mutate func(map[string]any)
	if c.ID == "L004" {
		// toFQDNs and DNS rules are not supported: the file must be
		// refused with errors naming them; the rest is checked without.
		_, err := casePolicies(t, c, nil)
		if err == nil || !strings.Contains(err.Error(), "toFQDNs") || !strings.Contains(err.Error(), "rules.dns") || !errors.Is(err, ErrUnsupported) {
			t.Fatalf("L004 policies: want errors naming toFQDNs and rules.dns, got %v", err)
		}
		mutate = stripUnsupported
	}
	pols, err := casePolicies(t, c, mutate)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return pols
}

func runPodCase(t *testing.T, c *confCase, stats map[string]int) {
	w := newConfWorld(t)
	w.apply(t, c, podCasePolicies(t, c))
	for _, pr := range c.Expected.Probes {
		checkPodProbe(t, c, w, pr, stats)
	}
}

// TestConformanceSteps applies the steps of each multi-step case in order
// to one repository, as updates: policies replaced and deleted, pods
// relabelled.
func TestConformanceSteps(t *testing.T) {
	dir := conformanceDir(t)
	files, _ := filepath.Glob(filepath.Join(dir, "*__step-*.yaml"))
	groups := map[string][]string{}
	for _, f := range files {
		base := filepath.Base(f)
		if base[0] != 'K' && base[0] != 'C' {
			continue
		}
		name := base[strings.Index(base, "-")+1 : strings.Index(base, "__step-")]
		groups[name] = append(groups[name], f)
	}
	if len(groups) == 0 {
		t.Fatal("no multi-step cases")
	}
	stats := map[string]int{}
	for name, steps := range groups {
		sort.Slice(steps, func(i, j int) bool { return stepOf(steps[i]) < stepOf(steps[j]) })
		t.Run(name, func(t *testing.T) {
			w := newConfWorld(t)
			for _, f := range steps {
				c := loadCase(t, f)
				w.apply(t, c, podCasePolicies(t, c))
				for _, pr := range c.Expected.Probes {
					checkPodProbe(t, c, w, pr, stats)
				}
			}
		})
	}
	t.Logf("probes: %v", stats)
}

func stepOf(f string) int {
	n, _ := strconv.Atoi(strings.TrimSuffix(f[strings.LastIndex(f, "step-")+5:], ".yaml"))
	return n
}

// peerOf describes a probe end as the ipcache does.
func (w *confWorld) peerOf(t *testing.T, c *confCase, name, entity string) (mapstate.Peer, bool) {
	if ep, ok := w.eps[name]; ok {
		return mapstate.Peer{Identity: ep.Identity, CIDRIdentity: cidrOf(w.cidrs, w.ips[name]), InCluster: true}, true
	}
	if rest, ok := strings.CutPrefix(name, "world:"); ok {
		for _, e := range c.Topology.External {
			if e.Name == rest && len(e.ResolvesTo) > 0 {
				a := netip.MustParseAddr(e.ResolvesTo[0])
				return mapstate.Peer{Identity: identity.World, CIDRIdentity: cidrOf(w.cidrs, a)}, true
			}
		}
		a, err := netip.ParseAddr(rest)
		if err == nil {
			return mapstate.Peer{Identity: identity.World, CIDRIdentity: cidrOf(w.cidrs, a)}, true
		}
	}
	if strings.HasPrefix(name, "node:") {
		ipText := name[strings.Index(name, "(")+1 : strings.Index(name, ")")]
		id := identity.RemoteNode
		if entity == EntityHost {
			id = identity.Host
		}
		return mapstate.Peer{Identity: id, CIDRIdentity: cidrOf(w.cidrs, netip.MustParseAddr(ipText)), InCluster: true}, true
	}
	t.Errorf("probe end %q: unknown", name)
	return mapstate.Peer{}, false
}

func probePort(t *testing.T, pr confProbe) (uint8, uint16) {
	proto := protoNum(pr.Protocol)
	if proto == mapstate.ProtoICMP {
		return proto, 8 // echo request
	}
	switch v := pr.Port.(type) {
	case float64:
		return proto, uint16(v)
	case string:
		n, err := strconv.Atoi(v)
		if err == nil {
			return proto, uint16(n)
		}
	}
	t.Fatalf("probe %+v: bad port", pr)
	return 0, 0
}

func checkPodProbe(t *testing.T, c *confCase, w *confWorld, pr confProbe, stats map[string]int) {
	if pr.LoopbackIgnored {
		stats["loopback-ignored"]++
		return
	}
	proto, port := probePort(t, pr)
	if proto == mapstate.ProtoSCTP && os.Getenv("MEMBRANE_CONFORMANCE_SCTP") == "" {
		stats["sctp-skipped"]++
		return
	}
	if c.ID == "L004" && strings.HasPrefix(pr.To, "world:") {
		stats["fqdn-skipped"]++
		return
	}
	desc := fmt.Sprintf("%s -> %s %d/%s", pr.From, pr.To, port, mapstate.ProtoName(proto))
	egressOK, ingressOK := true, true
	var egressDec, ingressDec mapstate.Decision
	if _, ok := w.eps[pr.From]; ok {
		peer, ok := w.peerOf(t, c, pr.To, pr.EntityOfTarget)
		if !ok {
			return
		}
		egressDec = w.resolve(t, pr.From).MapState.Decide(peer, true, proto, port)
		egressOK = egressDec.Allowed
	}
	if _, ok := w.eps[pr.To]; ok {
		peer, ok := w.peerOf(t, c, pr.From, "")
		if !ok {
			return
		}
		ingressDec = w.resolve(t, pr.To).MapState.Decide(peer, false, proto, port)
		ingressOK = ingressDec.Allowed
	}
	stats["checked"]++
	checkTraceAgrees(t, w, pr, desc, proto, port, egressDec, ingressDec)
	if pr.EgressAllowed != nil && *pr.EgressAllowed != egressOK {
		t.Errorf("%s: egress allowed = %v, want %v (%+v)", desc, egressOK, *pr.EgressAllowed, egressDec)
	}
	if pr.IngressAllowed != nil && *pr.IngressAllowed != ingressOK {
		t.Errorf("%s: ingress allowed = %v, want %v (%+v)", desc, ingressOK, *pr.IngressAllowed, ingressDec)
	}
	allowed := egressOK && ingressOK
	switch {
	case pr.Allowed != nil:
		if *pr.Allowed != allowed {
			t.Errorf("%s: allowed = %v, want %v (egress %+v, ingress %+v)", desc, allowed, *pr.Allowed, egressDec, ingressDec)
		}
	case pr.Result == "dropped":
		if allowed {
			t.Errorf("%s: allowed, want dropped (egress %+v, ingress %+v)", desc, egressDec, ingressDec)
		}
	case pr.Result == "allowed" || pr.Result == "l7-denied":
		if !allowed {
			t.Errorf("%s: dropped, want %s (egress %+v, ingress %+v)", desc, pr.Result, egressDec, ingressDec)
			return
		}
		checkL7Probe(t, w, pr, desc, proto, port, egressDec, ingressDec)
	default:
		t.Errorf("%s: probe without expectation", desc)
	}
}

// checkL7Probe checks an HTTP probe that passes L3/L4: when either side
// redirects to the proxy, the L7 policy of that side decides.
func checkL7Probe(t *testing.T, w *confWorld, pr confProbe, desc string, proto uint8, port uint16, egressDec, ingressDec mapstate.Decision) {
	if pr.Method == "" {
		if pr.Result != "allowed" {
			t.Errorf("%s: result %s without an HTTP request", desc, pr.Result)
		}
		return
	}
	path := pr.Path
	if path == "" {
		path = "/"
	}
	req := &l7.Request{Method: pr.Method, Path: path, Host: "echo", Header: http.Header{}}
	for k, v := range pr.Headers {
		req.Header.Set(k, v)
	}
	verdict := true
	redirected := false
	check := func(subject, peerName string, egress bool, dec mapstate.Decision, wantPort uint16) {
		if dec.ProxyPort == 0 {
			return
		}
		redirected = true
		if dec.ProxyPort != wantPort {
			t.Errorf("%s: proxy port %d, want %d", desc, dec.ProxyPort, wantPort)
		}
		mp, _ := w.peerOf(t, nil, peerName, "")
		v := w.resolve(t, subject).L7.Check(l7.PortKey{Egress: egress, Protocol: proto, Port: port},
			l7.Peer{Identity: mp.Identity, CIDRIdentity: mp.CIDRIdentity, InCluster: mp.InCluster}, req)
		verdict = verdict && v.Allowed
	}
	if _, ok := w.eps[pr.From]; ok {
		check(pr.From, pr.To, true, egressDec, testEgressProxy)
	}
	if _, ok := w.eps[pr.To]; ok {
		check(pr.To, pr.From, false, ingressDec, testIngressProxy)
	}
	want := pr.Result == "allowed"
	if pr.Result == "l7-denied" && !redirected {
		t.Errorf("%s: not redirected to the proxy, want l7-denied", desc)
		return
	}
	if verdict != want {
		t.Errorf("%s %s %s: L7 allowed = %v, want %s", desc, pr.Method, path, verdict, pr.Result)
	}
}

// runIdentityCase checks Cilium's identity-level cases (P*): the subject's
// map state, per peer identity, with the peer's example address.
func runIdentityCase(t *testing.T, c *confCase, stats map[string]int) {
	pols, err := casePolicies(t, c, nil)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	repo := newTestRepo(t, EnforcementDefault)
	if _, err := repo.Import(pols); err != nil {
		t.Fatal(err)
	}
	upsertReserved(repo)
	cidrs := upsertCIDRs(repo)
	peers := map[string]mapstate.Peer{}
	var subject *Endpoint
	next := identity.MinUser
	for _, ci := range c.Topology.Identities {
		switch {
		case strings.HasPrefix(ci.Role, "subject"):
			var ls []labels.Label
			for _, s := range ci.Labels.([]any) {
				ls = append(ls, labels.Label{Source: labels.SourceUnspec, Key: s.(string)})
			}
			subject = &Endpoint{ID: 1, Identity: next, Labels: labels.New(ls...)}
			repo.UpsertIdentity(SelectableIdentity{ID: next, Labels: subject.Labels})
			next++
		case ci.ExampleIP != "":
			a := netip.MustParseAddr(ci.ExampleIP)
			peers[ci.Name] = mapstate.Peer{Identity: identity.World, CIDRIdentity: cidrOf(cidrs, a)}
		}
	}
	if subject == nil {
		t.Fatal("no subject identity")
	}
	res, err := repo.Resolve(*subject)
	if err != nil {
		t.Fatal(err)
	}
	flows := []struct {
		proto uint8
		port  uint16
	}{{mapstate.ProtoTCP, 80}, {mapstate.ProtoUDP, 53}, {mapstate.ProtoICMP, 8}, {mapstate.ProtoSCTP, 9}}
	for _, e := range c.Expected.MapState {
		for _, f := range flows {
			d := res.MapState.Decide(peers[e.Identity], e.Direction == "egress", f.proto, f.port)
			if (e.Entry == "deny") != d.Denied || (e.Entry == "allow") != d.Allowed {
				t.Errorf("mapState %s %s %d/%d: got %+v, want %s", e.Identity, e.Direction, f.port, f.proto, d, e.Entry)
			}
		}
	}
	for _, pr := range c.Expected.Probes {
		for _, f := range flows {
			d := res.MapState.Decide(peers[pr.PeerIdentity], pr.Direction == "egress", f.proto, f.port)
			stats["checked"]++
			if d.Allowed != (pr.Result == "allowed") {
				t.Errorf("probe %s %s %d/%d: got %+v, want %s", pr.PeerIdentity, pr.Direction, f.port, f.proto, d, pr.Result)
			}
		}
	}
}

// checkTraceAgrees: Trace between two pods gives the verdicts the maps give.
func checkTraceAgrees(t *testing.T, w *confWorld, pr confProbe, desc string, proto uint8, port uint16, egressDec, ingressDec mapstate.Decision) {
	from, okF := w.eps[pr.From]
	to, okT := w.eps[pr.To]
	if !okF || !okT {
		return
	}
	tr, err := w.repo.Trace(TraceRequest{From: TracePeer{Endpoint: from, IP: w.ips[pr.From]}, To: TracePeer{Endpoint: to, IP: w.ips[pr.To]}, Protocol: proto, Port: port})
	if err != nil {
		t.Fatalf("%s: trace: %v", desc, err)
	}
	if tr.Egress.Allowed != egressDec.Allowed || tr.Ingress.Allowed != ingressDec.Allowed ||
		(tr.Ingress.Verdict == VerdictRedirected) != (ingressDec.ProxyPort != 0) {
		t.Errorf("%s: trace disagrees with the maps (egress %+v, ingress %+v):\n%s", desc, egressDec, ingressDec, tr)
	}
}
