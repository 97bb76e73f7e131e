package conformance

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// Plan is a case made concrete: the topology to build and the probes to
// send.
type Plan struct {
	Topo   TopoPlan
	Probes []PlannedProbe
	// Notes go into the case's report line (one node, emulations).
	Notes []string
}

// TopoPlan is what to build: endpoints, the world namespace's addresses
// and ports, and addresses the host holds (nodes).
type TopoPlan struct {
	Pods       []PodPlan
	World      []netip.Addr
	WorldPorts []ServedPort
	HostAddrs  []netip.Addr
}

// PodPlan is one endpoint: a namespace with servers on Ports.
type PodPlan struct {
	Name   string
	IP     netip.Addr
	Labels []string
	Ports  []ServedPort
}

// Key identifies a topology up to labels: two cases with the same key run
// on the same namespaces and endpoints, relabelled.
func (t TopoPlan) Key() string {
	var b strings.Builder
	for _, p := range t.Pods {
		fmt.Fprintf(&b, "pod %s %s", p.Name, p.IP)
		for _, sp := range p.Ports {
			fmt.Fprintf(&b, " %s=%d/%s", sp.Name, sp.Port, sp.Protocol)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "world %v", t.World)
	for _, sp := range t.WorldPorts {
		fmt.Fprintf(&b, " %d/%s", sp.Port, sp.Protocol)
	}
	fmt.Fprintf(&b, "\nhost %v\n", t.HostAddrs)
	return b.String()
}

// Pod returns the planned pod of that name.
func (t TopoPlan) Pod(name string) (PodPlan, bool) {
	for _, p := range t.Pods {
		if p.Name == name {
			return p, true
		}
	}
	return PodPlan{}, false
}

// Peer is one end of a probe: an endpoint, or an address of the world
// namespace.
type Peer struct {
	Pod   string     `json:"pod,omitempty"`
	World netip.Addr `json:"world,omitempty"`
}

// HTTPRequest is what an HTTP probe sends.
type HTTPRequest struct {
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Headers map[string]string `json:"headers,omitempty"`
}

// PlannedProbe is one probe of a case.
type PlannedProbe struct {
	// Index is the probe's position in expected.probes.
	Index    int
	From, To string
	Src      Peer
	Dsts     []netip.Addr
	Port     uint16
	Protocol string // TCP, UDP, SCTP, ICMP
	HTTP     *HTTPRequest
	Want     Expectation
	// Skip says why the probe is not sent (counted as skipped).
	Skip string
	// Unsupported says why it cannot be sent here (counted apart).
	Unsupported string
}

// PlanOptions are facts of the machine that change a plan.
type PlanOptions struct {
	// SCTP is false when the kernel has no SCTP.
	SCTP bool
	// SubjectIP is the address of an identity-level case's subject.
	SubjectIP netip.Addr
}

// Reasons a probe is skipped or unsupported.
const (
	skipHairpin   = "from = to: needs a Service hairpin, which Membrane does not have yet"
	skipFQDN      = "target named by toFQDNs: needs DNS-aware policy, which the runner does not emulate"
	noSCTP        = "SCTP unsupported on this kernel"
	noSCTPProbe   = "SCTP probes are not implemented by the runner"
	defaultSubjIP = "10.244.0.100"
)

// MakePlan turns a pod- or identity-level case into a plan.
func MakePlan(c *Case, opt PlanOptions) (*Plan, error) {
	if !opt.SubjectIP.IsValid() {
		opt.SubjectIP = netip.MustParseAddr(defaultSubjIP)
	}
	switch c.Level {
	case LevelPod:
		return podPlan(c, opt)
	case LevelIdentity:
		return identityPlan(c, opt)
	}
	return nil, fmt.Errorf("plan %s: level %s has no topology", c.ID, c.Level)
}

func podPlan(c *Case, opt PlanOptions) (*Plan, error) {
	t := c.Topology
	p := &Plan{}
	for _, pod := range t.Pods {
		ip, err := netip.ParseAddr(pod.IP)
		if err != nil || !ip.Is4() {
			return nil, fmt.Errorf("plan %s: pod %s: ip %q is not an IPv4 address", c.ID, pod.Name, pod.IP)
		}
		p.Topo.Pods = append(p.Topo.Pods, PodPlan{
			Name: pod.Name, IP: ip, Labels: PodLabels(pod, t.Namespaces[pod.Namespace]),
			Ports: mergePorts(t.ServedPorts, pod.ServedPorts),
		})
	}
	sort.Slice(p.Topo.Pods, func(i, j int) bool { return p.Topo.Pods[i].Name < p.Topo.Pods[j].Name })
	external := map[string][]netip.Addr{}
	fqdn := map[string]bool{}
	var worldPorts []ServedPort
	for _, e := range t.External {
		names := e.ResolvesTo
		if e.Kind == "ip" || len(names) == 0 {
			names = []string{e.Name}
		}
		fqdn[e.Name] = e.Kind == "fqdn"
		for _, n := range names {
			a, err := netip.ParseAddr(n)
			if err != nil || !a.Is4() {
				return nil, fmt.Errorf("plan %s: external %s: %q is not an IPv4 address", c.ID, e.Name, n)
			}
			external[e.Name] = append(external[e.Name], a)
			p.Topo.World = appendAddr(p.Topo.World, a)
		}
		for _, port := range e.Ports {
			worldPorts = append(worldPorts, ServedPort{Port: port, Protocol: "TCP"})
		}
	}
	p.Topo.WorldPorts = mergePorts(worldPorts, nil)
	for _, n := range t.Nodes {
		a, err := netip.ParseAddr(n.InternalIP)
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("plan %s: node %s: internalIP %q is not an IPv4 address", c.ID, n.Name, n.InternalIP)
		}
		p.Topo.HostAddrs = appendAddr(p.Topo.HostAddrs, a)
	}
	sortAddrs(p.Topo.World)
	sortAddrs(p.Topo.HostAddrs)
	if len(t.Nodes) > 1 {
		p.Notes = append(p.Notes, fmt.Sprintf("single node: the case has %d nodes, all pods run on this one", len(t.Nodes)))
	}
	usesFQDN := policiesUse(c, "toFQDNs")
	for i, ps := range c.Expected.Probes {
		pp, err := planPodProbe(p, i, ps, external, fqdn, usesFQDN, opt)
		if err != nil {
			return nil, fmt.Errorf("plan %s: %w", c.ID, err)
		}
		p.Probes = append(p.Probes, pp)
	}
	return p, nil
}

