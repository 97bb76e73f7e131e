package cni

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestLoadConf(t *testing.T) {
	for _, tc := range []struct {
		name, conf string
		check      func(t *testing.T, c *NetConf)
		wantErr    string
	}{
		{
			name: "defaults",
			conf: `{"cniVersion": "1.0.0", "name": "net", "type": "membrane-cni"}`,
			check: func(t *testing.T, c *NetConf) {
				if c.Socket != "/run/membrane/membrane.sock" || *c.PodmanSocket != DefaultPodmanSocket || c.labelTimeout != DefaultLabelTimeout {
					t.Errorf("defaults: socket %q podman %q timeout %s", c.Socket, *c.PodmanSocket, c.labelTimeout)
				}
			},
		},
		{
			name: "podman off, timeout",
			conf: `{"cniVersion": "1.0.0", "name": "net", "type": "membrane-cni", "socket": "/tmp/a.sock", "podmanSocket": "", "labelTimeout": "30s"}`,
			check: func(t *testing.T, c *NetConf) {
				if c.Socket != "/tmp/a.sock" || *c.PodmanSocket != "" || c.labelTimeout != 30*time.Second {
					t.Errorf("got socket %q podman %q timeout %s", c.Socket, *c.PodmanSocket, c.labelTimeout)
				}
			},
		},
		{
			name: "labels as a map and as CNI's list",
			conf: `{"cniVersion": "1.0.0", "name": "net", "type": "membrane-cni",
			        "args": {"labels": {"id": "app1", "k8s:app": "web"}, "cni": {"labels": [{"key": "team", "value": "blue"}]}}}`,
			check: func(t *testing.T, c *NetConf) {
				ls, err := BaseLabels(c, RuntimeArgs{})
				if err != nil {
					t.Fatal(err)
				}
				if fmt.Sprint(ls) != "[container:id=app1 container:team=blue k8s:app=web]" {
					t.Errorf("labels %v", ls)
				}
			},
		},
		{
			name: "labels as a list under args",
			conf: `{"cniVersion": "1.0.0", "name": "net", "type": "membrane-cni", "args": {"labels": [{"key": "id", "value": "x"}]}}`,
			check: func(t *testing.T, c *NetConf) {
				if ls, _ := BaseLabels(c, RuntimeArgs{}); fmt.Sprint(ls) != "[container:id=x]" {
					t.Errorf("labels %v", ls)
				}
			},
		},
		{name: "no name", conf: `{"cniVersion": "1.0.0", "type": "membrane-cni"}`, wantErr: "no network name"},
		{name: "not JSON", conf: `{`, wantErr: "parse network configuration"},
		{name: "reserved label", conf: `{"name": "n", "args": {"labels": {"reserved:host": ""}}}`, wantErr: "Membrane's own"},
		{name: "bad label", conf: `{"name": "n", "args": {"labels": {"a b": "c"}}}`, wantErr: "args"},
		{name: "bad labels shape", conf: `{"name": "n", "args": {"labels": "id=x"}}`, wantErr: "labels: want"},
		{name: "bad timeout", conf: `{"name": "n", "labelTimeout": "soon"}`, wantErr: "labelTimeout"},
		{name: "bad prevResult", conf: `{"name": "n", "cniVersion": "1.0.0", "prevResult": {"ips": "x"}}`, wantErr: "prevResult"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := LoadConf([]byte(tc.conf))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, c)
		})
	}
}

func TestParseArgs(t *testing.T) {
	ra, err := ParseArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=pod-1;K8S_POD_INFRA_CONTAINER_ID=abc;MEMBRANE_LABELS=id=app1,k8s:tier=db;OTHER=x")
	if err != nil {
		t.Fatal(err)
	}
	if ra.PodNamespace != "web" || ra.PodName != "pod-1" || fmt.Sprint(ra.Labels) != "[container:id=app1 k8s:tier=db]" {
		t.Errorf("args %+v", ra)
	}
	for _, bad := range []string{"novalue", "MEMBRANE_LABELS=reserved:world", "MEMBRANE_LABELS=a b=c"} {
		if _, err := ParseArgs(bad); err == nil {
			t.Errorf("ParseArgs(%q) accepted", bad)
		}
	}
	if ra, err := ParseArgs(""); err != nil || ra.PodName != "" {
		t.Errorf("empty: %+v %v", ra, err)
	}
}

func TestBaseLabelsPrecedence(t *testing.T) {
	c, err := LoadConf([]byte(`{"name": "n", "args": {"labels": {"id": "from-config", "team": "a"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	ra, _ := ParseArgs("K8S_POD_NAMESPACE=prod;MEMBRANE_LABELS=id=from-args")
	ls, err := BaseLabels(c, ra)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ls) != "[container:id=from-args container:team=a k8s:io.kubernetes.pod.namespace=prod]" {
		t.Errorf("labels %v", ls)
	}
}

func TestMergeLabels(t *testing.T) {
	got, skipped, err := MergeLabels([]string{"container:id=base", "k8s:io.kubernetes.pod.namespace=x"},
		map[string]string{"id": "app1", "bad key": "v", "ok": "", "v": "a,b"})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != "[container:id=app1 container:ok k8s:io.kubernetes.pod.namespace=x]" {
		t.Errorf("merged %v", got)
	}
	if fmt.Sprint(skipped) != "[bad key v]" {
		t.Errorf("skipped %v", skipped)
	}
}

func TestEndpointNameAndRef(t *testing.T) {
	for _, tc := range []struct {
		ra   RuntimeArgs
		want string
	}{
		{RuntimeArgs{PodNamespace: "web", PodName: "api-0"}, "web/api-0"},
		{RuntimeArgs{PodName: "app1"}, "app1"},
		{RuntimeArgs{}, "cni-0123456789ab"},
	} {
		if got := EndpointName(tc.ra, "0123456789abcdef"); got != tc.want {
			t.Errorf("EndpointName(%+v) = %q, want %q", tc.ra, got, tc.want)
		}
	}
	n, c, ok := ParseRef(Ref("net-1", "abc"))
	if !ok || n != "net-1" || c != "abc" {
		t.Errorf("ParseRef: %q %q %v", n, c, ok)
	}
	for _, s := range []string{"", "cni:", "cni:net", "cni::c", "docker:n:e"} {
		if _, _, ok := ParseRef(s); ok {
			t.Errorf("ParseRef(%q) accepted", s)
		}
	}
}
