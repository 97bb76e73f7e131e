package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// A small model of policies for the differential fuzz test: random rules
// over a small universe, rendered as real documents for Parse, and a
// reference evaluator written from the semantics, rule by rule, with plain
// address arithmetic for CIDRs (no map state, no selector cache, no
// "most specific prefix").

type mPod struct {
	id        identity.NumericIdentity
	app       string
	ns        string // "" for an endpoint without namespace (default)
	container bool   // labels of the container source
	addr      netip.Addr
	named     []NamedPort
}

func (p mPod) namespace() string {
	if p.ns == "" {
		return "default"
	}
	return p.ns
}

var nsLabels = map[string]map[string]string{
	"x": {"ns": "x", "team": "a"},
	"y": {"ns": "y"},
}

var mPods = []mPod{
	{256, "web", "x", false, netip.MustParseAddr("10.1.2.3"), []NamedPort{{"http", 80, mapstate.ProtoTCP}, {"dns", 53, mapstate.ProtoUDP}}},
	{257, "db", "x", false, netip.MustParseAddr("10.1.2.9"), []NamedPort{{"http", 8080, mapstate.ProtoTCP}, {"metrics", 9000, mapstate.ProtoTCP}}},
	{258, "web", "y", false, netip.MustParseAddr("10.1.9.9"), []NamedPort{{"http", 80, mapstate.ProtoTCP}}},
	{259, "cli", "y", false, netip.MustParseAddr("10.9.9.9"), nil},
	{260, "web", "", true, netip.MustParseAddr("172.16.0.5"), []NamedPort{{"dns", 53, mapstate.ProtoUDP}, {"metrics", 9000, mapstate.ProtoUDP}}},
}

func (p mPod) labels() labels.Labels {
	src := labels.SourceK8s
	if p.container {
		src = labels.SourceContainer
	}
	ls := []labels.Label{{Source: src, Key: "app", Value: p.app}}
	if p.ns != "" {
		ls = append(ls, labels.Label{Source: labels.SourceK8s, Key: labels.PodNamespaceLabel, Value: p.ns})
		for k, v := range nsLabels[p.ns] {
			ls = append(ls, labels.Label{Source: labels.SourceK8s, Key: labels.NamespaceLabelsPrefix + k, Value: v})
		}
	}
	return labels.New(ls...)
}

// mPeerEnd is the other end of a flow.
type mPeerEnd struct {
	name      string
	id        identity.NumericIdentity
	pod       *mPod
	addr      netip.Addr
	inCluster bool
}

func modelPeers() []mPeerEnd {
	var out []mPeerEnd
	for i := range mPods {
		p := &mPods[i]
		out = append(out, mPeerEnd{name: fmt.Sprintf("pod %d", p.id), id: p.id, pod: p, addr: p.addr, inCluster: true})
	}
	out = append(out,
		mPeerEnd{name: "host", id: identity.Host, addr: netip.MustParseAddr("10.1.2.1"), inCluster: true},
		mPeerEnd{name: "remote-node", id: identity.RemoteNode, addr: netip.MustParseAddr("10.200.0.1"), inCluster: true},
	)
	for _, a := range []string{"192.168.1.1", "10.1.2.200", "10.3.0.1", "8.8.8.8"} {
		out = append(out, mPeerEnd{name: "world " + a, id: identity.World, addr: netip.MustParseAddr(a)})
	}
	return out
}

var cidrPool = []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.0/28", "10.1.2.3/32", "192.168.0.0/16", "0.0.0.0/0"}

// ---- rules -----------------------------------------------------------------

type mPolicy struct {
	kind string // KindCNP, KindCCNP, KindKNP, KindRuleList
	name string
	ns   string
	// subject: matchLabels on app ("" = {}).
	subjectApp string
	// ddOverride: enableDefaultDeny per direction (Cilium), nil = default.
	ddOverride [2]*bool
	// policyTypes (KNP): nil = default.
	policyTypes []string
	items       []*mItem
}

type mItem struct {
	egress, deny bool
	peersGiven   bool // false: no peer field at all
	peers        []mPeer
	portsGiven   bool
	ports        []mPort
	requiresApp  string // fromRequires {app: X}, "" none
}

