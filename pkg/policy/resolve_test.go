package policy

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// The unit universe: three pods in namespaces x and y, a container
// endpoint without namespace, the reserved identities, and a CIDR identity
// for every prefix the policies name.
type unitWorld struct {
	repo  *Repository
	names map[identity.NumericIdentity]string
	eps   map[string]Endpoint
}

var unitPods = []struct {
	name  string
	id    identity.NumericIdentity
	lbls  string
	named []NamedPort
}{
	{"web.x", 256, "k8s:app=web,k8s:io.kubernetes.pod.namespace=x,k8s:io.cilium.k8s.namespace.labels.team=a", []NamedPort{{"http", 80, mapstate.ProtoTCP}, {"dns", 53, mapstate.ProtoUDP}}},
	{"db.x", 257, "k8s:app=db,k8s:io.kubernetes.pod.namespace=x,k8s:io.cilium.k8s.namespace.labels.team=a", []NamedPort{{"http", 8080, mapstate.ProtoTCP}}},
	{"web.y", 258, "k8s:app=web,k8s:io.kubernetes.pod.namespace=y", nil},
	{"app1", 259, "container:id=app1", nil},
	{"app2", 260, "container:id=app2", nil},
}

func newUnitWorld(t *testing.T, mode string, policies ...string) *unitWorld {
	t.Helper()
	w := &unitWorld{repo: newTestRepo(t, mode), names: map[identity.NumericIdentity]string{}, eps: map[string]Endpoint{}}
	var pols []*Policy
	for i, p := range policies {
		file := fmt.Sprintf("p%d.yaml", i)
		if strings.HasPrefix(strings.TrimSpace(p), "[") {
			file = fmt.Sprintf("p%d.json", i)
		}
		pols = append(pols, mustParse(t, file, p)...)
	}
	if _, err := w.repo.Import(pols); err != nil {
		t.Fatal(err)
	}
	upsertReserved(w.repo)
	for _, id := range identity.Reserved() {
		w.names[id.ID] = id.ID.String()
	}
	for _, p := range unitPods {
		ls := lbls(t, p.lbls)
		w.repo.UpsertIdentity(SelectableIdentity{ID: p.id, Labels: ls, NamedPorts: p.named})
		w.names[p.id] = p.name
		w.eps[p.name] = Endpoint{ID: uint64(p.id), Identity: p.id, Labels: ls, NamedPorts: p.named}
	}
	for pf, id := range upsertCIDRs(w.repo) {
		w.names[id] = "cidr:" + pf.String()
		w.names[id+identity.CIDRInClusterOffset] = "cidr:" + pf.String() + "+cluster"
	}
	w.names[0] = "any"
	return w
}

