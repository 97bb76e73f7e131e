package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/demo"
	"github.com/membrane-net/membrane/pkg/monitor"
)

// l3l4JSON is early Cilium's getting-started policy, as the demo uses it.
var l3l4JSON = demo.L3L4Policy

func TestPrivilegedEndpointLifecycle(t *testing.T) {
	a := startAgent(t)
	app1 := a.addEndpoint("x/app1", "id=app1,k8s:tier=web", "--named-ports", "http=80/TCP")
	app2 := a.addEndpoint("app2", "id=app2")
	if app1.ID == 0 || !app1.IPv4.IsValid() || app1.Identity < 256 || app1.Name != "x/app1" {
		t.Fatalf("endpoint JSON: %+v", app1.Endpoint)
	}
	if got := app1.Labels.String(); got != "k8s:tier=web,unspec:id=app1" {
		t.Fatalf("labels %q", got)
	}
	if !strings.HasPrefix(app1.Interface, "lxc") || !linkExists(app1.Interface) {
		t.Fatalf("host interface %q missing", app1.Interface)
	}
	// Another endpoint with the same labels shares the identity.
	app1b := a.addEndpoint("app1-b", "k8s:tier=web,id=app1")
	if app1b.Identity != app1.Identity {
		t.Fatalf("same labels, identities %d and %d", app1.Identity, app1b.Identity)
	}
	serveTCP(t, app1.NS, 80)
	serveTCP(t, app2.NS, 80)
	expectTCP(t, app2, addr(app1, 80), true)
	expectTCP(t, app1, addr(app2, 80), true)

	// The host reaches endpoints, and endpoints reach the host.
	c, err := net.DialTimeout("tcp4", addr(app1, 80), time.Second)
	if err != nil {
		t.Fatalf("host -> app1: %v", err)
	}
	c.Close()
	st, err := a.Client.Status(context.Background())
	if err != nil || !st.Healthy {
		t.Fatalf("status: %+v %v", st, err)
	}
	gw := strings.TrimSuffix(a.Pool, "0/24") + "1"
	ln, err := net.Listen("tcp4", gw+":0")
	if err != nil {
		t.Fatalf("listen on the host address %s: %v", gw, err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("ping"))
			c.Close()
		}
	}()
	if !tcpOK(app2.NS, ln.Addr().String()) {
		// tcpOK writes then reads "ping": the host side just sends it.
		t.Errorf("app2 -> host %s failed", ln.Addr())
	}

	var eps []api.Endpoint
	if err := json.Unmarshal([]byte(a.mustCLI("endpoint", "list", "-o", "json")), &eps); err != nil || len(eps) != 3 {
		t.Fatalf("endpoint list: %v %d", err, len(eps))
	}
	out := a.mustCLI("endpoint", "get", fmt.Sprint(app1.ID))
	if !strings.Contains(out, "x/app1") || !strings.Contains(out, "http=80/TCP") {
		t.Fatalf("endpoint get:\n%s", out)
	}
	var ids []api.Identity
	if err := json.Unmarshal([]byte(a.mustCLI("identity", "list", "-o", "json")), &ids); err != nil {
		t.Fatal(err)
	}
	user := 0
	for _, id := range ids {
		if id.ID >= 256 {
			user++
		}
	}
	if len(ids) != 6+2 || user != 2 {
		t.Fatalf("identities: %d listed, %d user ones: %+v", len(ids), user, ids)
	}

	// Delete: the link, the pins and the identity go.
	a.mustCLI("endpoint", "delete", fmt.Sprint(app2.ID))
	if linkExists(app2.Interface) {
		t.Errorf("interface %s left behind", app2.Interface)
	}
	if p := pinsOf(a, app2.ID); len(p) != 0 {
		t.Errorf("pins left behind: %v", p)
	}
	if err := json.Unmarshal([]byte(a.mustCLI("identity", "list", "-o", "json")), &ids); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if id.ID == app2.Identity {
			t.Errorf("identity %d of the deleted endpoint is still allocated", id.ID)
		}
	}
	if _, err := a.cli("endpoint", "get", fmt.Sprint(app2.ID)); err == nil {
		t.Error("deleted endpoint still answers")
	}
}

