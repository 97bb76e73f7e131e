package labels

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestParseLabel(t *testing.T) {
	cases := []struct {
		in   string
		want Label
		err  bool
	}{
		{in: "id=app1", want: Label{"unspec", "id", "app1"}},
		{in: "container:id=app1", want: Label{"container", "id", "app1"}},
		{in: "k8s:io.kubernetes.pod.namespace=x", want: Label{"k8s", "io.kubernetes.pod.namespace", "x"}},
		{in: "k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=x", want: Label{"k8s", "io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name", "x"}},
		{in: "reserved:host", want: Label{"reserved", "host", ""}},
		{in: "flag", want: Label{"unspec", "flag", ""}},
		{in: "url=http://x", want: Label{"unspec", "url", "http://x"}},
		{in: "", err: true},
		{in: "=v", err: true},
		{in: "bogus:id=1", err: true},
		{in: "sp ace=1", err: true},
		{in: "k=a\x01b", err: true},
	}
	for _, c := range cases {
		got, err := ParseLabel(c.in, SourceUnspec)
		if c.err {
			if err == nil || !errors.Is(err, ErrMalformed) {
				t.Errorf("%q: want a malformed-label error, got %v, %v", c.in, got, err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: got %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

func TestParseListConflicts(t *testing.T) {
	if _, err := Parse("a=1,a=2", SourceUnspec); err == nil {
		t.Fatal("a key given twice with two values was accepted")
	}
	ls, err := Parse("b=2, a=1,container:a=3", SourceUnspec)
	if err != nil {
		t.Fatal(err)
	}
	if got := ls.String(); got != "container:a=3,unspec:a=1,unspec:b=2" {
		t.Fatalf("canonical form %q", got)
	}
}

func TestSelector(t *testing.T) {
	ls, _ := Parse("k8s:app=web,k8s:io.kubernetes.pod.namespace=x,container:tier=front", SourceUnspec)
	req := func(k, op string, v ...string) Requirement {
		r, err := NewRequirement(k, op, v)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	cases := []struct {
		name string
		sel  Selector
		want bool
	}{
		{"empty selects all", Selector{}, true},
		{"any source", NewSelector(map[string]string{"app": "web"}, nil), true},
		{"right source", NewSelector(map[string]string{"k8s:app": "web"}, nil), true},
		{"wrong source", NewSelector(map[string]string{"container:app": "web"}, nil), false},
		{"any: prefix", NewSelector(map[string]string{"any:tier": "front"}, nil), true},
		{"wrong value", NewSelector(map[string]string{"app": "db"}, nil), false},
		{"In", NewSelector(nil, []Requirement{req("app", OpIn, "db", "web")}), true},
		{"NotIn", NewSelector(nil, []Requirement{req("app", OpNotIn, "db", "web")}), false},
		{"NotIn absent key", NewSelector(nil, []Requirement{req("role", OpNotIn, "x")}), true},
		{"Exists", NewSelector(nil, []Requirement{req("tier", OpExists)}), true},
		{"DoesNotExist", NewSelector(nil, []Requirement{req("tier", OpDoesNotExist)}), false},
		{"AND", NewSelector(map[string]string{"app": "web"}, []Requirement{req("role", OpExists)}), false},
	}
	for _, c := range cases {
		if got := c.sel.Matches(ls); got != c.want {
			t.Errorf("%s: %s matches=%v, want %v", c.name, c.sel, got, c.want)
		}
	}
	for _, bad := range []struct{ k, op string }{{"app", "Within"}, {"", OpExists}} {
		if _, err := NewRequirement(bad.k, bad.op, nil); err == nil {
			t.Errorf("requirement %q %q accepted", bad.k, bad.op)
		}
	}
	if _, err := NewRequirement("app", OpIn, nil); err == nil {
		t.Error("In without values accepted")
	}
	if _, err := NewRequirement("app", OpExists, []string{"x"}); err == nil {
		t.Error("Exists with values accepted")
	}
}

func TestJSON(t *testing.T) {
	ls, _ := Parse("id=app1,k8s:x=y", SourceUnspec)
	b, err := json.Marshal(ls)
	if err != nil || string(b) != `["k8s:x=y","unspec:id=app1"]` {
		t.Fatalf("marshal: %s %v", b, err)
	}
	var back Labels
	if err := json.Unmarshal(b, &back); err != nil || !back.Equal(ls) {
		t.Fatalf("unmarshal: %v %v", back, err)
	}
}