type mPeer struct {
	kind   string // sel, entity, cidr, cidrset, ipblock, knp
	app    string // sel: matchLabels app ("" none)
	selNS  string // sel: explicit io.kubernetes.pod.namespace
	nsSel  string // knp: "" none, "{}" empty, "x" ns=x, "default" metadata.name=default
	podSel string // knp: "" none, "{}" empty, else app=...
	entity string
	cidr   string
	except string
}

type mPort struct {
	proto   string // TCP UDP SCTP ANY "" ICMP
	port    int
	endPort int
	name    string
	icmp    int
	http    []mHTTP
}

type mHTTP struct{ method, path string }

type chooser struct {
	data []byte
	i    int
}

func (c *chooser) n(k int) int {
	if c.i >= len(c.data) || k <= 1 {
		c.i++
		return 0
	}
	b := c.data[c.i]
	c.i++
	return int(b) % k
}

func (c *chooser) pick(ss ...string) string { return ss[c.n(len(ss))] }
func (c *chooser) coin() bool               { return c.n(2) == 1 }

func genPolicies(c *chooser) (mode string, pols []*mPolicy) {
	mode = []string{EnforcementDefault, EnforcementDefault, EnforcementDefault, EnforcementAlways, EnforcementNever}[c.n(5)]
	n := 1 + c.n(4)
	for i := 0; i < n; i++ {
		p := &mPolicy{kind: []string{KindCNP, KindCCNP, KindKNP, KindRuleList}[c.n(4)], name: fmt.Sprintf("p%d", i)}
		switch p.kind {
		case KindCNP, KindKNP:
			p.ns = c.pick("x", "y", "default")
		}
		p.subjectApp = c.pick("", "web", "db", "cli")
		if p.kind == KindKNP {
			switch c.n(4) {
			case 1:
				p.policyTypes = []string{"Ingress"}
			case 2:
				p.policyTypes = []string{"Egress"}
			case 3:
				p.policyTypes = []string{"Ingress", "Egress"}
			}
		} else if c.n(4) == 0 {
			for d := 0; d < 2; d++ {
				if c.coin() {
					v := c.coin()
					p.ddOverride[d] = &v
				}
			}
		}
		ni := c.n(4)
		for j := 0; j < ni; j++ {
			p.items = append(p.items, genItem(c, p.kind))
		}
		pols = append(pols, p)
	}
	return mode, pols
}

func genItem(c *chooser, kind string) *mItem {
	it := &mItem{egress: c.coin()}
	knp := kind == KindKNP
	if !knp {
		it.deny = c.n(3) == 0
	}
	it.peersGiven = c.n(4) != 0
	if it.peersGiven {
		np := c.n(3)
		if knp {
			np = 1 + c.n(2)
		}
		peerKind := "sel"
		if !knp {
			peerKind = c.pick("sel", "sel", "entity", "cidr", "cidrset")
		}
		for k := 0; k < np; k++ {
			var pr mPeer
			if knp {
				switch c.n(3) {
				case 0:
					pr = mPeer{kind: "ipblock", cidr: cidrPool[c.n(len(cidrPool))]}
					pr.except = genExcept(c, pr.cidr)
				default:
					pr = mPeer{kind: "knp", podSel: c.pick("", "{}", "web", "db"), nsSel: c.pick("", "{}", "x", "default")}
					if pr.podSel == "" && pr.nsSel == "" {
						pr.podSel = "{}"
					}
				}
			} else {
				pr.kind = peerKind
				switch peerKind {
				case "sel":
					pr.app = c.pick("", "web", "db", "cli")
					if c.n(3) == 0 {
						pr.selNS = c.pick("x", "y", "default")
					}
				case "entity":
					pr.entity = c.pick("world", "cluster", "host", "remote-node", "all", "none")
				case "cidr", "cidrset":
					pr.cidr = cidrPool[c.n(len(cidrPool))]
					if peerKind == "cidrset" {
						pr.except = genExcept(c, pr.cidr)
					}
				}
			}
			it.peers = append(it.peers, pr)
		}
	}
	it.portsGiven = c.n(3) != 0
	if it.portsGiven {
		np := 1 + c.n(2)
		if !knp && c.n(5) == 0 {
			for k := 0; k < np; k++ {
				it.ports = append(it.ports, mPort{proto: "ICMP", icmp: []int{0, 8}[c.n(2)]})
			}
		} else {
			for k := 0; k < np; k++ {
				it.ports = append(it.ports, genPort(c, knp, it.deny))
			}
		}
	}
	if !it.peersGiven && !it.portsGiven && knp {
		it.portsGiven = false
	}
	if !knp && c.n(6) == 0 {
		it.requiresApp = c.pick("web", "db")
	}
	return it
}

