package agent

import (
	"sync"

	"github.com/membrane-net/membrane/pkg/datapath"
	"github.com/membrane-net/membrane/pkg/monitor"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// origins maps policy map cookies to rule descriptions for events; the
// event reader uses it without the agent's lock.
type origins struct {
	mu sync.RWMutex
	m  map[uint32]string
}

var ruleOrigins = &origins{m: map[uint32]string{}}

func (o *origins) get(c uint32) string {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.m[c]
}

// refreshOrigins copies the repository's cookie descriptions for the
// event reader; the caller holds mu.
func (a *Agent) refreshOrigins() {
	m := map[uint32]string{}
	for _, s := range a.eps {
		if s.resolved == nil {
			continue
		}
		for _, e := range s.resolved.MapState {
			if e.Cookie == 0 {
				continue
			}
			if _, ok := m[e.Cookie]; ok {
				continue
			}
			if o, ok := a.repo.Origin(e.Cookie); ok {
				m[e.Cookie] = o.String()
			}
		}
	}
	ruleOrigins.mu.Lock()
	ruleOrigins.m = m
	ruleOrigins.mu.Unlock()
}

func (a *Agent) onDatapathEvent(e datapath.Event) {
	typ := monitor.TypeDrop
	if e.Type == datapath.EventPolicyVerdict {
		typ = monitor.TypePolicyVerdict
	}
	if !a.hub.Wants(typ) {
		return
	}
	name, _ := a.names.Load(e.EndpointID)
	ev := monitor.Event{
		Time: e.Time, Type: typ, Endpoint: e.EndpointID, Direction: datapath.DirName(e.Dir),
		Src: e.Src.String(), SrcPort: e.SrcPort, Dst: e.Dst.String(), DstPort: e.DstPort,
		Protocol: mapstate.ProtoName(e.Protocol), SrcIdentity: e.SrcIdentity, DstIdentity: e.DstIdentity,
		Verdict: datapath.VerdictName(e.Verdict), ProxyPort: e.ProxyPort,
	}
	if n, ok := name.(string); ok {
		ev.EndpointName = n
	}
	if e.Reason != datapath.ReasonNone {
		ev.Reason = datapath.ReasonName(e.Reason)
	}
	if e.Match != 0 {
		ev.Match = datapath.MatchName(e.Match)
	}
	if e.Cookie != 0 {
		ev.Rule = ruleOrigins.get(e.Cookie)
	}
	a.hub.Publish(ev)
}

// Subscribe registers a monitor client.
func (a *Agent) Subscribe(types []string) *monitor.Subscription { return a.hub.Subscribe(types) }

// Hub is the agent's event hub (the L7 proxy publishes into it).
func (a *Agent) Hub() *monitor.Hub { return a.hub }
