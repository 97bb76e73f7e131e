package docker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/membrane-net/membrane/pkg/agent"
	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/endpoint"
	"github.com/membrane-net/membrane/pkg/ipam"
	"github.com/membrane-net/membrane/pkg/labels"
)

// fakeAgent keeps endpoints in memory, as the agent's methods would.
type fakeAgent struct {
	mu       sync.Mutex
	pool     *ipam.Pool
	eps      map[uint32]*api.Endpoint
	next     uint32
	released []netip.Addr
	prepared []agent.PrepareRequest
}

func newFakeAgent(t *testing.T) *fakeAgent {
	p, err := ipam.New(netip.MustParsePrefix("10.9.0.0/24"))
	if err != nil {
		t.Fatal(err)
	}
	return &fakeAgent{pool: p, eps: map[uint32]*api.Endpoint{}, next: 1}
}

func notFound(id uint32) error { return api.Errorf(http.StatusNotFound, "endpoint %d: not found", id) }

func (f *fakeAgent) PrepareEndpoint(ctx context.Context, req agent.PrepareRequest) (*api.Endpoint, string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prepared = append(f.prepared, req)
	id := f.next
	f.next++
	ep := &api.Endpoint{Endpoint: endpoint.Endpoint{
		ID: id, Name: req.Name, ContainerID: req.ContainerID, Labels: req.Labels, IPv4: req.IPv4,
		Interface: endpoint.HostIfName("test", req.Name, id), MAC: "02:00:00:00:00:01", Identity: 5, Created: time.Now(),
	}, State: "ready"}
	f.eps[id] = ep
	out := *ep
	return &out, "tmp" + ep.Interface[3:], nil
}

func (f *fakeAgent) SetEndpointNetns(id uint32, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	ep, ok := f.eps[id]
	if !ok {
		return notFound(id)
	}
	ep.Netns = path
	return nil
}

func (f *fakeAgent) UpdateEndpoint(ctx context.Context, id uint32, upd api.EndpointUpdate) (*api.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ep, ok := f.eps[id]
	if !ok {
		return nil, notFound(id)
	}
	ls, err := labels.ParseList(upd.Labels, labels.SourceUnspec)
	if err != nil {
		return nil, err
	}
	ep.Labels, ep.Identity = ls, 256
	out := *ep
	return &out, nil
}

func (f *fakeAgent) DeleteEndpoint(ctx context.Context, id uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	ep, ok := f.eps[id]
	if !ok {
		return notFound(id)
	}
	f.pool.Release(ep.IPv4)
	delete(f.eps, id)
	return nil
}

func (f *fakeAgent) ListEndpoints(ctx context.Context) []api.Endpoint {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := []api.Endpoint{}
	for i := uint32(0); i < f.next; i++ {
		if ep, ok := f.eps[i]; ok {
			out = append(out, *ep)
		}
	}
	return out
}

func (f *fakeAgent) AllocateAddress(owner string) (netip.Addr, error) { return f.pool.Allocate(owner) }
func (f *fakeAgent) ReserveAddress(a netip.Addr, owner string) error  { return f.pool.Reserve(a, owner) }
func (f *fakeAgent) ReleaseAddress(a netip.Addr) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.released = append(f.released, a)
	f.pool.Release(a)
}
func (f *fakeAgent) Pool() (netip.Prefix, netip.Addr) { return f.pool.Prefix(), f.pool.Gateway() }

func (f *fakeAgent) get(id uint32) *api.Endpoint {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ep, ok := f.eps[id]; ok {
		out := *ep
		return &out
	}
	return nil
}

// fakeEngine is a Docker engine with networks and containers in memory.
type fakeEngine struct {
	mu          sync.Mutex
	down        bool
	nets        map[string]*Network
	containers  map[string]*Container
	reconnected []string
}

func newFakeEngine() *fakeEngine {
	return &fakeEngine{nets: map[string]*Network{}, containers: map[string]*Container{}}
}

var errDown = errors.New("connection refused")

func (e *fakeEngine) Ping(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.down {
		return errDown
	}
	return nil
}

func (e *fakeEngine) Networks(ctx context.Context, driver string) ([]Network, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.down {
		return nil, errDown
	}
	var out []Network
	for _, n := range e.nets {
		if n.Driver == driver {
			out = append(out, *n)
		}
	}
	return out, nil
}

