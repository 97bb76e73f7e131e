package conformance

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/membrane-net/membrane/internal/testutil"
	"github.com/membrane-net/membrane/pkg/nsutil"
)

// TestPrivilegedRunner runs real cases with a private agent: K001, K014
// and C010 must pass, and a copy of K001 with one expected probe flipped
// must fail on exactly that probe. Then nothing the run made may be left.
func TestPrivilegedRunner(t *testing.T) {
	testutil.RequirePrivileged(t)
	src := sharedCases(t)
	dir := t.TempDir()
	for _, id := range []string{"K001", "K014", "C010"} {
		m, _ := filepath.Glob(filepath.Join(src, id+"-*.yaml"))
		if len(m) != 1 {
			t.Fatalf("case %s: %d files in %s", id, len(m), src)
		}
		b, err := os.ReadFile(m[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(m[0])), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if id == "K001" {
			writeBroken(t, dir, string(b))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	var streamed []string
	r, err := New(ctx, Config{Dir: dir, OnCase: func(c CaseResult) { streamed = append(streamed, c.ID) }}, log)
	if err != nil {
		t.Fatal(err)
	}
	pid := os.Getpid()
	rep, err := r.Run(ctx)
	if cerr := r.Close(); cerr != nil {
		t.Errorf("close: %v", cerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]CaseResult{}
	for _, c := range rep.Cases {
		byID[c.ID] = c
		var b strings.Builder
		WriteCase(&b, c)
		t.Log(strings.TrimSpace(b.String()))
	}
	for _, id := range []string{"C010", "K001", "K014"} {
		c := byID[id]
		if c.Status != StatusPass || c.Probes == 0 {
			t.Errorf("%s: status %s, %d probes, want a pass", id, c.Status, c.Probes)
		}
	}
	if c := byID["C010"]; c.Unsupported == 0 || c.Skipped == 0 {
		t.Errorf("C010: %d unsupported (SCTP), %d skipped (hairpin): want both counted", c.Unsupported, c.Skipped)
	}
	broken := byID["X001"]
	if broken.Status != StatusFail || len(broken.Failures) != 1 {
		t.Fatalf("the broken case: status %s, failures %+v; want exactly one failing probe", broken.Status, broken.Failures)
	}
	if f := broken.Failures[0]; f.From != "x/a" || f.To != "x/b" || f.Want.Result != ResultAllowed || f.Got.Result != ResultDropped {
		t.Errorf("the broken case's failure: %s", f)
	}
	if rep.Summary.Passed != 3 || rep.Summary.Failed != 1 || len(streamed) != 4 {
		t.Errorf("summary %+v, streamed %v", rep.Summary, streamed)
	}
	assertNothingLeft(t, pid)
}

// writeBroken writes a copy of K001 (as X001) whose probe x/a -> x/b says
// allowed, which the policy denies.
func writeBroken(t *testing.T, dir, k001 string) {
	t.Helper()
	const from = "- {from: x/a, to: x/b, port: 80, protocol: TCP, allowed: false}"
	if strings.Count(k001, from) != 1 {
		t.Fatalf("K001 changed: no single probe line %q", from)
	}
	b := strings.Replace(k001, from, strings.Replace(from, "false", "true", 1), 1)
	b = strings.Replace(b, "id: K001", "id: X001", 1)
	b = strings.Replace(b, "name: k8s-e2e/default-deny-ingress", "name: broken/default-deny-ingress-one-probe-flipped", 1)
	if err := os.WriteFile(filepath.Join(dir, "X001-broken.yaml"), []byte(b), 0o644); err != nil {
		t.Fatal(err)
	}
}

// assertNothingLeft checks that no namespace, link or pin of the run is
// left.
func assertNothingLeft(t *testing.T, pid int) {
	t.Helper()
	ents, _ := os.ReadDir(nsutil.Dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), fmt.Sprintf("mbrcf-%d-", pid)) {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
	for _, n := range []string{worldHostIf(pid), worldPeerIf(pid), privateHostIf(pid)} {
		if _, err := netlink.LinkByName(n); err == nil {
			t.Errorf("link %s left behind", n)
		}
	}
	if _, err := os.Stat(privateBPFFS(pid)); err == nil {
		t.Errorf("pins %s left behind", privateBPFFS(pid))
	}
}

// testWriter sends log lines to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}
