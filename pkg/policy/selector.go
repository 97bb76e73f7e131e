package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
)

// Label keys of the Kubernetes conventions, as selectors write them.
const (
	nsKey           = labels.PodNamespaceLabel
	nsLabelsPrefix  = labels.NamespaceLabelsPrefix
	nsMetadataName  = "kubernetes.io/metadata.name"
	nsNameLabelKey  = nsLabelsPrefix + nsMetadataName
	anySourcePrefix = labels.SourceAny + ":"
)

// idClass sorts identities for the selectors that care.
type idClass uint8

const (
	classUser     idClass = iota // an endpoint's identity (user range)
	classReserved                // host, world, health, ...
	classCIDR                    // a policy CIDR's identity
)

func classOf(id identity.NumericIdentity) idClass {
	switch {
	case id.IsLocal():
		return classCIDR
	case id >= identity.MinUser || id == identity.Unknown:
		// Unknown: a label set that has no identity yet (policy trace);
		// only endpoints get new label sets.
		return classUser
	default:
		return classReserved
	}
}

// effectiveLabels returns the labels selectors see: an endpoint's own, plus
// the namespace it is in when its labels do not say (Membrane puts such
// endpoints in "default"), under the k8s source, and the namespace label
// kubernetes.io/metadata.name that Kubernetes gives every namespace.
// Reserved and CIDR identities are in no namespace.
func effectiveLabels(ls labels.Labels, class idClass) labels.Labels {
	if class != classUser {
		return ls
	}
	ns := ls.Namespace()
	var add []labels.Label
	if _, ok := ls.Get(labels.SourceK8s, nsKey); !ok {
		add = append(add, labels.Label{Source: labels.SourceK8s, Key: nsKey, Value: ns})
	}
	if _, ok := ls.Get(labels.SourceAny, nsNameLabelKey); !ok {
		add = append(add, labels.Label{Source: labels.SourceK8s, Key: nsNameLabelKey, Value: ns})
	}
	if len(add) == 0 {
		return ls
	}
	// ls is sorted by source and key, and none of add is in it: insert in
	// place (labels.New would sort a map).
	out := make(labels.Labels, 0, len(ls)+len(add))
	out = append(out, ls...)
	for _, l := range add {
		i := sort.Search(len(out), func(i int) bool {
			return out[i].Source > l.Source || (out[i].Source == l.Source && out[i].Key >= l.Key)
		})
		out = append(out, labels.Label{})
		copy(out[i+1:], out[i:])
		out[i] = l
	}
	return out
}

// labelSelector selects identities by their effective labels.
type labelSelector struct {
	sel labels.Selector
	// userOnly restricts the selector to endpoints' identities (Kubernetes
	// NetworkPolicy selects pods, never the host or reserved identities).
	userOnly bool
	// none: the selector selects nothing (a null Kubernetes selector).
	none bool
}

func (s *labelSelector) key() string {
	switch {
	case s.none:
		return "none"
	case s.userOnly:
		return "pods" + s.sel.String()
	}
	return "labels" + s.sel.String()
}

func (s *labelSelector) String() string {
	if s.none {
		return "nothing"
	}
	if s.userOnly {
		return "endpoints " + s.sel.String()
	}
	return s.sel.String()
}

// wildcard reports whether the selector selects every identity, so that
// identity 0 stands for it in the map.
func (s *labelSelector) wildcard() bool { return !s.none && !s.userOnly && s.sel.IsEmpty() }

func (s *labelSelector) matches(eff labels.Labels, class idClass) bool {
	if s.none || (s.userOnly && class != classUser) {
		return false
	}
	return s.sel.Matches(eff)
}

func (s *labelSelector) selects(r *identRecord) bool { return s.matches(r.labels, r.class) }

// and returns a selector that selects what both select.
func (s *labelSelector) and(o *labelSelector) *labelSelector {
	return &labelSelector{
		sel:      s.sel.With(o.sel.Requirements...),
		userOnly: s.userOnly || o.userOnly,
		none:     s.none || o.none,
	}
}

// hasKey reports whether a requirement constrains key under the k8s or any
// source (Cilium's HasKey(k8s:key) || HasKey(any:key)).
func hasKey(sel labels.Selector, key string) bool {
	for _, r := range sel.Requirements {
		if r.Key == key && (r.Source == labels.SourceK8s || r.Source == labels.SourceAny) {
			return true
		}
	}
	return false
}

func hasKeyPrefix(sel labels.Selector, prefix string) bool {
	for _, r := range sel.Requirements {
		if strings.HasPrefix(r.Key, prefix) && (r.Source == labels.SourceK8s || r.Source == labels.SourceAny) {
			return true
		}
	}
	return false
}

func hasSource(sel labels.Selector, source string) bool {
	for _, r := range sel.Requirements {
		if r.Source == source {
			return true
		}
	}
	return false
}

func nsIs(ns string) labels.Requirement {
	return labels.Requirement{Source: labels.SourceK8s, Key: nsKey, Operator: labels.OpIn, Values: []string{ns}}
}

var nsExists = labels.Requirement{Source: labels.SourceK8s, Key: nsKey, Operator: labels.OpExists}