func planPodProbe(p *Plan, i int, ps ProbeSpec, external map[string][]netip.Addr, fqdn map[string]bool, usesFQDN bool, opt PlanOptions) (PlannedProbe, error) {
	pp := PlannedProbe{
		Index: i, From: ps.From, To: ps.To, Port: ps.Port.Port,
		Protocol: strings.ToUpper(ps.Protocol), Want: ExpectationOf(ps),
	}
	if pp.Protocol == "" {
		pp.Protocol = "TCP"
	}
	if _, ok := p.Topo.Pod(ps.From); !ok {
		return pp, fmt.Errorf("probe %d: from %q is not a pod of the topology", i, ps.From)
	}
	pp.Src = Peer{Pod: ps.From}
	switch {
	case strings.HasPrefix(ps.To, "world:"):
		name := strings.TrimPrefix(ps.To, "world:")
		addrs, ok := external[name]
		if !ok {
			return pp, fmt.Errorf("probe %d: to %q: no external %q", i, ps.To, name)
		}
		pp.Dsts = addrs
		if fqdn[name] && usesFQDN {
			pp.Skip = skipFQDN
		}
	case strings.HasPrefix(ps.To, "node:"):
		a, err := nodeAddr(ps.To)
		if err != nil {
			return pp, fmt.Errorf("probe %d: %w", i, err)
		}
		pp.Dsts = []netip.Addr{a}
	default:
		to, ok := p.Topo.Pod(ps.To)
		if !ok {
			return pp, fmt.Errorf("probe %d: to %q is not a pod, world:NAME or node:NAME(IP)", i, ps.To)
		}
		pp.Dsts = []netip.Addr{to.IP}
		if ps.To == ps.From {
			pp.Skip = skipHairpin
		}
	}
	switch pp.Protocol {
	case "TCP":
		if ps.Result != "" {
			pp.HTTP = httpRequestOf(ps)
		}
	case "UDP", "ICMP":
	case "SCTP":
		if pp.Skip == "" {
			pp.Unsupported = noSCTP
			if opt.SCTP {
				pp.Unsupported = noSCTPProbe
			}
		}
	default:
		return pp, fmt.Errorf("probe %d: protocol %q: want TCP, UDP, SCTP or ICMP", i, ps.Protocol)
	}
	if pp.Protocol != "ICMP" && pp.Port == 0 {
		return pp, fmt.Errorf("probe %d: %s needs a port", i, pp.Protocol)
	}
	return pp, nil
}

