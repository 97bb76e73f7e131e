package e2e

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPrivilegedIncrementalUpdates changes one policy among many, again
// and again, while probes run on flows the change does not touch: they
// never see a wrong verdict, and each change rewrites only the entries
// that change.
func TestPrivilegedIncrementalUpdates(t *testing.T) {
	a := startAgent(t)
	srv := a.addEndpoint("srv", "id=srv")
	good := a.addEndpoint("good", "id=good")
	bad := a.addEndpoint("bad", "id=bad")
	other := a.addEndpoint("other", "id=other")
	serveTCP(t, srv.NS, 80)
	serveTCP(t, srv.NS, 8080)
	serveTCP(t, srv.NS, 9090)
	var docs []string
	for i := 0; i < 50; i++ {
		docs = append(docs, fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: filler-%d}
spec:
  endpointSelector: {matchLabels: {id: srv}}
  ingress:
  - fromCIDR: [198.18.%d.0/24]
    toPorts: [{ports: [{port: "%d", protocol: TCP}]}]
`, i, i, 1000+i))
	}
	docs = append(docs, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: good-to-srv}
spec:
  endpointSelector: {matchLabels: {id: srv}}
  ingress:
  - fromEndpoints: [{matchLabels: {id: good}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`)
	a.importPolicy("many.yaml", strings.Join(docs, "---\n"))
	entries := func() int {
		out := a.mustCLI("bpf", "policy", "get", fmt.Sprint(srv.ID))
		m := regexp.MustCompile(`: (\d+) of`).FindStringSubmatch(out)
		n, _ := strconv.Atoi(m[1])
		return n
	}
	before := entries()

	var wrong, probes atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	probe := func(from *Endpoint, port int, want bool) {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if tcpOK(from.NS, addr(srv, port)) != want {
				wrong.Add(1)
			}
			probes.Add(1)
		}
	}
	wg.Add(2)
	go probe(good, 80, true) // allowed throughout
	go probe(bad, 80, false) // denied throughout
	for i := 0; i < 20; i++ {
		port := 8080
		if i%2 == 1 {
			port = 9090
		}
		a.importPolicy("changing.yaml", fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: changing}
spec:
  endpointSelector: {matchLabels: {id: srv}}
  ingress:
  - fromEndpoints: [{matchLabels: {id: other}}]
    toPorts: [{ports: [{port: "%d", protocol: TCP}]}]
`, port))
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if wrong.Load() != 0 || probes.Load() < 20 {
		t.Fatalf("%d of %d probes of untouched flows saw a wrong verdict", wrong.Load(), probes.Load())
	}
	expectTCP(t, other, addr(srv, 9090), true)
	expectTCP(t, other, addr(srv, 8080), false)
	if after := entries(); after != before+1 {
		t.Fatalf("policy map: %d entries before, %d after adding one rule", before, after)
	}
	// Each change replaced one entry: the agent's log counts the writes.
	if !strings.Contains(a.logTail(), "writes=2") {
		t.Errorf("a one-rule change did not write exactly 2 entries (1 upsert, 1 delete):\n%s", a.logTail())
	}
}
