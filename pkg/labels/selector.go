package labels

import (
	"fmt"
	"sort"
	"strings"
)

// Selector operators, as Kubernetes spells them.
const (
	OpIn           = "In"
	OpNotIn        = "NotIn"
	OpExists       = "Exists"
	OpDoesNotExist = "DoesNotExist"
)

// Requirement is one condition of a selector. Source is SourceAny when the
// selector's key named no source.
type Requirement struct {
	Source   string   `json:"source"`
	Key      string   `json:"key"`
	Operator string   `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// Selector is a conjunction of requirements; the empty selector matches
// every label set.
type Selector struct {
	Requirements []Requirement `json:"requirements"`
}

// ParseSelectorKey splits a selector key such as `k8s:app`, `any:app` or
// `app` into source and key; a key without a known source matches any
// source.
func ParseSelectorKey(s string) (source, key string, err error) {
	src, rest := splitSource(s)
	switch {
	case src == "":
		src, rest = SourceAny, s
	case !IsSource(src):
		// Not a source: the colon is part of the key.
		src, rest = SourceAny, s
	}
	if err := validKey(rest); err != nil {
		return "", "", fmt.Errorf("%w: selector key %q: %v", ErrMalformed, s, err)
	}
	return src, rest, nil
}

// NewRequirement validates and builds a requirement from a selector key.
func NewRequirement(key, op string, values []string) (Requirement, error) {
	src, k, err := ParseSelectorKey(key)
	if err != nil {
		return Requirement{}, err
	}
	switch op {
	case OpIn, OpNotIn:
		if len(values) == 0 {
			return Requirement{}, fmt.Errorf("%w: operator %s on %q needs at least one value", ErrMalformed, op, key)
		}
	case OpExists, OpDoesNotExist:
		if len(values) != 0 {
			return Requirement{}, fmt.Errorf("%w: operator %s on %q takes no values", ErrMalformed, op, key)
		}
	default:
		return Requirement{}, fmt.Errorf("%w: unknown operator %q on %q (want In, NotIn, Exists or DoesNotExist)", ErrMalformed, op, key)
	}
	for _, v := range values {
		if err := validValue(v); err != nil {
			return Requirement{}, fmt.Errorf("%w: selector %q: %v", ErrMalformed, key, err)
		}
	}
	vs := append([]string(nil), values...)
	sort.Strings(vs)
	return Requirement{Source: src, Key: k, Operator: op, Values: vs}, nil
}

// NewSelector builds a selector from matchLabels and matchExpressions-style
// input. Requirements are kept in a canonical order so that equal selectors
// render equally.
func NewSelector(matchLabels map[string]string, exprs []Requirement) Selector {
	var rs []Requirement
	for k, v := range matchLabels {
		src, key, _ := ParseSelectorKey(k)
		rs = append(rs, Requirement{Source: src, Key: key, Operator: OpIn, Values: []string{v}})
	}
	rs = append(rs, exprs...)
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].String() < rs[j].String() })
	return Selector{Requirements: rs}
}

func (r Requirement) values(ls Labels) (vals []string) {
	for _, l := range ls {
		if l.Key == r.Key && (r.Source == SourceAny || r.Source == l.Source) {
			vals = append(vals, l.Value)
		}
	}
	return vals
}

// Matches reports whether the label set satisfies the requirement. NotIn is
// the negation of In (true when the key is absent), as in Kubernetes.
func (r Requirement) Matches(ls Labels) bool {
	vals := r.values(ls)
	switch r.Operator {
	case OpExists:
		return len(vals) > 0
	case OpDoesNotExist:
		return len(vals) == 0
	case OpIn, OpNotIn:
		in := false
		for _, v := range vals {
			for _, want := range r.Values {
				if v == want {
					in = true
				}
			}
		}
		return in == (r.Operator == OpIn)
	}
	return false
}

// String renders the requirement, e.g. `any:app In (web)`.
func (r Requirement) String() string {
	k := r.Source + ":" + r.Key
	switch r.Operator {
	case OpExists:
		return k
	case OpDoesNotExist:
		return "!" + k
	case OpIn:
		if len(r.Values) == 1 {
			return k + "=" + r.Values[0]
		}
	}
	return fmt.Sprintf("%s %s (%s)", k, r.Operator, strings.Join(r.Values, ","))
}

// Matches reports whether the label set satisfies every requirement.
func (s Selector) Matches(ls Labels) bool {
	for _, r := range s.Requirements {
		if !r.Matches(ls) {
			return false
		}
	}
	return true
}

// IsEmpty reports whether the selector has no requirement (selects all).
func (s Selector) IsEmpty() bool { return len(s.Requirements) == 0 }

// With returns a copy of the selector with more requirements.
func (s Selector) With(rs ...Requirement) Selector {
	out := make([]Requirement, 0, len(s.Requirements)+len(rs))
	out = append(out, s.Requirements...)
	out = append(out, rs...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return Selector{Requirements: out}
}

// String renders the selector canonically; equal selectors render equally.
func (s Selector) String() string {
	if len(s.Requirements) == 0 {
		return "{}"
	}
	parts := make([]string, len(s.Requirements))
	for i, r := range s.Requirements {
		parts[i] = r.String()
	}
	return "{" + strings.Join(parts, ", ") + "}"
}