func (w *unitWorld) resolve(t *testing.T, ep string) *Resolved {
	t.Helper()
	res, err := w.repo.Resolve(w.eps[ep])
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// render lists the entries of one direction, as `identity port verdict`.
func (w *unitWorld) render(ms mapstate.MapState, egress bool) []string {
	var out []string
	for _, k := range ms.Keys() {
		if k.Egress != egress {
			continue
		}
		e := ms[k]
		port := "any"
		if k.Protocol != mapstate.ProtoAny {
			lo, hi := k.PortRange()
			switch {
			case k.PortPrefixLen == 0:
				port = "*/" + mapstate.ProtoName(k.Protocol)
			case lo == hi:
				port = fmt.Sprintf("%d/%s", lo, mapstate.ProtoName(k.Protocol))
			default:
				port = fmt.Sprintf("%d-%d/%s", lo, hi, mapstate.ProtoName(k.Protocol))
			}
			if k.Protocol == protoICMPv6 {
				port = fmt.Sprintf("%d/ICMPv6", lo)
			}
		}
		v := "allow"
		switch {
		case e.Deny:
			v = "deny"
		case e.ProxyPort != 0:
			v = fmt.Sprintf("proxy:%d", e.ProxyPort)
		}
		name := w.names[k.Identity]
		if name == "" {
			name = k.Identity.String()
		}
		out = append(out, fmt.Sprintf("%s %s %s", name, port, v))
	}
	sort.Strings(out)
	return out
}

func TestResolveMapState(t *testing.T) {
	allowAll := []string{"any any allow"}
	tests := []struct {
		name     string
		mode     string
		policies []string
		subject  string
		ingress  []string
		egress   []string
	}{
		{name: "no policy", subject: "web.x", ingress: allowAll, egress: allowAll},
		{name: "enforcement always", mode: EnforcementAlways, subject: "web.x"},
		{name: "enforcement never ignores rules", mode: EnforcementNever, subject: "web.x",
			policies: []string{cnp("  endpointSelector: {}\n  ingressDeny: [{fromEntities: [all]}]\n")}, ingress: allowAll, egress: allowAll},
		{name: "cnp fromEndpoints scoped to the policy namespace", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: web}}, {}]}]\n"},
			ingress:  []string{"db.x any allow", "web.x any allow"}, egress: allowAll},
		{name: "cnp selects only its namespace", subject: "web.y",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n"},
			ingress:  allowAll, egress: allowAll},
		{name: "cnp in default selects endpoints without namespace", subject: "app1",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {matchLabels: {id: app1}}\n  ingress: [{fromEndpoints: [{matchLabels: {id: app2}}]}]\n"},
			ingress:  []string{"app2 any allow"}, egress: allowAll},
		{name: "cnp selector naming the namespace reaches it", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  endpointSelector: {}\n  egress: [{toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: 'y'}}]}]\n"},
			ingress:  allowAll, egress: []string{"web.y any allow"}},
		{name: "cnp selector on namespace labels reaches other namespaces", subject: "web.y",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: 'y'}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.team: a}}]}]\n"},
			ingress:  []string{"db.x any allow", "web.x any allow"}, egress: allowAll},
		{name: "cnp reserved selector not scoped", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoints: [{matchLabels: {'reserved:host': ''}}]}]\n"},
			ingress:  []string{"host any allow"}, egress: allowAll},
		{name: "ccnp {} selects every endpoint but no reserved identity", subject: "web.y",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoints: [{}]}]\n"},
			ingress:  []string{"app1 any allow", "app2 any allow", "db.x any allow", "web.x any allow", "web.y any allow"}, egress: allowAll},
		{name: "rule list {} selects everything", subject: "app1",
			policies: []string{`[{"endpointSelector": {"matchLabels": {"id": "app1"}}, "ingress": [{"fromEndpoints": [{}]}]}]`},
			ingress:  allowAll, egress: allowAll},
		{name: "rule list is not namespaced", subject: "web.y",
			policies: []string{`[{"endpointSelector": {"matchLabels": {"app": "web"}}, "egress": [{"toEndpoints": [{"matchLabels": {"app": "db"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}]}]}]}]`},
			ingress:  allowAll, egress: []string{"db.x 80/TCP allow"}},
		{name: "early cilium L7 example", subject: "app1",
			policies: []string{`[{"endpointSelector": {"matchLabels":{"id":"app1"}}, "ingress": [{"fromEndpoints": [{"matchLabels":{"id":"app2"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"HTTP": [{"method": "GET", "path": "/public"}]}}]}]}]`},
			ingress:  []string{"app2 80/TCP proxy:15001"}, egress: allowAll},
		{name: "toPorts ANY is TCP, UDP and SCTP; ranges become prefixes", subject: "web.x",
			policies: []string{cnp("  endpointSelector: {}\n") + "---\n" + "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egress: [{toPorts: [{ports: [{port: '53'}, {port: '8080', endPort: 8083, protocol: TCP}, {port: '0', protocol: UDP}]}]}]\n"},
			ingress:  allowAll, egress: []string{"any */UDP allow", "any 53/SCTP allow", "any 53/TCP allow", "any 53/UDP allow", "any 8080-8083/TCP allow"}},
		{name: "icmps", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEntities: [host], icmps: [{fields: [{type: EchoRequest}, {type: 0}, {family: IPv6, type: EchoRequest}]}]}]\n"},
			ingress:  []string{"host 0/ICMP allow", "host 128/ICMPv6 allow", "host 8/ICMP allow"}, egress: allowAll},
		{name: "ingress named port from the endpoint", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: http}, {port: dns, protocol: TCP}, {port: DNS}]}]}]\n"},
			ingress:  []string{"any 53/UDP allow", "any 80/TCP allow"}, egress: allowAll},
		{name: "egress named port from each peer", subject: "web.y",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egress: [{toEndpoints: [{matchLabels: {io.kubernetes.pod.namespace: x}}], toPorts: [{ports: [{port: http}]}]}]\n"},
			ingress:  allowAll, egress: []string{"db.x 8080/TCP allow", "web.x 80/TCP allow"}},
		{name: "egress named port to every peer: every endpoint's", subject: "web.y",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egress: [{toPorts: [{ports: [{port: http}]}]}]\n"},
			ingress:  allowAll, egress: []string{"any 80/TCP allow", "any 8080/TCP allow"}},
		{name: "entities", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  egress: [{toEntities: [world, host, remote-node, init, health, unmanaged, none]}]\n  ingress: [{fromEntities: [cluster], toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]\n"},
			ingress:  []string{"app1 80/TCP allow", "app2 80/TCP allow", "db.x 80/TCP allow", "health 80/TCP allow", "host 80/TCP allow", "init 80/TCP allow", "remote-node 80/TCP allow", "unmanaged 80/TCP allow", "web.x 80/TCP allow", "web.y 80/TCP allow"},
			egress:   []string{"health any allow", "host any allow", "init any allow", "remote-node any allow", "unmanaged any allow", "world any allow"}},
		{name: "entity all", subject: "web.x",
			policies: []string{cnp("  endpointSelector: {}\n") + "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egress: [{toEntities: [all], toPorts: [{ports: [{port: '443', protocol: TCP}]}]}]\n"},
			ingress:  allowAll, egress: []string{"any 443/TCP allow"}},
		{name: "cilium CIDRs match outside addresses only; except", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egress:\n  - toCIDR: [10.0.0.0/8, 192.168.1.1]\n  - toCIDRSet: [{cidr: 172.16.0.0/12, except: [172.16.1.0/24]}]\n"},
			ingress:  allowAll, egress: []string{"cidr:10.0.0.0/8 any allow", "cidr:172.16.0.0/12 any allow", "cidr:192.168.1.1/32 any allow"}},
		{name: "ipBlock matches cluster addresses too", subject: "web.x",
			policies: []string{"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  egress: [{to: [{ipBlock: {cidr: 10.1.0.0/16, except: [10.1.2.0/24]}}], ports: [{port: 53, protocol: UDP}]}]\n"},
			egress:   []string{"cidr:10.1.0.0/16 53/UDP allow", "cidr:10.1.0.0/16+cluster 53/UDP allow"}},
		{name: "deny beats allow of the same identity", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  ingressDeny: [{fromEntities: [host]}]\n  ingress: [{fromEntities: [host, world], toPorts: [{ports: [{port: '80', protocol: TCP}]}]}]\n"},
			ingress:  []string{"host 80/TCP deny", "host any deny", "world 80/TCP allow"}, egress: allowAll},
		{name: "narrow deny under a broad allow", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  ingressDeny: [{fromEntities: [world], toPorts: [{ports: [{port: '22', protocol: TCP}]}]}]\n  ingress: [{fromEntities: [world]}]\n"},
			ingress:  []string{"world 22/TCP deny", "world any allow"}, egress: allowAll},
		{name: "deny only rules put the endpoint in default deny", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egressDeny: [{toEntities: [world]}]\n"},
			ingress:  allowAll, egress: []string{"world any deny"}},
		{name: "enableDefaultDeny false keeps allowing", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  enableDefaultDeny: {egress: false}\n  egressDeny: [{toEntities: [world]}]\n  egress: [{toEntities: [host], toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}]}}]}]\n"},
			ingress:  allowAll, egress: []string{"any any allow", "host 80/TCP proxy:15002", "world any deny"}},
		{name: "enableDefaultDeny true without rules", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  enableDefaultDeny: {ingress: true}\n"},
			egress:   allowAll},
		{name: "ingress [{}] allows nothing", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  ingress: [{}]\n"},
			egress:   allowAll},
		{name: "explicit empty peer list allows nothing", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoints: [], toPorts: [{ports: [{port: '80'}]}]}]\n"},
			egress:   allowAll},
		{name: "L7 from any, L3 allow from one peer: the peer is not redirected", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}]}}]\n  - fromEntities: [host]\n"},
			ingress:  []string{"any 80/TCP proxy:15001", "host 80/TCP allow", "host any allow"}, egress: allowAll},
		{name: "L7 from a peer under an L4 allow from any: not redirected", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - fromEntities: [host]\n    toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{method: GET}]}}]\n  - toPorts: [{ports: [{port: '80', protocol: TCP}]}]\n"},
			ingress:  []string{"any 80/TCP allow", "host 80/TCP allow"}, egress: allowAll},
		{name: "fromRequires narrows endpoint selectors", subject: "web.x",
			policies: []string{"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromRequires: [{matchLabels: {app: db}}]\n  - fromEndpoints: [{}]\n  - fromEntities: [host]\n"},
			ingress:  []string{"db.x any allow", "host any allow"}, egress: allowAll},
		{name: "knp default policyTypes: ingress only", subject: "web.x",
			policies: []string{"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec:\n  podSelector: {}\n"},
			egress:   allowAll},
		{name: "knp egress rules imply Egress", subject: "web.x",
			policies: []string{"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec:\n  podSelector: {}\n  egress: [{to: [{podSelector: {}}]}]\n"},
			egress:   []string{"db.x any allow", "web.x any allow"}},
		{name: "knp rules of a type not listed are ignored", subject: "web.x",
			policies: []string{"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  ingress: [{}]\n"},
			ingress:  allowAll},
		{name: "knp empty rule allows everything, in and out of the cluster", subject: "web.x",
			policies: []string{"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{}]\n  egress: [{ports: [{protocol: UDP}, {port: 443}, {port: http}]}]\n"},
			ingress:  allowAll, egress: []string{"any */UDP allow", "any 443/TCP allow", "any 80/TCP allow", "any 8080/TCP allow"}},
		{name: "knp peers: pods, namespaces, both", subject: "web.y",
			policies: []string{"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: 'y'}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}]\n    ports: [{port: 1}]\n  - from: [{namespaceSelector: {matchLabels: {team: a}}}]\n    ports: [{port: 2}]\n  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}]\n    ports: [{port: 3}]\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: default}}}]\n    ports: [{port: 4}]\n"},
			ingress:  []string{"app1 4/TCP allow", "app2 4/TCP allow", "db.x 2/TCP allow", "db.x 3/TCP allow", "web.x 2/TCP allow", "web.y 1/TCP allow"}, egress: allowAll},
		{name: "knp does not select other namespaces or reserved identities", subject: "web.y",
			policies: []string{"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: x}\nspec:\n  podSelector: {}\n"},
			ingress:  allowAll, egress: allowAll},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mode := tt.mode
			if mode == "" {
				mode = EnforcementDefault
			}
			w := newUnitWorld(t, mode, tt.policies...)
			res := w.resolve(t, tt.subject)
			for _, d := range []struct {
				egress bool
				want   []string
				on     bool
			}{{false, tt.ingress, res.IngressEnforced}, {true, tt.egress, res.EgressEnforced}} {
				got := w.render(res.MapState, d.egress)
				if strings.Join(got, "\n") != strings.Join(d.want, "\n") {
					t.Errorf("%s:\n  %s\nwant:\n  %s", dirName(d.egress), strings.Join(got, "\n  "), strings.Join(d.want, "\n  "))
				}
			}
			for k := range res.MapState {
				if err := k.Valid(); err != nil {
					t.Errorf("invalid key %v: %v", k, err)
				}
			}
		})
	}
}