func (e *fakeEngine) Network(ctx context.Context, id string) (*Network, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n, ok := e.nets[id]; ok {
		cp := *n
		return &cp, nil
	}
	return nil, ErrNoSuchObject
}

func (e *fakeEngine) Container(ctx context.Context, id string) (*Container, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.containers[id]; ok {
		return c, nil
	}
	return nil, ErrNoSuchObject
}

func (e *fakeEngine) Reconnect(ctx context.Context, nid, cid, ip string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reconnected = append(e.reconnected, cid+"@"+ip)
	return nil
}

func (e *fakeEngine) Events(ctx context.Context, fn func(Event)) error {
	<-ctx.Done()
	return nil
}

func (e *fakeEngine) attach(nid, eid, cid string, lbls map[string]string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n, ok := e.nets[nid]
	if !ok {
		n = &Network{ID: nid, Name: "net-" + nid, Driver: "membrane", Attachments: map[string]Attachment{}}
		e.nets[nid] = n
	}
	n.Attachments[eid] = Attachment{EndpointID: eid, ContainerID: cid, Name: cid, IPv4: "10.9.0.77/24"}
	if cid != "" {
		e.containers[cid] = &Container{ID: cid, Name: cid, Labels: lbls}
	}
}

func newTestPlugin(t *testing.T, a Agent, e Engine) *Plugin {
	t.Helper()
	p, err := New(Config{Socket: filepath.Join(t.TempDir(), "membrane.sock"), LabelTimeout: 5 * time.Second}, a, e,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// call sends one request of the plugin protocol.
func call(t *testing.T, p *Plugin, method string, req any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(req)
	if req == nil {
		b = nil
	}
	rec := httptest.NewRecorder()
	p.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/"+method, strings.NewReader(string(b))))
	var out map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s: reply %q: %v", method, rec.Body.String(), err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != mimeType {
		t.Errorf("%s: content type %q", method, ct)
	}
	return rec.Code, out
}

func mustCall(t *testing.T, p *Plugin, method string, req any) map[string]any {
	t.Helper()
	code, out := call(t, p, method, req)
	if code != http.StatusOK {
		t.Fatalf("%s: %d %v", method, code, out)
	}
	return out
}

func wantErr(t *testing.T, p *Plugin, method string, req any, contains string) {
	t.Helper()
	code, out := call(t, p, method, req)
	if code == http.StatusOK {
		t.Fatalf("%s succeeded: %v", method, out)
	}
	// Network drivers read Err, IPAM drivers Error.
	if msg, _ := out["Err"].(string); !strings.Contains(msg, contains) || out["Error"] != out["Err"] {
		t.Errorf("%s: error %v, want it to say %q", method, out, contains)
	}
}

func TestActivateAndCapabilities(t *testing.T) {
	p := newTestPlugin(t, newFakeAgent(t), newFakeEngine())
	out := mustCall(t, p, "Plugin.Activate", nil)
	if fmt.Sprint(out["Implements"]) != "[NetworkDriver IpamDriver]" {
		t.Errorf("Implements %v", out["Implements"])
	}
	if out := mustCall(t, p, "NetworkDriver.GetCapabilities", nil); out["Scope"] != "local" || out["ConnectivityScope"] != "local" {
		t.Errorf("capabilities %v", out)
	}
	if p.Name() != "membrane" {
		t.Errorf("driver name %q", p.Name())
	}
	code, _ := call(t, p, "NetworkDriver.Unknown", map[string]string{})
	if code != http.StatusNotFound {
		t.Errorf("unknown method: %d, want 404 (libnetwork treats it as not implemented)", code)
	}
}

func TestIPAM(t *testing.T) {
	fa := newFakeAgent(t)
	p := newTestPlugin(t, fa, newFakeEngine())
	pool := mustCall(t, p, "IpamDriver.RequestPool", map[string]any{"AddressSpace": "membrane"})
	if pool["Pool"] != "10.9.0.0/24" || pool["PoolID"] != "membrane-10.9.0.0/24" {
		t.Fatalf("pool %v", pool)
	}
	if gw := pool["Data"].(map[string]any)[gatewayOption]; gw != "10.9.0.1/24" {
		t.Errorf("pool gateway %v", gw)
	}
	mustCall(t, p, "IpamDriver.RequestPool", map[string]any{"Pool": "10.9.0.0/24"})
	wantErr(t, p, "IpamDriver.RequestPool", map[string]any{"Pool": "172.18.0.0/16"}, "the agent's pool is 10.9.0.0/24")
	wantErr(t, p, "IpamDriver.RequestPool", map[string]any{"V6": true}, "IPv6")
	wantErr(t, p, "IpamDriver.RequestPool", map[string]any{"SubPool": "10.9.0.128/25"}, "--ip-range")

	id := "membrane-10.9.0.0/24"
	gw := mustCall(t, p, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Options": map[string]string{requestTypeOpt: gatewayOption}})
	if gw["Address"] != "10.9.0.1/24" {
		t.Errorf("gateway %v", gw)
	}
	wantErr(t, p, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "10.9.0.9", "Options": map[string]string{requestTypeOpt: gatewayOption}}, "gateway")
	a1 := mustCall(t, p, "IpamDriver.RequestAddress", map[string]any{"PoolID": id})
	if a1["Address"] != "10.9.0.2/24" {
		t.Errorf("first address %v", a1)
	}
	if a := mustCall(t, p, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "10.9.0.50"}); a["Address"] != "10.9.0.50/24" {
		t.Errorf("requested address %v", a)
	}
	wantErr(t, p, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "10.9.0.50"}, "in use")
	wantErr(t, p, "IpamDriver.RequestAddress", map[string]any{"PoolID": id, "Address": "192.168.1.1"}, "outside")
	wantErr(t, p, "IpamDriver.RequestAddress", map[string]any{"PoolID": "other"}, "unknown pool")

	mustCall(t, p, "IpamDriver.ReleaseAddress", map[string]any{"PoolID": id, "Address": "10.9.0.1"})
	mustCall(t, p, "IpamDriver.ReleaseAddress", map[string]any{"PoolID": id, "Address": "10.9.0.50"})
	if fmt.Sprint(fa.released) != "[10.9.0.50]" {
		t.Errorf("released %v: the gateway is never released", fa.released)
	}
	if _, taken := fa.pool.Owner(netip.MustParseAddr("10.9.0.50")); taken {
		t.Error("10.9.0.50 still taken")
	}
}

