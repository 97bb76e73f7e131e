// Package monitor owns the fan-out of verdict events (from the datapath's
// ring buffer and from the L7 proxy) to the clients of `membrane monitor`.
// It formats events but does not produce them.
package monitor

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// Event types.
const (
	TypeDrop          = "drop"
	TypePolicyVerdict = "policy-verdict"
	TypeL7            = "l7"
)

// Types lists the event types a client can ask for.
var Types = []string{TypeDrop, TypePolicyVerdict, TypeL7}

// Event is one event as clients see it.
type Event struct {
	Time         time.Time `json:"time"`
	Type         string    `json:"type"`
	Endpoint     uint32    `json:"endpoint"`
	EndpointName string    `json:"endpointName,omitempty"`
	Direction    string    `json:"direction,omitempty"`
	Src          string    `json:"src"`
	SrcPort      uint16    `json:"srcPort,omitempty"`
	Dst          string    `json:"dst"`
	DstPort      uint16    `json:"dstPort,omitempty"`
	Protocol     string    `json:"protocol,omitempty"`
	SrcIdentity  uint32    `json:"srcIdentity"`
	DstIdentity  uint32    `json:"dstIdentity"`
	Verdict      string    `json:"verdict"`
	Reason       string    `json:"reason,omitempty"`
	Match        string    `json:"match,omitempty"`
	Rule         string    `json:"rule,omitempty"`
	ProxyPort    uint16    `json:"proxyPort,omitempty"`
	// L7
	Method    string  `json:"method,omitempty"`
	URL       string  `json:"url,omitempty"`
	Host      string  `json:"host,omitempty"`
	Status    int     `json:"status,omitempty"`
	LatencyMS float64 `json:"latencyMs,omitempty"`
}

// String renders an event on one line for humans.
func (e Event) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-14s", e.Time.Format("15:04:05.000"), strings.ToUpper(e.Type))
	ep := fmt.Sprint(e.Endpoint)
	if e.EndpointName != "" {
		ep += " (" + e.EndpointName + ")"
	}
	if e.Type == TypeL7 {
		fmt.Fprintf(&b, " endpoint %s %s %s:%d -> %s:%d identity %d->%d %s %s %s -> %d %s latency %.2fms",
			ep, e.Direction, e.Src, e.SrcPort, e.Dst, e.DstPort, e.SrcIdentity, e.DstIdentity,
			e.Method, e.Host, e.URL, e.Status, e.Verdict, e.LatencyMS)
	} else {
		fmt.Fprintf(&b, " endpoint %s %s %s %s:%d -> %s:%d identity %d->%d %s",
			ep, e.Direction, e.Protocol, e.Src, e.SrcPort, e.Dst, e.DstPort, e.SrcIdentity, e.DstIdentity, e.Verdict)
	}
	if e.Reason != "" {
		fmt.Fprintf(&b, " reason=%q", e.Reason)
	}
	if e.Rule != "" {
		fmt.Fprintf(&b, " rule=%q", e.Rule)
	}
	return b.String()
}

// Hub fans events out to subscribers. A slow subscriber loses events
// rather than slowing the agent; it can see how many.
type Hub struct {
	mu       sync.Mutex
	subs     map[*Subscription]struct{}
	onChange func(wantVerdicts bool)
}

// Subscription receives events of the types it asked for.
type Subscription struct {
	C     chan Event
	types map[string]bool
	lost  uint64
	hub   *Hub
}

// NewHub returns a hub; onChange (may be nil) is told whether any
// subscriber wants policy-verdict events, so the datapath emits them only
// then.
func NewHub(onChange func(wantVerdicts bool)) *Hub {
	return &Hub{subs: map[*Subscription]struct{}{}, onChange: onChange}
}

// Subscribe registers a subscriber for the given types (none: all).
func (h *Hub) Subscribe(types []string) *Subscription {
	s := &Subscription{C: make(chan Event, 4096), types: map[string]bool{}, hub: h}
	for _, t := range types {
		s.types[t] = true
	}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.notifyLocked()
	h.mu.Unlock()
	return s
}

func (s *Subscription) wants(t string) bool { return len(s.types) == 0 || s.types[t] }

// Close unregisters the subscriber.
func (s *Subscription) Close() {
	h := s.hub
	h.mu.Lock()
	delete(h.subs, s)
	h.notifyLocked()
	h.mu.Unlock()
}

// Lost is the number of events dropped because the subscriber was slow.
func (s *Subscription) Lost() uint64 {
	s.hub.mu.Lock()
	defer s.hub.mu.Unlock()
	return s.lost
}

func (h *Hub) notifyLocked() {
	if h.onChange == nil {
		return
	}
	want := false
	for s := range h.subs {
		if s.wants(TypePolicyVerdict) {
			want = true
		}
	}
	h.onChange(want)
}

// Wants reports whether any subscriber wants events of type t.
func (h *Hub) Wants(t string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if s.wants(t) {
			return true
		}
	}
	return false
}

// Publish hands an event to every subscriber that wants it.
func (h *Hub) Publish(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if !s.wants(e.Type) {
			continue
		}
		select {
		case s.C <- e:
		default:
			s.lost++
		}
	}
}
