package conformance

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestPodLabels(t *testing.T) {
	tests := []struct {
		name string
		pod  Pod
		ns   Namespace
		want []string
	}{
		{
			name: "k8s e2e pod",
			pod:  Pod{Name: "x/a", Namespace: "x", Labels: map[string]string{"pod": "a"}},
			ns:   Namespace{Labels: map[string]string{"ns": "x", "kubernetes.io/metadata.name": "x"}},
			want: []string{
				"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=x",
				"k8s:io.cilium.k8s.namespace.labels.ns=x",
				"k8s:io.kubernetes.pod.namespace=x",
				"k8s:pod=a",
			},
		},
		{
			name: "cilium pod with derived labels (namespace given twice)",
			pod: Pod{Name: "t/client", Namespace: "t", Labels: map[string]string{"kind": "client"},
				CiliumDerivedLabels: map[string]string{"io.kubernetes.pod.namespace": "t", "io.cilium.k8s.policy.cluster": "default"}},
			want: []string{
				"k8s:io.cilium.k8s.policy.cluster=default",
				"k8s:io.kubernetes.pod.namespace=t",
				"k8s:kind=client",
			},
		},
		{
			name: "label with an empty value",
			pod:  Pod{Name: "x/e", Namespace: "x", Labels: map[string]string{"flag": ""}},
			want: []string{"k8s:flag=", "k8s:io.kubernetes.pod.namespace=x"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := PodLabels(tt.pod, tt.ns); !slices.Equal(got, tt.want) {
				t.Fatalf("got  %q\nwant %q", got, tt.want)
			}
		})
	}
}

func TestMakePlanPodCase(t *testing.T) {
	c, err := Load("testdata/cases/K900-test__two-pods.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := MakePlan(c, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Topo.Pods) != 2 || p.Topo.Pods[1].Name != "y/b" {
		t.Fatalf("pods %+v", p.Topo.Pods)
	}
	yb := p.Topo.Pods[1]
	if len(yb.Ports) != 4 || yb.Ports[3].Name != "http-8080" {
		t.Fatalf("y/b ports %+v (want the shared ports and its own)", yb.Ports)
	}
	if nps := namedPorts(yb.Ports); len(nps) != 4 || nps[0].Protocol != "SCTP" {
		t.Fatalf("named ports %+v", nps)
	}
	if want := []netip.Addr{netip.MustParseAddr("1.0.0.1"), netip.MustParseAddr("1.1.1.1")}; !slices.Equal(p.Topo.World, want) {
		t.Fatalf("world %v", p.Topo.World)
	}
	if len(p.Topo.WorldPorts) != 2 || len(p.Topo.HostAddrs) != 2 {
		t.Fatalf("world ports %v, host addresses %v", p.Topo.WorldPorts, p.Topo.HostAddrs)
	}
	if len(p.Notes) != 1 || !strings.Contains(p.Notes[0], "single node") {
		t.Fatalf("notes %q", p.Notes)
	}
	type want struct {
		skip, unsupported string
		dsts              int
		http              string
		result            string
	}
	wants := []want{
		{skip: skipHairpin, dsts: 1, result: ResultDropped},
		{dsts: 1, result: ResultAllowed},
		{dsts: 1, result: ResultDropped},
		{unsupported: noSCTP, dsts: 1, result: ResultDropped},
		{dsts: 1, http: "GET /private", result: ResultL7Denied},
		{skip: skipFQDN, dsts: 2, http: "GET /index.html", result: ResultDropped},
		{dsts: 1, http: "GET /", result: ResultDropped},
		{dsts: 1, result: ResultAllowed},
	}
	for i, w := range wants {
		pp := p.Probes[i]
		http := ""
		if pp.HTTP != nil {
			http = pp.HTTP.Method + " " + pp.HTTP.Path
		}
		if pp.Skip != w.skip || pp.Unsupported != w.unsupported || len(pp.Dsts) != w.dsts || http != w.http || pp.Want.Result != w.result {
			t.Errorf("probe %d: %+v, want %+v", i, pp, w)
		}
	}
	if p.Probes[4].Want.Status != 403 || p.Probes[4].HTTP.Headers["X-Token"] != "42" {
		t.Errorf("HTTP probe %+v", p.Probes[4])
	}
	if d := p.Probes[7].Dsts[0]; d != netip.MustParseAddr("172.18.0.3") {
		t.Errorf("node probe to %v", d)
	}
	// With SCTP in the kernel, the probe is the runner's limit.
	p2, _ := MakePlan(c, PlanOptions{SCTP: true})
	if p2.Probes[3].Unsupported != noSCTPProbe {
		t.Errorf("SCTP probe with SCTP in the kernel: %q", p2.Probes[3].Unsupported)
	}
}