func TestPrivilegedEndpointBadInput(t *testing.T) {
	a := startAgent(t)
	app1 := a.addEndpoint("app1", "id=app1")
	before, _ := os.ReadDir("/sys/class/net")
	ns := newNetns(t, "bad")
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing netns", []string{"--netns", "/var/run/netns/does-not-exist", "--labels", "id=x"}, "does-not-exist"},
		{"not a netns", []string{"--netns", "/etc/hostname", "--labels", "id=x"}, "not a network namespace"},
		{"address in use", []string{"--netns", ns, "--labels", "id=x", "--ipv4", app1.IPv4.String()}, "in use"},
		{"bad address", []string{"--netns", ns, "--labels", "id=x", "--ipv4", "10.0.0.300"}, "not an IPv4"},
		{"malformed labels", []string{"--netns", ns, "--labels", "id=x,bogus:y=z"}, "unknown source"},
		{"reserved labels", []string{"--netns", ns, "--labels", "reserved:host"}, "Membrane's own"},
		{"name in use", []string{"--netns", ns, "--labels", "id=x", "--name", "app1"}, "in use"},
		{"netns already an endpoint", []string{"--netns", app1.NS, "--labels", "id=x"}, "already endpoint"},
		{"bad named port", []string{"--netns", ns, "--labels", "id=x", "--named-ports", "http=99999/TCP"}, "not a port"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := a.cli(append([]string{"endpoint", "add"}, c.args...)...)
			if err == nil {
				t.Fatalf("accepted:\n%s", out)
			}
			if !strings.Contains(out, c.want) {
				t.Fatalf("error does not say %q:\n%s", c.want, out)
			}
		})
	}
	after, _ := os.ReadDir("/sys/class/net")
	if len(after) != len(before) {
		t.Errorf("interfaces before %d, after %d", len(before), len(after))
	}
	var eps []api.Endpoint
	json.Unmarshal([]byte(a.mustCLI("endpoint", "list", "-o", "json")), &eps)
	if len(eps) != 1 {
		t.Errorf("%d endpoints after failed adds", len(eps))
	}
	// The namespace is still usable: nothing was left in it.
	ep := a.addEndpoint("good", "id=x")
	_ = ep
}

// watchMonitor subscribes to monitor events of the given types and
// returns a function giving those received so far.
func watchMonitor(t *testing.T, a *Agent, types ...string) func() []monitor.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st, err := a.Client.OpenMonitor(ctx, types)
	if err != nil {
		cancel()
		t.Fatalf("monitor: %v", err)
	}
	var mu sync.Mutex
	var evs []monitor.Event
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			e, err := st.Next()
			if err != nil {
				return
			}
			mu.Lock()
			evs = append(evs, e)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); st.Close(); <-done })
	return func() []monitor.Event {
		time.Sleep(300 * time.Millisecond) // events in flight
		mu.Lock()
		defer mu.Unlock()
		return append([]monitor.Event(nil), evs...)
	}
}

func TestPrivilegedL3L4JSONPolicy(t *testing.T) {
	a := startAgent(t)
	app1 := a.addEndpoint("app1", "id=app1")
	app2 := a.addEndpoint("app2", "id=app2")
	app3 := a.addEndpoint("app3", "id=app3")
	for _, ep := range []*Endpoint{app1, app2, app3} {
		serveTCP(t, ep.NS, 80)
		serveTCP(t, ep.NS, 81)
		serveUDP(t, ep.NS, 80)
	}
	out := a.importPolicy("l3_policy.json", l3l4JSON)
	if !strings.Contains(out, "Revision: ") {
		t.Fatalf("import output: %q", out)
	}
	events := watchMonitor(t, a, "drop")
	expectTCP(t, app2, addr(app1, 80), true)
	expectTCP(t, app3, addr(app1, 80), false)
	expectTCP(t, app2, addr(app1, 81), false) // port mismatch
	expectUDP(t, app2, addr(app1, 80), false) // protocol mismatch
	expectTCP(t, app1, addr(app3, 80), true)  // egress not enforced
	expectTCP(t, app3, addr(app2, 80), true)  // app2 not selected
	var drop *monitor.Event
	for _, e := range events() {
		if e.Src == app3.IPv4.String() && e.Dst == app1.IPv4.String() && e.DstPort == 80 {
			drop = &e
			break
		}
	}
	if drop == nil {
		t.Fatal("no drop event for app3 -> app1:80")
	}
	if drop.Reason != "no policy entry" || drop.Direction != "ingress" || drop.Endpoint != app1.ID ||
		drop.SrcIdentity != uint32(app3.Identity) || drop.DstIdentity != uint32(app1.Identity) || drop.Protocol != "TCP" {
		t.Errorf("drop event: %+v", drop)
	}

	// The kernel's map holds what the policy says.
	var bp api.BPFPolicy
	if err := json.Unmarshal([]byte(a.mustCLI("bpf", "policy", "get", fmt.Sprint(app1.ID), "-o", "json")), &bp); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range bp.Entries {
		if e.Identity == app2.Identity && e.Direction == "ingress" && e.Protocol == "TCP" && e.Ports == "80" && e.Verdict == "allow" {
			found = true
		}
	}
	if !found {
		t.Errorf("policy map of app1 lacks app2 -> TCP 80: %+v", bp.Entries)
	}
	ipc := a.mustCLI("bpf", "ipcache", "list")
	if !strings.Contains(ipc, app1.IPv4.String()+"/32") || !strings.Contains(ipc, "0.0.0.0/0") {
		t.Errorf("ipcache list:\n%s", ipc)
	}
	ct := a.mustCLI("bpf", "ct", "list")
	if !strings.Contains(ct, app2.IPv4.String()) {
		t.Errorf("conntrack list lacks app2's connections:\n%s", ct)
	}

	// Label update: app3 becomes app2 and may connect.
	a.mustCLI("endpoint", "update", fmt.Sprint(app3.ID), "--labels", "id=app2")
	expectTCP(t, app3, addr(app1, 80), true)
	a.mustCLI("endpoint", "update", fmt.Sprint(app3.ID), "--labels", "id=app3")
	expectTCP(t, app3, addr(app1, 80), false)

	// policy get shows it; delete opens app1 again.
	pj := a.mustCLI("policy", "get", "-o", "json")
	if !strings.Contains(pj, "l3_policy") || !strings.Contains(pj, "app2") {
		t.Errorf("policy get:\n%s", pj)
	}
	if y := a.mustCLI("policy", "get", "-o", "yaml"); !strings.Contains(y, "endpointSelector") {
		t.Errorf("policy get -o yaml:\n%s", y)
	}
	a.mustCLI("policy", "delete", "l3_policy")
	expectTCP(t, app3, addr(app1, 80), true)
	expectTCP(t, app2, addr(app1, 81), true)
}

