package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/endpoint"
	"github.com/membrane-net/membrane/pkg/labels"
)

// fakeAgent answers like the agent's API client.
type fakeAgent struct {
	mu      sync.Mutex
	down    bool
	healthy bool
	// noReserved: reject reserved labels with 400, as the agent's API does.
	noReserved bool
	// dieOnAdd: make the endpoint, then fail as a dropped connection.
	dieOnAdd bool
	eps      map[uint32]*api.Endpoint
	next     uint32
	requests []api.EndpointRequest
}

func newFakeAgent() *fakeAgent {
	return &fakeAgent{healthy: true, eps: map[uint32]*api.Endpoint{}, next: 1}
}

var errConn = fmt.Errorf("%w (no agent listens on /x.sock; start one with `membrane agent`)", api.ErrAgentNotRunning)

func (f *fakeAgent) Status(ctx context.Context) (*api.Status, error) {
	if f.down {
		return nil, errConn
	}
	st := &api.Status{Healthy: f.healthy}
	if !f.healthy {
		st.Parts = []api.Part{{Name: "datapath", State: "maps unreadable"}}
	}
	return st, nil
}

func (f *fakeAgent) AddEndpoint(ctx context.Context, req api.EndpointRequest) (*api.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, req)
	if f.down {
		return nil, errConn
	}
	ls, err := labels.ParseList(req.Labels, labels.SourceUnspec)
	if err != nil {
		return nil, &api.APIError{Code: http.StatusBadRequest, Message: err.Error()}
	}
	for _, l := range ls {
		if f.noReserved && l.Source == labels.SourceReserved {
			return nil, &api.APIError{Code: http.StatusBadRequest, Message: "labels: reserved:init: source reserved is Membrane's own"}
		}
	}
	id := f.next
	f.next++
	ep := &api.Endpoint{Endpoint: endpoint.Endpoint{
		ID: id, Name: req.Name, Netns: req.Netns, ContainerID: req.ContainerID, ContainerInterface: req.Interface,
		Labels: ls, IPv4: netip.AddrFrom4([4]byte{10, 9, 0, byte(id + 1)}), Interface: endpoint.HostIfName("test", req.Name, id),
		MAC: "02:00:00:00:00:02",
	}, State: "ready"}
	f.eps[id] = ep
	if f.dieOnAdd {
		f.down = true
		return nil, errors.New("Post \"http://membrane/v1/endpoints\": EOF")
	}
	out := *ep
	return &out, nil
}

func (f *fakeAgent) ListEndpoints(ctx context.Context) ([]api.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errConn
	}
	out := []api.Endpoint{}
	for i := uint32(0); i < f.next; i++ {
		if ep, ok := f.eps[i]; ok {
			out = append(out, *ep)
		}
	}
	return out, nil
}

func (f *fakeAgent) UpdateEndpoint(ctx context.Context, id uint32, upd api.EndpointUpdate) (*api.Endpoint, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ep, ok := f.eps[id]
	if !ok {
		return nil, &api.APIError{Code: http.StatusNotFound, Message: "not found"}
	}
	ep.Labels, _ = labels.ParseList(upd.Labels, labels.SourceUnspec)
	out := *ep
	return &out, nil
}

func (f *fakeAgent) DeleteEndpoint(ctx context.Context, id uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errConn
	}
	if _, ok := f.eps[id]; !ok {
		return &api.APIError{Code: http.StatusNotFound, Message: "not found"}
	}
	delete(f.eps, id)
	return nil
}

type harness struct {
	p       *Plugin
	agent   *fakeAgent
	out     *bytes.Buffer
	podman  bool
	spawned []Job
	spawnFn func(Job) error
	checked []string
}

func newHarness() *harness {
	h := &harness{agent: newFakeAgent(), out: &bytes.Buffer{}}
	h.p = &Plugin{
		Stdout:   h.out,
		Log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		Agent:    func(string) Agent { return h.agent },
		PodmanUp: func(string) bool { return h.podman },
		Spawn: func(j Job, _ string) error {
			h.spawned = append(h.spawned, j)
			if h.spawnFn != nil {
				return h.spawnFn(j)
			}
			return nil
		},
		CheckNetns: func(netns, ifName string, addr netip.Addr) error {
			h.checked = append(h.checked, fmt.Sprintf("%s %s %s", netns, ifName, addr))
			return nil
		},
	}
	return h
}

