package policy

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// TracePeer is one end of a traced flow: a local endpoint, a label set
// (an identity that may not exist yet), or an address whose security
// identity the caller gives.
type TracePeer struct {
	Endpoint *Endpoint     `json:"endpoint,omitempty"`
	Labels   labels.Labels `json:"labels,omitempty"`
	// IP is the address; with an endpoint or labels it is optional and
	// gives the address's CIDR identity.
	IP netip.Addr `json:"ip,omitzero"`
	// Identity is the security identity of IP when neither Endpoint nor
	// Labels is given (0: world, for an address outside the cluster).
	Identity identity.NumericIdentity `json:"identity,omitempty"`
	// CIDRIdentity is the CIDR identity of IP; 0: computed from the CIDR
	// identities the repository knows.
	CIDRIdentity identity.NumericIdentity `json:"cidrIdentity,omitempty"`
	// InCluster: IP is an endpoint's or the host's (implied by Endpoint
	// and Labels).
	InCluster bool `json:"inCluster,omitempty"`
}

// TraceRequest asks why a flow is allowed or not.
type TraceRequest struct {
	From     TracePeer `json:"from"`
	To       TracePeer `json:"to"`
	Protocol uint8     `json:"protocol"`
	// Port is the destination port (ICMP: the type).
	Port uint16 `json:"port"`
}

// Verdicts of a direction.
const (
	VerdictAllowed     = "allowed"
	VerdictRedirected  = "redirected" // allowed, through the L7 proxy
	VerdictDenied      = "denied"
	VerdictDefaultDeny = "default-deny"
	VerdictNotEnforced = "not-enforced" // allowed: no policy applies
)

// TraceRule is a rule that matches the flow.
type TraceRule struct {
	RuleOrigin
	Cookie uint32 `json:"cookie"`
	// Effect is allow, deny or redirect (allow through the L7 proxy).
	Effect string   `json:"effect"`
	HTTP   []string `json:"http,omitempty"`
}

// MapDecision is what the endpoint's resolved policy map decides (what
// mapstate.Decide, and so the kernel, does with the flow).
type MapDecision struct {
	Allowed   bool   `json:"allowed"`
	Denied    bool   `json:"denied"`
	ProxyPort uint16 `json:"proxyPort,omitempty"`
	Cookie    uint32 `json:"cookie,omitempty"`
	Key       string `json:"key,omitempty"`
	Match     string `json:"match,omitempty"`
}

// DirectionTrace is the verdict of one side: the egress of the source or
// the ingress of the destination.
type DirectionTrace struct {
	Direction string      `json:"direction"`
	Subject   string      `json:"subject"`
	Peer      string      `json:"peer"`
	Enforced  bool        `json:"enforced"`
	Verdict   string      `json:"verdict"`
	Allowed   bool        `json:"allowed"`
	ProxyPort uint16      `json:"proxyPort,omitempty"`
	Rules     []TraceRule `json:"rules,omitempty"`
	// Map is the policy map's decision, when the subject is an endpoint
	// and the peer has an identity.
	Map *MapDecision `json:"map,omitempty"`
}

// TraceResult is the answer to a TraceRequest.
type TraceResult struct {
	Protocol string          `json:"protocol"`
	Port     uint16          `json:"port"`
	Egress   *DirectionTrace `json:"egress,omitempty"`
	Ingress  *DirectionTrace `json:"ingress,omitempty"`
	Allowed  bool            `json:"allowed"`
	// Verdict is the final verdict: allowed, redirected, denied or
	// default-deny.
	Verdict  string `json:"verdict"`
	Revision uint64 `json:"revision"`
}

