package cli

import (
	"fmt"
	"log/slog"
	"net/http"
	_ "net/http/pprof"
	"net/netip"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/membrane-net/membrane/pkg/agent"
	"github.com/membrane-net/membrane/pkg/docker"
)

func agentCmd(g *globals) *cobra.Command {
	var cfg agent.Config
	var dockerCfg docker.Config
	var pool, logLevel, pprofAddr string
	var maxEntries uint32
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the Membrane agent (the daemon) in the foreground",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := netip.ParsePrefix(pool)
			if err != nil || !p.Addr().Is4() {
				return fmt.Errorf("--ipv4-pool %q: want an IPv4 CIDR such as 10.200.0.0/16", pool)
			}
			if p.Masked() != p {
				return fmt.Errorf("--ipv4-pool %q: host bits are set (did you mean %s?)", pool, p.Masked())
			}
			cfg.IPv4Pool = p
			cfg.Socket = g.socket
			cfg.PolicyMapMaxEntries = maxEntries
			cfg.Version = Version
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
			if os.Geteuid() != 0 {
				return fmt.Errorf("the agent needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF)")
			}
			if pprofAddr != "" {
				go func() {
					log.Info("pprof", "addr", pprofAddr, "error", http.ListenAndServe(pprofAddr, nil))
				}()
			}
			a, err := agent.New(cfg, log)
			if err != nil {
				return err
			}
			defer a.Close()
			if dockerCfg.Socket != "" {
				stop, err := docker.Start(cmd.Context(), dockerCfg, a, log.With("part", "docker"))
				if err != nil {
					return err
				}
				defer stop()
			}
			return a.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.StateDir, "state-dir", agent.DefaultStateDir, "directory of the agent's state")
	f.StringVar(&cfg.BPFFSDir, "bpffs-dir", agent.DefaultBPFFSDir, "bpffs directory for pinned maps and links")
	f.StringVar(&pool, "ipv4-pool", agent.DefaultIPv4Pool.String(), "IPv4 pool for endpoint addresses")
	f.StringVar(&cfg.EnablePolicy, "enable-policy", "default", "policy enforcement: default, always or never")
	f.BoolVar(&cfg.Audit, "audit", false, "audit mode: would-be drops pass and are reported with verdict AUDIT")
	f.Uint32Var(&maxEntries, "policy-map-max-entries", 16384, "capacity of each endpoint's policy map")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.StringVar(&pprofAddr, "pprof", "", "serve Go's pprof on this address (e.g. 127.0.0.1:6060), for profiling")
	f.Uint16Var(&cfg.ProxyPort, "proxy-port", agent.DefaultProxyPort, "port of the L7 proxy's transparent listener (0 disables L7 policy)")
	f.StringVar(&cfg.HostIfName, "host-ifname", agent.DefaultHostIfName, "name of the host device holding the pool's gateway address (at most 15 characters, ending in _host)")
	f.StringVar(&dockerCfg.Socket, "docker-plugin", docker.DefaultSocket, "serve the Docker network and IPAM driver on this socket, where dockerd finds it; its base name is the driver's name; empty: no Docker driver")
	f.StringVar(&dockerCfg.DockerHost, "docker-host", docker.DefaultDockerHost, "Docker Engine API the Docker plugin reads container labels from")
	f.DurationVar(&dockerCfg.ReconcileInterval, "docker-reconcile-interval", docker.DefaultReconcileInterval, "how often Docker endpoints are reconciled with Docker's containers")
	cmd.PreRunE = func(cmd *cobra.Command, args []string) error {
		switch strings.ToLower(cfg.EnablePolicy) {
		case "default", "always", "never":
			cfg.EnablePolicy = strings.ToLower(cfg.EnablePolicy)
			return nil
		}
		return fmt.Errorf("--enable-policy %q: want default, always or never", cfg.EnablePolicy)
	}
	return cmd
}
