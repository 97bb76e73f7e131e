package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/nsutil"
)

const nginxOrigin = `user root;
worker_processes 1;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 1000000;
	keepalive_timeout 60s;
	client_body_temp_path %[1]s/tmp; proxy_temp_path %[1]s/tmp; fastcgi_temp_path %[1]s/tmp;
	uwsgi_temp_path %[1]s/tmp; scgi_temp_path %[1]s/tmp;
	server {
		listen %[2]d;
		listen %[3]d;
		location / { return 200 "ok\n"; }
	}
}
`

const nginxProxy = `user root;
worker_processes auto;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	keepalive_requests 1000000;
	keepalive_timeout 60s;
	client_body_temp_path %[1]s/tmp; proxy_temp_path %[1]s/tmp; fastcgi_temp_path %[1]s/tmp;
	uwsgi_temp_path %[1]s/tmp; scgi_temp_path %[1]s/tmp;
	upstream origin {
		server %[2]s;
		keepalive 64;
		keepalive_requests 1000000;
	}
	server {
		listen %[3]s;
		location / {
			proxy_pass http://origin;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_buffering off;
		}
	}
}
`

// startNginx writes a configuration and runs nginx with it in a namespace
// ("" for the host's), waiting until from (a namespace path) can connect to
// addr.
func (b *bench) startNginx(name, ns, core, conf string, from string, addr netip.AddrPort) error {
	dir := filepath.Join(b.work, name)
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return err
	}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return err
	}
	argv := []string{"nginx", "-e", "stderr", "-p", dir, "-c", path}
	if ns != "" {
		argv = inNS(ns, core, argv...)
	}
	p, err := b.startProc(name, argv, "")
	if err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := nsutil.DialTimeout(from, "tcp4", addr.String(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if !p.alive() || time.Now().After(deadline) {
			return fmt.Errorf("%s does not answer on %s: %v %s", name, addr, err, tail(p.logPath, 5))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// blockL7: measurement 7.
func (b *bench) blockL7(ctx context.Context) error {
	direct := netip.AddrPortFrom(b.mSrv.addr, portHTTP)
	proxied := netip.AddrPortFrom(gateway, portNginx)
	l7 := netip.AddrPortFrom(b.mSrv.addr, portL7)
	odir := filepath.Join(b.work, "nginx-origin")
	if err := b.startNginx("nginx-origin", b.mSrv.ns, serverCore, fmt.Sprintf(nginxOrigin, odir, portHTTP, portL7), b.mCli.path, direct); err != nil {
		return err
	}
	pdir := filepath.Join(b.work, "nginx-proxy")
	if err := b.startNginx("nginx-proxy", "", "", fmt.Sprintf(nginxProxy, pdir, direct, proxied), b.mCli.path, proxied); err != nil {
		return err
	}

	// The L7 rule: valid policy, importable only when the agent runs its
	// proxy.
	files := []api.PolicyFile{{Name: "mbrb-l7.json", Content: l7Policy()}}
	if _, err := b.api.ValidatePolicy(ctx, files); err != nil {
		return fmt.Errorf("the bench's L7 policy does not validate: %w", err)
	}
	l7ok := true
	var l7err error
	if _, l7err = b.api.ImportPolicy(ctx, files); l7err != nil {
		l7ok = false
		b.logf("   L7 policy not importable: %v", l7err)
	} else {
		b.cl.add("L7 policy", func() error { _, _ = b.api.DeletePolicy(context.Background(), "mbrb-l7"); return nil })
	}

	type v struct {
		name string
		url  string
		res  []httpResult
	}
	vs := []*v{{name: "direct", url: "http://" + direct.String() + "/"}, {name: "nginx", url: "http://" + proxied.String() + "/"}}
	if l7ok {
		vs = append(vs, &v{name: "membrane", url: "http://" + l7.String() + "/"})
	}
	for r := 0; r < b.s.L7Rounds; r++ {
		for _, x := range rotate(vs, r) {
			res, err := b.wrk(ctx, b.mCli.ns, x.url, b.s.HTTPDur)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, x.name, err)
			}
			x.res = append(x.res, res)
		}
		line := fmt.Sprintf("   round %d:", r+1)
		for _, x := range vs {
			line += fmt.Sprintf(" %s %s req/s p50 %.0f µs;", x.name, fmtRate(x.res[r].RPS, ""), x.res[r].P50us)
		}
		b.logf("%s", line)
	}
	get := func(x *v, f func(httpResult) float64) []float64 {
		out := make([]float64, len(x.res))
		for i, r := range x.res {
			out[i] = f(r)
		}
		return out
	}
	rps := func(r httpResult) float64 { return r.RPS }
	p50 := func(r httpResult) float64 { return r.P50us }
	p99 := func(r httpResult) float64 { return r.P99us }
	diff := func(a, b []float64) []float64 {
		out := make([]float64, len(a))
		for i := range a {
			out[i] = a[i] - b[i]
		}
		return out
	}
	d, ng := vs[0], vs[1]
	l7prof := ""
	title := fmt.Sprintf("L7: HTTP/1.1 keep-alive req/s, %d connections", b.s.WrkConns)
	if l7ok {
		m := vs[2]
		okN := b.rep.ratioRow("7", title, "membrane / nginx", ratios(get(m, rps), get(ng, rps)), 0.7)
		okD := b.rep.ratioRow("7", "", "membrane / direct", ratios(get(m, rps), get(d, rps)), 0.25)
		if !okN || !okD {
			b.rep.note("Target 7 missed: membrane/nginx %.3f (goal 0.7), membrane/direct %.3f (goal 0.25); profile of the agent "+
				"(which runs the proxy) in section 7.", median(ratios(get(m, rps), get(ng, rps))), median(ratios(get(m, rps), get(d, rps))))
			prof, err := b.profile(ctx, "l7", b.agent.cmd.Process.Pid, func() error {
				_, err := b.wrk(ctx, b.mCli.ns, m.url, b.s.HTTPDur)
				return err
			})
			if err != nil {
				l7prof = fmt.Sprintf("\nProfile of the agent under the membrane load: not taken (%v).\n", err)
			} else {
				l7prof = "\nProfile of the agent (its L7 proxy) under the membrane load (perf):\n\n" + prof
			}
		}
	} else {
		b.rep.add(row{num: "7", measure: title, figure: "membrane / nginx", value: "pending (L7 not available)", target: "≥ 0.70", result: "pending"})
		b.rep.add(row{num: "7", figure: "membrane / direct", value: "pending (L7 not available)", target: "≥ 0.25", result: "pending"})
	}
	b.rep.ratioRow("7", "", "nginx / direct", ratios(get(ng, rps), get(d, rps)), 0)
	var body strings.Builder
	if !l7ok {
		fmt.Fprintf(&body, "The L7 policy (toPorts.rules.http) validates but the agent refuses to import it: `%v`. "+
			"The membrane rows run as soon as the import succeeds.\n\n", l7err)
	}
	body.WriteString("| path | req/s (median) | p50 | p99 | added p50 | added p99 |\n|---|---|---|---|---|---|\n")
	for _, x := range vs {
		added50, added99 := "—", "—"
		if x != d {
			added50 = fmt.Sprintf("%.0f µs", median(diff(get(x, p50), get(d, p50))))
			added99 = fmt.Sprintf("%.0f µs", median(diff(get(x, p99), get(d, p99))))
		}
		fmt.Fprintf(&body, "| %s | %s | %.0f µs | %.0f µs | %s | %s |\n", x.name, fmtRate(median(get(x, rps)), ""),
			median(get(x, p50)), median(get(x, p99)), added50, added99)
	}
	body.WriteString("\nAdded latency: per round, the path's percentile minus direct's; median over the rounds. At a fixed " +
		"concurrency each path runs at its own rate, so a faster path queues more: direct's p99 includes more queueing " +
		"(and more of the machine's scheduling noise) than the proxies', and an added p99 can come out negative. " +
		"Origin: nginx (1 worker, CPU 1) in the server's namespace; wrk on CPU 0; the proxies are not pinned.\n")
	body.WriteString(l7prof)
	b.rep.section("7. L7 proxy", body.String())
	return nil
}
