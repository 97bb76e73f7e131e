package proxy

import (
	"bytes"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/membrane-net/membrane/pkg/policy/l7"
)

// This file decides a request: every Check of the connection must allow
// it. It builds the l7.Request the rules look at without copying headers
// that no rule names, and prepares the header actions (ADD, DELETE,
// REPLACE, LOG) of headerMatches whose mismatch lets the request pass.

// decision is the outcome for one request.
type decision struct {
	allowed bool
	reason  string
	rule    string
	actions []l7.HeaderAction // ADD, DELETE and REPLACE to apply
	logged  []string          // LOG actions, for the event
}

// checker holds per-connection scratch space reused for every request.
type checker struct {
	req   l7.Request
	hdr   http.Header
	names []string // canonical names of the headers the rules look at, once each
	// namesFor: the policies names was collected from (valid when
	// namesOK).
	namesFor []*l7.EndpointPolicy
	namesOK  bool
	pols     []*l7.EndpointPolicy
	rules    []string
	actions  []l7.HeaderAction
	logged   []string
	key      []byte
	last     lastDecision
}

// lastDecision caches the decision of the connection's previous request.
// It is reused for an identical request (same method, path, host and
// values of the headers the rules name) while every check returns the same
// policy: then nothing else can change the outcome. Policies are immutable
// once returned by Check.Policy (a change is a new *l7.EndpointPolicy).
type lastDecision struct {
	valid              bool
	method, path, host string
	hdrKey             []byte
	pols               []*l7.EndpointPolicy
	d                  decision
}

// check decides request h of a connection with the given checks.
// method, path and host are the strings the rules see.
func (k *checker) check(checks []Check, h *reqHead, method, path, host string) decision {
	if len(checks) == 0 {
		return decision{reason: "no L7 policy applies to this connection"}
	}
	k.pols = k.pols[:0]
	for _, c := range checks {
		var pol *l7.EndpointPolicy
		if c.Policy != nil {
			pol = c.Policy()
		}
		k.pols = append(k.pols, pol)
	}
	if !k.namesOK || !slices.Equal(k.namesFor, k.pols) {
		k.collectNames(checks)
	}
	// The values of the headers the rules look at: with method, path and
	// host, all a decision depends on.
	k.key = k.key[:0]
	for _, n := range k.names {
		k.key = append(k.key, n...)
		if h.absolute && n == "Host" {
			// The target's authority is the request's host.
			k.key = append(k.key, 0)
			k.key = append(k.key, h.checkHost...)
		} else {
			for _, f := range h.fields {
				if equalFoldBS(f.name, n) {
					k.key = append(k.key, 0)
					k.key = append(k.key, f.value...)
				}
			}
		}
		k.key = append(k.key, 0, 0)
	}
	if k.last.valid && k.last.method == method && k.last.path == path && k.last.host == host &&
		slices.Equal(k.last.pols, k.pols) && bytes.Equal(k.last.hdrKey, k.key) {
		return k.last.d
	}
	// The cached decision's slices alias k.actions and k.logged: it is
	// replaced by every decision computed.
	k.fillHeaders(h)
	d := k.decide(checks, method, path, host)
	k.last.valid = true
	k.last.method, k.last.path, k.last.host = method, path, host
	k.last.pols = append(k.last.pols[:0], k.pols...)
	k.last.hdrKey = append(k.last.hdrKey[:0], k.key...)
	k.last.d = d
	return d
}

// decide runs every check on the request.
func (k *checker) decide(checks []Check, method, path, host string) decision {
	k.req = l7.Request{Method: method, Path: path, Host: host, Header: k.hdr}
	k.rules = k.rules[:0]
	k.actions = k.actions[:0]
	k.logged = k.logged[:0]
	for i, c := range checks {
		pol := k.pols[i]
		if pol == nil {
			return decision{reason: denyReason(c, "has no L7 policy")}
		}
		v := pol.Check(c.Port, c.Peer, &k.req)
		if !v.Allowed {
			return decision{reason: denyReason(c, "denies it")}
		}
		k.rules = append(k.rules, v.Rule)
		for _, a := range v.Actions {
			if a.Action == l7.MismatchLog {
				k.logged = append(k.logged, a.Name)
				continue
			}
			if err := validAction(a); err != nil {
				return decision{reason: fmt.Sprintf("policy of endpoint %d: header action on %s: %v", c.EndpointID, a.Name, err)}
			}
			k.actions = append(k.actions, a)
		}
	}
	d := decision{allowed: true, actions: k.actions, logged: k.logged}
	if len(k.rules) == 1 {
		d.rule = k.rules[0]
	} else {
		d.rule = strings.Join(k.rules, " && ")
	}
	return d
}