func genExcept(c *chooser, cidr string) string {
	outer := netip.MustParsePrefix(cidr)
	var inside []string
	for _, s := range cidrPool {
		p := netip.MustParsePrefix(s)
		if p.Bits() > outer.Bits() && outer.Contains(p.Addr()) {
			inside = append(inside, s)
		}
	}
	if len(inside) == 0 || c.coin() {
		return ""
	}
	return inside[c.n(len(inside))]
}

func genPort(c *chooser, knp, deny bool) mPort {
	p := mPort{proto: c.pick("TCP", "UDP", "SCTP", "ANY", "")}
	if knp && (p.proto == "ANY") {
		p.proto = "TCP"
	}
	switch c.n(4) {
	case 0:
		p.name = c.pick("http", "dns", "metrics", "nope")
	case 1:
		p.port = []int{80, 53}[c.n(2)]
		p.endPort = []int{81, 8080, 9000}[c.n(3)]
	default:
		p.port = []int{0, 53, 80, 81, 8080}[c.n(5)]
		if knp && p.port == 0 {
			p.port = 80
		}
	}
	if !knp && !deny && p.proto == "TCP" && p.endPort == 0 && (p.port != 0 || p.name != "") && c.n(3) == 0 {
		n := 1 + c.n(2)
		for k := 0; k < n; k++ {
			p.http = append(p.http, mHTTP{method: c.pick("", "GET", "POST"), path: c.pick("", "/a", "/a.*")})
		}
	}
	return p
}

// ---- rendering ---------------------------------------------------------------

func renderFiles(pols []*mPolicy) map[string][]byte {
	files := map[string][]byte{}
	var docs []string
	for i, p := range pols {
		var obj any
		switch p.kind {
		case KindKNP:
			obj = renderKNP(p)
		case KindRuleList:
			obj = []any{renderCiliumRule(p)}
		default:
			md := map[string]any{"name": p.name}
			if p.kind == KindCNP {
				md["namespace"] = p.ns
			}
			obj = map[string]any{"apiVersion": "cilium.io/v2", "kind": p.kind, "metadata": md, "spec": renderCiliumRule(p)}
		}
		b, err := json.Marshal(obj)
		if err != nil {
			panic(err)
		}
		if p.kind == KindRuleList {
			files[fmt.Sprintf("rules-%d.json", i)] = b
			continue
		}
		docs = append(docs, string(b))
	}
	if len(docs) > 0 {
		files["policies.yaml"] = []byte(strings.Join(docs, "\n---\n"))
	}
	return files
}

func sel(app, ns string) map[string]any {
	ml := map[string]any{}
	if app != "" {
		ml["app"] = app
	}
	if ns != "" {
		ml["io.kubernetes.pod.namespace"] = ns
	}
	return map[string]any{"matchLabels": ml}
}