// nodeAddr reads `node:NAME(IP)`.
func nodeAddr(to string) (netip.Addr, error) {
	open, close := strings.IndexByte(to, '('), strings.LastIndexByte(to, ')')
	if open < 0 || close < open {
		return netip.Addr{}, fmt.Errorf("to %q: want node:NAME(IP)", to)
	}
	a, err := netip.ParseAddr(to[open+1 : close])
	if err != nil || !a.Is4() {
		return netip.Addr{}, fmt.Errorf("to %q: %q is not an IPv4 address", to, to[open+1:close])
	}
	return a, nil
}

// httpRequestOf builds the request of a Cilium HTTP probe: the method
// (GET by default), the path (or the URL's path, or /) and the headers.
// https URLs are sent as plain HTTP: the emulated servers speak HTTP on
// every port.
func httpRequestOf(ps ProbeSpec) *HTTPRequest {
	r := &HTTPRequest{Method: ps.Method, Path: ps.Path, Headers: ps.Headers}
	if r.Method == "" {
		r.Method = "GET"
	}
	if r.Path == "" {
		if _, rest, ok := strings.Cut(ps.URL, "://"); ok {
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				r.Path = rest[i:]
			}
		}
	}
	if r.Path == "" {
		r.Path = "/"
	}
	return r
}

// mergePorts joins port lists, one entry per port/protocol (the first
// name wins), sorted.
func mergePorts(lists ...[]ServedPort) []ServedPort {
	seen := map[string]bool{}
	var out []ServedPort
	for _, l := range lists {
		for _, sp := range l {
			sp.Protocol = strings.ToUpper(sp.Protocol)
			if sp.Protocol == "" {
				sp.Protocol = "TCP"
			}
			k := fmt.Sprintf("%d/%s", sp.Port, sp.Protocol)
			if seen[k] {
				continue
			}
			seen[k] = true
			out = append(out, sp)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Port != out[j].Port {
			return out[i].Port < out[j].Port
		}
		return out[i].Protocol < out[j].Protocol
	})
	return out
}

func appendAddr(as []netip.Addr, a netip.Addr) []netip.Addr {
	for _, x := range as {
		if x == a {
			return as
		}
	}
	return append(as, a)
}

func sortAddrs(as []netip.Addr) {
	sort.Slice(as, func(i, j int) bool { return as[i].Less(as[j]) })
}

func sortedCopy(ss []string) []string {
	out := append([]string(nil), ss...)
	sort.Strings(out)
	return out
}

// policiesUse reports whether any of the case's policies has the key
// (a JSON object key such as toFQDNs).
func policiesUse(c *Case, key string) bool {
	needle := []byte(`"` + key + `"`)
	for _, p := range c.Policies {
		if bytes.Contains(p, needle) {
			return true
		}
	}
	return false
}

// policyKinds lists the kinds of the case's policies.
func policyKinds(c *Case) []string {
	var out []string
	for _, p := range c.Policies {
		var obj struct {
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal(p, &obj); err == nil && obj.Kind != "" {
			out = append(out, obj.Kind)
		}
	}
	return out
}