func TestCreateNetwork(t *testing.T) {
	p := newTestPlugin(t, newFakeAgent(t), newFakeEngine())
	ok := map[string]any{"NetworkID": "n1", "IPv4Data": []map[string]any{{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.1/24"}}}
	mustCall(t, p, "NetworkDriver.CreateNetwork", ok)
	for _, tc := range []struct {
		name string
		req  map[string]any
		want string
	}{
		{"default IPAM", map[string]any{"NetworkID": "n2", "IPv4Data": []map[string]any{{"Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}}}, "--ipam-driver membrane"},
		{"other gateway", map[string]any{"NetworkID": "n3", "IPv4Data": []map[string]any{{"Pool": "10.9.0.0/24", "Gateway": "10.9.0.254/24"}}}, "host address 10.9.0.1"},
		{"IPv6", map[string]any{"NetworkID": "n4", "IPv4Data": ok["IPv4Data"], "IPv6Data": []map[string]any{{"Pool": "fd00::/64"}}}, "IPv6"},
		{"no pool", map[string]any{"NetworkID": "n5"}, "want one IPv4 pool"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, p, "NetworkDriver.CreateNetwork", tc.req, tc.want)
		})
	}
	wantErr(t, p, "NetworkDriver.AllocateNetwork", map[string]any{"NetworkID": "n1"}, "swarm")
}

func TestEndpointLifecycle(t *testing.T) {
	fa, fe := newFakeAgent(t), newFakeEngine()
	p := newTestPlugin(t, fa, fe)
	nid, eid := strings.Repeat("a", 64), strings.Repeat("b", 64)
	addr := mustCall(t, p, "IpamDriver.RequestAddress", map[string]any{"PoolID": p.poolID()})["Address"].(string)

	req := map[string]any{"NetworkID": nid, "EndpointID": eid, "Interface": map[string]string{"Address": addr}}
	out := mustCall(t, p, "NetworkDriver.CreateEndpoint", req)
	if mac := out["Interface"].(map[string]any)["MacAddress"]; mac != "02:00:00:00:00:01" {
		t.Errorf("MAC %v: libnetwork must give the peer the MAC the agent's neighbour entry has", mac)
	}
	if len(fa.prepared) != 1 {
		t.Fatalf("prepared %d endpoints", len(fa.prepared))
	}
	pr := fa.prepared[0]
	if pr.Labels.String() != "reserved:init" || pr.ContainerID != "docker:"+nid+":"+eid || pr.IPv4.String()+"/24" != addr ||
		!pr.AddressAllocated || pr.Name != "docker-bbbbbbbbbbbb" {
		t.Errorf("prepare request %+v", pr)
	}
	// libnetwork retries: the same endpoint.
	mustCall(t, p, "NetworkDriver.CreateEndpoint", req)
	if len(fa.prepared) != 1 {
		t.Errorf("a retried CreateEndpoint made another endpoint")
	}
	// Another Docker endpoint cannot take the address.
	wantErr(t, p, "NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": "other", "Interface": map[string]string{"Address": addr}}, "held by endpoint 1")
	wantErr(t, p, "NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": "mac", "Interface": map[string]string{"Address": "10.9.0.40/24", "MacAddress": "02:00:00:00:00:09"}}, "--mac-address")
	wantErr(t, p, "NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": "noaddr", "Interface": map[string]string{}}, "--ipam-driver")

	fe.attach(nid, eid, "c1", map[string]string{"id": "app1", "bad,key": "x", "with": "comma,value"})
	join := mustCall(t, p, "NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid, "SandboxKey": "/var/run/docker/netns/abc"})
	ep := fa.get(1)
	if name := join["InterfaceName"].(map[string]any); name["SrcName"] != "tmp"+ep.Interface[3:] || name["DstPrefix"] != "eth" {
		t.Errorf("interface names %v", name)
	}
	if join["Gateway"] != "10.9.0.1" || join["DisableGatewayService"] != true {
		t.Errorf("join %v: the gateway is the host's address, and no docker_gwbridge", join)
	}
	if ep.Netns != "/var/run/docker/netns/abc" {
		t.Errorf("netns %q", ep.Netns)
	}
	// The container's labels arrive in the background.
	for deadline := time.Now().Add(5 * time.Second); fa.get(1).Labels.String() != "container:id=app1"; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("labels %s, want container:id=app1", fa.get(1).Labels)
		}
	}
	info := mustCall(t, p, "NetworkDriver.EndpointOperInfo", map[string]any{"NetworkID": nid, "EndpointID": eid})
	if v := info["Value"].(map[string]any); v["membrane.endpoint"] != float64(1) {
		t.Errorf("oper info %v", info)
	}
	mustCall(t, p, "NetworkDriver.Leave", map[string]any{"NetworkID": nid, "EndpointID": eid})
	mustCall(t, p, "NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid})
	if fa.get(1) != nil {
		t.Error("endpoint not deleted")
	}
	// Gone already: success.
	mustCall(t, p, "NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": nid, "EndpointID": eid})
	mustCall(t, p, "NetworkDriver.Leave", map[string]any{"NetworkID": nid, "EndpointID": eid})
	wantErr(t, p, "NetworkDriver.Join", map[string]any{"NetworkID": nid, "EndpointID": eid}, "no membrane endpoint")
}

func TestDeleteNetworkRemovesItsEndpoints(t *testing.T) {
	fa := newFakeAgent(t)
	p := newTestPlugin(t, fa, newFakeEngine())
	for i, nid := range []string{"n1", "n1", "n2"} {
		mustCall(t, p, "NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": nid, "EndpointID": fmt.Sprint("e", i),
			"Interface": map[string]string{"Address": fmt.Sprintf("10.9.0.%d/24", 10+i)}})
	}
	mustCall(t, p, "NetworkDriver.DeleteNetwork", map[string]any{"NetworkID": "n1"})
	if eps := fa.ListEndpoints(context.Background()); len(eps) != 1 || eps[0].ContainerID != "docker:n2:e2" {
		t.Errorf("left %+v", eps)
	}
}

