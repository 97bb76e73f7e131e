package policy

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

const cnpHead = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: rule1, namespace: ns1}\n"
const knpHead = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np1, namespace: ns1}\n"

func cnp(spec string) string { return cnpHead + "spec:\n" + spec }
func knp(spec string) string { return knpHead + "spec:\n" + spec }

const (
	cnpObj = "policy.yaml: document 1 (CiliumNetworkPolicy ns1/rule1): "
	knpObj = "policy.yaml: document 1 (NetworkPolicy ns1/np1): "
)

// TestParseErrors: every validation error, with its exact message.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []string
		// unsupported: the error wraps ErrUnsupported (else ErrInvalid).
		unsupported bool
	}{
		{"yaml syntax", "a: b\n c: d: e\n", []string{"policy.yaml: document 1: YAML: yaml: line 2: mapping values are not allowed in this context"}, false},
		{"yaml syntax in document 2", cnp("  endpointSelector: {}\n") + "---\na: [\n", []string{"policy.yaml: document 2: YAML: yaml: line 7: did not find expected node content"}, false},
		{"json syntax", `{"a": [1,2}`, []string{"policy.yaml: JSON: line 1 column 12: invalid character '}' after array element"}, false},
		{"empty file", "# nothing\n", []string{"policy.yaml: no policy in file"}, false},
		{"missing kind", "apiVersion: v1\nmetadata: {name: a}\n", []string{"policy.yaml: document 1: kind: missing (want CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy)"}, false},
		{"unknown kind", "apiVersion: v1\nkind: Pod\n", []string{`policy.yaml: document 1 (Pod): kind: unknown kind "Pod" (want CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy, or a List of them)`}, false},
		{"wrong apiVersion", "apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\n", []string{`policy.yaml: document 1 (CiliumNetworkPolicy): apiVersion: "cilium.io/v1" is not an API version of CiliumNetworkPolicy (want cilium.io/v2)`}, false},
		{"missing apiVersion", "kind: NetworkPolicy\n", []string{`policy.yaml: document 1 (NetworkPolicy): apiVersion: missing is not an API version of NetworkPolicy (want networking.k8s.io/v1)`}, false},
		{"scalar document", "42\n", []string{"policy.yaml: document 1: want a policy object or a list of rules, got number 42"}, false},
		{"missing name", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nspec: {endpointSelector: {}}\n", []string{"policy.yaml: document 1 (CiliumNetworkPolicy): metadata.name: a name is required"}, false},
		{"bad name", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: Rule_1}\nspec: {endpointSelector: {}}\n",
			[]string{`policy.yaml: document 1 (CiliumNetworkPolicy default/Rule_1): metadata.name: "Rule_1" is not a valid name (lowercase letters, digits, '-' and '.', at most 253 characters)`}, false},
		{"bad namespace", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: a.b}\nspec: {endpointSelector: {}}\n",
			[]string{`policy.yaml: document 1 (CiliumNetworkPolicy a.b/a): metadata.namespace: "a.b" is not a valid namespace (lowercase letters, digits and '-', at most 63 characters)`}, false},
		{"ccnp with namespace", "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: a, namespace: x}\nspec: {endpointSelector: {}}\n",
			[]string{`policy.yaml: document 1 (CiliumClusterwideNetworkPolicy a): metadata.namespace: a CiliumClusterwideNetworkPolicy has no namespace (got "x")`}, false},
		{"missing spec", cnpHead, []string{cnpObj + "spec: a spec (or specs) is required"}, false},
		{"missing endpointSelector", cnp("  ingress: [{}]\n"), []string{cnpObj + "spec.endpointSelector: an endpointSelector is required"}, false},
		{"unknown field", cnp("  endpointSelector: {}\n  ingres: []\n"), []string{cnpObj + "spec.ingres: unknown field"}, false},
		{"unknown nested field", cnp("  endpointSelector: {}\n  ingress: [{fromEndpoint: [{}]}]\n"), []string{cnpObj + "spec.ingress[0].fromEndpoint: unknown field"}, false},
		{"field names are case-sensitive", cnp("  EndpointSelector: {}\n"), []string{cnpObj + "spec.EndpointSelector: unknown field", cnpObj + "spec.endpointSelector: an endpointSelector is required"}, false},
		{"wrong type", cnp("  endpointSelector: {}\n  ingress: {}\n"), []string{cnpObj + "spec.ingress: want a list, got an object"}, false},
		{"yaml boolean", cnp("  endpointSelector: {matchLabels: {app: y}}\n"), []string{cnpObj + "spec.endpointSelector.matchLabels.app: want a string, got boolean true (YAML reads unquoted y, n, yes, no, on, off as booleans: quote the value)"}, false},
		{"bad operator", cnp("  endpointSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}\n"),
			[]string{cnpObj + `spec.endpointSelector.matchExpressions[0]: unknown operator "Equals" on "app" (want In, NotIn, Exists or DoesNotExist)`}, false},
		{"In without values", cnp("  endpointSelector: {matchExpressions: [{key: app, operator: In}]}\n"),
			[]string{cnpObj + `spec.endpointSelector.matchExpressions[0]: operator In on "app" needs at least one value`}, false},
		{"Exists with values", cnp("  endpointSelector: {matchExpressions: [{key: app, operator: Exists, values: [a]}]}\n"),
			[]string{cnpObj + `spec.endpointSelector.matchExpressions[0]: operator Exists on "app" takes no values`}, false},
		{"bad label key", cnp("  endpointSelector: {matchLabels: {'a b': c}}\n"),
			[]string{cnpObj + `spec.endpointSelector.matchLabels.a b: selector key "a b": key "a b": character ' ' not allowed (letters, digits, '.', '-', '_', '/')`}, false},
		{"bad port name", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: eighty}]}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].port: "eighty" is not a port`}, false},
		{"bad port name", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: eighty_}]}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].port: "eighty_" is not a port`}, false},
		{"port out of range", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '65536'}]}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].port: "65536" is not a port`}, false},
		{"numeric port out of range", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: 70000}]}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].port: "70000" is not a port`}, false},
		{"negative port", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '-1'}]}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].port: "-1" is not a port`}, false},
		{"missing port", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{protocol: TCP}]}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].port: a port is required`}, false},
		{"endPort below port", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80', endPort: 79}]}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].endPort: 79 is not a port from port 80 to 65535`}, false},
		{"endPort with named port", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: http, endPort: 90}]}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].endPort: endPort needs a numeric port, not the port name "http"`}, false},
		{"endPort with port 0", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '0', endPort: 90}]}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].endPort: endPort needs a port other than 0`}, false},
		{"bad protocol", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80', protocol: ICMP}]}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].protocol: "ICMP" is not a protocol (want TCP, UDP, SCTP or ANY)`}, false},
		{"bad regex", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{path: '/a('}]}}]}]\n"),
			[]string{cnpObj + "spec.ingress[0].toPorts[0].rules.http[0].path: \"/a(\" is not a valid extended regular expression: error parsing regexp: missing closing ): `/a(`"}, false},
		{"bad header", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{headers: ['a b: c']}]}}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].rules.http[0].headers[0]: header name "a b": character ' ' not allowed`}, false},
		{"bad header mismatch", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{headerMatches: [{name: x, mismatch: DROP}]}]}}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch: "DROP" is not one of LOG, ADD, DELETE, REPLACE`}, false},
		{"L7 on ANY", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{}]}}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].protocol: L7 rules apply to TCP only: give protocol TCP (not ANY)`}, false},
		{"L7 on port 0", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '0', protocol: TCP}], rules: {http: [{}]}}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].port: L7 rules cannot be used with port 0 (every port)`}, false},
		{"L7 on a range", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80', endPort: 90, protocol: TCP}], rules: {http: [{}]}}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].ports[0].endPort: L7 rules need a single port, not a range`}, false},
		{"L7 in deny", cnp("  endpointSelector: {}\n  ingressDeny: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{}]}}]}]\n"),
			[]string{cnpObj + `spec.ingressDeny[0].toPorts[0].rules.http: deny rules cannot have L7 rules`}, false},
		{"mixed peers", cnp("  endpointSelector: {}\n  egress: [{toEndpoints: [{}], toCIDR: [10.0.0.0/8]}]\n"),
			[]string{cnpObj + `spec.egress[0]: combining toEndpoints and toCIDR in one rule is not supported (Cilium rejects it too): write one rule for each`}, false},
		{"icmps with toPorts", cnp("  endpointSelector: {}\n  egress: [{icmps: [{fields: [{type: 8}]}], toPorts: [{ports: [{port: '80'}]}]}]\n"),
			[]string{cnpObj + `spec.egress[0].icmps: icmps cannot be combined with toPorts in one rule (as in Cilium): write a separate rule`}, false},
		{"bad ICMP type", cnp("  endpointSelector: {}\n  egress: [{icmps: [{fields: [{type: Ping}, {type: 256}, {family: IPv6, type: EchoReq}]}]}]\n"),
			[]string{cnpObj + `spec.egress[0].icmps[0].fields[0].type: "Ping" is not an ICMP type of IPv4 (want 0-255 or a name such as EchoRequest)`,
				cnpObj + `spec.egress[0].icmps[0].fields[1].type: "256" is not an ICMP type of IPv4 (want 0-255 or a name such as EchoRequest)`,
				cnpObj + `spec.egress[0].icmps[0].fields[2].type: "EchoReq" is not an ICMP type of IPv6 (want 0-255 or a name such as EchoRequest)`}, false},
		{"bad ICMP family", cnp("  endpointSelector: {}\n  egress: [{icmps: [{fields: [{type: 8, family: IPv5}]}]}]\n"),
			[]string{cnpObj + `spec.egress[0].icmps[0].fields[0].family: "IPv5" is not a family (want IPv4 or IPv6)`}, false},
		{"missing ICMP type", cnp("  endpointSelector: {}\n  egress: [{icmps: [{fields: [{family: IPv4}]}]}]\n"),
			[]string{cnpObj + `spec.egress[0].icmps[0].fields[0].type: an ICMP type is required`}, false},
		{"bad CIDR", cnp("  endpointSelector: {}\n  egress: [{toCIDR: [10.0.0.0/33, 10.0.0.1]}]\n"),
			[]string{cnpObj + `spec.egress[0].toCIDR[0]: "10.0.0.0/33" is not a CIDR`}, false},
		{"bad CIDRSet", cnp("  endpointSelector: {}\n  egress: [{toCIDRSet: [{cidr: 10.0.0.1}, {cidr: 10.0.0.0/8, except: [11.0.0.0/16, x]}, {except: [10.0.0.0/8]}]}]\n"),
			[]string{cnpObj + `spec.egress[0].toCIDRSet[0].cidr: "10.0.0.1" is not a CIDR`,
				cnpObj + `spec.egress[0].toCIDRSet[1].except[0]: 11.0.0.0/16 is not inside 10.0.0.0/8`,
				cnpObj + `spec.egress[0].toCIDRSet[1].except[1]: "x" is not a CIDR`,
				cnpObj + `spec.egress[0].toCIDRSet[2].cidr: a CIDR is required`}, false},
		{"unknown entity", cnp("  endpointSelector: {}\n  egress: [{toEntities: [everything]}]\n"),
			[]string{cnpObj + `spec.egress[0].toEntities[0]: unknown entity "everything" (want all, world, cluster, host, remote-node, init, health, unmanaged or none)`}, false},
		{"unsupported entity", cnp("  endpointSelector: {}\n  egress: [{toEntities: [kube-apiserver]}]\n"),
			[]string{cnpObj + `spec.egress[0].toEntities[0]: entity "kube-apiserver" is not supported by Membrane`}, true},
		{"toFQDNs", cnp("  endpointSelector: {}\n  egress: [{toFQDNs: [{matchName: a.com}]}]\n"),
			[]string{cnpObj + `spec.egress[0].toFQDNs: toFQDNs (DNS-based policy) is not supported by Membrane`}, true},
		{"toServices", cnp("  endpointSelector: {}\n  egress: [{toServices: [{k8sService: {serviceName: a}}]}]\n"),
			[]string{cnpObj + `spec.egress[0].toServices: toServices is not supported by Membrane`}, true},
		{"toGroups", cnp("  endpointSelector: {}\n  egress: [{toGroups: [{aws: {}}]}]\n"),
			[]string{cnpObj + `spec.egress[0].toGroups: toGroups (cloud groups) is not supported by Membrane`}, true},
		{"fromNodes", cnp("  endpointSelector: {}\n  ingress: [{fromNodes: [{}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].fromNodes: fromNodes (node selectors) is not supported by Membrane`}, true},
		{"toNodes", cnp("  endpointSelector: {}\n  egress: [{toNodes: [{}]}]\n"),
			[]string{cnpObj + `spec.egress[0].toNodes: toNodes (node selectors) is not supported by Membrane`}, true},
		{"authentication", cnp("  endpointSelector: {}\n  ingress: [{authentication: {mode: required}}]\n"),
			[]string{cnpObj + `spec.ingress[0].authentication: authentication (mutual auth) is not supported by Membrane`}, true},
		{"dns rules", cnp("  endpointSelector: {}\n  egress: [{toPorts: [{ports: [{port: '53', protocol: UDP}], rules: {dns: [{matchPattern: '*'}]}}]}]\n"),
			[]string{cnpObj + `spec.egress[0].toPorts[0].rules.dns: DNS rules is not supported by Membrane`}, true},
		{"kafka rules", cnp("  endpointSelector: {}\n  egress: [{toPorts: [{ports: [{port: '9092', protocol: TCP}], rules: {kafka: [{topic: a}]}}]}]\n"),
			[]string{cnpObj + `spec.egress[0].toPorts[0].rules.kafka: Kafka rules is not supported by Membrane`}, true},
		{"cidrGroupRef", cnp("  endpointSelector: {}\n  egress: [{toCIDRSet: [{cidrGroupRef: g}]}]\n"),
			[]string{cnpObj + `spec.egress[0].toCIDRSet[0].cidrGroupRef: cidrGroupRef is not supported by Membrane`}, true},
		{"nodeSelector", "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: host}\nspec:\n  nodeSelector: {}\n",
			[]string{`policy.yaml: document 1 (CiliumClusterwideNetworkPolicy host): spec.nodeSelector: nodeSelector (host policy) is not supported by Membrane`}, true},
		{"header secret", cnp("  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '80', protocol: TCP}], rules: {http: [{headerMatches: [{name: x, secret: {name: s}}]}]}}]}]\n"),
			[]string{cnpObj + `spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret: secret is not supported by Membrane`}, true},
		{"specs path", cnpHead + "specs:\n- endpointSelector: {}\n- endpointSelector: {}\n  egress: [{toPorts: [{ports: [{port: x_y}]}]}]\n",
			[]string{cnpObj + `specs[1].egress[0].toPorts[0].ports[0].port: "x_y" is not a port`}, false},
		// Kubernetes NetworkPolicy.
		{"knp unknown field", knp("  podSelector: {}\n  ingres: []\n"), []string{knpObj + "spec.ingres: unknown field"}, false},
		{"knp wrong type", knp("  podSelector: []\n"), []string{knpObj + "spec.podSelector: want an object, got a list"}, false},
		{"knp policy type", knp("  podSelector: {}\n  policyTypes: [Ingress, Sideways]\n"), []string{knpObj + `spec.policyTypes[1]: "Sideways" is not a policy type (want Ingress or Egress)`}, false},
		{"knp port 0", knp("  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]\n"), []string{knpObj + `spec.ingress[0].ports[0].port: 0 is not a port (want 1-65535 or a port name)`}, false},
		{"knp port too big", knp("  podSelector: {}\n  ingress: [{ports: [{port: 65536}]}]\n"), []string{knpObj + `spec.ingress[0].ports[0].port: 65536 is not a port (want 1-65535 or a port name)`}, false},
		{"knp numeric string port", knp("  podSelector: {}\n  ingress: [{ports: [{port: '80'}]}]\n"), []string{knpObj + `spec.ingress[0].ports[0].port: "80" is not a port (want 1-65535 or a port name)`}, false},
		{"knp upper-case port name", knp("  podSelector: {}\n  ingress: [{ports: [{port: HTTP}]}]\n"), []string{knpObj + `spec.ingress[0].ports[0].port: "HTTP" is not a port (want 1-65535 or a port name)`}, false},
		{"knp protocol case", knp("  podSelector: {}\n  ingress: [{ports: [{port: 80, protocol: tcp}]}]\n"), []string{knpObj + `spec.ingress[0].ports[0].protocol: "tcp" is not a protocol (want TCP, UDP or SCTP)`}, false},
		{"knp endPort below port", knp("  podSelector: {}\n  egress: [{ports: [{port: 90, endPort: 80}]}]\n"), []string{knpObj + `spec.egress[0].ports[0].endPort: 80 is not a port from port 90 to 65535`}, false},
		{"knp endPort with name", knp("  podSelector: {}\n  egress: [{ports: [{port: http, endPort: 80}]}]\n"), []string{knpObj + `spec.egress[0].ports[0].endPort: endPort needs a numeric port`}, false},
		{"knp empty peer", knp("  podSelector: {}\n  ingress: [{from: [{}]}]\n"), []string{knpObj + `spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock`}, false},
		{"knp ipBlock and selector", knp("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n"), []string{knpObj + `spec.ingress[0].from[0]: ipBlock cannot be combined with podSelector or namespaceSelector`}, false},
		{"knp bad ipBlock", knp("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0}}, {ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8, 11.0.0.0/16]}}, {ipBlock: {}}]}]\n"),
			[]string{knpObj + `spec.egress[0].to[0].ipBlock.cidr: "10.0.0.0" is not a CIDR`,
				knpObj + `spec.egress[0].to[1].ipBlock.except[0]: 10.0.0.0/8 is not strictly inside cidr 10.0.0.0/8`,
				knpObj + `spec.egress[0].to[1].ipBlock.except[1]: 11.0.0.0/16 is not strictly inside cidr 10.0.0.0/8`,
				knpObj + `spec.egress[0].to[2].ipBlock.cidr: a CIDR is required`}, false},
		{"knp bad selector", knp("  podSelector: {matchExpressions: [{key: a, operator: Foo}]}\n  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In}]}}]}]\n"),
			[]string{knpObj + `spec.podSelector.matchExpressions[0]: unknown operator "Foo" on "any:a" (want In, NotIn, Exists or DoesNotExist)`,
				knpObj + `spec.ingress[0].from[0].namespaceSelector.matchExpressions[0]: operator In on "any:io.cilium.k8s.namespace.labels.ns" needs at least one value`}, false},
		{"knp metadata type", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, creationTimestamp: yesterday}\nspec: {podSelector: {}}\n",
			[]string{`policy.yaml: document 1 (NetworkPolicy default/a): metadata.creationTimestamp: parsing time "yesterday" as "2006-01-02T15:04:05Z07:00": cannot parse "yesterday" as "2006"`}, false},
		// Lists and rule lists.
		{"list item", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: ok}\n  spec: {podSelector: {}}\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: bad}\n  spec: {podSelector: {matchLabels: x}}\n",
			[]string{`policy.yaml: document 1 (NetworkPolicy default/bad): items[1].spec.podSelector.matchLabels: want an object, got string "x"`}, false},
		{"list unknown field", "apiVersion: v1\nkind: List\nitem: []\n", []string{`policy.yaml: document 1 (List): item: unknown field`}, false},
		{"rule list", `[{"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCPX"}]}]}]}, {"ingress": []}]`,
			[]string{`policy.yaml: document 1 (CiliumRuleList policy): [0].ingress[0].toPorts[0].ports[0].protocol: "TCPX" is not a protocol (want TCP, UDP, SCTP or ANY)`,
				`policy.yaml: document 1 (CiliumRuleList policy): [1].endpointSelector: an endpointSelector is required`}, false},
		{"empty rule list", `[]`, []string{`policy.yaml: document 1 (CiliumRuleList policy): the list of rules is empty`}, false},
		{"one bad document rejects the file", cnp("  endpointSelector: {}\n") + "---\n" + knp("  podSelector: {}\n  policyTypes: [Up]\n"),
			[]string{`policy.yaml: document 2 (NetworkPolicy ns1/np1): spec.policyTypes[0]: "Up" is not a policy type (want Ingress or Egress)`}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pols, err := Parse("policy.yaml", []byte(tt.input))
			if err == nil {
				t.Fatalf("no error; got %d policies", len(pols))
			}
			if pols != nil {
				t.Errorf("policies returned with an error")
			}
			got := strings.Split(err.Error(), "\n")
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("errors:\n%s\nwant:\n%s", err, strings.Join(tt.want, "\n"))
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.File != "policy.yaml" {
				t.Errorf("not a *ParseError: %T", err)
			}
			if tt.unsupported != errors.Is(err, ErrUnsupported) {
				t.Errorf("errors.Is(err, ErrUnsupported) = %v", !tt.unsupported)
			}
			if !tt.unsupported && !errors.Is(err, ErrInvalid) {
				t.Errorf("error does not wrap ErrInvalid")
			}
		})
	}
}

