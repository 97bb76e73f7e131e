package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/endpoint"
)

// TestPrivilegedAgentKilledDuringEndpointAdd kills the agent in the middle
// of wiring an endpoint: after a restart nothing of it is left (no veth, no
// pins, no address taken), and the same request succeeds.
func TestPrivilegedAgentKilledDuringEndpointAdd(t *testing.T) {
	for _, point := range []string{"endpoint-after-veth", "endpoint-after-attach"} {
		t.Run(point, func(t *testing.T) {
			a := startAgent(t)
			ns := newNetns(t, "victim")
			before := links()
			a.kill()
			a.Env = []string{"MEMBRANE_FAULT=" + point}
			a.start()
			ip := strings.TrimSuffix(a.Pool, "0/24") + "77"
			out, err := a.cli("endpoint", "add", "--netns", ns, "--name", "victim", "--labels", "id=v", "--ipv4", ip)
			if err == nil {
				t.Fatalf("endpoint add survived the fault:\n%s", out)
			}
			// The agent died; some of the endpoint exists in the kernel.
			select {
			case <-a.Exited():
			case <-time.After(10 * time.Second):
				t.Fatal("the agent did not die at the fault point")
			}
			a.kill()
			a.Env = nil
			a.start()
			// Interface names derive from the agent's state directory, the
			// endpoint's name and id: none of the victim's may be left.
			for id := uint32(1); id < 8; id++ {
				n := endpoint.HostIfName(a.StateDir, "victim", id)
				if linkExists(n) || linkExists("tmp"+strings.TrimPrefix(n, "lxc")) {
					t.Fatalf("interface %s left after restart", n)
				}
			}
			_ = before
			if m, _ := filepath.Glob(filepath.Join(a.BPFFS, "endpoints", "*")); len(m) != 0 {
				t.Fatalf("pins left after restart: %v", m)
			}
			var eps []api.Endpoint
			json.Unmarshal([]byte(a.mustCLI("endpoint", "list", "-o", "json")), &eps)
			if len(eps) != 0 {
				t.Fatalf("endpoints after restart: %+v", eps)
			}
			// The address and the namespace are free again.
			ep := a.addEndpoint("again", "id=v", "--ipv4", ip)
			_ = ep
			if !strings.Contains(a.mustCLI("endpoint", "list"), ip) {
				t.Fatalf("address %s not reusable", ip)
			}
			_ = ns
		})
	}
}

func links() map[string]bool {
	out := map[string]bool{}
	ents, _ := os.ReadDir("/sys/class/net")
	for _, e := range ents {
		out[e.Name()] = true
	}
	return out
}

func diff(now, before map[string]bool) []string {
	var extra []string
	for n := range now {
		if !before[n] && strings.HasPrefix(n, "lxc") || !before[n] && strings.HasPrefix(n, "tmp") {
			extra = append(extra, n)
		}
	}
	return extra
}

var _ = fmt.Sprint
