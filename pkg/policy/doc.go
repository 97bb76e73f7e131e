// Package policy owns Membrane's policy engine: it parses CiliumNetworkPolicy,
// CiliumClusterwideNetworkPolicy, Kubernetes NetworkPolicy and early Cilium's
// JSON rule lists into rules, keeps them in a revisioned Repository, caches
// which identities each selector selects, and resolves, for one endpoint, the
// desired content of its policy map (pkg/policy/mapstate) and its L7 policy
// (pkg/policy/l7). It also traces, rule by rule, why a flow is allowed.
//
// It is a pure library: no kernel, no files, no network. The agent tells it
// of identities (UpsertIdentity) and endpoints (Resolve); it never touches
// the datapath, the ipcache or the proxy itself.
//
// # The datapath it builds for
//
// The map state is built for the datapath's lookup precedence, which
// mapstate.Decide restates: for a packet the kernel looks up
//
//  1. the peer's security identity,
//  2. the peer address's CIDR identity (the most specific policy CIDR that
//     holds it; + identity.CIDRInClusterOffset for cluster addresses),
//  3. identity 0, any identity;
//
// each lookup returns its most specific entry (longest prefix of identity,
// direction, protocol, port bits). A deny from any lookup wins; otherwise the
// most specific allow allows and decides the L7 proxy port; otherwise the
// packet is dropped. Resolve therefore turns every allow that a broader deny
// of the same identity covers into a deny, and makes sure that an L7 redirect
// is the most specific match only where every allowing rule has L7 rules
// (see distill.go).
//
// # Semantics
//
// Rules add up: a flow is denied if any deny rule matches it; else allowed if
// any allow rule matches it, or if its direction is not in default deny;
// allowed flows go through the L7 proxy when every allow rule matching them
// has HTTP rules, and the proxy then allows the requests any of them allows.
// An endpoint is in default deny in a direction once a rule with that
// direction selects it (deny-only rules too, as in Cilium; Cilium's
// enableDefaultDeny overrides per rule; Kubernetes' policyTypes decide for a
// NetworkPolicy); enforcement mode always and never override.
//
// Selectors: CiliumNetworkPolicy selectors are scoped to the policy's
// namespace unless they name io.kubernetes.pod.namespace or namespace labels
// (Cilium's getEndpointSelector); clusterwide peer selectors require a
// namespace, so `{}` selects every endpoint and no reserved identity; rule
// lists are not scoped and their `{}` selects every identity. Endpoints
// without a namespace label are in "default". Kubernetes selectors select
// endpoints only, never reserved identities. Cilium CIDR rules match
// addresses outside the cluster; Kubernetes ipBlock matches any address.
// Egress named ports resolve against the peer identity's named ports, or
// every endpoint's for identity 0 and CIDR peers. Cilium's fromRequires and
// toRequires constrain the endpoint selectors of Cilium rules only.
//
// # Speed
//
// A policy update must reach the datapath in milliseconds, so each step
// costs what the change touches, not what the repository holds:
//   - Parse reads valid JSON straight into the typed rules (fastparse.go,
//     and yamlfast.go for the common YAML), and leaves any document it does
//     not expect to the located decoder (decode.go), which alone writes the
//     error messages;
//   - the selector cache indexes selectors and identities (selectorcache.go),
//     so UpsertIdentity and RemoveIdentity match an identity against the few
//     selectors that may select it;
//   - Resolve memoizes (memo.go): it returns the same *Resolved while
//     nothing the endpoint's policy depends on changed, and the agent writes
//     only the maps whose result changed.
package policy
