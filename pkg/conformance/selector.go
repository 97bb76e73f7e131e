package conformance

import (
	"fmt"

	"github.com/membrane-net/membrane/pkg/labels"
)

// SelectorMatches evaluates a Kubernetes label selector on a pod's labels
// with Membrane's selectors (pkg/labels), as a NetworkPolicy's podSelector
// is: a nil selector selects nothing, an empty one everything. A selector
// Membrane rejects (an unknown operator) selects nothing, and the error
// says why.
func SelectorMatches(sel *LabelSelector, podLabels map[string]string) (bool, error) {
	if sel == nil {
		return false, nil
	}
	var reqs []labels.Requirement
	for _, e := range sel.MatchExpressions {
		r, err := labels.NewRequirement(e.Key, e.Operator, e.Values)
		if err != nil {
			return false, fmt.Errorf("selector: %w", err)
		}
		reqs = append(reqs, r)
	}
	for k, v := range sel.MatchLabels {
		if _, err := labels.NewRequirement(k, labels.OpIn, []string{v}); err != nil {
			return false, fmt.Errorf("selector: %w", err)
		}
	}
	s := labels.NewSelector(sel.MatchLabels, reqs)
	ls := make([]labels.Label, 0, len(podLabels))
	for k, v := range podLabels {
		ls = append(ls, labels.Label{Source: labels.SourceK8s, Key: k, Value: v})
	}
	return s.Matches(labels.New(ls...)), nil
}

// runSelectorCase checks every row of a selector table.
func runSelectorCase(c *Case, res *CaseResult) {
	for i, row := range c.Expected.SelectorMatches {
		got, err := SelectorMatches(row.Selector, row.Labels)
		res.Probes++
		if got == row.Match {
			res.Passed++
			continue
		}
		o := Outcome{Result: fmt.Sprint(got)}
		if err != nil {
			o.Detail = err.Error()
		}
		res.Failures = append(res.Failures, ProbeResult{
			Index: i, From: row.Name, To: "selector", Want: Expectation{Result: fmt.Sprint(row.Match)}, Got: o,
		})
	}
}