func TestTopoKeyIgnoresLabels(t *testing.T) {
	a := TopoPlan{Pods: []PodPlan{{Name: "x/a", IP: netip.MustParseAddr("10.0.0.1"), Labels: []string{"k8s:a=1"}, Ports: []ServedPort{{Port: 80, Protocol: "TCP", Name: "http"}}}}}
	b := a
	b.Pods = []PodPlan{a.Pods[0]}
	b.Pods[0].Labels = []string{"k8s:a=2"}
	if a.Key() != b.Key() {
		t.Fatal("labels changed the key")
	}
	b.Pods[0].Ports = []ServedPort{{Port: 80, Protocol: "TCP", Name: "web"}}
	if a.Key() == b.Key() {
		t.Fatal("a port's name did not change the key (named ports need new endpoints)")
	}
}

func TestMakePlanIdentityCase(t *testing.T) {
	c, err := Load("testdata/cases/P900-test__identity.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := MakePlan(c, PlanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Topo.Pods) != 2 || p.Topo.Pods[0].Name != "identity/bar" || p.Topo.Pods[1].Name != "identity/foo" {
		t.Fatalf("pods %+v", p.Topo.Pods)
	}
	if !slices.Equal(p.Topo.Pods[1].Labels, []string{"blue", "foo"}) || p.Topo.Pods[1].IP.String() != defaultSubjIP {
		t.Fatalf("subject %+v", p.Topo.Pods[1])
	}
	if len(p.Topo.World) != 2 {
		t.Fatalf("world %v", p.Topo.World)
	}
	in := p.Probes[0]
	if in.Src.World != netip.MustParseAddr("203.0.113.9") || in.Dsts[0].String() != defaultSubjIP || in.Port != 80 || in.Protocol != "TCP" {
		t.Errorf("ingress probe %+v", in)
	}
	out := p.Probes[1]
	if out.Src.Pod != "identity/foo" || out.Dsts[0] != netip.MustParseAddr("192.0.2.77") || out.Want.Result != ResultAllowed {
		t.Errorf("egress probe %+v", out)
	}
	if udp := p.Probes[2]; udp.Src.Pod != "identity/foo" || udp.Dsts[0] != p.Topo.Pods[0].IP || udp.Port != 81 || udp.Protocol != "UDP" {
		t.Errorf("probe to a label identity %+v", udp)
	}
	if p.Probes[3].Unsupported == "" {
		t.Errorf("probe to reserved:host without an address: %+v", p.Probes[3])
	}
}

func TestHTTPRequestOf(t *testing.T) {
	tests := []struct {
		name string
		in   ProbeSpec
		want string
	}{
		{"defaults", ProbeSpec{}, "GET /"},
		{"path wins", ProbeSpec{Method: "POST", Path: "/a", URL: "http://h/b"}, "POST /a"},
		{"path from URL", ProbeSpec{URL: "https://one.one.one.one./index.html"}, "GET /index.html"},
		{"URL without path", ProbeSpec{URL: "http://<echo pod IP>:8080"}, "GET /"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httpRequestOf(tt.in)
			if got := r.Method + " " + r.Path; got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}
