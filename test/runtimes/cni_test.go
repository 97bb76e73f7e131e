package runtimes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/membrane-net/membrane/internal/testutil"
	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/endpoint"
)

// cniEnv is a directory of network configurations for cnitool, and a
// cache directory of its own.
type cniEnv struct {
	t       *testing.T
	tool    string
	netDir  string
	network string
}

func newCNIEnv(t *testing.T, a *Agent, version string, extra string) *cniEnv {
	t.Helper()
	e := &cniEnv{t: t, tool: requireCommand(t, "cnitool"), netDir: t.TempDir(), network: fmt.Sprintf("membrane-rt-%d", uniq())}
	conf := fmt.Sprintf(`{"cniVersion": %q, "name": %q, "plugins": [
  {"type": "membrane-cni", "socket": %q, "podmanSocket": "", "args": {"labels": {"id": "cni"}, "cni": {"labels": [{"key": "version", "value": %q}]}}%s}]}`,
		version, e.network, a.Socket, version, extra)
	if err := os.WriteFile(filepath.Join(e.netDir, "10-membrane.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return e
}

// run runs cnitool; cnitool keeps its cache in /var/lib/cni, which DEL
// empties.
func (e *cniEnv) run(cmd, netns string, env ...string) (string, error) {
	c := exec.Command(e.tool, cmd, e.network, netns)
	c.Env = append(os.Environ(), append([]string{"CNI_PATH=" + cniDir, "NETCONFPATH=" + e.netDir}, env...)...)
	out, err := c.CombinedOutput()
	return string(out), err
}

func (e *cniEnv) must(cmd, netns string, env ...string) string {
	e.t.Helper()
	out, err := e.run(cmd, netns, env...)
	if err != nil {
		e.t.Fatalf("cnitool %s %s: %v\n%s", cmd, netns, err, out)
	}
	return out
}

// TestPrivilegedCNIToolVersions drives membrane-cni with cnitool across
// CNI spec versions: ADD (the result, the interface, the labels, traffic
// under policy), CHECK, DEL twice, and STATUS from 1.1.0 on.
func TestPrivilegedCNIToolVersions(t *testing.T) {
	a := startAgent(t)
	for _, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			a.bind(t)
			e := newCNIEnv(t, a, v, "")
			ns := newNetns(t, "cni")
			out := e.must("add", ns, "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=pod-"+strings.ReplaceAll(v, ".", ""))
			var res struct {
				CNIVersion string `json:"cniVersion"`
				IPs        []struct {
					Address string `json:"address"`
					Gateway string `json:"gateway"`
					Version string `json:"version"`
				} `json:"ips"`
				Routes []struct{ Dst, GW string } `json:"routes"`
			}
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("result: %v\n%s", err, out)
			}
			if res.CNIVersion != v || len(res.IPs) != 1 || res.IPs[0].Gateway != "169.254.1.1" ||
				len(res.Routes) != 1 || res.Routes[0].Dst != "0.0.0.0/0" || res.Routes[0].GW != "169.254.1.1" {
				t.Fatalf("result for %s:\n%s", v, out)
			}
			if v == "0.4.0" && res.IPs[0].Version != "4" {
				t.Errorf("0.4.0 result without ip version:\n%s", out)
			}
			ep := a.waitEndpoint("container:version=" + v)
			if want := ep.IPv4.String() + "/32"; res.IPs[0].Address != want {
				t.Errorf("result address %s, endpoint %s", res.IPs[0].Address, want)
			}
			if got := ep.Labels.String(); got != "container:id=cni,container:version="+v+",k8s:io.kubernetes.pod.namespace=web" {
				t.Errorf("labels %s", got)
			}
			if want := "web/pod-" + strings.ReplaceAll(v, ".", ""); ep.Name != want {
				t.Errorf("name %q, want %q", ep.Name, want)
			}
			// Traffic from the host, then under a policy that admits
			// nothing of the host.
			serveEcho(t, ns, 8080)
			addr := fmt.Sprintf("%s:8080", ep.IPv4)
			if !tcpFromHost(addr) {
				t.Errorf("host -> %s: no answer", addr)
			}
			e.must("check", ns)
			if v == "1.1.0" {
				e.must("status", ns)
			}
			a.importPolicy("deny.json", `[{"endpointSelector": {"matchLabels": {"version": "`+v+`"}}, "ingress": [{"fromEndpoints": [{"matchLabels": {"id": "nobody"}}]}]}]`)
			if tcpFromHost(addr) {
				t.Errorf("host -> %s answered under a policy that drops it", addr)
			}
			a.mustCLI("policy", "delete", "--all")
			e.must("del", ns)
			a.waitGone(ep)
			e.must("del", ns) // not found is success
			if out, err := e.run("check", ns); err == nil {
				t.Errorf("check after del succeeded:\n%s", out)
			}
		})
	}
	if extra := a.leftInterfaces(); len(extra) != 0 {
		t.Errorf("interfaces left: %v", extra)
	}
}

