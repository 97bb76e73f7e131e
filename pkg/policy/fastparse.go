package policy

import (
	"encoding/json"

	corev1 "k8s.io/api/core/v1"
	netv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The fast path of Parse: valid documents are read straight into the typed
// structs of cilium_types.go and k8s.io/api, without the generic tree that
// the located decoder of decode.go walks, and translated as usual. At the
// first thing it does not expect (a syntax or type error, an unknown or
// unsupported field, a duplicate key, a null where a value is needed, a
// List, an unusual metadata field, any problem the translation finds) it
// gives up, and the document goes through the located decoder, which
// reports every problem exactly as it always has. So the fast path only
// has to agree with the decoder on documents the decoder accepts, which
// TestFastParseAgrees and FuzzFastParse check.

// parseDocumentFast parses one document (a policy object or a rule list)
// that Parse or ParseObject found; ok false leaves it to parseDocument.
func parseDocumentFast(file string, n int, raw []byte) (*Policy, bool) {
	r := newJSONReader(raw)
	pol, ok := r.document(file, n)
	if r.ws(); !ok || r.pos != len(raw) {
		return nil, false
	}
	return pol, true
}

// document reads the policy object or rule list at the reader's position.
func (r *jsonReader) document(file string, n int) (*Policy, bool) {
	var pol *Policy
	var p problems
	r.ws()
	start := r.pos
	switch r.peek() {
	case '{':
		pol = r.policyObject(&p)
	case '[':
		pol = r.ruleList(&p, ruleListName(file, n))
	default:
		return nil, false
	}
	if pol == nil || !r.ok || !p.empty() {
		return nil, false
	}
	pol.File, pol.Document, pol.Object = file, n, append(json.RawMessage(nil), r.data[start:r.pos]...)
	pol.computePrefixes()
	return pol, true
}

// parseJSONFast parses a file of JSON documents (objects and rule lists,
// whitespace between them) in one pass, leaving the documents it cannot
// read to parseDocument as parse does, and returns the policies and the
// problems parse would find; ok false leaves the whole file to parse (a
// file that holds anything else, that splitJSON rejects, or that has no
// policy).
func parseJSONFast(file string, data []byte) (pols []*Policy, errs []*FieldError, ok bool) {
	r := newJSONReader(data)
	for n := 1; ; n++ {
		switch r.peek() {
		case 0:
			if r.pos != len(data) || (len(pols) == 0 && len(errs) == 0) {
				return nil, nil, false // a NUL byte; no policy
			}
			return pols, errs, true
		case '{', '[':
		default:
			return nil, nil, false
		}
		start := r.pos
		if pol, ok := r.document(file, n); ok {
			pols = append(pols, pol)
			continue
		}
		r.pos, r.ok = start, true
		if !r.skip() {
			return nil, nil, false
		}
		ps, fes := parseDocument(file, n, r.data[start:r.pos])
		pols = append(pols, ps...)
		errs = append(errs, fes...)
	}
}

// fieldSet detects a field given twice in one object (the decoder keeps
// the last; the fast path gives up).
type fieldSet uint64

func (s *fieldSet) first(i int) bool {
	if *s&(1<<i) != 0 {
		return false
	}
	*s |= 1 << i
	return true
}

// fieldIndex returns the index of key in names (matched without regard to
// ASCII case when fold is set, as early Cilium's rule lists are), or -1.
func fieldIndex(key []byte, fold bool, names ...string) int {
	for i, n := range names {
		if string(key) == n {
			return i
		}
	}
	if fold {
		for i, n := range names {
			if asciiEqualFold(key, n) {
				return i
			}
		}
	}
	return -1
}

// asciiEqualFold compares without regard to ASCII case; any other byte
// must be equal (the decoder folds with strings.ToLower, which also maps
// some non-ASCII letters to ASCII: those keys never match here, and the
// decoder then reads the document).
func asciiEqualFold(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i := range len(key) {
		a, b := key[i], name[i]
		if a >= 0x80 {
			return false
		}
		if 'A' <= a && a <= 'Z' {
			a += 'a' - 'A'
		}
		if 'A' <= b && b <= 'Z' {
			b += 'a' - 'A'
		}
		if a != b {
			return false
		}
	}
	return true
}

// fields reads an object whose keys must be names, each once; field reads
// the value of names[i]. Nulls are left to field.
func (r *jsonReader) fields(fold bool, names []string, field func(i int) bool) bool {
	var seen fieldSet
	return r.object(func(key []byte) bool {
		i := fieldIndex(key, fold, names...)
		return i >= 0 && seen.first(i) && field(i)
	})
}

// absent reads a field Membrane does not support: only null (absent) is
// accepted, anything else is a problem the decoder reports.
func (r *jsonReader) absent() bool { return r.null() }

// ---- policy objects ----------------------------------------------------------

var topFields = []string{"apiVersion", "kind", "metadata", "spec", "specs", "status"}

// policyObject reads a CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy
// or NetworkPolicy. The kind decides how to read the rest, so the other
// fields are read once it is known.
func (r *jsonReader) policyObject(p *problems) *Policy {
	r.a = &fastAlloc{}
	var api, kind string
	var meta metav1.ObjectMeta
	var o cnpObject
	var np netv1.NetworkPolicy
	// read reads the value of top field i once the kind is known.
	read := func(fr *jsonReader, i int) bool {
		cilium := kind != KindKNP
		var ok bool
		switch {
		case i == 2:
			ok = fr.objectMeta(&meta)
		case i == 3 && cilium:
			o.Spec, ok = fr.ciliumRulePtr(false)
		case i == 3:
			ok = fr.knpSpec(&np.Spec)
		case i == 4 && cilium:
			o.Specs, ok = fr.ciliumRules(false)
		case i == 5 && cilium:
			ok = fr.skip() // status: written by the API server, ignored
		}
		return ok // specs and status are not fields of a NetworkPolicy
	}
	var later [6][2]int // fields before the kind: their values' start, end
	ok := r.fields(false, topFields, func(i int) bool {
		switch i {
		case 0:
			s, ok := r.str()
			api = s
			return ok
		case 1:
			s, ok := r.str()
			kind = s
			return ok && kindAPIVersion[kind] != ""
		}
		if kind != "" {
			return read(r, i)
		}
		r.ws()
		start := r.pos
		if !r.skip() {
			return false
		}
		later[i] = [2]int{start, r.pos}
		return true
	})
	if !ok || kindAPIVersion[kind] == "" || api != kindAPIVersion[kind] {
		return nil
	}
	for i, v := range later {
		if v[1] != 0 && !read(&jsonReader{data: r.data[:v[1]], pos: v[0], ok: true, a: r.a}, i) {
			return nil
		}
	}
	if kind == KindKNP {
		np.ObjectMeta = meta
		return translateKNP(p, &np)
	}
	o.Metadata = meta
	return translateCilium(p, kind, &o)
}

var metaFields = []string{"name", "namespace", "generateName", "uid", "resourceVersion", "labels", "annotations"}

// objectMeta reads the metadata fields a policy file has; others (times,
// owners, managed fields...) are left to the decoder.
func (r *jsonReader) objectMeta(m *metav1.ObjectMeta) bool {
	if r.null() {
		return true
	}
	return r.fields(false, metaFields, func(i int) bool {
		var ok bool
		switch i {
		case 0:
			m.Name, ok = r.optString()
		case 1:
			m.Namespace, ok = r.optString()
		case 2:
			m.GenerateName, ok = r.optString()
		case 3:
			var s string
			s, ok = r.optString()
			m.UID = types.UID(s)
		case 4:
			m.ResourceVersion, ok = r.optString()
		case 5:
			m.Labels, ok = r.stringMap()
		case 6:
			m.Annotations, ok = r.stringMap()
		}
		return ok
	})
}

// ---- Cilium rules ------------------------------------------------------------

func (r *jsonReader) ciliumRules(fold bool) ([]*ciliumRule, bool) {
	if r.null() {
		return nil, true
	}
	out := []*ciliumRule{}
	ok := r.array(func() bool {
		c, ok := r.ciliumRulePtr(fold)
		out = append(out, c)
		return ok && c != nil
	})
	return out, ok
}

var ruleFields = []string{"endpointSelector", "nodeSelector", "ingress", "ingressDeny", "egress", "egressDeny",
	"labels", "enableDefaultDeny", "description", "log"}

func (r *jsonReader) ciliumRulePtr(fold bool) (*ciliumRule, bool) {
	if r.null() {
		return nil, true
	}
	c := &ciliumRule{}
	ok := r.fields(fold, ruleFields, func(i int) bool {
		var ok bool
		switch i {
		case 0:
			c.EndpointSelector, ok = r.labelSelectorPtr(fold)
		case 1, 9:
			ok = r.absent()
		case 2, 3:
			var in []*ingressRule
			in, ok = r.ingressRules(fold)
			if i == 2 {
				c.Ingress = in
			} else {
				c.IngressDeny = in
			}
		case 4, 5:
			var eg []*egressRule
			eg, ok = r.egressRules(fold)
			if i == 4 {
				c.Egress = eg
			} else {
				c.EgressDeny = eg
			}
		case 6:
			c.Labels, ok = r.ruleLabels(fold)
		case 7:
			c.EnableDefaultDeny, ok = r.defaultDeny(fold)
		case 8:
			c.Description, ok = r.optString()
		}
		return ok
	})
	return c, ok
}

func (r *jsonReader) defaultDeny(fold bool) (*defaultDenyConfig, bool) {
	if r.null() {
		return nil, true
	}
	d := &defaultDenyConfig{}
	ok := r.fields(fold, []string{"ingress", "egress"}, func(i int) bool {
		if r.null() {
			return true
		}
		b, ok := r.boolean()
		if i == 0 {
			d.Ingress = &b
		} else {
			d.Egress = &b
		}
		return ok
	})
	return d, ok
}

var labelFields = []string{"key", "value", "source"}

// ruleLabels reads a rule's labels as ruleLabels.decodeGeneric does.
func (r *jsonReader) ruleLabels(fold bool) (ruleLabels, bool) {
	if r.null() {
		return nil, true
	}
	out := ruleLabels{}
	ok := r.array(func() bool {
		if r.peek() == '"' {
			s, ok := r.str()
			out = append(out, s)
			return ok
		}
		if r.peek() != '{' {
			return false
		}
		var kvs [3]string
		ok := r.fields(fold, labelFields, func(i int) bool {
			var ok bool
			kvs[i], ok = r.optString()
			return ok
		})
		s := kvs[0]
		if kvs[2] != "" {
			s = kvs[2] + ":" + s
		}
		if kvs[1] != "" {
			s += "=" + kvs[1]
		}
		out = append(out, s)
		return ok
	})
	return out, ok
}

var selectorFields = []string{"matchLabels", "matchExpressions"}

func (r *jsonReader) labelSelectorPtr(fold bool) (*metav1.LabelSelector, bool) {
	if r.null() {
		return nil, true
	}
	ls := &metav1.LabelSelector{}
	return ls, r.labelSelector(fold, ls)
}

func (r *jsonReader) labelSelector(fold bool, ls *metav1.LabelSelector) bool {
	return r.fields(fold, selectorFields, func(i int) bool {
		var ok bool
		if i == 0 {
			ls.MatchLabels, ok = r.stringMap()
			return ok
		}
		if r.null() {
			return true
		}
		ls.MatchExpressions = []metav1.LabelSelectorRequirement{}
		return r.array(func() bool {
			var e metav1.LabelSelectorRequirement
			ok := r.fields(fold, []string{"key", "operator", "values"}, func(i int) bool {
				var ok bool
				switch i {
				case 0:
					e.Key, ok = r.optString()
				case 1:
					var s string
					s, ok = r.optString()
					e.Operator = metav1.LabelSelectorOperator(s)
				case 2:
					e.Values, ok = r.strings()
				}
				return ok
			})
			ls.MatchExpressions = append(ls.MatchExpressions, e)
			return ok
		})
	})
}

func (r *jsonReader) labelSelectors(fold bool) ([]*metav1.LabelSelector, bool) {
	if r.null() {
		return nil, true
	}
	out := []*metav1.LabelSelector{}
	ok := r.array(func() bool {
		if r.null() {
			return false
		}
		ls := &metav1.LabelSelector{}
		out = append(out, ls)
		return r.labelSelector(fold, ls)
	})
	return out, ok
}

var ingressFields = []string{"fromEndpoints", "fromRequires", "fromCIDR", "fromCIDRSet", "fromEntities",
	"fromGroups", "fromNodes", "toPorts", "icmps", "authentication"}

func (r *jsonReader) ingressRules(fold bool) ([]*ingressRule, bool) {
	if r.null() {
		return nil, true
	}
	return ptrList(r, &r.a.ingress, &r.a.ingressPtrs, func(in *ingressRule) bool {
		return r.fields(fold, ingressFields, func(i int) bool {
			var ok bool
			switch i {
			case 0:
				in.FromEndpoints, ok = r.labelSelectors(fold)
			case 1:
				in.FromRequires, ok = r.labelSelectors(fold)
			case 2:
				in.FromCIDR, ok = r.strings()
			case 3:
				in.FromCIDRSet, ok = r.cidrRules(fold)
			case 4:
				in.FromEntities, ok = r.strings()
			case 5, 6, 9:
				ok = r.absent()
			case 7:
				in.ToPorts, ok = r.portRules(fold)
			case 8:
				in.ICMPs, ok = r.icmpRules(fold)
			}
			return ok
		})
	})
}

var egressFields = []string{"toEndpoints", "toRequires", "toCIDR", "toCIDRSet", "toEntities",
	"toServices", "toFQDNs", "toGroups", "toNodes", "toPorts", "icmps", "authentication"}

func (r *jsonReader) egressRules(fold bool) ([]*egressRule, bool) {
	if r.null() {
		return nil, true
	}
	return ptrList(r, &r.a.egress, &r.a.egressPtrs, func(eg *egressRule) bool {
		return r.fields(fold, egressFields, func(i int) bool {
			var ok bool
			switch i {
			case 0:
				eg.ToEndpoints, ok = r.labelSelectors(fold)
			case 1:
				eg.ToRequires, ok = r.labelSelectors(fold)
			case 2:
				eg.ToCIDR, ok = r.strings()
			case 3:
				eg.ToCIDRSet, ok = r.cidrRules(fold)
			case 4:
				eg.ToEntities, ok = r.strings()
			case 5, 6, 7, 8, 11:
				ok = r.absent()
			case 9:
				eg.ToPorts, ok = r.portRules(fold)
			case 10:
				eg.ICMPs, ok = r.icmpRules(fold)
			}
			return ok
		})
	})
}

var cidrRuleFields = []string{"cidr", "except", "cidrGroupRef", "cidrGroupSelector"}

func (r *jsonReader) cidrRules(fold bool) ([]*cidrRule, bool) {
	if r.null() {
		return nil, true
	}
	out := []*cidrRule{}
	ok := r.array(func() bool {
		if r.null() {
			return false
		}
		c := &cidrRule{}
		out = append(out, c)
		return r.fields(fold, cidrRuleFields, func(i int) bool {
			var ok bool
			switch i {
			case 0:
				c.CIDR, ok = r.optString()
			case 1:
				c.Except, ok = r.strings()
			default:
				ok = r.absent()
			}
			return ok
		})
	})
	return out, ok
}

var portRuleFields = []string{"ports", "rules", "terminatingTLS", "originatingTLS", "serverNames", "listener"}

func (r *jsonReader) portRules(fold bool) ([]*portRule, bool) {
	if r.null() {
		return nil, true
	}
	return ptrList(r, &r.a.portRules, &r.a.portRulePtrs, func(pr *portRule) bool {
		return r.fields(fold, portRuleFields, func(i int) bool {
			var ok bool
			switch i {
			case 0:
				pr.Ports, ok = r.portProtocols(fold)
			case 1:
				pr.Rules, ok = r.l7Rules(fold)
			default:
				ok = r.absent()
			}
			return ok
		})
	})
}

var portFields = []string{"port", "endPort", "protocol"}

func (r *jsonReader) portProtocols(fold bool) ([]*portProtocol, bool) {
	if r.null() {
		return nil, true
	}
	return ptrList(r, &r.a.ports, &r.a.portPtrs, func(pp *portProtocol) bool {
		return r.fields(fold, portFields, func(i int) bool {
			var ok bool
			switch i {
			case 0:
				pp.Port, ok = r.portValue()
			case 1:
				if r.null() {
					return true
				}
				pp.EndPort, ok = r.int32()
			case 2:
				if r.null() {
					return true
				}
				pp.Protocol, ok = r.shortStr()
			}
			return ok
		})
	})
}

// portValue reads a port (or ICMP type) as portValue.decodeGeneric does.
func (r *jsonReader) portValue() (portValue, bool) {
	switch c := r.peek(); {
	case c == 'n':
		return portValue{}, r.literal("null")
	case c == '"':
		s, ok := r.shortStr()
		return portValue{set: true, text: s}, ok
	case c == '-' || isDigit(c):
		s, ok := r.number()
		return portValue{set: true, isNumber: true, text: s}, ok
	}
	return portValue{}, r.fail()
}

var l7Fields = []string{"http", "kafka", "dns", "l7proto", "l7"}

func (r *jsonReader) l7Rules(fold bool) (*l7Rules, bool) {
	if r.null() {
		return nil, true
	}
	l := &l7Rules{}
	ok := r.fields(fold, l7Fields, func(i int) bool {
		if i != 0 {
			return r.absent()
		}
		if r.null() {
			return true
		}
		l.HTTP = []*httpRule{}
		return r.array(func() bool {
			if r.null() {
				return false
			}
			h := &httpRule{}
			l.HTTP = append(l.HTTP, h)
			return r.httpRule(fold, h)
		})
	})
	return l, ok
}

var httpFields = []string{"method", "path", "host", "headers", "headerMatches"}

func (r *jsonReader) httpRule(fold bool, h *httpRule) bool {
	return r.fields(fold, httpFields, func(i int) bool {
		var ok bool
		switch i {
		case 0:
			h.Method, ok = r.optString()
		case 1:
			h.Path, ok = r.optString()
		case 2:
			h.Host, ok = r.optString()
		case 3:
			h.Headers, ok = r.strings()
		case 4:
			if r.null() {
				return true
			}
			h.HeaderMatches = []*headerMatch{}
			ok = r.array(func() bool {
				if r.null() {
					return false
				}
				hm := &headerMatch{}
				h.HeaderMatches = append(h.HeaderMatches, hm)
				return r.fields(fold, []string{"mismatch", "name", "value", "secret"}, func(i int) bool {
					var ok bool
					switch i {
					case 0:
						hm.Mismatch, ok = r.optString()
					case 1:
						hm.Name, ok = r.optString()
					case 2:
						hm.Value, ok = r.optString()
					case 3:
						ok = r.absent()
					}
					return ok
				})
			})
		}
		return ok
	})
}

func (r *jsonReader) icmpRules(fold bool) ([]*icmpRule, bool) {
	if r.null() {
		return nil, true
	}
	out := []*icmpRule{}
	ok := r.array(func() bool {
		if r.null() {
			return false
		}
		ir := &icmpRule{}
		out = append(out, ir)
		return r.fields(fold, []string{"fields"}, func(int) bool {
			if r.null() {
				return true
			}
			ir.Fields = []*icmpField{}
			return r.array(func() bool {
				if r.null() {
					return false
				}
				f := &icmpField{}
				ir.Fields = append(ir.Fields, f)
				return r.fields(fold, []string{"family", "type"}, func(i int) bool {
					var ok bool
					if i == 0 {
						f.Family, ok = r.optString()
					} else {
						f.Type, ok = r.portValue()
					}
					return ok
				})
			})
		})
	})
	return out, ok
}

// ruleList reads early Cilium's JSON list of rules.
func (r *jsonReader) ruleList(p *problems, name string) *Policy {
	r.a = &fastAlloc{}
	rules, ok := r.ciliumRules(true)
	if !ok || len(rules) == 0 {
		return nil
	}
	return translateRuleList(p, rules, name)
}

// ---- Kubernetes NetworkPolicy --------------------------------------------------

var knpSpecFields = []string{"podSelector", "ingress", "egress", "policyTypes"}

func (r *jsonReader) knpSpec(s *netv1.NetworkPolicySpec) bool {
	if r.null() {
		return true
	}
	return r.fields(false, knpSpecFields, func(i int) bool {
		switch i {
		case 0:
			if r.null() {
				return true
			}
			return r.labelSelector(false, &s.PodSelector)
		case 1:
			if r.null() {
				return true
			}
			s.Ingress = []netv1.NetworkPolicyIngressRule{}
			return r.array(func() bool {
				var in netv1.NetworkPolicyIngressRule
				ok := r.fields(false, []string{"ports", "from"}, func(i int) bool {
					var ok bool
					if i == 0 {
						in.Ports, ok = r.knpPorts()
					} else {
						in.From, ok = r.knpPeers()
					}
					return ok
				})
				s.Ingress = append(s.Ingress, in)
				return ok
			})
		case 2:
			if r.null() {
				return true
			}
			s.Egress = []netv1.NetworkPolicyEgressRule{}
			return r.array(func() bool {
				var eg netv1.NetworkPolicyEgressRule
				ok := r.fields(false, []string{"ports", "to"}, func(i int) bool {
					var ok bool
					if i == 0 {
						eg.Ports, ok = r.knpPorts()
					} else {
						eg.To, ok = r.knpPeers()
					}
					return ok
				})
				s.Egress = append(s.Egress, eg)
				return ok
			})
		default:
			ts, ok := r.strings()
			for _, t := range ts {
				s.PolicyTypes = append(s.PolicyTypes, netv1.PolicyType(t))
			}
			return ok
		}
	})
}

func (r *jsonReader) knpPeers() ([]netv1.NetworkPolicyPeer, bool) {
	if r.null() {
		return nil, true
	}
	out := []netv1.NetworkPolicyPeer{}
	ok := r.array(func() bool {
		var pr netv1.NetworkPolicyPeer
		ok := r.fields(false, []string{"podSelector", "namespaceSelector", "ipBlock"}, func(i int) bool {
			var ok bool
			switch i {
			case 0:
				pr.PodSelector, ok = r.labelSelectorPtr(false)
			case 1:
				pr.NamespaceSelector, ok = r.labelSelectorPtr(false)
			case 2:
				if r.null() {
					return true
				}
				b := &netv1.IPBlock{}
				pr.IPBlock = b
				ok = r.fields(false, []string{"cidr", "except"}, func(i int) bool {
					var ok bool
					if i == 0 {
						b.CIDR, ok = r.optString()
					} else {
						b.Except, ok = r.strings()
					}
					return ok
				})
			}
			return ok
		})
		out = append(out, pr)
		return ok
	})
	return out, ok
}

func (r *jsonReader) knpPorts() ([]netv1.NetworkPolicyPort, bool) {
	if r.null() {
		return nil, true
	}
	out := []netv1.NetworkPolicyPort{}
	ok := r.array(func() bool {
		var np netv1.NetworkPolicyPort
		ok := r.fields(false, []string{"protocol", "port", "endPort"}, func(i int) bool {
			if r.null() {
				return true
			}
			switch i {
			case 0:
				s, ok := r.str()
				proto := corev1.Protocol(s)
				np.Protocol = &proto
				return ok
			case 1:
				// intstr.IntOrString.UnmarshalJSON: a string, or an
				// integer that fits an int32.
				if r.peek() == '"' {
					s, ok := r.str()
					np.Port = &intstr.IntOrString{Type: intstr.String, StrVal: s}
					return ok
				}
				n, ok := r.int32()
				np.Port = &intstr.IntOrString{Type: intstr.Int, IntVal: n}
				return ok
			default:
				n, ok := r.int32()
				np.EndPort = &n
				return ok
			}
		})
		out = append(out, np)
		return ok
	})
	return out, ok
}

// ---- allocation -------------------------------------------------------------

// fastAlloc allocates the decoded structs of one document in chunks: they
// are garbage once translated, and a document of 10,000 rules has 10,000 of
// each.
type fastAlloc struct {
	ingress      pool[ingressRule]
	ingressPtrs  pool[*ingressRule]
	egress       pool[egressRule]
	egressPtrs   pool[*egressRule]
	portRules    pool[portRule]
	portRulePtrs pool[*portRule]
	ports        pool[portProtocol]
	portPtrs     pool[*portProtocol]
	strs         pool[string]
	short        map[string]string
}

// pool hands out slices of a chunk, and keeps a scratch stack for the
// elements of lists being read.
type pool[T any] struct {
	chunk   []T
	size    int
	scratch []T
}

// take returns a slice of n zero elements, empty but not nil for 0.
func (p *pool[T]) take(n int) []T {
	if n == 0 {
		return []T{}
	}
	if n > len(p.chunk) {
		p.size = min(max(2*p.size, 16), 1024)
		p.chunk = make([]T, max(n, p.size))
	}
	out := p.chunk[:n:n]
	p.chunk = p.chunk[n:]
	return out
}

func (p *pool[T]) one() *T { return &p.take(1)[0] }

// list reads an array with elem pushing each element on p's scratch, and
// returns them in a slice of the exact size; null is a nil list.
func list[T any](r *jsonReader, p *pool[T], elem func() bool) ([]T, bool) {
	if r.null() {
		return nil, true
	}
	mark := len(p.scratch)
	ok := r.array(elem)
	out := p.take(len(p.scratch) - mark)
	copy(out, p.scratch[mark:])
	clear(p.scratch[mark:])
	p.scratch = p.scratch[:mark]
	return out, ok
}

// ptrList reads a list of objects (null elements are left to the decoder).
func ptrList[T any](r *jsonReader, elems *pool[T], ptrs *pool[*T], read func(*T) bool) ([]*T, bool) {
	return list(r, ptrs, func() bool {
		if r.null() {
			return false
		}
		e := elems.one()
		ptrs.scratch = append(ptrs.scratch, e)
		return read(e)
	})
}

// shortStr reads a string that documents repeat (ports, protocols),
// allocating each value once.
func (r *jsonReader) shortStr() (string, bool) {
	b, ok := r.strBytes()
	if !ok {
		return "", false
	}
	if len(b) > 16 {
		return string(b), true
	}
	if s, ok := r.a.short[string(b)]; ok {
		return s, true
	}
	if r.a.short == nil {
		r.a.short = map[string]string{}
	}
	s := string(b)
	r.a.short[s] = s
	return s, true
}
