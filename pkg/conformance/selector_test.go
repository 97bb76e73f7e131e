package conformance

import (
	"testing"
)

func TestSelectorMatches(t *testing.T) {
	sel := func(ml map[string]string, exprs ...[3]string) *LabelSelector {
		s := &LabelSelector{MatchLabels: ml}
		for _, e := range exprs {
			var vals []string
			if e[2] != "" {
				vals = []string{e[2]}
			}
			s.MatchExpressions = append(s.MatchExpressions, struct {
				Key      string   `json:"key"`
				Operator string   `json:"operator"`
				Values   []string `json:"values"`
			}{e[0], e[1], vals})
		}
		return s
	}
	app := map[string]string{"app": "test"}
	tests := []struct {
		name    string
		sel     *LabelSelector
		labels  map[string]string
		want    bool
		wantErr bool
	}{
		{"nil selects nothing", nil, app, false, false},
		{"empty selects all", &LabelSelector{}, nil, true, false},
		{"match labels", sel(app), map[string]string{"app": "test", "x": "y"}, true, false},
		{"value mismatch", sel(app), map[string]string{"app": "prod"}, false, false},
		{"In", sel(nil, [3]string{"app", "In", "test"}), app, true, false},
		{"NotIn of a missing key", sel(nil, [3]string{"tier", "NotIn", "db"}), app, true, false},
		{"Exists", sel(nil, [3]string{"app", "Exists", ""}), app, true, false},
		{"DoesNotExist", sel(nil, [3]string{"app", "DoesNotExist", ""}), app, false, false},
		{"bad operator selects nothing", sel(nil, [3]string{"app", "bad-operator", "test"}), app, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := SelectorMatches(tt.sel, tt.labels)
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Fatalf("got %v, %v; want %v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestRunSelectorCase(t *testing.T) {
	c, err := Load("testdata/cases/S900-test__selectors.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var res CaseResult
	runSelectorCase(c, &res)
	if res.Probes != 2 || res.Passed != 2 || len(res.Failures) != 0 {
		t.Fatalf("%+v", res)
	}
	c.Expected.SelectorMatches[0].Match = true // a wrong table must fail
	res = CaseResult{}
	runSelectorCase(c, &res)
	if len(res.Failures) != 1 || res.Failures[0].From != "nil" {
		t.Fatalf("%+v", res)
	}
}