const cnpShapes = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-ingress
spec:
  endpointSelector:
    matchExpressions:
    - {key: role, operator: In, values: [web, api]}
  ingress:
  - fromEndpoints:
    - matchExpressions:
      - {key: role, operator: NotIn, values: [db, web, api]}
      - {key: team, operator: Exists}
    toPorts:
    - ports:
      - {port: "80", protocol: TCP}
      - {port: "53", protocol: UDP}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: db-egress
spec:
  endpointSelector:
    matchLabels: {role: db}
  egress:
  - toEndpoints:
    - matchExpressions:
      - {key: team, operator: DoesNotExist}
    toPorts:
    - ports:
      - {port: "81", protocol: ANY}
`

func TestPrivilegedCNPShapes(t *testing.T) {
	a := startAgent(t)
	web := a.addEndpoint("web", "role=web")
	client := a.addEndpoint("client", "role=client,team=blue")
	stranger := a.addEndpoint("stranger", "role=client")
	db := a.addEndpoint("db", "role=db,team=red")
	for _, ep := range []*Endpoint{web, client, stranger, db} {
		serveTCP(t, ep.NS, 80)
		serveTCP(t, ep.NS, 81)
		serveUDP(t, ep.NS, 53)
		serveUDP(t, ep.NS, 81)
	}
	a.importPolicy("shapes.yaml", cnpShapes)
	// Ingress of web: from team members that are not db/web/api, TCP 80 and UDP 53.
	expectTCP(t, client, addr(web, 80), true)
	expectUDP(t, client, addr(web, 53), true)
	expectTCP(t, client, addr(web, 81), false)
	expectTCP(t, stranger, addr(web, 80), false) // no team label
	expectTCP(t, db, addr(web, 80), false)       // NotIn db... and egress of db
	// Egress of db: to endpoints without a team, port 81 on any protocol.
	expectTCP(t, db, addr(stranger, 81), true)
	expectUDP(t, db, addr(stranger, 81), true)
	expectTCP(t, db, addr(stranger, 80), false)
	expectTCP(t, db, addr(client, 81), false) // client has a team
	// Replies of allowed flows pass although db's egress is enforced.
	expectTCP(t, stranger, addr(db, 80), true)
	// Deleting everything opens all.
	a.mustCLI("policy", "delete", "--all")
	expectTCP(t, stranger, addr(web, 80), true)
	expectTCP(t, db, addr(client, 81), true)
}

func TestPrivilegedPolicyBadInputChangesNothing(t *testing.T) {
	a := startAgent(t)
	app1 := a.addEndpoint("app1", "id=app1")
	app2 := a.addEndpoint("app2", "id=app2")
	serveTCP(t, app1.NS, 80)
	a.importPolicy("good.json", l3l4JSON)
	revBefore := a.mustCLI("policy", "get")
	bad := cnpShapes + `---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: rule1
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports:
      - {port: "eighty", protocol: TCP}