func TestResolveL7Policy(t *testing.T) {
	w := newUnitWorld(t, EnforcementDefault, `[{"endpointSelector": {"matchLabels":{"id":"app1"}}, "ingress": [
		{"fromEndpoints": [{"matchLabels":{"id":"app2"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"HTTP": [{"method": "GET", "path": "/public"}]}}]},
		{"fromEntities": ["host"], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]`)
	res := w.resolve(t, "app1")
	sels := res.L7.Ports[l7PortKey(false, 80)]
	if len(sels) != 2 {
		t.Fatalf("selections: %+v", sels)
	}
	if !sels[0].Identities[260] || len(sels[0].Rules) != 1 || sels[0].Origin != "CiliumRuleList p0 [0].ingress[0]" {
		t.Errorf("L7 selection %+v", sels[0])
	}
	if !sels[1].Identities[identity.Host] || len(sels[1].Rules) != 0 {
		t.Errorf("allow-all selection %+v", sels[1])
	}
}

func TestResolveNoProxyPort(t *testing.T) {
	l7pol := `[{"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"HTTP": [{}]}}]}]}]`
	r := NewRepository(Config{}, nil)
	if _, err := r.Import(mustParse(t, "l7.json", l7pol)); err == nil || !strings.Contains(err.Error(), "L7 proxy") {
		t.Errorf("import without proxy: %v", err)
	}
	r = NewRepository(Config{ProxyPort: func(bool) uint16 { return 0 }}, nil)
	mustImport(t, r, "l7.json", l7pol)
	if _, err := r.Resolve(Endpoint{ID: 1, Identity: 256}); err == nil {
		t.Errorf("resolve with proxy port 0: no error")
	}
}