func args(cid, conf string, extra string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: cid, Netns: "/var/run/netns/" + cid, IfName: "eth0", Args: extra, StdinData: []byte(conf)}
}

func conf(version string, extra string) string {
	return fmt.Sprintf(`{"cniVersion": %q, "name": "net", "type": "membrane-cni", "socket": "/x.sock"%s}`, version, extra)
}

func cniCode(err error) uint {
	var e *types.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

func TestAddResultAcrossVersions(t *testing.T) {
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			h := newHarness()
			err := h.p.Add(args("c1", conf(v, `, "podmanSocket": "", "args": {"labels": {"id": "app1"}}`), "IgnoreUnknown=1;K8S_POD_NAME=web-0;K8S_POD_NAMESPACE=shop"))
			if err != nil {
				t.Fatal(err)
			}
			var res map[string]any
			if err := json.Unmarshal(h.out.Bytes(), &res); err != nil {
				t.Fatalf("result %q: %v", h.out, err)
			}
			if res["cniVersion"] != v {
				t.Errorf("cniVersion %v", res["cniVersion"])
			}
			ips := res["ips"].([]any)
			ip := ips[0].(map[string]any)
			if ip["address"] != "10.9.0.2/32" || ip["gateway"] != "169.254.1.1" || ip["interface"] != float64(1) {
				t.Errorf("ips %v", ips)
			}
			ifs := res["interfaces"].([]any)
			if c := ifs[1].(map[string]any); c["name"] != "eth0" || c["sandbox"] != "/var/run/netns/c1" || c["mac"] != "02:00:00:00:00:02" {
				t.Errorf("interfaces %v", ifs)
			}
			if r := res["routes"].([]any)[0].(map[string]any); r["dst"] != "0.0.0.0/0" || r["gw"] != "169.254.1.1" {
				t.Errorf("routes %v", res["routes"])
			}
			req := h.agent.requests[0]
			if req.Netns != "/var/run/netns/c1" || req.Interface != "eth0" || req.ContainerID != "cni:net:c1" || req.Name != "shop/web-0" ||
				fmt.Sprint(req.Labels) != "[container:id=app1 k8s:io.kubernetes.pod.namespace=shop]" {
				t.Errorf("request %+v", req)
			}
		})
	}
}

func TestAddWaitsForPodmanLabels(t *testing.T) {
	h := newHarness()
	h.podman = true
	h.agent.noReserved = true
	if err := h.p.Add(args("c1", conf("1.0.0", `, "args": {"labels": {"team": "a"}}`), "K8S_POD_NAME=app1")); err != nil {
		t.Fatal(err)
	}
	// reserved:init first; an agent that takes no reserved label from its
	// API gets the pending labels.
	if len(h.agent.requests) != 2 || fmt.Sprint(h.agent.requests[0].Labels) != "[reserved:init]" ||
		fmt.Sprint(h.agent.requests[1].Labels) != fmt.Sprint(PendingLabels) {
		t.Errorf("requests %+v", h.agent.requests)
	}
	if len(h.spawned) != 1 || fmt.Sprint(h.spawned[0].Base) != "[container:team=a]" || h.spawned[0].Ref != "cni:net:c1" ||
		h.spawned[0].ContainerID != "c1" || h.spawned[0].Podman != DefaultPodmanSocket {
		t.Errorf("jobs %+v", h.spawned)
	}
	// The agent that takes reserved:init gets it.
	h2 := newHarness()
	h2.podman = true
	if err := h2.p.Add(args("c2", conf("1.0.0", ""), "")); err != nil {
		t.Fatal(err)
	}
	if len(h2.agent.requests) != 1 || fmt.Sprint(h2.agent.requests[0].Labels) != "[reserved:init]" {
		t.Errorf("requests %+v", h2.agent.requests)
	}
}

