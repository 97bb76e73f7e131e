package policy

import (
	"encoding/json"
	"strconv"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The types below mirror cilium.io/v2 (pkg/policy/api of Cilium) for
// decoding. Fields Membrane does not implement are present as `unsupported`
// so that using them is a clear error rather than an unknown field.

// cnpObject is a CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy.
type cnpObject struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Metadata   metav1.ObjectMeta `json:"metadata"`
	Spec       *ciliumRule       `json:"spec"`
	Specs      []*ciliumRule     `json:"specs"`
	Status     any               `json:"status"` // written by the API server; ignored
}

// ciliumRule is Cilium's api.Rule.
type ciliumRule struct {
	EndpointSelector  *metav1.LabelSelector `json:"endpointSelector"`
	NodeSelector      unsupported           `json:"nodeSelector"`
	Ingress           []*ingressRule        `json:"ingress"`
	IngressDeny       []*ingressRule        `json:"ingressDeny"`
	Egress            []*egressRule         `json:"egress"`
	EgressDeny        []*egressRule         `json:"egressDeny"`
	Labels            ruleLabels            `json:"labels"`
	EnableDefaultDeny *defaultDenyConfig    `json:"enableDefaultDeny"`
	Description       string                `json:"description"`
	Log               unsupported           `json:"log"`
}

type defaultDenyConfig struct {
	Ingress *bool `json:"ingress"`
	Egress  *bool `json:"egress"`
}

// ingressRule is api.IngressRule and api.IngressDenyRule (the deny form
// has no rules in its toPorts and no authentication; translation checks).
type ingressRule struct {
	FromEndpoints  []*metav1.LabelSelector `json:"fromEndpoints"`
	FromRequires   []*metav1.LabelSelector `json:"fromRequires"`
	FromCIDR       []string                `json:"fromCIDR"`
	FromCIDRSet    []*cidrRule             `json:"fromCIDRSet"`
	FromEntities   []string                `json:"fromEntities"`
	FromGroups     unsupported             `json:"fromGroups"`
	FromNodes      unsupported             `json:"fromNodes"`
	ToPorts        []*portRule             `json:"toPorts"`
	ICMPs          []*icmpRule             `json:"icmps"`
	Authentication unsupported             `json:"authentication"`
}

// egressRule is api.EgressRule and api.EgressDenyRule.
type egressRule struct {
	ToEndpoints    []*metav1.LabelSelector `json:"toEndpoints"`
	ToRequires     []*metav1.LabelSelector `json:"toRequires"`
	ToCIDR         []string                `json:"toCIDR"`
	ToCIDRSet      []*cidrRule             `json:"toCIDRSet"`
	ToEntities     []string                `json:"toEntities"`
	ToServices     unsupported             `json:"toServices"`
	ToFQDNs        unsupported             `json:"toFQDNs"`
	ToGroups       unsupported             `json:"toGroups"`
	ToNodes        unsupported             `json:"toNodes"`
	ToPorts        []*portRule             `json:"toPorts"`
	ICMPs          []*icmpRule             `json:"icmps"`
	Authentication unsupported             `json:"authentication"`
}

type cidrRule struct {
	CIDR              string      `json:"cidr"`
	Except            []string    `json:"except"`
	CIDRGroupRef      unsupported `json:"cidrGroupRef"`
	CIDRGroupSelector unsupported `json:"cidrGroupSelector"`
}

type portRule struct {
	Ports          []*portProtocol `json:"ports"`
	Rules          *l7Rules        `json:"rules"`
	TerminatingTLS unsupported     `json:"terminatingTLS"`
	OriginatingTLS unsupported     `json:"originatingTLS"`
	ServerNames    unsupported     `json:"serverNames"`
	Listener       unsupported     `json:"listener"`
}

type portProtocol struct {
	Port     portValue `json:"port"`
	EndPort  int32     `json:"endPort"`
	Protocol string    `json:"protocol"`
}

type l7Rules struct {
	HTTP    []*httpRule `json:"http"`
	Kafka   unsupported `json:"kafka"`
	DNS     unsupported `json:"dns"`
	L7Proto unsupported `json:"l7proto"`
	L7      unsupported `json:"l7"`
}

type httpRule struct {
	Method        string         `json:"method"`
	Path          string         `json:"path"`
	Host          string         `json:"host"`
	Headers       []string       `json:"headers"`
	HeaderMatches []*headerMatch `json:"headerMatches"`
}

type headerMatch struct {
	Mismatch string      `json:"mismatch"`
	Name     string      `json:"name"`
	Value    string      `json:"value"`
	Secret   unsupported `json:"secret"`
}

type icmpRule struct {
	Fields []*icmpField `json:"fields"`
}

type icmpField struct {
	Family string    `json:"family"`
	Type   portValue `json:"type"`
}

// unsupported records that a field Membrane does not implement was given.
type unsupported struct {
	present bool
}

func (u *unsupported) decodeGeneric(_ *decoder, _ string, v any) {
	u.present = v != nil
}

// portValue is a port (or ICMP type) given as a number or a string: a
// number-string or a name.
type portValue struct {
	set      bool
	isNumber bool // given as a JSON number
	text     string
}

func (p *portValue) decodeGeneric(d *decoder, path string, v any) {
	switch x := v.(type) {
	case nil:
	case string:
		*p = portValue{set: true, text: x}
	case json.Number:
		*p = portValue{set: true, isNumber: true, text: x.String()}
	default:
		d.wrongType(path, "a port number or name", v)
	}
}

// number parses the value as a decimal number.
func (p portValue) number() (uint64, bool) {
	n, err := strconv.ParseUint(p.text, 10, 64)
	return n, err == nil
}

// ruleLabels are a rule's labels: `source:key=value` strings or Cilium's
// {key, value, source} objects.
type ruleLabels []string

func (l *ruleLabels) decodeGeneric(d *decoder, path string, v any) {
	if v == nil {
		return
	}
	list, ok := v.([]any)
	if !ok {
		d.wrongType(path, "a list of labels", v)
		return
	}
	out := ruleLabels{}
	for i, e := range list {
		ip := indexPath(path, i)
		switch x := e.(type) {
		case string:
			out = append(out, x)
		case map[string]any:
			var lbl struct {
				Key    string `json:"key"`
				Value  string `json:"value"`
				Source string `json:"source"`
			}
			d.decode(ip, x, reflectValueOf(&lbl))
			s := lbl.Key
			if lbl.Source != "" {
				s = lbl.Source + ":" + s
			}
			if lbl.Value != "" {
				s += "=" + lbl.Value
			}
			out = append(out, s)
		default:
			d.wrongType(ip, "a label", e)
		}
	}
	*l = out
}