func TestReconcile(t *testing.T) {
	fa, fe := newFakeAgent(t), newFakeEngine()
	// Made by an earlier agent: before this plugin started.
	old := time.Now().Add(-time.Hour)
	mk := func(nid, eid string, created time.Time, lbls string) uint32 {
		ep, _, _ := fa.PrepareEndpoint(context.Background(), agent.PrepareRequest{
			Name: "docker-" + eid, ContainerID: "docker:" + nid + ":" + eid, Labels: labels.Labels{{Source: "reserved", Key: "init"}},
			IPv4: netip.MustParseAddr("10.9.0.3"),
		})
		fa.mu.Lock()
		fa.eps[ep.ID].Created = created
		if lbls != "" {
			fa.eps[ep.ID].Labels, _ = labels.Parse(lbls, "container")
		}
		fa.mu.Unlock()
		return ep.ID
	}
	live := mk("n1", "live", old, "")
	gone := mk("n1", "gone", old, "id=x")
	other, _ := fa.AllocateAddress("other") // not a docker endpoint: untouched
	_ = other
	fa.mu.Lock()
	fa.eps[99] = &api.Endpoint{Endpoint: endpoint.Endpoint{ID: 99, Name: "cli", Created: old}}
	fa.next = 100
	fa.mu.Unlock()
	fe.attach("n1", "live", "c-live", map[string]string{"id": "live"})
	fe.attach("n1", "noendpoint", "c-orphan", nil)
	fe.attach("n1", "unjoined", "", nil)

	p := newTestPlugin(t, fa, fe)
	fresh := mk("n1", "fresh", time.Now(), "id=fresh") // made after the start: grace

	fe.mu.Lock()
	fe.down = true
	fe.mu.Unlock()
	if err := p.Reconcile(context.Background()); err == nil {
		t.Error("reconcile with Docker down succeeded")
	}
	if fa.get(gone) == nil {
		t.Fatal("an endpoint was deleted while Docker could not be asked")
	}
	fe.mu.Lock()
	fe.down = false
	fe.mu.Unlock()

	if err := p.Reconcile(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fa.get(gone) != nil {
		t.Error("the endpoint of a Docker endpoint that is gone is still there")
	}
	if fa.get(fresh) == nil || fa.get(99) == nil || fa.get(live) == nil {
		t.Error("reconcile deleted an endpoint it should keep")
	}
	if fmt.Sprint(fe.reconnected) != "[c-orphan@10.9.0.77]" {
		t.Errorf("reconnected %v, want the container without an endpoint, with its address", fe.reconnected)
	}
	for deadline := time.Now().Add(5 * time.Second); fa.get(live).Labels.String() != "container:id=live"; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the live endpoint kept labels %s", fa.get(live).Labels)
		}
	}
}

