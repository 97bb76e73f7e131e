package policy

import (
	"errors"
	"fmt"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy/l7"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// Translation of Cilium's rules (CiliumNetworkPolicy,
// CiliumClusterwideNetworkPolicy, and early Cilium's JSON rule lists) into
// specRules, with the checks of Cilium's Rule.Sanitize
// (pkg/policy/api/rule_validation.go) and the selector scoping of
// pkg/k8s/apis/cilium.io/utils (getEndpointSelector).

type ciliumCtx struct {
	p         *problems
	kind      string
	namespace string // CiliumNetworkPolicy only
	// Where the rules' parts are allocated: a policy of 10,000 rules has
	// 10,000 of each, which live as long as the policy.
	itemPool pool[item]
	peerPool pool[peer]
	cidrPool pool[cidrSelector]
	portPool pool[portSpec]
}

func parseCilium(kind string, obj map[string]any) (*Policy, problems) {
	var p problems
	var o cnpObject
	d := decoder{p: &p}
	d.decode("", obj, reflectValueOf(&o))
	pol := translateCilium(&p, kind, &o)
	return pol, p
}

// translateCilium translates a decoded CiliumNetworkPolicy or
// CiliumClusterwideNetworkPolicy.
func translateCilium(p *problems, kind string, o *cnpObject) *Policy {
	pol := &Policy{Kind: kind, Name: o.Metadata.Name, Namespace: o.Metadata.Namespace}
	checkName(p, "metadata.name", pol.Name)
	if kind == KindCNP {
		if pol.Namespace == "" {
			pol.Namespace = labels.DefaultNamespace
		} else {
			checkNamespace(p, "metadata.namespace", pol.Namespace)
		}
	} else if pol.Namespace != "" {
		p.invalid("metadata.namespace", "a CiliumClusterwideNetworkPolicy has no namespace (got %q)", pol.Namespace)
		pol.Namespace = ""
	}
	c := &ciliumCtx{p: p, kind: kind, namespace: pol.Namespace}
	if o.Spec == nil && len(o.Specs) == 0 {
		p.invalid("spec", "a spec (or specs) is required")
	}
	if o.Spec != nil {
		pol.specs = append(pol.specs, c.rule("spec", o.Spec))
	}
	for i, r := range o.Specs {
		pol.specs = append(pol.specs, c.rule(indexPath("specs", i), r))
	}
	return pol
}

// parseRuleList reads early Cilium's JSON list of rules. Field names are
// matched without regard to case (`HTTP` and `http`), as encoding/json did.
func parseRuleList(list []any, defaultName string) (*Policy, problems) {
	var p problems
	rl := newRuleList(&p, defaultName)
	d := decoder{p: &p, foldCase: true}
	if len(list) == 0 {
		p.invalid("", "the list of rules is empty")
	}
	for i, e := range list {
		var r ciliumRule
		d.decode(indexPath("", i), e, reflectValueOf(&r))
		rl.add(i, &r)
	}
	return rl.finish(), p
}

// translateRuleList translates a decoded rule list.
func translateRuleList(p *problems, rules []*ciliumRule, defaultName string) *Policy {
	rl := newRuleList(p, defaultName)
	if len(rules) == 0 {
		p.invalid("", "the list of rules is empty")
	}
	for i, r := range rules {
		rl.add(i, r)
	}
	return rl.finish()
}

// ruleList translates the rules of a rule list, which is named after its
// rules' name label when they all give the same.
type ruleList struct {
	pol   *Policy
	c     *ciliumCtx
	names map[string]bool
}

func newRuleList(p *problems, defaultName string) *ruleList {
	return &ruleList{pol: &Policy{Kind: KindRuleList, Name: defaultName}, c: &ciliumCtx{p: p, kind: KindRuleList}, names: map[string]bool{}}
}

func (rl *ruleList) add(i int, r *ciliumRule) {
	rl.pol.specs = append(rl.pol.specs, rl.c.rule(indexPath("", i), r))
	for _, s := range r.Labels {
		if l, err := labels.ParseLabel(s, labels.SourceUnspec); err == nil && (l.Key == "name" || l.Key == "io.cilium.k8s.policy.name") && l.Value != "" {
			rl.names[l.Value] = true
		}
	}
}

func (rl *ruleList) finish() *Policy {
	if len(rl.names) == 1 {
		for n := range rl.names {
			rl.pol.Name = n
		}
	}
	return rl.pol
}

func (c *ciliumCtx) rule(path string, r *ciliumRule) *specRule {
	s := &specRule{path: path}
	if r == nil {
		c.p.invalid(path, "want a rule, got null")
		return s
	}
	s.description = r.Description
	s.labels = r.Labels
	if r.NodeSelector.present {
		c.p.unsupported(joinPath(path, "nodeSelector"), "nodeSelector (host policy)")
	}
	if r.Log.present {
		c.p.unsupported(joinPath(path, "log"), "log")
	}
	s.subject = c.subject(joinPath(path, "endpointSelector"), r.EndpointSelector, r.NodeSelector.present)
	s.defaultDeny[dirIngress] = len(r.Ingress)+len(r.IngressDeny) > 0
	s.defaultDeny[dirEgress] = len(r.Egress)+len(r.EgressDeny) > 0
	if dd := r.EnableDefaultDeny; dd != nil {
		if dd.Ingress != nil {
			s.defaultDeny[dirIngress] = *dd.Ingress
		}
		if dd.Egress != nil {
			s.defaultDeny[dirEgress] = *dd.Egress
		}
	}
	s.items = make([]*item, 0, len(r.Ingress)+len(r.IngressDeny)+len(r.Egress)+len(r.EgressDeny))
	for i, in := range r.Ingress {
		s.items = append(s.items, c.ingress(elemPath(path, "ingress", i), in, false))
	}
	for i, in := range r.IngressDeny {
		s.items = append(s.items, c.ingress(elemPath(path, "ingressDeny", i), in, true))
	}
	for i, eg := range r.Egress {
		s.items = append(s.items, c.egress(elemPath(path, "egress", i), eg, false))
	}
	for i, eg := range r.EgressDeny {
		s.items = append(s.items, c.egress(elemPath(path, "egressDeny", i), eg, true))
	}
	return s
}

// subject converts the endpointSelector. A CiliumNetworkPolicy selects only
// endpoints in its namespace; a clusterwide policy's and a rule list's
// selectors are not scoped.
func (c *ciliumCtx) subject(path string, ls *metav1.LabelSelector, hasNodeSelector bool) *labelSelector {
	if ls == nil {
		if !hasNodeSelector {
			c.p.invalid(path, "an endpointSelector is required")
		}
		return &labelSelector{none: true}
	}
	sel, ok := convertSelector(c.p, path, ls, "")
	if !ok {
		return &labelSelector{none: true}
	}
	if c.kind == KindCNP {
		sel = sel.With(nsIs(c.namespace))
	}
	return &labelSelector{sel: sel}
}

// peerSelector converts a fromEndpoints/toEndpoints (or, with requires,
// fromRequires/toRequires) selector, scoped as Cilium scopes it
// (getEndpointSelector):
//   - a selector naming a reserved label is left alone (peers only);
//   - otherwise, unless the selector constrains io.kubernetes.pod.namespace
//     itself, a CiliumNetworkPolicy adds `k8s:io.kubernetes.pod.namespace=<ns>`
//     (not when it selects by namespace labels, io.cilium.k8s.namespace.labels.*,
//     which reach other namespaces), and a clusterwide policy adds
//     `k8s:io.kubernetes.pod.namespace` Exists.
//
// So `{}` in a CiliumNetworkPolicy selects every endpoint of its namespace;
// in a clusterwide policy every endpoint of every namespace, but none of the
// reserved identities (host, world, health, ...), which have no namespace:
// use entities for those. In early Cilium's rule lists selectors are not
// scoped, and `{}` selects every identity, world included.
func (c *ciliumCtx) peerSelector(path string, ls *metav1.LabelSelector, requires bool) *labelSelector {
	if ls == nil {
		c.p.invalid(path, "want a selector, got null")
		return nil
	}
	sel, ok := convertSelector(c.p, path, ls, "")
	if !ok {
		return nil
	}
	if c.kind == KindRuleList || (!requires && hasSource(sel, labels.SourceReserved)) {
		return &labelSelector{sel: sel}
	}
	if !hasKey(sel, nsKey) {
		switch {
		case c.kind == KindCCNP:
			sel = sel.With(nsExists)
		case !hasKeyPrefix(sel, nsLabelsPrefix):
			sel = sel.With(nsIs(c.namespace))
		}
	}
	return &labelSelector{sel: sel}
}

// l3 is one kind of peer of a rule; Cilium rejects rules mixing kinds.
type l3 struct {
	field string
	n     int
}

func (c *ciliumCtx) checkL3(path string, members []l3) {
	var used []string
	for _, m := range members {
		if m.n > 0 {
			used = append(used, m.field)
		}
	}
	if len(used) > 1 {
		c.p.invalid(path, "combining %s in one rule is not supported (Cilium rejects it too): write one rule for each", strings.Join(used, " and "))
	}
}

func (c *ciliumCtx) ingress(path string, r *ingressRule, deny bool) *item {
	it := c.itemPool.one()
	*it = item{path: path, deny: deny}
	if r == nil {
		c.p.invalid(path, "want a rule, got null")
		return it
	}
	c.unsupportedFields(path,
		field{"fromGroups", r.FromGroups.present}, field{"fromNodes", r.FromNodes.present}, field{"authentication", r.Authentication.present})
	c.checkL3(path, []l3{{"fromEndpoints", len(r.FromEndpoints)}, {"fromCIDR", len(r.FromCIDR)},
		{"fromCIDRSet", len(r.FromCIDRSet)}, {"fromEntities", len(r.FromEntities)}})
	explicit := r.FromEndpoints != nil || r.FromCIDR != nil || r.FromCIDRSet != nil || r.FromEntities != nil
	it.peers = c.peers(path, "from", r.FromEndpoints, r.FromCIDR, r.FromCIDRSet, r.FromEntities, explicit)
	if len(r.FromRequires) > 0 {
		it.requires = c.requires(joinPath(path, "fromRequires"), r.FromRequires)
	}
	it.ports = c.l4(path, r.ToPorts, r.ICMPs, deny)
	finishItem(it)
	return it
}

func (c *ciliumCtx) egress(path string, r *egressRule, deny bool) *item {
	it := c.itemPool.one()
	*it = item{path: path, egress: true, deny: deny}
	if r == nil {
		c.p.invalid(path, "want a rule, got null")
		return it
	}
	c.unsupportedFields(path,
		field{"toServices", r.ToServices.present}, field{"toFQDNs", r.ToFQDNs.present}, field{"toGroups", r.ToGroups.present}, field{"toNodes", r.ToNodes.present}, field{"authentication", r.Authentication.present})
	c.checkL3(path, []l3{{"toEndpoints", len(r.ToEndpoints)}, {"toCIDR", len(r.ToCIDR)},
		{"toCIDRSet", len(r.ToCIDRSet)}, {"toEntities", len(r.ToEntities)}})
	explicit := r.ToEndpoints != nil || r.ToCIDR != nil || r.ToCIDRSet != nil || r.ToEntities != nil
	it.peers = c.peers(path, "to", r.ToEndpoints, r.ToCIDR, r.ToCIDRSet, r.ToEntities, explicit)
	if len(r.ToRequires) > 0 {
		it.requires = c.requires(joinPath(path, "toRequires"), r.ToRequires)
	}
	it.ports = c.l4(path, r.ToPorts, r.ICMPs, deny)
	finishItem(it)
	return it
}

// finishItem applies Cilium's reading of rules without peers: with ports
// they apply to every peer; without ports (`ingress: [{}]`) they allow
// nothing, but still put the endpoint in default deny.
func finishItem(it *item) {
	if it.peers == nil && it.ports == nil {
		it.peers = []peer{}
	}
}

// featureNames name the Cilium features Membrane does not implement.
var featureNames = map[string]string{
	"toFQDNs": "toFQDNs (DNS-based policy)", "toServices": "toServices", "toGroups": "toGroups (cloud groups)",
	"fromGroups": "fromGroups (cloud groups)", "toNodes": "toNodes (node selectors)", "fromNodes": "fromNodes (node selectors)",
	"authentication": "authentication (mutual auth)", "dns": "DNS rules", "kafka": "Kafka rules",
	"l7proto": "l7proto (proxylib parsers)", "l7": "generic L7 rules", "terminatingTLS": "terminatingTLS",
	"originatingTLS": "originatingTLS", "serverNames": "serverNames (TLS SNI)", "listener": "listener (Envoy listeners)",
}

// field is a field Membrane does not implement and whether it is given.
type field struct {
	name    string
	present bool
}

// unsupportedFields reports the fields given, by name.
func (c *ciliumCtx) unsupportedFields(path string, fields ...field) {
	if !anyPresent(fields...) {
		return
	}
	given := map[string]bool{}
	for _, f := range fields {
		if f.present {
			given[f.name] = true
		}
	}
	for _, f := range sortedBoolKeys(given) {
		what := featureNames[f]
		if what == "" {
			what = f
		}
		c.p.unsupported(joinPath(path, f), what)
	}
}

// anyPresent reports whether any field is given (unsupportedFields then
// has something to say).
func anyPresent(fields ...field) bool {
	for _, f := range fields {
		if f.present {
			return true
		}
	}
	return false
}

// peers converts the L3 part of a rule. An explicit empty list selects no
// peer (Cilium >= 1.15, cilium/cilium#29608); no list at all selects every
// peer.
func (c *ciliumCtx) peers(path, dir string, eps []*metav1.LabelSelector, cidrs []string, sets []*cidrRule, ents []string, explicit bool) []peer {
	if !explicit {
		return nil
	}
	out := c.peerPool.take(len(eps) + len(cidrs) + len(sets) + len(ents))[:0]
	cidrSels := c.cidrPool.take(len(cidrs))
	for i, ls := range eps {
		if s := c.peerSelector(elemPath(path, dir+"Endpoints", i), ls, false); s != nil {
			out = append(out, peer{kind: peerSelector, sel: s})
		}
	}
	for i, s := range cidrs {
		pf, err := parseCIDR(s, true)
		if err != nil {
			c.p.invalid(elemPath(path, dir+"CIDR", i), "%v", err)
			continue
		}
		cidrSels[i].prefix = pf
		out = append(out, peer{kind: peerCIDR, cidr: &cidrSels[i]})
	}
	for i, cr := range sets {
		sp := elemPath(path, dir+"CIDRSet", i)
		if cr == nil {
			c.p.invalid(sp, "want a CIDR rule, got null")
			continue
		}
		if cr.CIDRGroupRef.present {
			c.p.unsupported(joinPath(sp, "cidrGroupRef"), "cidrGroupRef")
		}
		if cr.CIDRGroupSelector.present {
			c.p.unsupported(joinPath(sp, "cidrGroupSelector"), "cidrGroupSelector")
		}
		if cr.CIDRGroupRef.present || cr.CIDRGroupSelector.present {
			continue
		}
		if cr.CIDR == "" {
			c.p.invalid(joinPath(sp, "cidr"), "a CIDR is required")
			continue
		}
		pf, err := parseCIDR(cr.CIDR, false)
		if err != nil {
			c.p.invalid(joinPath(sp, "cidr"), "%v", err)
			continue
		}
		sel := &cidrSelector{prefix: pf}
		for j, e := range cr.Except {
			ep := elemPath(sp, "except", j)
			ex, err := parseCIDR(e, false)
			if err != nil {
				c.p.invalid(ep, "%v", err)
				continue
			}
			// As Cilium's CIDRRule.sanitize: the except prefix must start
			// inside the CIDR.
			if ex.Addr().Is4() != pf.Addr().Is4() || !pf.Contains(ex.Addr()) {
				c.p.invalid(ep, "%s is not inside %s", ex, pf)
				continue
			}
			sel.except = append(sel.except, ex)
		}
		out = append(out, peer{kind: peerCIDR, cidr: sel})
	}
	for i, e := range ents {
		ep := elemPath(path, dir+"Entities", i)
		switch {
		case unsupportedEntities[e]:
			c.p.unsupported(ep, fmt.Sprintf("entity %q", e))
		case !validEntity(e):
			c.p.invalid(ep, "unknown entity %q (want all, world, cluster, host, remote-node, init, health, unmanaged or none)", e)
		default:
			out = append(out, peer{kind: peerEntity, entity: e})
		}
	}
	return out
}

func (c *ciliumCtx) requires(path string, sels []*metav1.LabelSelector) []*labelSelector {
	var out []*labelSelector
	for i, ls := range sels {
		if s := c.peerSelector(indexPath(path, i), ls, true); s != nil {
			out = append(out, s)
		}
	}
	return out
}

// l4 converts toPorts and icmps; nil when the rule has neither (L3 only).
func (c *ciliumCtx) l4(path string, prs []*portRule, icmps []*icmpRule, deny bool) []portSpec {
	if len(prs) > 0 && len(icmps) > 0 {
		c.p.invalid(joinPath(path, "icmps"), "icmps cannot be combined with toPorts in one rule (as in Cilium): write a separate rule")
	}
	if len(prs) == 0 && len(icmps) == 0 {
		return nil
	}
	n := 0
	for _, pr := range prs {
		if pr != nil {
			n += len(pr.Ports)
		}
	}
	out := c.portPool.take(n)[:0]
	for i, pr := range prs {
		out = c.portRule(pathAt{path, "toPorts", i}, pr, deny, out)
	}
	for i, ir := range icmps {
		out = append(out, c.icmpRule(elemPath(path, "icmps", i), ir)...)
	}
	return out
}

// pathAt is the field path parent.field[i], built when a problem needs it.
type pathAt struct {
	parent, field string
	i             int
}

func (p pathAt) String() string { return elemPath(p.parent, p.field, p.i) }

// portRule appends the ports of a port rule to out.
func (c *ciliumCtx) portRule(at pathAt, pr *portRule, deny bool, out []portSpec) []portSpec {
	if pr == nil {
		c.p.invalid(at.String(), "want a port rule, got null")
		return out
	}
	if unsup := []field{{"terminatingTLS", pr.TerminatingTLS.present}, {"originatingTLS", pr.OriginatingTLS.present},
		{"serverNames", pr.ServerNames.present}, {"listener", pr.Listener.present}}; anyPresent(unsup...) {
		c.unsupportedFields(at.String(), unsup...)
	}
	var http []*l7.HTTPRule
	hasL7 := false
	if r := pr.Rules; r != nil {
		rp := joinPath(at.String(), "rules")
		c.unsupportedFields(rp,
			field{"kafka", r.Kafka.present}, field{"dns", r.DNS.present}, field{"l7proto", r.L7Proto.present}, field{"l7", r.L7.present})
		if deny && len(r.HTTP) > 0 {
			c.p.invalid(joinPath(rp, "http"), "deny rules cannot have L7 rules")
		}
		hasL7 = len(r.HTTP) > 0 && !deny
		for i, h := range r.HTTP {
			if hr := c.httpRule(elemPath(rp, "http", i), h); hr != nil {
				http = append(http, hr)
			}
		}
	}
	for i, pp := range pr.Ports {
		ps, ok := c.portProtocol(at, i, pp)
		if !ok {
			continue
		}
		if hasL7 {
			ip := elemPath(at.String(), "ports", i)
			switch {
			case ps.proto != mapstate.ProtoTCP:
				c.p.invalid(joinPath(ip, "protocol"), "L7 rules apply to TCP only: give protocol TCP (not %s)", mapstate.ProtoName(ps.proto))
			case ps.port == 0 && ps.name == "":
				c.p.invalid(joinPath(ip, "port"), "L7 rules cannot be used with port 0 (every port)")
			case ps.endPort > ps.port:
				c.p.invalid(joinPath(ip, "endPort"), "L7 rules need a single port, not a range")
			}
			ps.l7, ps.http = true, http
		}
		out = append(out, ps)
	}
	return out
}

// portProtocol converts one port. Port "0" is every port (as in Cilium);
// a port that is not a number is a port name (IANA service name syntax).
func (c *ciliumCtx) portProtocol(prAt pathAt, i int, pp *portProtocol) (portSpec, bool) {
	path := func() string { return elemPath(prAt.String(), "ports", i) }
	if pp == nil {
		c.p.invalid(path(), "want a port, got null")
		return portSpec{}, false
	}
	var ps portSpec
	good := true
	switch strings.ToUpper(pp.Protocol) {
	case "", "ANY":
		ps.proto = mapstate.ProtoAny
	case "TCP":
		ps.proto = mapstate.ProtoTCP
	case "UDP":
		ps.proto = mapstate.ProtoUDP
	case "SCTP":
		ps.proto = mapstate.ProtoSCTP
	default:
		c.p.invalid(joinPath(path(), "protocol"), "%q is not a protocol (want TCP, UDP, SCTP or ANY)", pp.Protocol)
		good = false
	}
	pv := pp.Port
	switch n, isNum := pv.number(); {
	case !pv.set || pv.text == "":
		c.p.invalid(joinPath(path(), "port"), "a port is required")
		good = false
	case isNum && n <= 65535:
		ps.port = uint16(n)
	case !pv.isNumber && isPortName(pv.text):
		ps.name = strings.ToLower(pv.text)
	default:
		c.p.invalid(joinPath(path(), "port"), "%q is not a port", pv.text)
		good = false
	}
	if pp.EndPort != 0 && good {
		ep := func() string { return joinPath(path(), "endPort") }
		switch {
		case ps.name != "":
			c.p.invalid(ep(), "endPort needs a numeric port, not the port name %q", ps.name)
			good = false
		case ps.port == 0:
			c.p.invalid(ep(), "endPort needs a port other than 0")
			good = false
		case pp.EndPort < int32(ps.port) || pp.EndPort > 65535:
			c.p.invalid(ep(), "%d is not a port from port %d to 65535", pp.EndPort, ps.port)
			good = false
		default:
			ps.endPort = uint16(pp.EndPort)
		}
	}
	return ps, good
}

func (c *ciliumCtx) icmpRule(path string, ir *icmpRule) []portSpec {
	if ir == nil {
		c.p.invalid(path, "want an ICMP rule, got null")
		return nil
	}
	var out []portSpec
	for i, f := range ir.Fields {
		fp := elemPath(path, "fields", i)
		if f == nil {
			c.p.invalid(fp, "want an ICMP field, got null")
			continue
		}
		ps := portSpec{proto: mapstate.ProtoICMP}
		names := icmpv4Types
		switch f.Family {
		case "", "IPv4":
		case "IPv6":
			ps.proto, names = protoICMPv6, icmpv6Types
		default:
			c.p.invalid(joinPath(fp, "family"), "%q is not a family (want IPv4 or IPv6)", f.Family)
			continue
		}
		tp := joinPath(fp, "type")
		n, isNum := f.Type.number()
		switch {
		case !f.Type.set:
			c.p.invalid(tp, "an ICMP type is required")
			continue
		case isNum && n <= 255:
			ps.port = uint16(n)
		case !isNum && hasICMPName(names, f.Type.text):
			ps.port = uint16(names[f.Type.text])
		default:
			fam := f.Family
			if fam == "" {
				fam = "IPv4"
			}
			c.p.invalid(tp, "%q is not an ICMP type of %s (want 0-255 or a name such as EchoRequest)", f.Type.text, fam)
			continue
		}
		out = append(out, ps)
	}
	return out
}

func (c *ciliumCtx) httpRule(path string, h *httpRule) *l7.HTTPRule {
	if h == nil {
		c.p.invalid(path, "want an HTTP rule, got null")
		return nil
	}
	spec := l7.HTTPRuleSpec{Method: h.Method, Path: h.Path, Host: h.Host, Headers: h.Headers}
	for i, hm := range h.HeaderMatches {
		if hm == nil {
			c.p.invalid(elemPath(path, "headerMatches", i), "want a header match, got null")
			return nil
		}
		if hm.Secret.present {
			c.p.unsupported(joinPath(elemPath(path, "headerMatches", i), "secret"), "secret")
			return nil
		}
		spec.HeaderMatches = append(spec.HeaderMatches, l7.HeaderMatch{Mismatch: hm.Mismatch, Name: hm.Name, Value: hm.Value})
	}
	r, err := l7.Compile(spec)
	if err != nil {
		var fe *l7.FieldError
		if errors.As(err, &fe) {
			c.p.invalid(joinPath(path, fe.Field), "%v", fe.Err)
		} else {
			c.p.invalid(path, "%v", err)
		}
		return nil
	}
	return r
}
