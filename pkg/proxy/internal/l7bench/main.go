// Command l7bench runs the L7 proxy in front of one upstream, without
// privileges, for load tests with wrk or similar:
//
//	go run ./pkg/proxy/internal/l7bench -listen 127.0.0.1:18082 -upstream 127.0.0.1:18080
//
// Every request must pass one policy of a few rules, the matching one
// last (a realistic check cost).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/membrane-net/membrane/pkg/policy/l7"
	"github.com/membrane-net/membrane/pkg/proxy"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18082", "proxy listen address")
	upstream := flag.String("upstream", "127.0.0.1:18080", "upstream address")
	path := flag.String("path", "/.*", "path regex of the allowing rule")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here")
	flag.Parse()
	if err := run(*listen, *upstream, *path, *cpuprofile); err != nil {
		fmt.Fprintln(os.Stderr, "l7bench:", err)
		os.Exit(1)
	}
}

func run(listen, upstream, path, cpuprofile string) error {
	dst, err := netip.ParseAddrPort(upstream)
	if err != nil {
		return fmt.Errorf("parse upstream: %w", err)
	}
	port := l7.PortKey{Protocol: 6, Port: dst.Port()}
	sel := &l7.Selection{AnyPeer: true, Origin: "l7bench"}
	for _, spec := range []l7.HTTPRuleSpec{
		{Method: "POST", Path: "/v1/orders"},
		{Method: "GET", Path: "/healthz"},
		{Method: "GET", Path: "/v1/items/[0-9]+", Headers: []string{"X-Tenant"}},
		{Method: "GET", Path: path},
	} {
		r, err := l7.Compile(spec)
		if err != nil {
			return fmt.Errorf("compile rule: %w", err)
		}
		sel.Rules = append(sel.Rules, r)
	}
	pol := &l7.EndpointPolicy{Ports: map[l7.PortKey][]*l7.Selection{port: {sel}}}
	res := proxy.ResolverFunc(func(client, origDst netip.AddrPort) (*proxy.ConnInfo, error) {
		return &proxy.ConnInfo{
			Dst:    dst,
			Checks: []proxy.Check{{Port: port, Policy: func() *l7.EndpointPolicy { return pol }}},
		}, nil
	})
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := proxy.New(proxy.Config{ListenAddr: listen}, res, nil, log)
	if err != nil {
		return err
	}
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return fmt.Errorf("create profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("start profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	fmt.Fprintln(os.Stderr, "l7bench: listening on", p.Addr())
	if err := p.Serve(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	return nil
}