func TestContainerLabels(t *testing.T) {
	got, skipped := ContainerLabels(map[string]string{
		"id": "app1", "com.example.team": "web", "flag": "", "a:b": "x", "v": "1,2",
	})
	if fmt.Sprint(got) != "[container:com.example.team=web container:flag container:id=app1]" {
		t.Errorf("labels %v", got)
	}
	if fmt.Sprint(skipped) != "[a:b v]" {
		t.Errorf("skipped %v", skipped)
	}
	if got, _ := ContainerLabels(nil); got == nil || len(got) != 0 {
		t.Errorf("no labels: %#v, want an empty list (the container has no labels)", got)
	}
}

func TestRefs(t *testing.T) {
	r := ref{"net", "ep"}
	got, ok := parseRef(r.String())
	if !ok || got != r {
		t.Errorf("round trip %v", got)
	}
	for _, s := range []string{"", "docker:", "docker:net", "docker::ep", "cni:net:ep"} {
		if _, ok := parseRef(s); ok {
			t.Errorf("parseRef(%q) accepted", s)
		}
	}
	if peerName("lxc0123456789a") != "tmp0123456789a" {
		t.Error("peer name")
	}
}

func TestNewRejectsLiveSocket(t *testing.T) {
	fa := newFakeAgent(t)
	sock := filepath.Join(t.TempDir(), "x.sock")
	p, err := New(Config{Socket: sock}, fa, newFakeEngine(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	time.Sleep(50 * time.Millisecond)
	if _, err := New(Config{Socket: sock}, fa, newFakeEngine(), slog.New(slog.NewTextHandler(io.Discard, nil))); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("second plugin on a live socket: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
}