func renderCiliumRule(p *mPolicy) map[string]any {
	r := map[string]any{"endpointSelector": sel(p.subjectApp, "")}
	dd := map[string]any{}
	for d, name := range []string{"ingress", "egress"} {
		if p.ddOverride[d] != nil {
			dd[name] = *p.ddOverride[d]
		}
	}
	if len(dd) > 0 {
		r["enableDefaultDeny"] = dd
	}
	for _, it := range p.items {
		field := "ingress"
		if it.egress {
			field = "egress"
		}
		if it.deny {
			field += "Deny"
		}
		from := "from"
		if it.egress {
			from = "to"
		}
		o := map[string]any{}
		if it.peersGiven {
			var eps, cidrs, sets, ents []any
			for _, pr := range it.peers {
				switch pr.kind {
				case "sel":
					eps = append(eps, sel(pr.app, pr.selNS))
				case "entity":
					ents = append(ents, pr.entity)
				case "cidr":
					cidrs = append(cidrs, pr.cidr)
				case "cidrset":
					s := map[string]any{"cidr": pr.cidr}
					if pr.except != "" {
						s["except"] = []any{pr.except}
					}
					sets = append(sets, s)
				}
			}
			kind := "sel"
			if len(it.peers) > 0 {
				kind = it.peers[0].kind
			}
			switch kind {
			case "sel":
				o[from+"Endpoints"] = nonNil(eps)
			case "entity":
				o[from+"Entities"] = nonNil(ents)
			case "cidr":
				o[from+"CIDR"] = nonNil(cidrs)
			case "cidrset":
				o[from+"CIDRSet"] = nonNil(sets)
			}
		}
		if it.requiresApp != "" {
			o[from+"Requires"] = []any{sel(it.requiresApp, "")}
		}
		if it.portsGiven {
			var icmps, ports []any
			for _, pt := range it.ports {
				if pt.proto == "ICMP" {
					icmps = append(icmps, map[string]any{"fields": []any{map[string]any{"type": pt.icmp}}})
					continue
				}
				pp := map[string]any{"port": strconv.Itoa(pt.port)}
				if pt.name != "" {
					pp["port"] = pt.name
				}
				if pt.proto != "" {
					pp["protocol"] = pt.proto
				}
				if pt.endPort != 0 {
					pp["endPort"] = pt.endPort
				}
				pr := map[string]any{"ports": []any{pp}}
				if len(pt.http) > 0 {
					var hs []any
					for _, h := range pt.http {
						hm := map[string]any{}
						if h.method != "" {
							hm["method"] = h.method
						}
						if h.path != "" {
							hm["path"] = h.path
						}
						hs = append(hs, hm)
					}
					pr["rules"] = map[string]any{"http": hs}
				}
				ports = append(ports, pr)
			}
			if icmps != nil {
				o["icmps"] = icmps
			} else {
				o["toPorts"] = nonNil(ports)
			}
		}
		list, _ := r[field].([]any)
		r[field] = append(list, o)
	}
	return r
}

func nonNil(l []any) []any {
	if l == nil {
		return []any{}
	}
	return l
}

func renderKNP(p *mPolicy) map[string]any {
	spec := map[string]any{"podSelector": sel(p.subjectApp, "")}
	if p.policyTypes != nil {
		spec["policyTypes"] = p.policyTypes
	}
	for _, it := range p.items {
		field, peerField := "ingress", "from"
		if it.egress {
			field, peerField = "egress", "to"
		}
		o := map[string]any{}
		if it.peersGiven {
			var peers []any
			for _, pr := range it.peers {
				switch pr.kind {
				case "ipblock":
					b := map[string]any{"cidr": pr.cidr}
					if pr.except != "" {
						b["except"] = []any{pr.except}
					}
					peers = append(peers, map[string]any{"ipBlock": b})
				case "knp":
					pe := map[string]any{}
					switch pr.podSel {
					case "":
					case "{}":
						pe["podSelector"] = map[string]any{}
					default:
						pe["podSelector"] = sel(pr.podSel, "")
					}
					switch pr.nsSel {
					case "":
					case "{}":
						pe["namespaceSelector"] = map[string]any{}
					case "default":
						pe["namespaceSelector"] = map[string]any{"matchLabels": map[string]any{"kubernetes.io/metadata.name": "default"}}
					default:
						pe["namespaceSelector"] = map[string]any{"matchLabels": map[string]any{"ns": pr.nsSel}}
					}
					peers = append(peers, pe)
				}
			}
			o[peerField] = nonNil(peers)
		}
		if it.portsGiven {
			var ports []any
			for _, pt := range it.ports {
				pp := map[string]any{}
				if pt.proto != "" {
					pp["protocol"] = pt.proto
				}
				switch {
				case pt.name != "":
					pp["port"] = pt.name
				case pt.port != 0:
					pp["port"] = pt.port
				}
				if pt.endPort != 0 {
					pp["endPort"] = pt.endPort
				}
				ports = append(ports, pp)
			}
			o["ports"] = nonNil(ports)
		}
		list, _ := spec[field].([]any)
		spec[field] = append(list, o)
	}
	return map[string]any{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
		"metadata": map[string]any{"name": p.name, "namespace": p.ns}, "spec": spec}
}

// ---- reference evaluator -----------------------------------------------------

type refVerdict struct {
	allowed bool
	// l7: every allowing rule has L7 rules; http is their union.
	l7   bool
	http []mHTTP
}

func podMatchApp(p *mPod, app string) bool { return app == "" || p.app == app }

