package demo

import (
	"context"
	"fmt"
	"net/http"

	"github.com/membrane-net/membrane/pkg/monitor"
)

// L7Policy is the 2017 guide's L7 step: app2 may only GET /public on app1.
const L7Policy = `[{
    "endpointSelector": {"matchLabels":{"id":"app1"}},
    "ingress": [{
        "fromEndpoints": [
            {"matchLabels":{"id":"app2"}}
        ],
        "toPorts": [{
            "ports": [{"port": "80", "protocol": "tcp"}],
            "rules": {
                "HTTP": [{
                    "method": "GET",
                    "path": "/public"
                }]
            }
        }]
    }]
}]
`

// SWL3L4Policy is Cilium's Star Wars sw_l3_l4_policy.yaml.
const SWL3L4Policy = `apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "rule1"
spec:
  description: "L3-L4 policy to restrict deathstar access to empire ships only"
  endpointSelector:
    matchLabels:
      org: empire
      class: deathstar
  ingress:
  - fromEndpoints:
    - matchLabels:
        org: empire
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
`

// SWL3L4L7Policy is Cilium's Star Wars sw_l3_l4_l7_policy.yaml.
const SWL3L4L7Policy = `apiVersion: "cilium.io/v2"
kind: CiliumNetworkPolicy
metadata:
  name: "rule1"
spec:
  description: "L7 policy to restrict access to specific HTTP call"
  endpointSelector:
    matchLabels:
      org: empire
      class: deathstar
  ingress:
  - fromEndpoints:
    - matchLabels:
        org: empire
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      rules:
        http:
        - method: "POST"
          path: "/v1/request-landing"
`

func (d *Demo) l7Guide(ctx context.Context) error {
	d.say("\n== L7 policy: the guide's HTTP step (app2 may only GET /public on app1)\n%s", indent(L7Policy))
	if err := d.importPolicy(ctx, "l7_policy.json", L7Policy); err != nil {
		return err
	}
	url := fmt.Sprintf("http://%s", d.eps["app1"].IPv4)
	stop := d.watch(ctx, monitor.TypeL7)
	if err := d.expect("app2", "GET", url+"/public", 200, "public data"); err != nil {
		stop()
		return err
	}
	if err := d.expect("app2", "GET", url+"/private", 403, "Access denied"); err != nil {
		stop()
		return err
	}
	if err := d.expect("app3", "GET", url+"/public", 0, ""); err != nil {
		stop()
		return err
	}
	evs := stop()
	d.say("$ membrane monitor --type l7")
	for _, e := range evs {
		d.say("  %s", e.String())
	}
	if len(evs) < 2 {
		return fmt.Errorf("the monitor showed %d L7 events, want the two requests", len(evs))
	}
	d.say("$ membrane policy delete l7_policy")
	if _, err := d.c.DeletePolicy(ctx, "l7_policy"); err != nil {
		return err
	}
	return nil
}

func (d *Demo) starWars(ctx context.Context) error {
	d.say("\n== Cilium's Star Wars demo")
	if _, err := d.endpoint(ctx, "deathstar", "org=empire", "class=deathstar"); err != nil {
		return err
	}
	if _, err := d.endpoint(ctx, "tiefighter", "org=empire", "class=tiefighter"); err != nil {
		return err
	}
	if _, err := d.endpoint(ctx, "xwing", "org=alliance", "class=xwing"); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/request-landing", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "Ship landed")
	})
	mux.HandleFunc("PUT /v1/exhaust-port", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "Panic: deathstar exploded")
	})
	if err := d.serveHTTP("deathstar", mux); err != nil {
		return err
	}
	url := fmt.Sprintf("http://%s", d.eps["deathstar"].IPv4)
	land, exhaust := url+"/v1/request-landing", url+"/v1/exhaust-port"
	d.say("\nWithout policy, every ship lands, and anyone can hit the exhaust port:")
	for _, ship := range []string{"tiefighter", "xwing"} {
		if err := d.expect(ship, "POST", land, 200, "Ship landed"); err != nil {
			return err
		}
	}
	if err := d.expect("tiefighter", "PUT", exhaust, 503, "Panic: deathstar exploded"); err != nil {
		return err
	}
	d.say("\nsw_l3_l4_policy.yaml: only empire ships may reach the deathstar on port 80.")
	if err := d.importPolicy(ctx, "sw_l3_l4_policy.yaml", SWL3L4Policy); err != nil {
		return err
	}
	if err := d.expect("tiefighter", "POST", land, 200, "Ship landed"); err != nil {
		return err
	}
	if err := d.expect("xwing", "POST", land, 0, ""); err != nil {
		return err
	}
	d.say("\nsw_l3_l4_l7_policy.yaml: empire ships may only POST /v1/request-landing.")
	if err := d.importPolicy(ctx, "sw_l3_l4_l7_policy.yaml", SWL3L4L7Policy); err != nil {
		return err
	}
	if err := d.expect("tiefighter", "POST", land, 200, "Ship landed"); err != nil {
		return err
	}
	if err := d.expect("tiefighter", "PUT", exhaust, 403, "Access denied"); err != nil {
		return err
	}
	if err := d.expect("xwing", "POST", land, 0, ""); err != nil {
		return err
	}
	d.say("\n$ membrane policy delete rule1")
	_, err := d.c.DeletePolicy(ctx, "rule1")
	return err
}
