package docker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Reconciliation: Docker is the source of truth for which containers are
// attached to Membrane networks; the agent for how they are wired.
//
//   - An endpoint this plugin made whose Docker endpoint no longer exists
//     (the container is gone, or dockerd forgot it while the agent was
//     down) is deleted with everything made for it.
//   - An endpoint still labelled reserved:init gets its container's labels.
//   - A container attached to a Membrane network whose endpoint is missing
//     (deleted by hand, or its interface vanished) is disconnected from
//     the network and connected again through Docker, asking for the same
//     address: libnetwork calls this plugin as for a new container, so the
//     endpoint is made the normal way, with its labels.
//
// It runs when the plugin starts, every ReconcileInterval, and each time
// the event stream of dockerd comes back (dockerd restarted). It never
// deletes anything while Docker cannot be asked.

// Kick asks for a reconciliation soon.
func (p *Plugin) Kick() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *Plugin) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(p.cfg.ReconcileInterval)
	defer t.Stop()
	last := ""
	for {
		if err := p.Reconcile(ctx); err != nil && ctx.Err() == nil {
			// The same failure again (dockerd not running) is not news.
			if err.Error() != last {
				p.log.Warn("docker reconciliation", "error", err)
			} else {
				p.log.Debug("docker reconciliation", "error", err)
			}
			last = err.Error()
		} else {
			last = ""
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.kick:
		}
	}
}

// watchEvents follows dockerd's events; a new connection (dockerd
// restarted) and the end of a container or network ask for a
// reconciliation.
func (p *Plugin) watchEvents(ctx context.Context) {
	connected := false
	for ctx.Err() == nil {
		err := p.engine.Events(ctx, func(e Event) {
			switch {
			case e.Type == streamEvent:
				connected = true
				p.Kick()
			case e.Action == "destroy" || (e.Type == "network" && e.Action == "disconnect"):
				p.Kick()
			}
		})
		if ctx.Err() != nil {
			return
		}
		if connected {
			p.log.Info("lost dockerd's event stream", "error", err)
			connected = false
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// Reconcile brings the agent's Docker endpoints in line with Docker's.
func (p *Plugin) Reconcile(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := p.engine.Ping(rctx); err != nil {
		return fmt.Errorf("docker at %s does not answer, nothing changed: %w", p.cfg.DockerHost, err)
	}
	nets, err := p.engine.Networks(rctx, p.name)
	if err != nil {
		return fmt.Errorf("list docker networks: %w", err)
	}
	type live struct {
		net Network
		at  Attachment
	}
	attached := map[string]live{}
	for _, n := range nets {
		for eid, at := range n.Attachments {
			attached[eid] = live{n, at}
		}
	}
	var errs []error
	have := map[string]bool{}
	for _, ep := range p.agent.ListEndpoints(rctx) {
		r, ok := parseRef(ep.ContainerID)
		if !ok {
			continue
		}
		have[r.endpoint] = true
		if _, ok := attached[r.endpoint]; ok {
			if hasInitLabels(&ep) {
				p.startWorker(r, ep.ID)
			}
			continue
		}
		// Made by this process a moment ago: libnetwork may not list it yet.
		if ep.Created.After(p.started) && time.Since(ep.Created) < p.cfg.Grace {
			continue
		}
		p.cancelWorker(r.endpoint)
		p.log.Info("deleting the endpoint of a docker endpoint that is gone", "endpoint", ep.ID, "docker_endpoint", short(r.endpoint))
		if err := p.agent.DeleteEndpoint(rctx, ep.ID); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("delete endpoint %d: %w", ep.ID, err))
		}
	}
	for eid, l := range attached {
		if have[eid] || l.at.ContainerID == "" {
			continue
		}
		ip := l.at.IPv4
		if i := strings.IndexByte(ip, '/'); i >= 0 {
			ip = ip[:i]
		}
		p.log.Warn("container on a membrane network has no endpoint: reconnecting it", "container", l.at.Name, "network", l.net.Name, "ipv4", ip)
		if err := p.engine.Reconnect(rctx, l.net.ID, l.at.ContainerID, ip); err != nil {
			errs = append(errs, fmt.Errorf("reconnect container %s to network %s: %w", l.at.Name, l.net.Name, err))
		}
	}
	return errors.Join(errs...)
}
