package conformance

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/policy"
)

func TestPolicyFile(t *testing.T) {
	c, err := Load("testdata/cases/K900-test__two-pods.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Two namespaces: nothing to default.
	f, err := PolicyFile(c)
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != "K900-test__two-pods.yaml" || strings.Count(f.Content, "\n---\n") != 1 {
		t.Fatalf("file %s:\n%s", f.Name, f.Content)
	}
	if needsDefaultNamespace(c) {
		t.Fatal("two namespaces: no default")
	}
	if _, err := policy.Parse(f.Name, []byte(f.Content)); err != nil && !strings.Contains(err.Error(), "toFQDNs") {
		t.Fatalf("the rendered file does not parse: %v", err)
	}

	// One namespace: the namespaced policy without one goes there.
	delete(c.Topology.Namespaces, "y")
	f, err = PolicyFile(c)
	if err != nil {
		t.Fatal(err)
	}
	if !needsDefaultNamespace(c) || !strings.Contains(f.Content, "name: no-namespace\n  namespace: x\n") {
		t.Fatalf("want no-namespace in x:\n%s", f.Content)
	}
	if strings.Count(f.Content, "namespace: x") != 2 {
		t.Fatalf("the policy that names its namespace changed:\n%s", f.Content)
	}
}

func TestPolicyRenderedFilesParse(t *testing.T) {
	for _, c := range sharedCaseList(t) {
		if len(c.Policies) == 0 {
			continue
		}
		f, err := PolicyFile(c)
		if err != nil {
			t.Fatal(err)
		}
		pols, err := policy.Parse(f.Name, []byte(f.Content))
		if err != nil {
			// Features Membrane lacks are reported as unsupported.
			if unsupportedPolicy(c, &api.APIError{Code: http.StatusBadRequest, Message: err.Error()}) == "" {
				t.Errorf("%s: %v", c.ID, err)
			}
			continue
		}
		if len(pols) != len(c.Policies) {
			t.Errorf("%s: %d policies parsed of %d", c.ID, len(pols), len(c.Policies))
		}
	}
}

func TestUnsupportedPolicy(t *testing.T) {
	c := &Case{ID: "A1", Policies: nil}
	cnp := &Case{ID: "A2", Policies: []json.RawMessage{json.RawMessage(`{"kind":"ClusterNetworkPolicy"}`)}}
	fqdn := &Case{ID: "L4", Policies: []json.RawMessage{json.RawMessage(`{"kind":"CiliumNetworkPolicy","spec":{"egress":[{"toFQDNs":[]}]}}`)}}
	bad := func(msg string) error { return &api.APIError{Code: http.StatusBadRequest, Message: msg} }
	tests := []struct {
		name string
		c    *Case
		err  error
		want string
	}{
		{"cluster network policy", cnp, bad(`document 1 (ClusterNetworkPolicy): kind: unknown kind "ClusterNetworkPolicy"`), "ClusterNetworkPolicy"},
		{"fqdn", fqdn, bad("spec.egress[0].toFQDNs: toFQDNs (DNS-based policy) is not supported by Membrane"), "FQDN"},
		{"another unsupported feature", c, bad("spec.ingress[0].fromGroups: is not supported by Membrane"), "policy feature"},
		{"a plain error", c, bad("spec.ingress[0].fromEndpoints: want a list"), ""},
		{"not a rejection", cnp, errors.New("connection refused"), ""},
		{"server error", cnp, &api.APIError{Code: 500, Message: "kind"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := unsupportedPolicy(tt.c, tt.err); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}
