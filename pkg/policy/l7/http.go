// Package l7 owns the L7 (HTTP) rules of a policy, compiled and ready to
// match requests: what the policy engine hands to the proxy. It does not
// parse policy documents (pkg/policy does) nor handle connections
// (pkg/proxy does).
package l7

import (
	"fmt"
	"net/http"
	"regexp"
	"strings"
)

// Header mismatch actions, as Cilium's headerMatches spell them.
const (
	MismatchNone    = ""        // a mismatch denies the request
	MismatchLog     = "LOG"     // a mismatch is logged, the request passes
	MismatchAdd     = "ADD"     // the header is added, the request passes
	MismatchDelete  = "DELETE"  // the header is removed, the request passes
	MismatchReplace = "REPLACE" // the header's value is replaced, the request passes
)

// HTTPRuleSpec is an HTTP rule as written in a policy (Cilium's PortRuleHTTP).
type HTTPRuleSpec struct {
	Method        string        `json:"method,omitempty"`
	Path          string        `json:"path,omitempty"`
	Host          string        `json:"host,omitempty"`
	Headers       []string      `json:"headers,omitempty"`
	HeaderMatches []HeaderMatch `json:"headerMatches,omitempty"`
}

// HeaderMatch is one of Cilium's headerMatches.
type HeaderMatch struct {
	Mismatch string `json:"mismatch,omitempty"`
	Name     string `json:"name"`
	Value    string `json:"value,omitempty"`
}

// HTTPRule is a compiled HTTPRuleSpec. Method, Path and Host are extended
// POSIX regular expressions that must match the whole value; an empty one
// matches everything.
type HTTPRule struct {
	Spec    HTTPRuleSpec
	str     string
	method  *regexp.Regexp
	path    *regexp.Regexp
	host    *regexp.Regexp
	headers []headerCond
}

type headerCond struct {
	name     string // canonical
	value    string
	presence bool // only the presence of the header is required
	mismatch string
}

// FieldError says which field of a rule is wrong.
type FieldError struct {
	Field string // method, path, host, headers[i], headerMatches[i].name ...
	Err   error
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

func compileAnchored(field, expr string) (*regexp.Regexp, error) {
	if expr == "" {
		return nil, nil
	}
	if _, err := regexp.CompilePOSIX(expr); err != nil {
		return nil, &FieldError{Field: field, Err: fmt.Errorf("%q is not a valid extended regular expression: %w", expr, err)}
	}
	// Validated as POSIX ERE; matched with the leftmost-first engine,
	// which gives the same whole-value answer faster.
	re, err := regexp.Compile("^(?:" + expr + ")$")
	if err != nil {
		return nil, &FieldError{Field: field, Err: fmt.Errorf("%q is not a valid extended regular expression: %w", expr, err)}
	}
	return re, nil
}

// Compile validates a rule and compiles its expressions.
func Compile(spec HTTPRuleSpec) (*HTTPRule, error) {
	r := &HTTPRule{Spec: spec}
	var err error
	if r.method, err = compileAnchored("method", spec.Method); err != nil {
		return nil, err
	}
	if r.path, err = compileAnchored("path", spec.Path); err != nil {
		return nil, err
	}
	if r.host, err = compileAnchored("host", spec.Host); err != nil {
		return nil, err
	}
	for i, h := range spec.Headers {
		name, value, hasValue := strings.Cut(h, ":")
		name = strings.TrimSpace(name)
		if err := validHeaderName(name); err != nil {
			return nil, &FieldError{Field: fmt.Sprintf("headers[%d]", i), Err: err}
		}
		r.headers = append(r.headers, headerCond{
			name: http.CanonicalHeaderKey(name), value: strings.TrimSpace(value), presence: !hasValue,
		})
	}
	for i, hm := range spec.HeaderMatches {
		if err := validHeaderName(hm.Name); err != nil {
			return nil, &FieldError{Field: fmt.Sprintf("headerMatches[%d].name", i), Err: err}
		}
		switch hm.Mismatch {
		case MismatchNone, MismatchLog, MismatchAdd, MismatchDelete, MismatchReplace:
		default:
			return nil, &FieldError{Field: fmt.Sprintf("headerMatches[%d].mismatch", i),
				Err: fmt.Errorf("%q is not one of LOG, ADD, DELETE, REPLACE", hm.Mismatch)}
		}
		r.headers = append(r.headers, headerCond{
			name: http.CanonicalHeaderKey(hm.Name), value: hm.Value, presence: hm.Value == "", mismatch: hm.Mismatch,
		})
	}
	r.str = r.render()
	return r, nil
}

func validHeaderName(n string) error {
	if n == "" {
		return fmt.Errorf("empty header name")
	}
	for _, c := range n {
		if c <= ' ' || c >= 0x7f || strings.ContainsRune("()<>@,;:\\\"/[]?={}", c) {
			return fmt.Errorf("header name %q: character %q not allowed", n, c)
		}
	}
	return nil
}

// Request is what a rule looks at.
type Request struct {
	Method string
	Path   string // the request target as sent: path and query
	Host   string
	Header http.Header
}

// HeaderAction is a change a matching rule asks for on a header mismatch.
type HeaderAction struct {
	Action string // MismatchLog, MismatchAdd, MismatchDelete, MismatchReplace
	Name   string
	Value  string
}

// Matches reports whether the request satisfies the rule, and the header
// actions to apply for headerMatches that did not match but whose mismatch
// action lets the request pass.
func (r *HTTPRule) Matches(req *Request) (bool, []HeaderAction) {
	if r.method != nil && !r.method.MatchString(req.Method) {
		return false, nil
	}
	if r.path != nil && !r.path.MatchString(req.Path) {
		return false, nil
	}
	if r.host != nil && !r.host.MatchString(req.Host) {
		return false, nil
	}
	var actions []HeaderAction
	for _, h := range r.headers {
		vals := req.Header.Values(h.name)
		ok := len(vals) > 0
		if ok && !h.presence {
			ok = false
			for _, v := range vals {
				if v == h.value {
					ok = true
				}
			}
		}
		if ok {
			continue
		}
		if h.mismatch == MismatchNone {
			return false, nil
		}
		actions = append(actions, HeaderAction{Action: h.mismatch, Name: h.name, Value: h.value})
	}
	return true, actions
}

// String renders the rule for logs and traces.
func (r *HTTPRule) String() string {
	if r.str != "" {
		return r.str
	}
	return r.render()
}

func (r *HTTPRule) render() string {
	var parts []string
	if r.Spec.Method != "" {
		parts = append(parts, "method="+r.Spec.Method)
	}
	if r.Spec.Path != "" {
		parts = append(parts, "path="+r.Spec.Path)
	}
	if r.Spec.Host != "" {
		parts = append(parts, "host="+r.Spec.Host)
	}
	for _, h := range r.Spec.Headers {
		parts = append(parts, "header="+h)
	}
	for _, h := range r.Spec.HeaderMatches {
		parts = append(parts, fmt.Sprintf("headerMatch=%s:%s(%s)", h.Name, h.Value, h.Mismatch))
	}
	if len(parts) == 0 {
		return "any HTTP request"
	}
	return strings.Join(parts, " ")
}
