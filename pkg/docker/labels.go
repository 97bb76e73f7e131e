package docker

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/labels"
)

// ContainerLabels turns Docker labels into the endpoint's labels, with
// source container. Labels Membrane cannot hold (a ',' in a value, a ':'
// in a key) are left out and returned in skipped.
func ContainerLabels(in map[string]string) (out []string, skipped []string) {
	keys := make([]string, 0, len(in))
	for k := range in {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out = []string{}
	for _, k := range keys {
		s := labels.SourceContainer + ":" + k
		if v := in[k]; v != "" {
			s += "=" + v
		}
		l, err := labels.ParseLabel(s, labels.SourceContainer)
		if err != nil || l.Source != labels.SourceContainer || l.Key != k || l.Value != in[k] {
			skipped = append(skipped, k)
			continue
		}
		out = append(out, s)
	}
	return out, skipped
}

// startWorker looks up, in the background, the container that joined a
// Docker endpoint and gives the endpoint the container's labels. Docker
// holds the container while it starts, so this cannot happen in Join.
func (p *Plugin) startWorker(r ref, id uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, running := p.workers[r.endpoint]; running {
		return
	}
	ctx, cancel := context.WithTimeout(p.baseCtx, p.cfg.LabelTimeout)
	p.workers[r.endpoint] = cancel
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		defer func() {
			cancel()
			p.mu.Lock()
			delete(p.workers, r.endpoint)
			p.mu.Unlock()
		}()
		if err := p.resolveLabels(ctx, r, id); err != nil && p.baseCtx.Err() == nil {
			p.log.Warn("container labels unknown: the endpoint keeps the init identity until the next reconciliation",
				"endpoint", id, "docker_endpoint", short(r.endpoint), "error", err)
		}
	}()
}

func (p *Plugin) cancelWorker(eid string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cancel, ok := p.workers[eid]; ok {
		cancel()
		delete(p.workers, eid)
	}
}

// errGone ends a lookup whose endpoint was deleted meanwhile.
var errGone = errors.New("endpoint gone")

// resolveLabels waits until the engine shows which container holds the
// Docker endpoint, then relabels the endpoint with the container's labels.
func (p *Plugin) resolveLabels(ctx context.Context, r ref, id uint32) error {
	wait := 20 * time.Millisecond
	var last error
	for {
		c, err := p.containerOf(ctx, r)
		if err == nil {
			lbls, skipped := ContainerLabels(c.Labels)
			if len(skipped) > 0 {
				p.log.Warn("container labels Membrane cannot hold are left out", "container", c.Name, "labels", skipped)
			}
			ep, err := p.agent.UpdateEndpoint(ctx, id, api.EndpointUpdate{Labels: lbls})
			if isNotFound(err) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("update labels of endpoint %d: %w", id, err)
			}
			p.log.Info("docker endpoint labelled", "endpoint", id, "container", c.Name, "identity", ep.Identity, "labels", ep.Labels.String())
			return nil
		}
		if errors.Is(err, errGone) {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("find the container of docker endpoint %s: %w", short(r.endpoint), errors.Join(ctx.Err(), last))
		case <-time.After(wait):
		}
		if wait < time.Second {
			wait *= 2
		}
	}
}

// containerOf finds the container attached to a Docker endpoint.
func (p *Plugin) containerOf(ctx context.Context, r ref) (*Container, error) {
	if p.endpointByRef(ctx, r) == nil {
		return nil, errGone
	}
	cctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	n, err := p.engine.Network(cctx, r.network)
	if err != nil {
		return nil, fmt.Errorf("inspect network %s: %w", short(r.network), err)
	}
	at, ok := n.Attachments[r.endpoint]
	if !ok || at.ContainerID == "" {
		return nil, fmt.Errorf("network %s does not show a container on endpoint %s yet", n.Name, short(r.endpoint))
	}
	c, err := p.engine.Container(cctx, at.ContainerID)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", short(at.ContainerID), err)
	}
	return c, nil
}
