package conformance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/endpoint"
	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/nsutil"
)

// liveTopo is a built topology.
type liveTopo struct {
	plan    TopoPlan
	key     string
	pods    map[string]*livePod
	world   *world
	closers []io.Closer
}

// livePod is a namespace wired as an endpoint, with its servers.
type livePod struct {
	nsName, nsPath string
	id             uint32
	added          bool
	labels         []string
}

// podNSName names the namespace of the n-th pod a run makes.
func podNSName(pid, n int) string { return fmt.Sprintf("mbrcf-%d-%d", pid, n) }

// buildTopology makes the namespaces, endpoints, servers and the world;
// on failure it removes what it made.
func (r *Runner) buildTopology(ctx context.Context, tp TopoPlan) (_ *liveTopo, err error) {
	t := &liveTopo{plan: tp, key: tp.Key(), pods: map[string]*livePod{}}
	defer func() {
		if err != nil {
			if terr := r.teardownTopology(t); terr != nil {
				r.log.Warn("tear down a half-built topology", "error", terr)
			}
		}
	}()
	var all []netip.Addr
	for _, p := range tp.Pods {
		all = append(all, p.IP)
	}
	all = append(append(all, tp.World...), tp.HostAddrs...)
	if err := checkFree(all); err != nil {
		return nil, fmt.Errorf("build topology: %w", err)
	}
	if len(tp.World) > 0 || len(tp.HostAddrs) > 0 {
		if t.world, err = newWorld(r.pid, tp.World, tp.HostAddrs); err != nil {
			return nil, fmt.Errorf("build topology: %w", err)
		}
		cs, err := servePorts(t.world.nsPath, tp.WorldPorts)
		t.closers = append(t.closers, cs...)
		if err != nil {
			return nil, fmt.Errorf("build topology: world servers: %w", err)
		}
		if err := r.waitHostAddrs(ctx, tp.HostAddrs); err != nil {
			return nil, fmt.Errorf("build topology: %w", err)
		}
	}
	for _, pp := range tp.Pods {
		r.nsSeq++
		lp := &livePod{nsName: podNSName(r.pid, r.nsSeq)}
		t.pods[pp.Name] = lp
		if lp.nsPath, err = nsutil.Create(lp.nsName); err != nil {
			return nil, fmt.Errorf("build topology: pod %s: %w", pp.Name, err)
		}
		ep, err := r.client.AddEndpoint(ctx, api.EndpointRequest{
			Netns: lp.nsPath, Name: pp.Name, Labels: pp.Labels, IPv4: pp.IP.String(), NamedPorts: namedPorts(pp.Ports),
		})
		if err != nil {
			return nil, fmt.Errorf("build topology: endpoint %s: %w", pp.Name, err)
		}
		lp.id, lp.added, lp.labels = ep.ID, true, pp.Labels
		cs, err := servePorts(lp.nsPath, pp.Ports)
		t.closers = append(t.closers, cs...)
		if err != nil {
			return nil, fmt.Errorf("build topology: pod %s servers: %w", pp.Name, err)
		}
	}
	r.log.Debug("topology built", "pods", len(tp.Pods), "world", tp.World, "host", tp.HostAddrs)
	return t, nil
}

func namedPorts(ports []ServedPort) []endpoint.NamedPort {
	var out []endpoint.NamedPort
	for _, sp := range ports {
		if sp.Name != "" {
			out = append(out, endpoint.NamedPort{Name: sp.Name, Port: sp.Port, Protocol: sp.Protocol})
		}
	}
	return out
}

// waitHostAddrs waits until the agent gives the node addresses the host
// identity (it learns host addresses asynchronously).
func (r *Runner) waitHostAddrs(ctx context.Context, addrs []netip.Addr) error {
	if len(addrs) == 0 {
		return nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, err := r.client.BPFIPCache(ctx)
		if err != nil {
			return fmt.Errorf("node addresses: read ipcache: %w", err)
		}
		missing := 0
		for _, a := range addrs {
			found := false
			for _, e := range entries {
				if e.Prefix == netip.PrefixFrom(a, 32).String() && e.Identity == identity.Host {
					found = true
				}
			}
			if !found {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node addresses %v: the agent did not give them the host identity within 10s", addrs)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// relabel gives every endpoint the labels of the plan.
func (r *Runner) relabel(ctx context.Context, t *liveTopo, tp TopoPlan) error {
	for _, pp := range tp.Pods {
		lp := t.pods[pp.Name]
		if sameLabels(lp.labels, pp.Labels) {
			continue
		}
		if _, err := r.client.UpdateEndpoint(ctx, lp.id, api.EndpointUpdate{Labels: pp.Labels}); err != nil {
			return fmt.Errorf("relabel %s: %w", pp.Name, err)
		}
		lp.labels = pp.Labels
	}
	return nil
}

// teardownTopology removes servers, endpoints, namespaces and the world.
// It carries on past errors and returns them all.
func (r *Runner) teardownTopology(t *liveTopo) error {
	if t == nil {
		return nil
	}
	closeAll(t.closers)
	t.closers = nil
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for name, lp := range t.pods {
		if lp.added {
			if err := r.client.DeleteEndpoint(ctx, lp.id); err != nil {
				errs = append(errs, fmt.Errorf("delete endpoint %s: %w", name, err))
			}
			lp.added = false
		}
		if lp.nsPath != "" {
			if err := nsutil.Delete(lp.nsName); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if t.world != nil {
		errs = append(errs, t.world.delete())
		t.world = nil
	}
	return errors.Join(errs...)
}

// origin returns where a probe from peer starts.
func (t *liveTopo) origin(p Peer) (origin, error) {
	if p.World.IsValid() {
		if t.world == nil {
			return origin{}, errors.New("no world namespace")
		}
		return origin{key: "world/" + p.World.String(), nsPath: t.world.nsPath, addr: p.World}, nil
	}
	lp, ok := t.pods[p.Pod]
	if !ok {
		return origin{}, fmt.Errorf("no pod %s", p.Pod)
	}
	return origin{key: p.Pod, nsPath: lp.nsPath}, nil
}