// subjectSelects: does the policy apply to pod?
func (p *mPolicy) subjectSelects(pod *mPod) bool {
	if !podMatchApp(pod, p.subjectApp) {
		return false
	}
	switch p.kind {
	case KindCNP, KindKNP:
		return pod.namespace() == p.ns
	}
	return true
}

func (p *mPolicy) defaultDeny(egress bool) bool {
	d := 0
	if egress {
		d = 1
	}
	if p.kind == KindKNP {
		if p.policyTypes == nil {
			if !egress {
				return true
			}
			for _, it := range p.items {
				if it.egress {
					return true
				}
			}
			return false
		}
		want := "Ingress"
		if egress {
			want = "Egress"
		}
		for _, t := range p.policyTypes {
			if t == want {
				return true
			}
		}
		return false
	}
	if p.ddOverride[d] != nil {
		return *p.ddOverride[d]
	}
	for _, it := range p.items {
		if it.egress == egress {
			return true
		}
	}
	return false
}

// itemActive: KNP rules of a direction not in policyTypes are ignored.
func (p *mPolicy) itemActive(it *mItem) bool {
	return p.kind != KindKNP || p.defaultDeny(it.egress)
}

type refReq struct {
	app  string
	kind string
	ns   string
}

func (q refReq) holds(peer *mPeerEnd) bool {
	if q.kind == KindRuleList {
		return peer.pod != nil && peer.pod.app == q.app
	}
	if peer.pod == nil || peer.pod.app != q.app {
		return false
	}
	if q.kind == KindCNP {
		return peer.pod.namespace() == q.ns
	}
	return true
}

func inPrefix(addr netip.Addr, s string) bool {
	return s != "" && netip.MustParsePrefix(s).Contains(addr)
}

// peerMatch: does a peer of a rule match the flow's peer, and is it a
// wildcard (every peer)?
func (p *mPolicy) peerMatch(pr mPeer, peer *mPeerEnd, reqs []refReq) (bool, bool) {
	switch pr.kind {
	case "sel":
		if p.kind == KindRuleList && pr.app == "" && pr.selNS == "" && len(reqs) == 0 {
			return true, true
		}
		for _, q := range reqs {
			if !q.holds(peer) {
				return false, false
			}
		}
		if p.kind == KindRuleList && pr.app == "" && pr.selNS == "" {
			return true, false
		}
		if peer.pod == nil || !podMatchApp(peer.pod, pr.app) {
			return false, false
		}
		switch {
		case pr.selNS != "":
			return peer.pod.namespace() == pr.selNS, false
		case p.kind == KindCNP:
			return peer.pod.namespace() == p.ns, false
		}
		return true, false
	case "entity":
		switch pr.entity {
		case "all":
			return true, true
		case "world":
			return peer.id == identity.World, false
		case "host":
			return peer.id == identity.Host, false
		case "remote-node":
			return peer.id == identity.RemoteNode, false
		case "cluster":
			return peer.id != identity.World, false
		}
		return false, false
	case "cidr", "cidrset":
		return !peer.inCluster && inPrefix(peer.addr, pr.cidr) && !inPrefix(peer.addr, pr.except), false
	case "ipblock":
		return inPrefix(peer.addr, pr.cidr) && !inPrefix(peer.addr, pr.except), false
	case "knp":
		if peer.pod == nil {
			return false, false
		}
		if pr.podSel != "" && pr.podSel != "{}" && peer.pod.app != pr.podSel {
			return false, false
		}
		switch pr.nsSel {
		case "":
			return peer.pod.namespace() == p.ns, false
		case "{}":
			return true, false
		case "default":
			return peer.pod.namespace() == "default", false
		default:
			return nsLabels[peer.pod.ns]["ns"] == pr.nsSel, false
		}
	}
	return false, false
}

func allNamed() []NamedPort {
	var out []NamedPort
	for _, p := range mPods {
		out = append(out, p.named...)
	}
	return out
}

