package conformance

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// identityPlan plans an identity-level case (Cilium's pkg/policy tests):
// the subject identity becomes an endpoint with its labels; a peer with an
// exampleIP becomes that address in the world namespace, a peer with
// plain labels another endpoint. Ingress probes go from the peer to the
// subject, egress probes the other way; port any is TCP 80.
func identityPlan(c *Case, opt PlanOptions) (*Plan, error) {
	t := c.Topology
	p := &Plan{}
	subject := ""
	for _, pr := range c.Expected.Probes {
		if pr.Subject != "" {
			subject = pr.Subject
			break
		}
	}
	type peerInfo struct {
		world netip.Addr
		pod   string
	}
	peers := map[string]peerInfo{}
	var podPorts []ServedPort
	for _, pr := range c.Expected.Probes {
		podPorts = append(podPorts, identityProbePort(pr))
	}
	podPorts = mergePorts(podPorts, nil)
	nextIP := opt.SubjectIP.Next()
	for _, id := range t.Identities {
		isSubject := id.Name == subject || (subject == "" && strings.Contains(id.Role, "subject"))
		switch {
		case isSubject:
			subject = id.Name
			ls, ok := id.LabelList()
			if !ok {
				return nil, fmt.Errorf("plan %s: subject %s: labels are not a list", c.ID, id.Name)
			}
			p.Topo.Pods = append(p.Topo.Pods, PodPlan{Name: "identity/" + id.Name, IP: opt.SubjectIP, Labels: sortedCopy(ls), Ports: podPorts})
		case id.ExampleIP != "":
			a, err := netip.ParseAddr(id.ExampleIP)
			if err != nil || !a.Is4() {
				return nil, fmt.Errorf("plan %s: identity %s: exampleIP %q is not an IPv4 address", c.ID, id.Name, id.ExampleIP)
			}
			peers[id.Name] = peerInfo{world: a}
			p.Topo.World = appendAddr(p.Topo.World, a)
		default:
			ls, ok := id.LabelList()
			if !ok || hasReserved(ls) {
				continue // probes to it are unsupported below
			}
			name := "identity/" + id.Name
			p.Topo.Pods = append(p.Topo.Pods, PodPlan{Name: name, IP: nextIP, Labels: sortedCopy(ls), Ports: podPorts})
			nextIP = nextIP.Next()
			peers[id.Name] = peerInfo{pod: name}
		}
	}
	if subject == "" || len(p.Topo.Pods) == 0 {
		return nil, fmt.Errorf("plan %s: no subject identity", c.ID)
	}
	if len(p.Topo.World) > 0 {
		p.Topo.WorldPorts = podPorts
	}
	sortAddrs(p.Topo.World)
	sort.Slice(p.Topo.Pods, func(i, j int) bool { return p.Topo.Pods[i].Name < p.Topo.Pods[j].Name })
	subj := "identity/" + subject
	for i, pr := range c.Expected.Probes {
		sp := identityProbePort(pr)
		pp := PlannedProbe{Index: i, Port: sp.Port, Protocol: sp.Protocol, Want: ExpectationOf(pr)}
		peer, ok := peers[pr.PeerIdentity]
		peerName := pr.PeerIdentity
		var peerSide Peer
		var peerAddr netip.Addr
		switch {
		case !ok:
			pp.Unsupported = fmt.Sprintf("identity %s has neither an exampleIP nor labels an endpoint can carry", pr.PeerIdentity)
		case peer.world.IsValid():
			peerSide, peerAddr = Peer{World: peer.world}, peer.world
			peerName = fmt.Sprintf("%s(%s)", pr.PeerIdentity, peer.world)
		default:
			pd, _ := p.Topo.Pod(peer.pod)
			peerSide, peerAddr = Peer{Pod: peer.pod}, pd.IP
		}
		if pr.Direction == "ingress" {
			pp.From, pp.To, pp.Src, pp.Dsts = peerName, subj, peerSide, []netip.Addr{opt.SubjectIP}
		} else {
			pp.From, pp.To, pp.Src, pp.Dsts = subj, peerName, Peer{Pod: subj}, []netip.Addr{peerAddr}
		}
		if sp.Protocol == "SCTP" && pp.Unsupported == "" {
			pp.Unsupported = noSCTP
		}
		p.Probes = append(p.Probes, pp)
	}
	return p, nil
}

// identityProbePort picks the port of an identity-level probe: `any` is
// TCP 80, a served port of every peer.
func identityProbePort(pr ProbeSpec) ServedPort {
	proto := strings.ToUpper(pr.Protocol)
	if proto == "" || proto == "ANY" {
		proto = "TCP"
	}
	port := pr.Port.Port
	if pr.Port.Any || port == 0 {
		port = 80
	}
	return ServedPort{Port: port, Protocol: proto}
}

func hasReserved(ls []string) bool {
	for _, l := range ls {
		if strings.HasPrefix(l, "reserved:") || strings.HasPrefix(l, "cidr:") {
			return true
		}
	}
	return false
}