func TestIdentityChanges(t *testing.T) {
	w := newUnitWorld(t, EnforcementDefault, "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  ingress: [{fromEndpoints: [{matchLabels: {app: db}}]}]\n")
	if got := w.render(w.resolve(t, "web.x").MapState, false); strings.Join(got, ",") != "db.x any allow" {
		t.Fatalf("before: %v", got)
	}
	// A new identity the selector selects appears...
	w.repo.UpsertIdentity(SelectableIdentity{ID: 300, Labels: lbls(t, "app=db,io.kubernetes.pod.namespace=x")})
	w.names[300] = "db2.x"
	if got := w.render(w.resolve(t, "web.x").MapState, false); strings.Join(got, ",") != "db.x any allow,db2.x any allow" {
		t.Fatalf("after upsert: %v", got)
	}
	// ...changes labels...
	w.repo.UpsertIdentity(SelectableIdentity{ID: 300, Labels: lbls(t, "app=cache,io.kubernetes.pod.namespace=x")})
	if got := w.render(w.resolve(t, "web.x").MapState, false); strings.Join(got, ",") != "db.x any allow" {
		t.Fatalf("after relabel: %v", got)
	}
	// ...and goes away.
	w.repo.RemoveIdentity(257)
	if got := w.render(w.resolve(t, "web.x").MapState, false); len(got) != 0 {
		t.Fatalf("after remove: %v", got)
	}
}