// TestParseAccepts: documents that must parse, and what they become.
func TestParseAccepts(t *testing.T) {
	tests := []struct {
		name, file, input string
		want              []string // Policy.String() of each
	}{
		{"early cilium rule list", "l3_policy.json",
			`[{"endpointSelector": {"matchLabels":{"id":"app1"}}, "ingress": [{"fromEndpoints": [{"matchLabels":{"id":"app2"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]`,
			[]string{"CiliumRuleList l3_policy"}},
		{"early cilium rule list with HTTP", "l7_policy.json",
			`[{"endpointSelector": {"matchLabels":{"id":"app1"}}, "ingress": [{"fromEndpoints": [{"matchLabels":{"id":"app2"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "tcp"}], "rules": {"HTTP": [{"method": "GET", "path": "/public"}]}}]}]}]`,
			[]string{"CiliumRuleList l7_policy"}},
		{"rule list named by labels", "x.json",
			`[{"endpointSelector": {}, "labels": ["name=web-rules"]}, {"endpointSelector": {}, "labels": [{"key": "name", "value": "web-rules", "source": "unspec"}]}]`,
			[]string{"CiliumRuleList web-rules"}},
		{"multi-document yaml", "p.yaml", cnp("  endpointSelector: {}\n") + "---\n# comment only\n---\n" + knp("  podSelector: {}\n") + "...\n",
			[]string{"CiliumNetworkPolicy ns1/rule1", "NetworkPolicy ns1/np1"}},
		{"json objects", "p.json", `{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"c"},"spec":{"endpointSelector":{}}}
{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"n"},"spec":{"podSelector":{}}}`,
			[]string{"CiliumClusterwideNetworkPolicy c", "NetworkPolicy default/n"}},
		{"lists", "l.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicyList\nitems:\n- metadata: {name: a}\n  spec: {endpointSelector: {}}\n- metadata: {name: b, namespace: z}\n  specs: [{endpointSelector: {}}]\n",
			[]string{"CiliumNetworkPolicy default/a", "CiliumNetworkPolicy z/b"}},
		{"kubectl output", "k.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: a\n  namespace: x\n  uid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427\n  resourceVersion: '42'\n  generation: 1\n  creationTimestamp: '2024-01-02T03:04:05Z'\n  labels: {team: a}\n  annotations: {note: b}\n  managedFields:\n  - manager: kubectl\n    operation: Update\n    apiVersion: networking.k8s.io/v1\n    time: '2024-01-02T03:04:05Z'\n    fieldsType: FieldsV1\n    fieldsV1: {f:spec: {}}\nspec:\n  podSelector: {}\n",
			[]string{"NetworkPolicy x/a"}},
		{"cnp status ignored", "s.yaml", cnp("  endpointSelector: {}\n") + "status: {nodes: {}}\n", []string{"CiliumNetworkPolicy ns1/rule1"}},
		{"named ports and names", "n.yaml", cnp("  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: web}, {port: HTTP}, {port: 80}, {port: '0'}]}]\n  - icmps: [{fields: [{type: EchoRequest}, {type: 0}, {family: IPv6, type: EchoReply}]}]\n"),
			[]string{"CiliumNetworkPolicy ns1/rule1"}},
		{"crlf line ends", "c.yaml", strings.ReplaceAll(cnp("  endpointSelector: {}\n")+"---\n"+knp("  podSelector: {}\n"), "\n", "\r\n"),
			[]string{"CiliumNetworkPolicy ns1/rule1", "NetworkPolicy ns1/np1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pols, err := Parse(tt.file, []byte(tt.input))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for i, p := range pols {
				got = append(got, p.String())
				if p.File != tt.file || p.Document < 1 || len(p.Object) == 0 {
					t.Errorf("policy %d: file %q document %d object %d bytes", i, p.File, p.Document, len(p.Object))
				}
				// The stored object parses again alone, to the same policy.
				again, err := ParseObject(p.File, p.Document, p.Object)
				if err != nil || again.String() != p.String() {
					t.Errorf("ParseObject: %v, %v", again, err)
				}
			}
			if strings.Join(got, ", ") != strings.Join(tt.want, ", ") {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPolicyJSONRoundTrip(t *testing.T) {
	pols := mustParse(t, "/etc/policies/l3_policy.json", `[{"endpointSelector": {"matchLabels":{"id":"app1"}}, "egress": [{"toCIDR": ["10.1.0.0/16"]}]}]`)
	pols = append(pols, mustParse(t, "p.yaml", knp("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.2.0.0/16, except: [10.2.1.0/24]}}]}]\n"))...)
	b, err := json.Marshal(pols)
	if err != nil {
		t.Fatal(err)
	}
	var back []*Policy
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	for i := range pols {
		if back[i].String() != pols[i].String() || back[i].File != pols[i].File || back[i].Document != pols[i].Document {
			t.Errorf("policy %d: %v (%s, %d)", i, back[i], back[i].File, back[i].Document)
		}
		if len(back[i].specs) == 0 || len(back[i].Prefixes()) != len(pols[i].Prefixes()) {
			t.Errorf("policy %d: rules not parsed again", i)
		}
	}
	if got := back[1].Prefixes(); len(got) != 2 || got[0].String() != "10.2.0.0/16" || got[1].String() != "10.2.1.0/24" {
		t.Errorf("prefixes %v", got)
	}
	// A corrupted object fails to load, saying which.
	var p Policy
	err = json.Unmarshal([]byte(`{"kind":"NetworkPolicy","name":"x","object":{"kind":"NetworkPolicy","apiVersion":"networking.k8s.io/v1","metadata":{"name":"x"},"spec":{"podSelector":7}}}`), &p)
	if err == nil || !errors.Is(err, ErrInvalid) {
		t.Errorf("corrupt object: %v", err)
	}
}