// Trace explains the verdicts on a flow: the egress verdict of the source
// (when it is an endpoint or a label set), the ingress verdict of the
// destination (likewise), with the rules that decide them.
func (r *Repository) Trace(req TraceRequest) (*TraceResult, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	from, err := r.tracePeer(req.From)
	if err != nil {
		return nil, fmt.Errorf("trace: from: %w", err)
	}
	to, err := r.tracePeer(req.To)
	if err != nil {
		return nil, fmt.Errorf("trace: to: %w", err)
	}
	res := &TraceResult{Protocol: protoString(req.Protocol), Port: req.Port, Allowed: true, Verdict: VerdictAllowed, Revision: r.revision}
	if req.From.Endpoint != nil || req.From.Labels != nil {
		dt, err := r.traceDirection(req.From, from, to, true, req.Protocol, req.Port)
		if err != nil {
			return nil, fmt.Errorf("trace egress: %w", err)
		}
		res.Egress = dt
	}
	if req.To.Endpoint != nil || req.To.Labels != nil {
		dt, err := r.traceDirection(req.To, to, from, false, req.Protocol, req.Port)
		if err != nil {
			return nil, fmt.Errorf("trace ingress: %w", err)
		}
		res.Ingress = dt
	}
	for _, dt := range []*DirectionTrace{res.Egress, res.Ingress} {
		if dt == nil {
			continue
		}
		if !dt.Allowed && res.Allowed {
			res.Allowed, res.Verdict = false, dt.Verdict
		}
		if dt.Verdict == VerdictRedirected && res.Allowed {
			res.Verdict = VerdictRedirected
		}
	}
	return res, nil
}

type tracedEnd struct {
	peer   flowPeer
	name   string
	labels labels.Labels // raw labels of a subject
	named  []NamedPort   // a subject's own named ports
	id     identity.NumericIdentity
}

func (r *Repository) tracePeer(tp TracePeer) (*tracedEnd, error) {
	te := &tracedEnd{}
	var rec *identRecord
	switch {
	case tp.Endpoint != nil:
		ep := tp.Endpoint
		te.id, te.labels, te.named = ep.Identity, ep.Labels, ep.NamedPorts
		te.name = fmt.Sprintf("endpoint %d (identity %s)", ep.ID, ep.Identity)
		rec = r.cache.ids[ep.Identity]
		te.peer = flowPeer{id: ep.Identity, labels: effectiveLabels(ep.Labels, classOf(ep.Identity)),
			class: classOf(ep.Identity), inCluster: true, named: ep.NamedPorts}
	case tp.Labels != nil:
		te.labels = tp.Labels
		id := identity.ForLabels(tp.Labels)
		if id == identity.Unknown {
			id = r.cache.identityOf(tp.Labels)
		}
		te.id = id
		rec = r.cache.ids[id]
		te.name = "labels " + tp.Labels.String()
		if id != identity.Unknown {
			te.name += fmt.Sprintf(" (identity %s)", id)
		}
		te.peer = flowPeer{id: id, labels: effectiveLabels(tp.Labels, classOf(id)), class: classOf(id), inCluster: true}
	case tp.IP.IsValid():
		id := tp.Identity
		if id == identity.Unknown {
			if tp.InCluster {
				return nil, fmt.Errorf("%w: address %s is in the cluster: give its identity", ErrInvalid, tp.IP)
			}
			id = identity.World
		}
		te.id = id
		rec = r.cache.ids[id]
		lbls := identity.ReservedLabels(id)
		if rec != nil {
			lbls = rec.raw
		}
		te.name = fmt.Sprintf("%s (identity %s)", tp.IP, id)
		te.peer = flowPeer{id: id, labels: effectiveLabels(lbls, classOf(id)), class: classOf(id), inCluster: tp.InCluster}
	default:
		return nil, fmt.Errorf("%w: give an endpoint, labels or an address", ErrInvalid)
	}
	if rec != nil {
		te.peer.named = rec.namedPorts
	}
	switch {
	case tp.CIDRIdentity != 0:
		c, ok := r.cache.ids[tp.CIDRIdentity]
		if !ok || c.class != classCIDR {
			return nil, fmt.Errorf("%w: %d is not a known CIDR identity", ErrInvalid, tp.CIDRIdentity)
		}
		te.peer.cidr, te.peer.cidrID = c.prefix, c.id
	case tp.IP.IsValid():
		if c, ok := r.cache.mostSpecificCIDR(tp.IP); ok {
			te.peer.cidr, te.peer.cidrID = c.prefix, c.id
		}
	}
	return te, nil
}