func denyReason(c Check, what string) string {
	dir := "ingress"
	if c.Port.Egress {
		dir = "egress"
	}
	return fmt.Sprintf("%s L7 policy of endpoint %d on port %d %s", dir, c.EndpointID, c.Port.Port, what)
}

// collectNames lists in k.names the headers that the rules of the
// checked ports (of the policies in k.pols) name, canonical, once each.
func (k *checker) collectNames(checks []Check) {
	k.names = k.names[:0]
	add := func(n string) {
		n = http.CanonicalHeaderKey(n)
		if !slices.Contains(k.names, n) {
			k.names = append(k.names, n)
		}
	}
	for i, c := range checks {
		pol := k.pols[i]
		if pol == nil {
			continue
		}
		for _, s := range pol.Ports[c.Port] {
			for _, r := range s.Rules {
				for _, hs := range r.Spec.Headers {
					name, _, _ := strings.Cut(hs, ":")
					add(strings.TrimSpace(name))
				}
				for _, hm := range r.Spec.HeaderMatches {
					add(hm.Name)
				}
			}
		}
	}
	k.namesFor = append(k.namesFor[:0], k.pols...)
	k.namesOK = true
}

// fillHeaders puts into k.hdr the request's values of the headers that the
// rules of the checked ports name (k.names), and only those: no allocation
// at all for policies without header rules.
func (k *checker) fillHeaders(h *reqHead) {
	if k.hdr == nil {
		k.hdr = make(http.Header)
	}
	clear(k.hdr)
	for _, n := range k.names {
		var vals []string
		if h.absolute && n == "Host" {
			// The target's authority is the request's host.
			vals = []string{string(h.checkHost)}
		} else {
			for _, f := range h.fields {
				if equalFoldBS(f.name, n) {
					vals = append(vals, string(f.value))
				}
			}
		}
		if len(vals) > 0 {
			k.hdr[n] = vals
		}
	}
}

// validAction refuses header actions that would change the message framing
// or the host the policy checked, or inject lines.
func validAction(a l7.HeaderAction) error {
	if classify([]byte(a.Name)) != hOther || strings.EqualFold(a.Name, "host") {
		return fmt.Errorf("header is managed by the proxy")
	}
	if !isToken([]byte(a.Name)) {
		return fmt.Errorf("invalid header name")
	}
	for i := 0; i < len(a.Value); i++ {
		if !fieldChar[a.Value[i]] {
			return fmt.Errorf("invalid character in value")
		}
	}
	return nil
}

// removedByAction reports whether an action deletes or replaces field name.
func removedByAction(actions []l7.HeaderAction, name []byte) bool {
	for _, a := range actions {
		if (a.Action == l7.MismatchDelete || a.Action == l7.MismatchReplace) &&
			equalFoldBS(name, a.Name) {
			return true
		}
	}
	return false
}

// internMethod returns the common methods without allocating.
func internMethod(b []byte) string {
	switch string(b) {
	case "GET":
		return "GET"
	case "HEAD":
		return "HEAD"
	case "POST":
		return "POST"
	case "PUT":
		return "PUT"
	case "DELETE":
		return "DELETE"
	case "PATCH":
		return "PATCH"
	case "OPTIONS":
		return "OPTIONS"
	case "CONNECT":
		return "CONNECT"
	case "TRACE":
		return "TRACE"
	}
	return string(b)
}

// equalFoldBS compares ASCII b and s case-insensitively.
func equalFoldBS(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if x >= 'A' && x <= 'Z' {
			x += 'a' - 'A'
		}
		if y >= 'A' && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