// convertSelector turns a Kubernetes label selector into a labels.Selector;
// keyPrefix is put before every key (Kubernetes NetworkPolicy: the source,
// and the namespace-labels prefix for namespace selectors). A null selector
// gives ok=false without a problem.
func convertSelector(p *problems, path string, ls *metav1.LabelSelector, keyPrefix string) (labels.Selector, bool) {
	if ls == nil {
		return labels.Selector{}, false
	}
	var rs []labels.Requirement
	good := true
	keys := make([]string, 0, len(ls.MatchLabels))
	for k := range ls.MatchLabels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		r, err := labels.NewRequirement(keyPrefix+k, labels.OpIn, []string{ls.MatchLabels[k]})
		if err != nil {
			p.invalid(joinPath(joinPath(path, "matchLabels"), k), "%s", trimMalformed(err))
			good = false
			continue
		}
		rs = append(rs, r)
	}
	for i, e := range ls.MatchExpressions {
		ep := indexPath(joinPath(path, "matchExpressions"), i)
		if e.Key == "" {
			p.invalid(joinPath(ep, "key"), "a key is required")
			good = false
			continue
		}
		r, err := labels.NewRequirement(keyPrefix+e.Key, string(e.Operator), e.Values)
		if err != nil {
			p.invalid(ep, "%s", trimMalformed(err))
			good = false
			continue
		}
		rs = append(rs, r)
	}
	return labels.NewSelector(nil, rs), good
}

func trimMalformed(err error) string {
	return strings.TrimPrefix(err.Error(), labels.ErrMalformed.Error()+": ")
}

// ---- entities --------------------------------------------------------------

// Entities Membrane knows, as Cilium names them.
const (
	EntityAll        = "all"
	EntityWorld      = "world"
	EntityCluster    = "cluster"
	EntityHost       = "host"
	EntityRemoteNode = "remote-node"
	EntityInit       = "init"
	EntityHealth     = "health"
	EntityUnmanaged  = "unmanaged"
	EntityNone       = "none"
)

// entityIDs are the entities that stand for one reserved identity.
var entityIDs = map[string]identity.NumericIdentity{
	EntityWorld:      identity.World,
	EntityHost:       identity.Host,
	EntityRemoteNode: identity.RemoteNode,
	EntityInit:       identity.Init,
	EntityHealth:     identity.Health,
	EntityUnmanaged:  identity.Unmanaged,
}

// clusterReserved are the reserved identities of the cluster entity.
var clusterReserved = []identity.NumericIdentity{identity.Host, identity.Unmanaged, identity.Health, identity.Init, identity.RemoteNode}

// unsupportedEntities are Cilium entities Membrane has no identity for.
var unsupportedEntities = map[string]bool{"kube-apiserver": true, "ingress": true, "world-ipv4": true, "world-ipv6": true}

func validEntity(e string) bool {
	switch e {
	case EntityAll, EntityCluster, EntityNone:
		return true
	}
	_, ok := entityIDs[e]
	return ok
}

// entityMatches reports whether an identity belongs to an entity.
func entityMatches(e string, id identity.NumericIdentity, class idClass) bool {
	switch e {
	case EntityAll:
		return true
	case EntityNone:
		return false
	case EntityCluster:
		// Every identity that is not world and not a CIDR identity.
		if class == classUser {
			return true
		}
		for _, r := range clusterReserved {
			if id == r {
				return true
			}
		}
		return false
	}
	want, ok := entityIDs[e]
	return ok && id == want
}

// clusterSelector selects the user identities of the cluster entity (its
// reserved ones are constants).
type clusterSelector struct{}

func (clusterSelector) key() string                 { return "entity:cluster" }
func (clusterSelector) selects(r *identRecord) bool { return r.class == classUser }

// ---- CIDRs -----------------------------------------------------------------

// cidrSelector selects the CIDR identities inside prefix and outside every
// except: the ipcache gives an address the most specific policy prefix that
// holds it, so these are exactly the addresses in prefix but not in except.
type cidrSelector struct {
	prefix netip.Prefix
	except []netip.Prefix
}

func (c *cidrSelector) key() string {
	var b strings.Builder
	b.WriteString("cidr:" + c.prefix.String())
	for _, e := range c.except {
		b.WriteString("!" + e.String())
	}
	return b.String()
}

func (c *cidrSelector) String() string {
	if len(c.except) == 0 {
		return c.prefix.String()
	}
	ex := make([]string, len(c.except))
	for i, e := range c.except {
		ex[i] = e.String()
	}
	return fmt.Sprintf("%s except %s", c.prefix, strings.Join(ex, ","))
}

func (c *cidrSelector) selects(r *identRecord) bool {
	return r.class == classCIDR && c.holds(r.prefix)
}

// holds reports whether prefix p (an address's most specific policy prefix)
// is selected.
func (c *cidrSelector) holds(p netip.Prefix) bool {
	if !p.IsValid() || !prefixWithin(p, c.prefix) {
		return false
	}
	for _, e := range c.except {
		if prefixWithin(p, e) {
			return false
		}
	}
	return true
}

// prefixWithin reports whether inner ⊆ outer.
func prefixWithin(inner, outer netip.Prefix) bool {
	return inner.Addr().Is4() == outer.Addr().Is4() && outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

// parseCIDR parses a prefix and masks it (10.1.2.3/8 is 10.0.0.0/8, as
// net.ParseCIDR and Kubernetes read it); allowIP accepts a bare address as
// its host prefix (Cilium's fromCIDR/toCIDR).
func parseCIDR(s string, allowIP bool) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	if allowIP {
		if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
			a = a.Unmap()
			return netip.PrefixFrom(a, a.BitLen()), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("%q is not a CIDR", s)
}

// prefixFromLabels reads a CIDR identity's prefix from its `cidr:` label
// (IPv6 prefixes are written with '-' for ':', as Cilium writes them).
func prefixFromLabels(ls labels.Labels) netip.Prefix {
	for _, l := range ls {
		if l.Source != labels.SourceCIDR {
			continue
		}
		if pf, err := netip.ParsePrefix(strings.ReplaceAll(l.Key, "-", ":")); err == nil {
			return pf.Masked()
		}
	}
	return netip.Prefix{}
}