func (r *Repository) traceDirection(tp TracePeer, subj, peer *tracedEnd, egress bool, proto uint8, port uint16) (*DirectionTrace, error) {
	ev := r.evaluate(subj.labels, subj.id, subj.named, egress, &peer.peer, proto, port)
	dt := &DirectionTrace{Direction: dirName(egress), Subject: subj.name, Peer: peer.name, Enforced: ev.enforced}
	for _, h := range ev.denies {
		dt.Rules = append(dt.Rules, TraceRule{RuleOrigin: h.ii.origin(), Cookie: h.ii.cookie, Effect: "deny"})
	}
	if !ev.denied() {
		for _, h := range ev.allows {
			tr := TraceRule{RuleOrigin: h.ii.origin(), Cookie: h.ii.cookie, Effect: "allow"}
			if h.l7 {
				tr.Effect = "redirect"
				for _, hr := range h.http {
					tr.HTTP = append(tr.HTTP, hr.String())
				}
				if len(h.http) == 0 {
					tr.HTTP = []string{"any HTTP request"}
				}
			}
			dt.Rules = append(dt.Rules, tr)
		}
	}
	dt.Allowed = ev.allowed()
	switch {
	case ev.denied():
		dt.Verdict = VerdictDenied
	case ev.redirect():
		dt.Verdict = VerdictRedirected
		if r.cfg.ProxyPort != nil {
			dt.ProxyPort = r.cfg.ProxyPort(egress)
		}
	case len(ev.allows) > 0:
		dt.Verdict = VerdictAllowed
	case !ev.enforced:
		dt.Verdict = VerdictNotEnforced
	default:
		dt.Verdict = VerdictDefaultDeny
	}
	if tp.Endpoint != nil && peer.id != identity.Unknown {
		resolved, err := r.resolveLocked(tp.Endpoint, nil)
		if err != nil {
			return nil, err
		}
		d := resolved.MapState.Decide(mapstate.Peer{Identity: peer.id, CIDRIdentity: peer.peer.cidrID, InCluster: peer.peer.inCluster}, egress, proto, port)
		md := &MapDecision{Allowed: d.Allowed, Denied: d.Denied, ProxyPort: d.ProxyPort, Cookie: d.Cookie, Match: matchName(d.Match)}
		if d.Match != mapstate.MatchNone {
			md.Key = d.Key.String()
		}
		dt.Map = md
	}
	return dt, nil
}

func matchName(m mapstate.Match) string {
	switch m {
	case mapstate.MatchIdentity:
		return "identity"
	case mapstate.MatchAny:
		return "any"
	case mapstate.MatchCIDR:
		return "cidr"
	}
	return ""
}

func protoString(p uint8) string {
	if p == protoICMPv6 {
		return "ICMPv6"
	}
	return mapstate.ProtoName(p)
}

// String renders the trace for people.
func (t *TraceResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Flow: %d/%s (policy revision %d)\n", t.Port, t.Protocol, t.Revision)
	for _, dt := range []*DirectionTrace{t.Egress, t.Ingress} {
		if dt == nil {
			continue
		}
		prep := "to"
		if dt.Direction == "ingress" {
			prep = "from"
		}
		fmt.Fprintf(&b, "%s of %s, %s %s:\n", strings.ToUpper(dt.Direction[:1])+dt.Direction[1:], dt.Subject, prep, dt.Peer)
		if dt.Enforced {
			b.WriteString("  policy enforced (default deny)\n")
		} else {
			b.WriteString("  policy not enforced (default allow)\n")
		}
		for _, r := range dt.Rules {
			fmt.Fprintf(&b, "  %-8s %s [cookie %d]\n", r.Effect, r.RuleOrigin, r.Cookie)
			for _, h := range r.HTTP {
				fmt.Fprintf(&b, "           HTTP: %s\n", h)
			}
		}
		if len(dt.Rules) == 0 {
			b.WriteString("  no rule matches\n")
		}
		fmt.Fprintf(&b, "  verdict: %s", dt.Verdict)
		if dt.ProxyPort != 0 {
			fmt.Fprintf(&b, " (L7 proxy port %d)", dt.ProxyPort)
		}
		b.WriteString("\n")
		if m := dt.Map; m != nil {
			switch {
			case m.Denied:
				fmt.Fprintf(&b, "  policy map: denied by %s [cookie %d]\n", m.Key, m.Cookie)
			case m.Allowed:
				fmt.Fprintf(&b, "  policy map: allowed by %s (%s lookup) [cookie %d]", m.Key, m.Match, m.Cookie)
				if m.ProxyPort != 0 {
					fmt.Fprintf(&b, ", to the L7 proxy on port %d", m.ProxyPort)
				}
				b.WriteString("\n")
			default:
				b.WriteString("  policy map: no entry (dropped)\n")
			}
		}
	}
	fmt.Fprintf(&b, "Final verdict: %s\n", strings.ToUpper(t.Verdict))
	return b.String()
}