`
	p := t.TempDir() + "/policy.yaml"
	os.WriteFile(p, []byte(bad), 0o644)
	out, err := a.cli("policy", "import", p)
	if err == nil {
		t.Fatalf("bad policy accepted:\n%s", out)
	}
	for _, want := range []string{"policy.yaml", "document 3", "eighty", "spec.ingress[0].toPorts[0].ports[0].port"} {
		if !strings.Contains(out, want) {
			t.Errorf("error does not name %q:\n%s", want, out)
		}
	}
	if got := a.mustCLI("policy", "get"); got != revBefore {
		t.Errorf("policy changed:\nbefore:\n%s\nafter:\n%s", revBefore, got)
	}
	expectTCP(t, app2, addr(app1, 80), true)
}

// TestPrivilegedRestart kills the agent with SIGKILL while traffic flows:
// enforcement continues without it, and on restart it has what it had.
func TestPrivilegedRestart(t *testing.T) {
	a := startAgent(t)
	app1 := a.addEndpoint("app1", "id=app1")
	app2 := a.addEndpoint("app2", "id=app2")
	app3 := a.addEndpoint("app3", "id=app3")
	serveTCP(t, app1.NS, 80)
	a.importPolicy("l3.json", l3l4JSON)
	a.importPolicy("cidr.yaml", `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: app3-out}
spec:
  endpointSelector: {matchLabels: {id: app3}}
  egress:
  - toCIDRSet: [{cidr: 198.18.0.0/16, except: [198.18.7.0/24]}]
`)
	listBefore := a.mustCLI("endpoint", "list")
	policyBefore := a.mustCLI("policy", "get", "-o", "json")
	mapBefore := a.mustCLI("bpf", "policy", "get", fmt.Sprint(app3.ID))
	ipcacheBefore := a.mustCLI("bpf", "ipcache", "list")

	conn, err := dialNS(app2.NS, addr(app1, 80))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echo := func() error {
		conn.SetDeadline(time.Now().Add(time.Second))
		if _, err := conn.Write([]byte("abcd")); err != nil {
			return err
		}
		buf := make([]byte, 4)
		_, err := conn.Read(buf)
		return err
	}
	if err := echo(); err != nil {
		t.Fatal(err)
	}
	a.kill()
	// Without an agent: the established connection works, new allowed
	// connections work, denied traffic stays denied.
	for i := 0; i < 3; i++ {
		if err := echo(); err != nil {
			t.Fatalf("established connection while the agent is down: %v", err)
		}
	}
	expectTCP(t, app2, addr(app1, 80), true)
	expectTCP(t, app3, addr(app1, 80), false)

	a.start()
	if got := a.mustCLI("endpoint", "list"); got != listBefore {
		t.Errorf("endpoint list after restart:\n%s\nbefore:\n%s", got, listBefore)
	}
	if got := a.mustCLI("policy", "get", "-o", "json"); got != policyBefore {
		t.Errorf("policy get after restart:\n%s\nbefore:\n%s", got, policyBefore)
	}
	// CIDR identities keep their numbers: the kernel's maps are unchanged.
	if got := a.mustCLI("bpf", "policy", "get", fmt.Sprint(app3.ID)); got != mapBefore {
		t.Errorf("policy map after restart:\n%s\nbefore:\n%s", got, mapBefore)
	}
	if got := a.mustCLI("bpf", "ipcache", "list"); got != ipcacheBefore {
		t.Errorf("ipcache after restart:\n%s\nbefore:\n%s", got, ipcacheBefore)
	}
	if err := echo(); err != nil {
		t.Fatalf("established connection after restart: %v", err)
	}
	expectTCP(t, app2, addr(app1, 80), true)
	expectTCP(t, app3, addr(app1, 80), false)
	// The restarted agent manages what it found.
	a.mustCLI("policy", "delete", "l3")
	a.mustCLI("policy", "delete", "app3-out")
	expectTCP(t, app3, addr(app1, 80), true)
	a.mustCLI("endpoint", "delete", fmt.Sprint(app3.ID))
	if linkExists(app3.Interface) || len(pinsOf(a, app3.ID)) != 0 {
		t.Error("endpoint restored after restart left things behind on delete")
	}
}

func dialNS(ns, to string) (net.Conn, error) {
	return dialTimeoutNS(ns, to, time.Second)
}