func TestAddRollsBack(t *testing.T) {
	h := newHarness()
	h.podman = true
	h.spawnFn = func(Job) error { return errors.New("fork failed") }
	err := h.p.Add(args("c1", conf("1.0.0", ""), ""))
	if err == nil || !strings.Contains(err.Error(), "fork failed") {
		t.Fatalf("error %v", err)
	}
	if eps, _ := h.agent.ListEndpoints(context.Background()); len(eps) != 0 {
		t.Errorf("endpoints left: %+v", eps)
	}
	if h.out.Len() != 0 {
		t.Errorf("printed a result on failure: %s", h.out)
	}

	// The result cannot be written.
	h = newHarness()
	h.p.Stdout = failWriter{}
	err = h.p.Add(args("c1", conf("1.0.0", `, "podmanSocket": ""`), ""))
	if cniCode(err) != types.ErrIOFailure {
		t.Fatalf("ADD with a broken stdout: %v", err)
	}
	if eps, _ := h.agent.ListEndpoints(context.Background()); len(eps) != 0 {
		t.Errorf("endpoints left: %+v", eps)
	}

	// The agent dies answering: what it made is taken back once it is
	// reachable; here it is not, so the error says try again.
	h = newHarness()
	h.agent.dieOnAdd = true
	err = h.p.Add(args("c1", conf("1.0.0", `, "podmanSocket": ""`), ""))
	if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "/x.sock") {
		t.Errorf("error %v (code %d), want 11 naming the socket", err, cniCode(err))
	}
}

func TestAddReplacesAnAttachmentLeftBehind(t *testing.T) {
	h := newHarness()
	c := conf("1.0.0", `, "podmanSocket": ""`)
	if err := h.p.Add(args("c1", c, "K8S_POD_NAME=app")); err != nil {
		t.Fatal(err)
	}
	if err := h.p.Add(args("c1", c, "K8S_POD_NAME=app")); err != nil {
		t.Fatal(err)
	}
	eps, _ := h.agent.ListEndpoints(context.Background())
	if len(eps) != 1 || eps[0].ID != 2 || eps[0].Name != "app" {
		t.Errorf("endpoints %+v", eps)
	}
	// Another container with the same pod name gets a name of its own.
	if err := h.p.Add(args("c2c2c2c2c2c2c2", c, "K8S_POD_NAME=app")); err != nil {
		t.Fatal(err)
	}
	if req := h.agent.requests[len(h.agent.requests)-1]; req.Name != "app-c2c2c2c2c2c2" {
		t.Errorf("name %q", req.Name)
	}
}

func TestAgentDown(t *testing.T) {
	h := newHarness()
	h.agent.down = true
	c := conf("1.1.0", `, "podmanSocket": ""`)
	for name, fn := range map[string]func(*skel.CmdArgs) error{"ADD": h.p.Add, "DEL": h.p.Del, "CHECK": h.p.Check, "GC": h.p.GC} {
		err := fn(args("c1", c, ""))
		if cniCode(err) != types.ErrTryAgainLater || !strings.Contains(err.Error(), "/x.sock") {
			t.Errorf("%s: %v (code %d), want 11 naming the socket", name, err, cniCode(err))
		}
	}
	if err := h.p.Status(args("", c, "")); cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "/x.sock") {
		t.Errorf("STATUS: %v", err)
	}
}

func TestStatus(t *testing.T) {
	h := newHarness()
	c := conf("1.1.0", "")
	if err := h.p.Status(args("", c, "")); err != nil {
		t.Errorf("healthy: %v", err)
	}
	h.agent.healthy = false
	if err := h.p.Status(args("", c, "")); cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "maps unreadable") {
		t.Errorf("unhealthy: %v", err)
	}
}

func TestDelIsIdempotent(t *testing.T) {
	h := newHarness()
	c := conf("1.0.0", `, "podmanSocket": ""`)
	if err := h.p.Add(args("c1", c, "")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := h.p.Del(args("c1", c, "")); err != nil {
			t.Fatalf("DEL %d: %v", i, err)
		}
	}
	if eps, _ := h.agent.ListEndpoints(context.Background()); len(eps) != 0 {
		t.Errorf("left %+v", eps)
	}
	// DEL without a netns (the runtime lost it) is fine too.
	if err := h.p.Del(&skel.CmdArgs{ContainerID: "zz", IfName: "eth0", StdinData: []byte(c)}); err != nil {
		t.Error(err)
	}
}