// portMatch: does a port of a rule match? named ports come from the
// subject (ingress) or the peer (egress; every pod's for wildcard peers).
func portMatch(pt mPort, knp bool, proto uint8, port uint16, named []NamedPort) bool {
	if pt.proto == "ICMP" {
		return proto == mapstate.ProtoICMP && int(port) == pt.icmp
	}
	want := pt.proto
	if knp && want == "" {
		want = "TCP" // NetworkPolicy's default protocol
	}
	switch want {
	case "", "ANY":
		if proto != mapstate.ProtoTCP && proto != mapstate.ProtoUDP && proto != mapstate.ProtoSCTP {
			return false
		}
	default:
		if protoNum(want) != proto {
			return false
		}
	}
	if pt.name != "" {
		for _, np := range named {
			if np.Name == pt.name && np.Port == port && np.Protocol == proto {
				return true
			}
		}
		return false
	}
	if pt.port == 0 {
		return true
	}
	end := pt.endPort
	if end == 0 {
		end = pt.port
	}
	return int(port) >= pt.port && int(port) <= end
}

func refDecide(mode string, pols []*mPolicy, subj *mPod, egress bool, peer *mPeerEnd, proto uint8, port uint16) refVerdict {
	if mode == EnforcementNever {
		return refVerdict{allowed: true}
	}
	enforced := mode == EnforcementAlways
	var allowReqs, denyReqs []refReq
	for _, p := range pols {
		if !p.subjectSelects(subj) {
			continue
		}
		if p.defaultDeny(egress) {
			enforced = true
		}
		for _, it := range p.items {
			if it.egress == egress && it.requiresApp != "" {
				q := refReq{app: it.requiresApp, kind: p.kind, ns: p.ns}
				if it.deny {
					denyReqs = append(denyReqs, q)
				} else {
					allowReqs = append(allowReqs, q)
				}
			}
		}
	}
	denied, anyAllow, allL7 := false, false, true
	var http []mHTTP
	for _, p := range pols {
		if !p.subjectSelects(subj) {
			continue
		}
		for _, it := range p.items {
			if it.egress != egress || !p.itemActive(it) {
				continue
			}
			if p.kind != KindKNP && !it.peersGiven && !it.portsGiven {
				continue // `ingress: [{}]` allows nothing
			}
			reqs := allowReqs
			if it.deny {
				reqs = denyReqs
			}
			matchedPlain, matchedL7 := false, false
			var itemHTTP []mHTTP
			try := func(wildcard bool) {
				if !it.portsGiven || (p.kind == KindKNP && len(it.ports) == 0) {
					matchedPlain = true
					return
				}
				named := subj.named
				if egress {
					named = nil
					if peer.pod != nil {
						named = peer.pod.named
					}
					if wildcard {
						named = allNamed()
					}
				}
				for _, pt := range it.ports {
					if portMatch(pt, p.kind == KindKNP, proto, port, named) {
						if len(pt.http) > 0 {
							matchedL7 = true
							itemHTTP = append(itemHTTP, pt.http...)
						} else {
							matchedPlain = true
						}
					}
				}
			}
			switch {
			case !it.peersGiven || (p.kind == KindKNP && len(it.peers) == 0):
				try(true)
			default:
				for _, pr := range it.peers {
					var rq []refReq
					if pr.kind == "sel" {
						rq = reqs
					}
					if ok, wildcard := p.peerMatch(pr, peer, rq); ok {
						// Egress named ports of identity 0 and CIDR
						// peers: every endpoint's.
						try(wildcard || pr.kind == "cidr" || pr.kind == "cidrset" || pr.kind == "ipblock")
					}
				}
			}
			if !matchedPlain && !matchedL7 {
				continue
			}
			if it.deny {
				denied = true
				continue
			}
			anyAllow = true
			if matchedPlain {
				allL7 = false
			} else {
				http = append(http, itemHTTP...)
			}
		}
	}
	switch {
	case denied:
		return refVerdict{}
	case anyAllow:
		return refVerdict{allowed: true, l7: allL7, http: http}
	}
	return refVerdict{allowed: !enforced}
}

// refHTTPAllows: does one of the HTTP rules allow a request?
var refRegexps sync.Map

func refHTTPAllows(rules []mHTTP, method, path string) bool {
	full := func(expr, s string) bool {
		if expr == "" {
			return true
		}
		re, ok := refRegexps.Load(expr)
		if !ok {
			re, _ = refRegexps.LoadOrStore(expr, regexp.MustCompile("^("+expr+")$"))
		}
		return re.(*regexp.Regexp).MatchString(s)
	}
	for _, h := range rules {
		if full(h.method, method) && full(h.path, path) {
			return true
		}
	}
	return false
}
