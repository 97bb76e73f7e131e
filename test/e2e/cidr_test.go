package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/membrane-net/membrane/pkg/api"
)

// cidrState is what the kernel's ipcache and the agent's identities say
// of policy CIDRs: prefix -> CIDR identity in the ipcache, and the CIDR
// identities the agent holds, by prefix.
func (a *Agent) cidrState() (kernel, idents map[string]uint32) {
	a.t.Helper()
	var es []api.IPCacheEntry
	if err := json.Unmarshal([]byte(a.mustCLI("bpf", "ipcache", "list", "-o", "json")), &es); err != nil {
		a.t.Fatal(err)
	}
	kernel = map[string]uint32{}
	for _, e := range es {
		if e.Source == "policy-cidr" {
			kernel[e.Prefix] = uint32(e.CIDRIdentity)
		}
	}
	var ids []api.Identity
	if err := json.Unmarshal([]byte(a.mustCLI("identity", "list", "-o", "json")), &ids); err != nil {
		a.t.Fatal(err)
	}
	idents = map[string]uint32{}
	for _, id := range ids {
		for _, l := range id.Labels {
			if l.Source == "cidr" {
				idents[l.Key] = uint32(id.ID)
			}
		}
	}
	return kernel, idents
}

func cidrPolicy(name string, cidrs ...string) string {
	return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: %s}
spec:
  endpointSelector: {matchLabels: {id: srv}}
  ingress:
  - fromCIDR: [%s]
`, name, strings.Join(cidrs, ", "))
}

// TestPrivilegedCIDRIdentitiesFollowPolicies: every policy CIDR has one
// identity and one ipcache entry while a policy names it, keeps its number
// across changes that still name it and across a restart, and is released
// with its entry when no policy names it any more, also when an import is
// refused after its identities were made.
func TestPrivilegedCIDRIdentitiesFollowPolicies(t *testing.T) {
	a := startAgent(t, "--policy-map-max-entries", "16")
	a.addEndpoint("srv", "id=srv")
	expect := func(step string, want ...string) map[string]uint32 {
		t.Helper()
		kernel, idents := a.cidrState()
		var got []string
		for p := range kernel {
			got = append(got, p)
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("%s: ipcache CIDR entries %v, want %v", step, got, want)
		}
		if len(idents) != len(want) {
			t.Fatalf("%s: CIDR identities %v, want one for each of %v", step, idents, want)
		}
		for p, id := range kernel {
			if idents[p] != id {
				t.Fatalf("%s: %s has identity %d in the ipcache, %d in the agent", step, p, id, idents[p])
			}
		}
		return kernel
	}
	a.importPolicy("a.yaml", cidrPolicy("a", "198.18.1.0/24", "198.18.2.1/32"))
	first := expect("import a", "198.18.1.0/24", "198.18.2.1/32")
	a.importPolicy("a.yaml", cidrPolicy("a", "198.18.2.1/32", "198.18.3.0/24"))
	second := expect("replace a", "198.18.2.1/32", "198.18.3.0/24")
	if first["198.18.2.1/32"] != second["198.18.2.1/32"] {
		t.Fatalf("the identity of a CIDR named throughout changed: %d -> %d", first["198.18.2.1/32"], second["198.18.2.1/32"])
	}
	a.importPolicy("b.yaml", cidrPolicy("b", "198.18.3.0/24", "198.18.4.0/24"))
	expect("import b", "198.18.2.1/32", "198.18.3.0/24", "198.18.4.0/24")

	// Refused (more entries than the map holds) after its CIDRs got
	// identities: they go again.
	var many []string
	for i := 0; i < 20; i++ {
		many = append(many, fmt.Sprintf("198.19.0.%d/32", i+1))
	}
	p := t.TempDir() + "/big.yaml"
	if err := os.WriteFile(p, []byte(cidrPolicy("big", many...)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := a.cli("policy", "import", p); err == nil {
		t.Fatalf("oversized policy accepted:\n%s", out)
	}
	expect("refused import", "198.18.2.1/32", "198.18.3.0/24", "198.18.4.0/24")

	a.restart()
	expect("restart", "198.18.2.1/32", "198.18.3.0/24", "198.18.4.0/24")
	a.mustCLI("policy", "delete", "a")
	expect("delete a", "198.18.3.0/24", "198.18.4.0/24")
	a.importPolicy("a.yaml", cidrPolicy("a", "198.18.1.0/24"))
	expect("import a again", "198.18.1.0/24", "198.18.3.0/24", "198.18.4.0/24")
	a.mustCLI("policy", "delete", "--all")
	expect("delete all")
}