func TestCheck(t *testing.T) {
	h := newHarness()
	c := conf("1.0.0", `, "podmanSocket": ""`)
	if err := h.p.Check(args("c1", c, "")); cniCode(err) != types.ErrUnknownContainer {
		t.Errorf("CHECK of nothing: %v", err)
	}
	if err := h.p.Add(args("c1", c, "")); err != nil {
		t.Fatal(err)
	}
	prev := strings.TrimSpace(h.out.String())
	withPrev := conf("1.0.0", `, "podmanSocket": "", "prevResult": `+prev)
	if err := h.p.Check(args("c1", withPrev, "")); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if fmt.Sprint(h.checked) != "[/var/run/netns/c1 eth0 10.9.0.2]" {
		t.Errorf("checked %v", h.checked)
	}
	wrong := strings.Replace(prev, "10.9.0.2/32", "10.9.0.99/32", 1)
	if err := h.p.Check(args("c1", conf("1.0.0", `, "podmanSocket": "", "prevResult": `+wrong), "")); err == nil || !strings.Contains(err.Error(), "10.9.0.2") {
		t.Errorf("CHECK with a wrong prevResult: %v", err)
	}
	h.p.CheckNetns = func(string, string, netip.Addr) error { return errors.New("interface eth0 is down") }
	if err := h.p.Check(args("c1", withPrev, "")); err == nil || !strings.Contains(err.Error(), "down") {
		t.Errorf("CHECK with a broken interface: %v", err)
	}
}

func TestGC(t *testing.T) {
	h := newHarness()
	for _, a := range []struct{ network, cid string }{{"net", "keep"}, {"net", "drop"}, {"other", "drop"}} {
		c := fmt.Sprintf(`{"cniVersion": "1.1.0", "name": %q, "type": "membrane-cni", "socket": "/x.sock", "podmanSocket": ""}`, a.network)
		if err := h.p.Add(args(a.cid, c, "")); err != nil {
			t.Fatal(err)
		}
	}
	// Not made by the plugin: never collected.
	h.agent.eps[50] = &api.Endpoint{Endpoint: endpoint.Endpoint{ID: 50, Name: "cli"}}
	h.agent.eps[51] = &api.Endpoint{Endpoint: endpoint.Endpoint{ID: 51, Name: "docker-x", ContainerID: "docker:n:e"}}
	h.agent.next = 52
	gc := conf("1.1.0", `, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}, {"containerID": "drop", "ifname": "eth1"}]`)
	if err := h.p.GC(&skel.CmdArgs{StdinData: []byte(gc)}); err != nil {
		t.Fatal(err)
	}
	var left []string
	eps, _ := h.agent.ListEndpoints(context.Background())
	for _, ep := range eps {
		left = append(left, ep.ContainerID)
	}
	if fmt.Sprint(left) != "[cni:net:keep cni:other:drop  docker:n:e]" {
		t.Errorf("left %q", left)
	}
}

// TestRunJob gives the endpoint the labels a fake podman API shows once
// it answers; a container podman does not know keeps the base labels.
func TestRunJob(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "podman.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	busy := 2 // podman holds the container for the first calls
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/_ping":
			w.Write([]byte("OK"))
		case "/containers/c1/json":
			mu.Lock()
			wait := busy > 0
			busy--
			mu.Unlock()
			if wait {
				http.Error(w, "busy", http.StatusInternalServerError)
				return
			}
			w.Write([]byte(`{"Id": "c1", "Config": {"Labels": {"id": "app1", "bad key": "x"}}}`))
		default:
			http.Error(w, `{"message": "no such container"}`, http.StatusNotFound)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	pod := NewPodmanClient(sock)
	if !pod.Up() || NewPodmanClient(filepath.Join(t.TempDir(), "none.sock")).Up() {
		t.Fatal("Up")
	}

	h := newHarness()
	h.podman = true
	for _, cid := range []string{"c1", "c2"} {
		if err := h.p.Add(args(cid, conf("1.0.0", `, "args": {"labels": {"team": "a"}}`), "")); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, j := range h.spawned {
		j.Timeout = 10 * time.Second
		if err := RunJob(context.Background(), j, h.agent, pod, log); err != nil {
			t.Fatal(err)
		}
	}
	eps, _ := h.agent.ListEndpoints(context.Background())
	if got := eps[0].Labels.String(); got != "container:id=app1,container:team=a" {
		t.Errorf("c1 labels %s", got)
	}
	if got := eps[1].Labels.String(); got != "container:team=a" {
		t.Errorf("c2 (unknown to podman) labels %s", got)
	}
	// The endpoint went meanwhile: nothing to do.
	j := h.spawned[0]
	h.agent.eps = map[uint32]*api.Endpoint{}
	if err := RunJob(context.Background(), j, h.agent, pod, log); err != nil {
		t.Errorf("job for a deleted endpoint: %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }
