package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
)

// Policy kinds.
const (
	KindCNP  = "CiliumNetworkPolicy"
	KindCCNP = "CiliumClusterwideNetworkPolicy"
	KindKNP  = "NetworkPolicy"
	// KindRuleList is early Cilium's bare JSON list of rules.
	KindRuleList = "CiliumRuleList"
)

// Policy is one policy object (a document, a List item, or a whole JSON
// rule list) with its parsed rules. It (de)serializes as its source
// (kind, namespace, name, file, document, object); unmarshaling parses the
// object again.
type Policy struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	File      string `json:"file,omitempty"`
	// Document is the 1-based number of the document in its file.
	Document int `json:"document"`
	// Object is the original object as JSON, for `policy get -o yaml|json`.
	Object json.RawMessage `json:"object"`

	specs    []*specRule
	prefixes []netip.Prefix
}

// String names the policy: `CiliumNetworkPolicy default/rule1`.
func (p *Policy) String() string {
	if p.Name == "" {
		return p.Kind
	}
	return p.Kind + " " + p.qualifiedName()
}

func (p *Policy) qualifiedName() string {
	if p.Namespace == "" {
		return p.Name
	}
	return p.Namespace + "/" + p.Name
}

type policyKey struct{ kind, namespace, name string }

func (p *Policy) key() policyKey { return policyKey{p.Kind, p.Namespace, p.Name} }

// Prefixes returns every CIDR (and except CIDR) the policy names, masked,
// deduplicated and sorted: the agent gives each a CIDR identity.
func (p *Policy) Prefixes() []netip.Prefix {
	return append([]netip.Prefix(nil), p.prefixes...)
}

func (p *Policy) computePrefixes() {
	var all []netip.Prefix
	for _, s := range p.specs {
		s.prefixes(func(pf netip.Prefix) { all = append(all, pf) })
	}
	p.prefixes = sortPrefixes(all)
}

// sortPrefixes sorts prefixes by address, then length, and drops
// duplicates, in place.
func sortPrefixes(pfs []netip.Prefix) []netip.Prefix {
	slices.SortFunc(pfs, comparePrefixes)
	return slices.Compact(pfs)
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

type policyJSON struct {
	Kind      string          `json:"kind"`
	Namespace string          `json:"namespace,omitempty"`
	Name      string          `json:"name"`
	File      string          `json:"file,omitempty"`
	Document  int             `json:"document"`
	Object    json.RawMessage `json:"object"`
}

// UnmarshalJSON reads a policy saved with json.Marshal and parses its object
// again (the agent's state directory keeps policies this way).
func (p *Policy) UnmarshalJSON(b []byte) error {
	var pj policyJSON
	if err := json.Unmarshal(b, &pj); err != nil {
		return fmt.Errorf("read saved policy: %w", err)
	}
	np, err := ParseObject(pj.File, pj.Document, pj.Object)
	if err != nil {
		return fmt.Errorf("parse saved policy %s %s: %w", pj.Kind, pj.Name, err)
	}
	if np.Kind != pj.Kind || np.Namespace != pj.Namespace || (np.Name != pj.Name && pj.Kind != KindRuleList) {
		return fmt.Errorf("parse saved policy %s %s: %w: object is %s", pj.Kind, pj.Name, ErrInvalid, np)
	}
	np.Name = pj.Name
	*p = *np
	return nil
}

// NamedPort is a port name an endpoint defines (a container port name).
type NamedPort struct {
	Name     string `json:"name"`
	Port     uint16 `json:"port"`
	Protocol uint8  `json:"protocol"`
}

// SelectableIdentity is an identity selectors choose among. The agent tells
// the repository of every identity: reserved, user and CIDR.
type SelectableIdentity struct {
	ID     identity.NumericIdentity `json:"id"`
	Labels labels.Labels            `json:"labels"`
	// Prefix is the CIDR of a CIDR identity.
	Prefix netip.Prefix `json:"prefix,omitzero"`
	// NamedPorts is the union of the named ports of the endpoints holding
	// the identity, for egress rules to named ports.
	NamedPorts []NamedPort `json:"namedPorts,omitempty"`
}

// Endpoint is what Resolve needs of an endpoint.
type Endpoint struct {
	ID         uint64                   `json:"id"`
	Identity   identity.NumericIdentity `json:"identity"`
	Labels     labels.Labels            `json:"labels"`
	NamedPorts []NamedPort              `json:"namedPorts,omitempty"`
}