// TestPrivilegedCNIGCAndStatus calls membrane-cni directly for GC (only
// attachments the runtime does not list go, and only this network's) and
// STATUS (with the agent down: code 50, naming the socket), and ADD with
// the agent down (code 11).
func TestPrivilegedCNIGCAndStatus(t *testing.T) {
	a := startAgent(t)
	conf := func(network string, extra string) string {
		return fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q, "type": "membrane-cni", "socket": %q, "podmanSocket": ""%s}`, network, a.Socket, extra)
	}
	var eps []*api.Endpoint
	for i, network := range []string{"net-a", "net-a", "net-b"} {
		ns := newNetns(t, fmt.Sprintf("gc%d", i))
		out, err := callPlugin("ADD", fmt.Sprintf("c%d", i), ns, conf(network, ""))
		if err != nil {
			t.Fatalf("ADD: %v\n%s", err, out)
		}
		eps = append(eps, findRef(t, a, fmt.Sprintf("cni:%s:c%d", network, i)))
	}
	// c0 is still valid, c1 is not; c2 is another network's.
	out, err := callPlugin("GC", "", "", conf("net-a", `, "cni.dev/valid-attachments": [{"containerID": "c0", "ifname": "eth0"}]`))
	if err != nil {
		t.Fatalf("GC: %v\n%s", err, out)
	}
	a.waitGone(*eps[1])
	left := a.endpoints()
	if len(left) != 2 || left[0].ID != eps[0].ID || left[1].ID != eps[2].ID {
		t.Errorf("after GC: %s", describe(left))
	}
	if out, err := callPlugin("STATUS", "", "", conf("net-a", "")); err != nil {
		t.Errorf("STATUS: %v\n%s", err, out)
	}
	for _, ep := range []*api.Endpoint{eps[0], eps[2]} {
		if err := a.Client.DeleteEndpoint(t.Context(), ep.ID); err != nil {
			t.Fatal(err)
		}
	}
	a.kill()
	out, err = callPlugin("STATUS", "", "", conf("net-a", ""))
	if err == nil || !strings.Contains(out, `"code": 50`) || !strings.Contains(out, a.Socket) {
		t.Errorf("STATUS with the agent down: %v\n%s", err, out)
	}
	ns := newNetns(t, "down")
	out, err = callPlugin("ADD", "c9", ns, conf("net-a", ""))
	if err == nil || !strings.Contains(out, `"code": 11`) || !strings.Contains(out, a.Socket) {
		t.Errorf("ADD with the agent down: %v\n%s", err, out)
	}
}

// TestPrivilegedCNIAgentKilledDuringAdd kills the agent between the steps
// of an ADD: after it restarts no interface or address is left, and the
// ADD, tried again, works.
func TestPrivilegedCNIAgentKilledDuringAdd(t *testing.T) {
	for _, point := range []string{"endpoint-after-veth", "endpoint-after-attach"} {
		t.Run(point, func(t *testing.T) {
			a := startAgent(t)
			ns := newNetns(t, "fault")
			conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "net-f", "type": "membrane-cni", "socket": %q, "podmanSocket": "", "args": {"labels": {"id": "fault"}}}`, a.Socket)
			a.kill()
			a.Env = []string{"MEMBRANE_FAULT=" + point}
			a.start()
			out, err := callPlugin("ADD", "fault1", ns, conf)
			if err == nil {
				t.Fatalf("ADD survived the fault:\n%s", out)
			}
			if !strings.Contains(out, `"code": 11`) || !strings.Contains(out, a.Socket) {
				t.Errorf("want code 11 naming the agent's socket:\n%s", out)
			}
			// The interface the agent was making is named after the
			// endpoint's name and number.
			var made []string
			for id := uint32(0); id < 4; id++ {
				if n := endpoint.HostIfName(a.StateDir, "cni-fault1", id); linkExists(n) || linkExists("tmp"+strings.TrimPrefix(n, "lxc")) {
					made = append(made, n)
				}
			}
			if len(made) == 0 {
				t.Errorf("the fault left nothing to clean up: did it happen at %s?", point)
			}
			a.kill()
			a.Env = nil
			a.start()
			for _, n := range made {
				if linkExists(n) || linkExists("tmp"+strings.TrimPrefix(n, "lxc")) {
					t.Errorf("interface %s left after the restart", n)
				}
			}
			if eps := a.endpoints(); len(eps) != 0 {
				t.Fatalf("endpoints after the restart: %s", describe(eps))
			}
			if st := a.usedAddresses(); !strings.Contains(st, "(0 addresses used)") {
				t.Errorf("addresses held after the restart: %s", st)
			}
			if out, err := callPlugin("ADD", "fault1", ns, conf); err != nil {
				t.Fatalf("ADD again: %v\n%s", err, out)
			}
			ep := a.waitEndpoint("container:id=fault")
			if out, err := callPlugin("DEL", "fault1", ns, conf); err != nil {
				t.Fatalf("DEL: %v\n%s", err, out)
			}
			a.waitGone(ep)
		})
	}
}

// callPlugin runs membrane-cni as a runtime would.
func callPlugin(command, containerID, netns, conf string) (string, error) {
	cmd := exec.Command(cniBin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID="+containerID, "CNI_NETNS="+netns,
		"CNI_IFNAME=eth0", "CNI_PATH="+cniDir)
	cmd.Stdin = strings.NewReader(conf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func findRef(t *testing.T, a *Agent, ref string) *api.Endpoint {
	t.Helper()
	for _, ep := range a.endpoints() {
		if ep.ContainerID == ref {
			return &ep
		}
	}
	t.Fatalf("no endpoint with reference %s: %s", ref, describe(a.endpoints()))
	return nil
}

// serveEcho echoes TCP on a port inside a namespace.
func serveEcho(t *testing.T, ns string, port int) { testutil.ServeTCPEcho(t, ns, port) }

// tcpFromHost reports whether a TCP connection from the host is echoed.
func tcpFromHost(addr string) bool {
	c, err := net.DialTimeout("tcp4", addr, 700*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(700 * time.Millisecond))
	if _, err := c.Write([]byte("ping")); err != nil {
		return false
	}
	buf := make([]byte, 4)
	_, err = io.ReadFull(c, buf)
	return err == nil && string(buf) == "ping"
}
