package policy

import (
	"strings"

	netv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// Translation of Kubernetes NetworkPolicy (networking.k8s.io/v1), decoded
// strictly into the real API types, with the checks of Kubernetes'
// ValidateNetworkPolicy and the semantics of the API's documentation:
//   - podSelector selects pods of the policy's namespace ({} selects all);
//   - policyTypes, when absent, is Ingress, plus Egress if the policy has
//     egress rules; a policy isolates its pods in each listed direction;
//   - rules of a direction not in policyTypes are ignored;
//   - a rule with no from/to allows every source/destination, in or out of
//     the cluster; a rule with no ports allows every port and protocol;
//   - a peer with podSelector only selects pods of the policy's namespace;
//     with namespaceSelector only, every pod of the namespaces it selects;
//     with both, the pods they both select; ipBlock matches addresses
//     (pods, hosts and outside addresses alike) in cidr and not in except;
//   - protocol defaults to TCP; a string port is a container port name;
//   - policies selecting a pod add up.
//
// Pod selectors match labels of any source (pods' labels are k8s: labels;
// Membrane's container endpoints may carry others) but only endpoints'
// identities, never the host or reserved identities.

func parseKNP(obj map[string]any) (*Policy, problems) {
	var p problems
	var np netv1.NetworkPolicy
	d := decoder{p: &p}
	d.decode("", obj, reflectValueOf(&np))
	pol := translateKNP(&p, &np)
	return pol, p
}

// translateKNP translates a decoded NetworkPolicy.
func translateKNP(p *problems, np *netv1.NetworkPolicy) *Policy {
	pol := &Policy{Kind: KindKNP, Name: np.Name, Namespace: np.Namespace}
	checkName(p, "metadata.name", pol.Name)
	if pol.Namespace == "" {
		pol.Namespace = labels.DefaultNamespace
	} else {
		checkNamespace(p, "metadata.namespace", pol.Namespace)
	}
	k := &knpCtx{p: p, ns: pol.Namespace}
	spec := &np.Spec
	s := &specRule{path: "spec"}
	if sel, ok := convertSelector(p, "spec.podSelector", &spec.PodSelector, anySourcePrefix); ok {
		s.subject = &labelSelector{sel: sel.With(nsIs(pol.Namespace)), userOnly: true}
	} else {
		s.subject = &labelSelector{none: true}
	}
	ingress, egress := false, false
	if len(spec.PolicyTypes) == 0 {
		ingress, egress = true, len(spec.Egress) > 0
	}
	for i, t := range spec.PolicyTypes {
		switch t {
		case netv1.PolicyTypeIngress:
			ingress = true
		case netv1.PolicyTypeEgress:
			egress = true
		default:
			p.invalid(indexPath("spec.policyTypes", i), "%q is not a policy type (want Ingress or Egress)", t)
		}
	}
	s.defaultDeny = [2]bool{ingress, egress}
	for i, r := range spec.Ingress {
		path := indexPath("spec.ingress", i)
		it := &item{path: path, knp: true, peers: k.peers(joinPath(path, "from"), r.From), ports: k.ports(joinPath(path, "ports"), r.Ports)}
		if ingress {
			s.items = append(s.items, it)
		}
	}
	for i, r := range spec.Egress {
		path := indexPath("spec.egress", i)
		it := &item{path: path, knp: true, egress: true, peers: k.peers(joinPath(path, "to"), r.To), ports: k.ports(joinPath(path, "ports"), r.Ports)}
		if egress {
			s.items = append(s.items, it)
		}
	}
	pol.specs = []*specRule{s}
	return pol
}

type knpCtx struct {
	p  *problems
	ns string
}

func (k *knpCtx) peers(path string, peers []netv1.NetworkPolicyPeer) []peer {
	if len(peers) == 0 {
		return nil // every source or destination
	}
	out := []peer{}
	for i, pr := range peers {
		pp := indexPath(path, i)
		switch {
		case pr.IPBlock != nil && (pr.PodSelector != nil || pr.NamespaceSelector != nil):
			k.p.invalid(pp, "ipBlock cannot be combined with podSelector or namespaceSelector")
		case pr.IPBlock != nil:
			if c := k.ipBlock(joinPath(pp, "ipBlock"), pr.IPBlock); c != nil {
				out = append(out, peer{kind: peerCIDR, cidr: c, anyAddress: true})
			}
		case pr.PodSelector == nil && pr.NamespaceSelector == nil:
			k.p.invalid(pp, "a peer needs podSelector, namespaceSelector or ipBlock")
		default:
			sel := &labelSelector{userOnly: true}
			good := true
			if pr.PodSelector != nil {
				s, ok := convertSelector(k.p, joinPath(pp, "podSelector"), pr.PodSelector, anySourcePrefix)
				good = good && ok
				sel.sel = sel.sel.With(s.Requirements...)
			}
			if pr.NamespaceSelector != nil {
				s, ok := convertSelector(k.p, joinPath(pp, "namespaceSelector"), pr.NamespaceSelector, anySourcePrefix+nsLabelsPrefix)
				good = good && ok
				sel.sel = sel.sel.With(s.Requirements...)
			} else {
				sel.sel = sel.sel.With(nsIs(k.ns))
			}
			if good {
				out = append(out, peer{kind: peerSelector, sel: sel})
			}
		}
	}
	return out
}

func (k *knpCtx) ipBlock(path string, b *netv1.IPBlock) *cidrSelector {
	pf, err := parseCIDR(b.CIDR, false)
	if err != nil {
		if b.CIDR == "" {
			k.p.invalid(joinPath(path, "cidr"), "a CIDR is required")
		} else {
			k.p.invalid(joinPath(path, "cidr"), "%v", err)
		}
		return nil
	}
	c := &cidrSelector{prefix: pf}
	good := true
	for i, e := range b.Except {
		ep := indexPath(joinPath(path, "except"), i)
		ex, err := parseCIDR(e, false)
		if err != nil {
			k.p.invalid(ep, "%v", err)
			good = false
			continue
		}
		if !prefixWithin(ex, pf) || ex.Bits() == pf.Bits() {
			k.p.invalid(ep, "%s is not strictly inside cidr %s", ex, pf)
			good = false
			continue
		}
		c.except = append(c.except, ex)
	}
	if !good {
		return nil
	}
	return c
}

func (k *knpCtx) ports(path string, ports []netv1.NetworkPolicyPort) []portSpec {
	if len(ports) == 0 {
		return nil // every port and protocol
	}
	out := []portSpec{}
	for i, np := range ports {
		pp := indexPath(path, i)
		ps := portSpec{proto: mapstate.ProtoTCP}
		good := true
		if np.Protocol != nil {
			switch *np.Protocol {
			case "TCP":
			case "UDP":
				ps.proto = mapstate.ProtoUDP
			case "SCTP":
				ps.proto = mapstate.ProtoSCTP
			default:
				k.p.invalid(joinPath(pp, "protocol"), "%q is not a protocol (want TCP, UDP or SCTP)", *np.Protocol)
				good = false
			}
		}
		if np.Port != nil {
			switch np.Port.Type {
			case intstr.Int:
				if np.Port.IntVal < 1 || np.Port.IntVal > 65535 {
					k.p.invalid(joinPath(pp, "port"), "%d is not a port (want 1-65535 or a port name)", np.Port.IntVal)
					good = false
				}
				ps.port = uint16(np.Port.IntVal)
			case intstr.String:
				if !isPortName(np.Port.StrVal) || np.Port.StrVal != strings.ToLower(np.Port.StrVal) {
					k.p.invalid(joinPath(pp, "port"), "%q is not a port (want 1-65535 or a port name)", np.Port.StrVal)
					good = false
				}
				ps.name = np.Port.StrVal
			}
		}
		if np.EndPort != nil {
			ep := joinPath(pp, "endPort")
			switch {
			case np.Port == nil || np.Port.Type != intstr.Int:
				k.p.invalid(ep, "endPort needs a numeric port")
				good = false
			case *np.EndPort < np.Port.IntVal || *np.EndPort > 65535:
				k.p.invalid(ep, "%d is not a port from port %d to 65535", *np.EndPort, np.Port.IntVal)
				good = false
			default:
				ps.endPort = uint16(*np.EndPort)
			}
		}
		if good {
			out = append(out, ps)
		}
	}
	return out
}
