package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/membrane-net/membrane/pkg/api"
)

// policyRef names one policy the runner imported.
type policyRef struct{ Kind, Namespace, Name string }

// deleteName is how the API's delete names the policy.
func (p policyRef) deleteName() string {
	if p.Namespace != "" {
		return p.Namespace + "/" + p.Name
	}
	return p.Name
}

// namespacedKinds are the kinds whose objects live in a namespace.
var namespacedKinds = map[string]bool{"CiliumNetworkPolicy": true, "NetworkPolicy": true}

// DefaultNamespace is the namespace a case's namespaced policies without
// one are applied in, as `kubectl apply -n` (or cilium-cli, into its test
// namespace) does: the topology's namespace when it has exactly one, else
// "" (left to the agent's default).
func DefaultNamespace(c *Case) string {
	if c.Topology == nil || len(c.Topology.Namespaces) != 1 {
		return ""
	}
	for ns := range c.Topology.Namespaces {
		return ns
	}
	return ""
}

// PolicyFile renders a case's policies as one YAML file of several
// documents, named after the case file. Namespaced policies without a
// namespace get DefaultNamespace.
func PolicyFile(c *Case) (api.PolicyFile, error) {
	ns := DefaultNamespace(c)
	var b strings.Builder
	for i, p := range c.Policies {
		if ns != "" {
			var err error
			if p, err = withNamespace(p, ns); err != nil {
				return api.PolicyFile{}, fmt.Errorf("render policy %d of %s: %w", i, c.ID, err)
			}
		}
		y, err := yaml.JSONToYAML(p)
		if err != nil {
			return api.PolicyFile{}, fmt.Errorf("render policy %d of %s: %w", i, c.ID, err)
		}
		if i > 0 {
			b.WriteString("---\n")
		}
		b.Write(y)
	}
	name := strings.TrimSuffix(filepath.Base(c.File), filepath.Ext(c.File)) + ".yaml"
	if c.File == "" {
		name = c.ID + ".yaml"
	}
	return api.PolicyFile{Name: name, Content: b.String()}, nil
}

// withNamespace sets metadata.namespace of a namespaced object that has
// none.
func withNamespace(obj json.RawMessage, ns string) (json.RawMessage, error) {
	var m map[string]any
	if err := json.Unmarshal(obj, &m); err != nil {
		return nil, err
	}
	kind, _ := m["kind"].(string)
	if !namespacedKinds[kind] {
		return obj, nil
	}
	md, _ := m["metadata"].(map[string]any)
	if md == nil {
		md = map[string]any{}
		m["metadata"] = md
	}
	if cur, _ := md["namespace"].(string); cur != "" {
		return obj, nil
	}
	md["namespace"] = ns
	return json.Marshal(m)
}

// needsDefaultNamespace reports whether PolicyFile puts any policy of the
// case in DefaultNamespace.
func needsDefaultNamespace(c *Case) bool {
	if DefaultNamespace(c) == "" {
		return false
	}
	for _, p := range c.Policies {
		var obj struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if json.Unmarshal(p, &obj) == nil && namespacedKinds[obj.Kind] && obj.Metadata.Namespace == "" {
			return true
		}
	}
	return false
}

// unsupportedPolicy decides, from the agent's rejection of a case's
// policies, whether the case uses a feature Membrane lacks (and which); it
// returns "" when the rejection is a failure.
func unsupportedPolicy(c *Case, err error) string {
	var ae *api.APIError
	if !errors.As(err, &ae) || ae.Code != http.StatusBadRequest {
		return ""
	}
	msg := strings.ToLower(ae.Error())
	for _, k := range policyKinds(c) {
		if k == "ClusterNetworkPolicy" || k == "AdminNetworkPolicy" || k == "BaselineAdminNetworkPolicy" {
			if strings.Contains(msg, strings.ToLower(k)) || strings.Contains(msg, "kind") {
				return k
			}
		}
	}
	if policiesUse(c, "toFQDNs") && (strings.Contains(msg, "tofqdns") || strings.Contains(msg, "dns")) {
		return "FQDN"
	}
	if strings.Contains(msg, "not supported") || strings.Contains(msg, "unsupported") {
		return "policy feature"
	}
	return ""
}

// applyPolicies makes the agent's policies (those the runner imported)
// the case's. fresh: delete the previous case's policies, then import.
// Otherwise (the next step of the same test): import the new set, then
// delete what the step no longer has, as an update would.
func (r *Runner) applyPolicies(ctx context.Context, c *Case, fresh bool) error {
	if fresh {
		if err := r.deletePolicies(ctx, r.policies); err != nil {
			return err
		}
	}
	newSet := map[policyRef]bool{}
	if len(c.Policies) > 0 {
		f, err := PolicyFile(c)
		if err != nil {
			return err
		}
		res, err := r.client.ImportPolicy(ctx, []api.PolicyFile{f})
		if err != nil {
			return r.importFailed(ctx, f.Name, err)
		}
		for _, p := range res.Policies {
			newSet[policyRef{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name}] = true
		}
	}
	var stale []policyRef
	for p := range r.policies {
		if !newSet[p] {
			stale = append(stale, p)
		}
	}
	for p := range newSet {
		r.policies[p] = true
	}
	if err := r.deletePolicies(ctx, setOf(stale)); err != nil {
		return err
	}
	// A stale policy sharing a namespace/name with a new one of another
	// kind took the new one with it: import again.
	for p := range newSet {
		for _, s := range stale {
			if s.deleteName() == p.deleteName() {
				return r.reimport(ctx, c)
			}
		}
	}
	return nil
}

// importFailed tracks the policies of file the agent holds although their
// import failed (so that they are deleted with the others), and says so.
func (r *Runner) importFailed(ctx context.Context, file string, err error) error {
	err = fmt.Errorf("import %s: %w", file, err)
	pl, gerr := r.client.GetPolicy(ctx)
	if gerr != nil {
		return errors.Join(err, fmt.Errorf("list policies after a failed import: %w", gerr))
	}
	kept := 0
	for _, p := range pl.Policies {
		if p.File == file {
			r.policies[policyRef{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name}] = true
			kept++
		}
	}
	if kept > 0 {
		err = fmt.Errorf("%w (and the agent holds %d policies of the failed import: it was not rolled back)", err, kept)
	}
	return err
}

func (r *Runner) reimport(ctx context.Context, c *Case) error {
	f, err := PolicyFile(c)
	if err != nil {
		return err
	}
	if _, err := r.client.ImportPolicy(ctx, []api.PolicyFile{f}); err != nil {
		return r.importFailed(ctx, f.Name, err)
	}
	return nil
}

func setOf(ps []policyRef) map[policyRef]bool {
	m := map[policyRef]bool{}
	for _, p := range ps {
		m[p] = true
	}
	return m
}

// deletePolicies deletes policies the runner imported; one already gone
// is not an error.
func (r *Runner) deletePolicies(ctx context.Context, ps map[policyRef]bool) error {
	done := map[string]bool{}
	for p := range ps {
		delete(r.policies, p)
		n := p.deleteName()
		if done[n] {
			continue
		}
		done[n] = true
		if _, err := r.client.DeletePolicy(ctx, n); err != nil {
			var ae *api.APIError
			if errors.As(err, &ae) && ae.Code == http.StatusNotFound {
				continue
			}
			return fmt.Errorf("delete policy %s: %w", n, err)
		}
	}
	return nil
}
