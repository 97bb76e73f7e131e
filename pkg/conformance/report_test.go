package conformance

import (
	"bytes"
	"strings"
	"testing"
)

func TestWriteCaseAndSummary(t *testing.T) {
	var b bytes.Buffer
	pass := CaseResult{ID: "K001", Name: "k8s-e2e/default-deny-ingress", Status: StatusPass, Probes: 72, Passed: 72, Skipped: 9,
		SkipReasons: map[string]int{"skipped: " + skipHairpin: 9}}
	fail := CaseResult{ID: "L002", Name: "cilium-cli/echo-ingress-l7", Status: StatusFail, Probes: 2, Passed: 1,
		Notes: []string{"single node"},
		Failures: []ProbeResult{{From: "t/client2", To: "t/echo", Port: "8080", Protocol: "TCP",
			HTTP: &HTTPRequest{Method: "GET", Path: "/private", Headers: map[string]string{"X-Token": "42"}},
			Want: Expectation{Result: ResultAllowed, Status: 200}, Got: Outcome{Result: ResultL7Denied, Status: 403}}}}
	uns := CaseResult{ID: "A001", Name: "n/a", Status: StatusUnsupported, Reason: "ClusterNetworkPolicy"}
	rep := &Report{Duration: "1s", Agent: "private"}
	for _, c := range []CaseResult{pass, fail, uns} {
		WriteCase(&b, c)
		rep.Summary.add(c)
	}
	WriteSummary(&b, rep)
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := []string{
		"PASS K001 k8s-e2e/default-deny-ingress (72 probes, 9 skipped) [9 skipped: " + skipHairpin + "]",
		"FAIL L002 cilium-cli/echo-ingress-l7 (2 probes, 1 failed) [single node]",
		"    t/client2 -> t/echo 8080/TCP GET /private [X-Token: 42]: want allowed (HTTP 200), got l7-denied (HTTP 403)",
		"UNSUPPORTED A001 n/a: ClusterNetworkPolicy",
		"1 passed, 1 failed",
	}
	if len(lines) != len(want)+1 {
		t.Fatalf("got %d lines:\n%s", len(lines), b.String())
	}
	for i, w := range want {
		if lines[i] != w {
			t.Errorf("line %d:\ngot  %q\nwant %q", i, lines[i], w)
		}
	}
	if !strings.HasPrefix(lines[len(lines)-1], "1 unsupported, 0 skipped; 74 probes sent, 1 failed, 9 skipped, 0 unsupported") {
		t.Errorf("last line %q", lines[len(lines)-1])
	}
}
