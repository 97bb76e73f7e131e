package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/membrane-net/membrane/pkg/api"
)

// Policies are CiliumNetworkPolicies, written as JSON (which the agent
// reads as YAML).

type obj = map[string]any

func cnp(name string, selector obj, ingress []obj) string {
	p := obj{
		"apiVersion": "cilium.io/v2",
		"kind":       "CiliumNetworkPolicy",
		"metadata":   obj{"name": name, "namespace": "default"},
		"spec": obj{
			"endpointSelector": obj{"matchLabels": selector},
			"ingress":          ingress,
		},
	}
	b, err := json.Marshal(p)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func ports(proto string, ps ...int) []obj {
	var out []obj
	for _, p := range ps {
		out = append(out, obj{"port": strconv.Itoa(p), "protocol": proto})
	}
	return []obj{{"ports": out}}
}

func fromEndpoints(labels obj, toPorts []obj) obj {
	return obj{"fromEndpoints": []obj{{"matchLabels": labels}}, "toPorts": toPorts}
}

func fromCIDRs(cidrs []string, toPorts []obj) obj {
	return obj{"fromCIDR": cidrs, "toPorts": toPorts}
}

func cidrRange(f func(int) string, from, to int) []string {
	out := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		out = append(out, f(i))
	}
	return out
}

// serverPolicy: the client may reach the server's echo, sink and HTTP
// ports; the host (nginx) its HTTP port; endpoints labelled role=eptest its
// endpoint-add probe port; and 1,000 CIDRs its echo port (1,000 more policy
// map entries, 1,000 CIDR identities).
func serverPolicy() string {
	return cnp("mbrb-server", obj{"role": "server"}, []obj{
		fromCIDRs(cidrRange(mainCIDR, 0, serverCIDRs), ports("TCP", portEcho)),
		fromEndpoints(obj{"role": "client"}, ports("TCP", portEcho, portSink, portHTTP)),
		{"fromEntities": []string{"host"}, "toPorts": ports("TCP", portHTTP)},
		fromEndpoints(obj{"role": "eptest"}, ports("UDP", portEPAdd)),
	})
}

// otherPolicy: 9,000 more CIDR identities, on another endpoint.
func otherPolicy() string {
	return cnp("mbrb-other", obj{"role": "other"}, []obj{
		fromCIDRs(cidrRange(mainCIDR, serverCIDRs, mainCIDRs), ports("TCP", portEcho)),
	})
}

// flat100Policy: 99 CIDR entries and the client's.
func flat100Policy() string {
	return cnp("mbrb-f100", obj{"role": "f100"}, []obj{
		fromCIDRs(cidrRange(mainCIDR, 0, 99), ports("TCP", portEcho)),
		fromEndpoints(obj{"role": "client"}, ports("TCP", portEcho)),
	})
}

// flat60kPolicy: the 10,000 CIDRs on 6 ports each (60,000 entries) and
// the client's entry.
func flat60kPolicy() string {
	ps := make([]int, flatPorts)
	for i := range ps {
		ps[i] = portEcho + i
	}
	return cnp("mbrb-f60k", obj{"role": "f60k"}, []obj{
		fromCIDRs(cidrRange(mainCIDR, 0, mainCIDRs), ports("TCP", ps...)),
		fromEndpoints(obj{"role": "client"}, ports("TCP", portEcho)),
	})
}

// updPolicy: n rules, each one CIDR on the update port, the client's (the
// prober's) last.
func updPolicy(n int) string {
	rules := make([]obj, 0, n)
	for i := 0; i < n-1; i++ {
		rules = append(rules, fromCIDRs([]string{updCIDR(i)}, ports("UDP", portUpd)))
	}
	rules = append(rules, fromEndpoints(obj{"role": "client"}, ports("UDP", portUpd)))
	return cnp("mbrb-upd", obj{"role": "server"}, rules)
}

// l7Policy: HTTP GET on the L7 port, through Membrane's proxy.
func l7Policy() string {
	return cnp("mbrb-l7", obj{"role": "server"}, []obj{{
		"fromEndpoints": []obj{{"matchLabels": obj{"role": "client"}}},
		"toPorts": []obj{{
			"ports": []obj{{"port": strconv.Itoa(portL7), "protocol": "TCP"}},
			"rules": obj{"http": []obj{{"method": "GET", "path": "/.*"}}},
		}},
	}})
}

func (b *bench) importPolicy(ctx context.Context, name, content string) (*api.PolicyResult, error) {
	res, err := b.api.ImportPolicy(ctx, []api.PolicyFile{{Name: name + ".json", Content: content}})
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", name, err)
	}
	return res, nil
}

func (b *bench) deletePolicy(ctx context.Context, name string) error {
	if _, err := b.api.DeletePolicy(ctx, name); err != nil {
		return fmt.Errorf("delete policy %s: %w", name, err)
	}
	return nil
}

// policyEntries counts an endpoint's policy map entries, read from the
// kernel through the agent.
func (b *bench) policyEntries(ctx context.Context, id uint32) (int, error) {
	p, err := b.api.BPFPolicy(ctx, id)
	if err != nil {
		return 0, err
	}
	return len(p.Entries), nil
}