func TestPrefixes(t *testing.T) {
	r := newTestRepo(t, "")
	mustImport(t, r, "a.yaml", "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egress: [{toCIDR: [10.1.2.3/8, 192.168.0.1]}, {toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}]\n")
	mustImport(t, r, "b.yaml", knp("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}, {ipBlock: {cidr: '::/0'}}]}]\n"))
	var got []string
	for _, p := range r.Prefixes() {
		got = append(got, p.String())
	}
	if strings.Join(got, " ") != "10.0.0.0/8 10.1.0.0/16 192.168.0.1/32 ::/0" {
		t.Errorf("prefixes %v", got)
	}
	_ = netip.Prefix{}
}

func TestEffectiveLabels(t *testing.T) {
	ls := effectiveLabels(lbls(t, "container:id=app1,k8s:zz=1"), classUser)
	want := "container:id=app1,k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=default,k8s:io.kubernetes.pod.namespace=default,k8s:zz=1"
	if ls.String() != want || !ls.Equal(labels.New(ls...)) {
		t.Errorf("got %s", ls)
	}
	if got := effectiveLabels(identity.ReservedLabels(identity.Host), classReserved); got.String() != "reserved:host" {
		t.Errorf("reserved: %s", got)
	}
}

func TestResolvedJSON(t *testing.T) {
	w := newUnitWorld(t, EnforcementDefault, `[{"endpointSelector": {"matchLabels":{"id":"app1"}}, "ingress": [{"fromEndpoints": [{"matchLabels":{"id":"app2"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"HTTP": [{"method": "GET", "path": "/public"}]}}]}]}]`)
	b, err := json.Marshal(w.resolve(t, "app1"))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"entries":[{"identity":0,"egress":true,"protocol":0,"port":0,"portPrefixLen":0},{"identity":260,"egress":false,"protocol":6,"port":80,"portPrefixLen":16,"proxyPort":15001,"cookie":1}],"l7":[{"egress":false,"protocol":6,"port":80,"selections":[{"identities":{"260":true},"origin":"CiliumRuleList p0 [0].ingress[0]"}]}],"ingressEnforced":true,"egressEnforced":false,"revision":2}`
	if string(b) != want {
		t.Errorf("got  %s\nwant %s", b, want)
	}
}

func TestCIDRIdentityWithoutPrefix(t *testing.T) {
	r := newTestRepo(t, "")
	mustImport(t, r, "a.yaml", "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  egress: [{toCIDR: ['2001:db8::/32']}]\n")
	id := identity.LocalScope + 1
	r.UpsertIdentity(SelectableIdentity{ID: id, Labels: labels.New(labels.Label{Source: labels.SourceCIDR, Key: "2001-db8--/32"})})
	res, err := r.Resolve(Endpoint{ID: 1, Identity: 256})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := res.MapState[mapstate.Key{Identity: id, Egress: true}]; !ok {
		t.Errorf("no entry for the CIDR identity: %v", res.MapState)
	}
}
