package conformance

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"

	"github.com/membrane-net/membrane/internal/testutil"
)

// sharedCases is the folder of the conformance cases: MEMBRANE_CONFORMANCE,
// or the copy in test/conformance/cases.
func sharedCases(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("MEMBRANE_CONFORMANCE")
	if dir == "" {
		dir = filepath.Join("..", "..", "test", "conformance", "cases")
	}
	if _, err := os.Stat(dir); err != nil {
		testutil.Unavailable(t, "the shared conformance cases (set MEMBRANE_CONFORMANCE): "+err.Error())
	}
	return dir
}

var shared struct {
	once  sync.Once
	cases []*Case
	err   error
}

// sharedCaseList loads the shared cases once for every test.
func sharedCaseList(t *testing.T) []*Case {
	t.Helper()
	dir := sharedCases(t)
	shared.once.Do(func() { shared.cases, shared.err = LoadDir(dir, nil) })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.cases
}

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr bool
	}{
		{name: "minimal pod case", yaml: `
schemaVersion: 1
id: X1
name: t/x
topology: {pods: [{name: x/a, namespace: x, ip: 10.0.0.1}]}
expected: {probes: [{from: x/a, to: x/a, port: 80, protocol: TCP, allowed: true}]}`},
		{name: "wrong schema version", wantErr: true, yaml: `
schemaVersion: 2
id: X1
name: t/x
topology: {}
expected: {probes: [{from: a, to: b, port: 80, allowed: true}]}`},
		{name: "no probes", wantErr: true, yaml: `
schemaVersion: 1
id: X1
name: t/x
topology: {}
expected: {}`},
		{name: "probe without expectation", wantErr: true, yaml: `
schemaVersion: 1
id: X1
name: t/x
topology: {}
expected: {probes: [{from: a, to: b, port: 80}]}`},
		{name: "unknown result", wantErr: true, yaml: `
schemaVersion: 1
id: X1
name: t/x
topology: {}
expected: {probes: [{from: a, to: b, port: 80, result: maybe}]}`},
		{name: "bad port", wantErr: true, yaml: `
schemaVersion: 1
id: X1
name: t/x
topology: {}
expected: {probes: [{from: a, to: b, port: eighty, allowed: true}]}`},
		{name: "identity probe needs a direction", wantErr: true, yaml: `
schemaVersion: 1
id: X1
name: t/x
level: identity
topology: {}
expected: {probes: [{peerIdentity: world, port: any, result: allowed}]}`},
		{name: "unknown level", wantErr: true, yaml: `
schemaVersion: 1
id: X1
name: t/x
level: cluster
expected: {}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("case.yaml", []byte(tt.yaml))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrBadCase) {
				t.Fatalf("err = %v, want ErrBadCase", err)
			}
		})
	}
}

func TestLoadTestdata(t *testing.T) {
	c, err := Load("testdata/cases/K900-test__two-pods.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Level != LevelPod || c.Group() != "test/two-pods" || c.StepIndex() != 2 {
		t.Fatalf("level %q group %q step %d", c.Level, c.Group(), c.StepIndex())
	}
	if got := c.Topology.Namespaces["y"].Labels["ns"]; got != "y" {
		t.Fatalf("namespace y label ns = %q (YAML 1.1 'y' must stay a string)", got)
	}
	p := c.Expected.Probes[4]
	if p.Method != "GET" || p.Headers["X-Token"] != "42" || p.HTTPStatus == nil || *p.HTTPStatus != 403 {
		t.Fatalf("HTTP probe: %+v", p)
	}
	id, err := Load("testdata/cases/P900-test__identity.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !id.Expected.Probes[0].Port.Any || id.Expected.Probes[2].Port.Port != 81 {
		t.Fatalf("ports: %+v %+v", id.Expected.Probes[0].Port, id.Expected.Probes[2].Port)
	}
	if _, ok := id.Topology.Identities[2].LabelList(); ok {
		t.Fatal("labels given as a Go expression read as a list")
	}
	if ls, ok := id.Topology.Identities[0].LabelList(); !ok || len(ls) != 2 {
		t.Fatalf("labels %v %v", ls, ok)
	}
}

func TestLoadDirFilters(t *testing.T) {
	all, err := LoadDir("testdata/cases", nil)
	if err != nil || len(all) != 3 {
		t.Fatalf("LoadDir: %d cases, %v", len(all), err)
	}
	some, err := LoadDir("testdata/cases", regexp.MustCompile(`^P9|selectors`))
	if err != nil || len(some) != 2 || some[0].ID != "P900" || some[1].ID != "S900" {
		t.Fatalf("filtered: %v", err)
	}
	if _, err := LoadDir("testdata/cases", regexp.MustCompile(`nothing`)); err == nil {
		t.Fatal("no match: want an error")
	}
}

// TestSharedCasesParse reads every shared case and plans every pod- and
// identity-level one, as the runner would.
func TestSharedCasesParse(t *testing.T) {
	for _, c := range sharedCaseList(t) {
		if c.Level == LevelSelector {
			continue
		}
		p, err := MakePlan(c, PlanOptions{})
		if err != nil {
			t.Errorf("%s: %v", c.ID, err)
			continue
		}
		if len(p.Probes) != len(c.Expected.Probes) {
			t.Errorf("%s: %d planned probes for %d expected", c.ID, len(p.Probes), len(c.Expected.Probes))
		}
		if _, err := PolicyFile(c); err != nil {
			t.Errorf("%s: %v", c.ID, err)
		}
	}
}
