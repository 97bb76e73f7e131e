package policy

import (
	"errors"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/policy/l7"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// The builder distills the rules selecting one endpoint, in one direction,
// into policy-map entries for the datapath's precedence (see the package
// comment), in four steps:
//
//  1. every rule adds its keys: deny, plain allow, or allow with L7;
//     on one key deny beats plain allow beats L7 (rules add up, and a rule
//     without L7 rules allows every request);
//  2. an L7 entry that a plain allow of the same identity, or of identity 0,
//     covers becomes plain; and where an L7 entry of identity 0 meets a
//     plain allow of identity X covering its port, X gets a plain entry on
//     that port, so that X's lookup, which wins ties, does not send X's
//     flows to the proxy. (Where a security identity's L7 entry meets a
//     CIDR identity's plain allow, no entry can say it: the proxy gets an
//     allow-all rule for that peer instead, so the flow is redirected but
//     every request passes.)
//  3. a direction not in default deny gets {identity 0, any} allow;
//  4. every allow that a deny of the same identity covers becomes that
//     deny, since the LPM lookup returns the most specific entry.

type entryAcc struct {
	deny, plain, l7                   bool
	denyCookie, plainCookie, l7Cookie uint32
}

func minCookie(c *uint32, v uint32) {
	if *c == 0 || (v != 0 && v < *c) {
		*c = v
	}
}

type l7Contrib struct {
	origin string
	key    l7.PortKey
	any    bool
	ids    map[identity.NumericIdentity]bool
	rules  []*l7.HTTPRule
}

type builder struct {
	r       *Repository
	ep      *Endpoint
	egress  bool
	entries map[mapstate.Key]*entryAcc
	accs    []entryAcc // where entries' accumulators are allocated
	// hasL7: some rule of this direction has L7 rules (else no entry
	// needs the proxy, and plainKeys is not kept).
	hasL7 bool
	// denied: identities with a deny entry (others need no deny probe).
	denied map[identity.NumericIdentity]bool
	l7s    map[l7.PortKey]map[*instItem]*l7Contrib
	// plainKeys: the keys each plain allow rule added, for the proxy's
	// allow-all rules.
	plainKeys map[*instItem][]mapstate.Key
	// anyNamed: the named ports of every identity (egress rules to named
	// ports of every peer), computed on first use.
	anyNamed []NamedPort
	anyDone  bool
	// deps notes what the resolution reads (nil: nobody asks).
	deps *resolveDeps
	// proxyPort is the L7 proxy port the entries got (0: none).
	proxyPort uint16
}

// newBuilder makes the builder of one direction of an endpoint selected
// by specs, sized for the entries they will add.
func newBuilder(r *Repository, ep *Endpoint, egress bool, specs []*instSpec) *builder {
	b := &builder{r: r, ep: ep, egress: egress, denied: map[identity.NumericIdentity]bool{},
		l7s: map[l7.PortKey]map[*instItem]*l7Contrib{}, plainKeys: map[*instItem][]mapstate.Key{}}
	size := 1
	for _, s := range specs {
		for _, ii := range s.items {
			if ii.it.egress != egress {
				continue
			}
			n := 1
			for i := range ii.peers {
				if cs := ii.peers[i].cs; cs != nil {
					n += len(cs.selected)
				}
			}
			for _, ps := range ii.it.ports {
				if ps.l7 {
					b.hasL7 = true
				}
			}
			size += n * max(1, len(ii.it.ports))
		}
	}
	b.entries = make(map[mapstate.Key]*entryAcc, size)
	return b
}

// namedPortsOf returns the named ports a rule's named port resolves
// against: the endpoint's own on ingress; on egress the peer identity's, or,
// for identity 0 and CIDR peers (which may hold any endpoint's address),
// every endpoint's, as Cilium resolves egress named ports.
func (b *builder) namedPortsOf(rec *identRecord, union bool) []NamedPort {
	if !b.egress {
		return b.ep.NamedPorts
	}
	if union {
		if !b.anyDone {
			b.anyDone = true
			b.anyNamed = b.r.allNamedPorts()
			if b.deps != nil {
				b.deps.allNamed = true
			}
		}
		return b.anyNamed
	}
	if rec == nil {
		return nil
	}
	return rec.namedPorts
}

// allNamedPorts is the union of every identity's named ports.
func (r *Repository) allNamedPorts() []NamedPort { return r.cache.namedPorts() }

func (b *builder) add(k mapstate.Key, ii *instItem, l7 bool) {
	a := b.entries[k]
	if a == nil {
		a = b.newAcc()
		b.entries[k] = a
	}
	switch {
	case ii.it.deny:
		a.deny = true
		minCookie(&a.denyCookie, ii.cookie)
		b.denied[k.Identity] = true
	case l7:
		a.l7 = true
		minCookie(&a.l7Cookie, ii.cookie)
	default:
		a.plain = true
		minCookie(&a.plainCookie, ii.cookie)
		if b.hasL7 {
			b.plainKeys[ii] = append(b.plainKeys[ii], k)
		}
	}
}

func (b *builder) newAcc() *entryAcc {
	if len(b.accs) == 0 {
		b.accs = make([]entryAcc, min(max(len(b.entries), 16), 4096))
	}
	a := &b.accs[0]
	b.accs = b.accs[1:]
	return a
}

func (b *builder) addItem(ii *instItem, reqs []*labelSelector) {
	union := true
	emit := func(id identity.NumericIdentity, rec *identRecord) {
		if ii.it.ports == nil {
			b.add(mapstate.Key{Identity: id, Egress: b.egress}, ii, false)
			return
		}
		for _, ps := range ii.it.ports {
			named := b.namedPortsOf(rec, union || id == 0)
			for _, proto := range ps.protos() {
				for _, pp := range ps.prefixes(proto, named) {
					k := mapstate.Key{Identity: id, Egress: b.egress, Protocol: proto, Port: pp.Port, PortPrefixLen: pp.PrefixLen}
					b.add(k, ii, ps.l7)
					if ps.l7 {
						b.addL7(ii, id, proto, pp.Port, ps.http)
					}
				}
			}
		}
	}
	if ii.it.peers == nil {
		emit(0, nil)
		return
	}
	for i := range ii.peers {
		var peerReqs []*labelSelector
		if ii.peers[i].p.kind == peerSelector {
			peerReqs = reqs
		}
		union = ii.peers[i].p.kind == peerCIDR
		b.r.peerIDs(&ii.peers[i], peerReqs, b.deps, emit)
	}
}

func (b *builder) addL7(ii *instItem, id identity.NumericIdentity, proto uint8, port uint16, rules []*l7.HTTPRule) {
	pk := l7.PortKey{Egress: b.egress, Protocol: proto, Port: port}
	m := b.l7s[pk]
	if m == nil {
		m = map[*instItem]*l7Contrib{}
		b.l7s[pk] = m
	}
	c := m[ii]
	if c == nil {
		c = &l7Contrib{origin: ii.origin().String(), key: pk, ids: map[identity.NumericIdentity]bool{}, rules: rules}
		m[ii] = c
	}
	if id == 0 {
		c.any = true
	} else {
		c.ids[id] = true
	}
}

// coveringPlain returns the cookie of a plain allow of identity id that
// covers k, if any (k itself excluded).
func (b *builder) coveringPlain(id identity.NumericIdentity, k mapstate.Key) (uint32, bool) {
	try := func(c mapstate.Key) (uint32, bool) {
		if c == k {
			return 0, false
		}
		if a := b.entries[c]; a != nil && a.plain {
			return a.plainCookie, true
		}
		return 0, false
	}
	if c, ok := try(mapstate.Key{Identity: id, Egress: b.egress}); ok {
		return c, true
	}
	for plen := uint8(0); plen <= k.PortPrefixLen; plen++ {
		c := mapstate.Key{Identity: id, Egress: b.egress, Protocol: k.Protocol, Port: k.Port & portMask(plen), PortPrefixLen: plen}
		if cookie, ok := try(c); ok {
			return cookie, true
		}
	}
	return 0, false
}

// coveringDeny returns the cookie of a deny of k's identity covering k.
func (b *builder) coveringDeny(k mapstate.Key) (uint32, bool) {
	if !b.denied[k.Identity] {
		return 0, false
	}
	if a := b.entries[mapstate.Key{Identity: k.Identity, Egress: b.egress}]; a != nil && a.deny {
		return a.denyCookie, true
	}
	if k.Protocol == mapstate.ProtoAny {
		return 0, false
	}
	for plen := uint8(0); plen <= k.PortPrefixLen; plen++ {
		c := mapstate.Key{Identity: k.Identity, Egress: b.egress, Protocol: k.Protocol, Port: k.Port & portMask(plen), PortPrefixLen: plen}
		if a := b.entries[c]; a != nil && a.deny {
			return a.denyCookie, true
		}
	}
	return 0, false
}

func portMask(plen uint8) uint16 {
	if plen == 0 {
		return 0
	}
	return ^uint16(0) << (16 - plen)
}

// errNoProxyPort: an L7 entry needs a proxy port and the config gave 0.
var errNoProxyPort = errors.New("L7 rules apply but the L7 proxy has no port")

func (b *builder) finish(enforced bool, res *Resolved) error {
	// Step 2: plain allows take L7 entries they cover.
	type addition struct {
		k      mapstate.Key
		cookie uint32
	}
	var adds []addition
	var plainIDs []mapstate.Key // plain keys of identities other than 0, for identity-0 L7 entries
	for k, a := range b.entries {
		if !a.l7 || a.plain || a.deny {
			continue
		}
		if c, ok := b.coveringPlain(k.Identity, k); ok {
			a.plain, a.plainCookie = true, c
			continue
		}
		if k.Identity != 0 {
			if c, ok := b.coveringPlain(0, k); ok {
				a.plain, a.plainCookie = true, c
			}
			continue
		}
		if plainIDs == nil {
			plainIDs = []mapstate.Key{}
			for pk, pa := range b.entries {
				if pa.plain && pk.Identity != 0 {
					plainIDs = append(plainIDs, pk)
				}
			}
		}
		for _, pk := range plainIDs {
			if pk.Covers(mapstate.Key{Identity: pk.Identity, Egress: b.egress, Protocol: k.Protocol, Port: k.Port, PortPrefixLen: k.PortPrefixLen}) {
				adds = append(adds, addition{mapstate.Key{Identity: pk.Identity, Egress: b.egress, Protocol: k.Protocol, Port: k.Port, PortPrefixLen: k.PortPrefixLen}, b.entries[pk].plainCookie})
			}
		}
	}
	for _, ad := range adds {
		a := b.entries[ad.k]
		if a == nil {
			a = b.newAcc()
			b.entries[ad.k] = a
		}
		if !a.plain {
			a.plain = true
			a.plainCookie = ad.cookie
		}
	}
	// Step 3: a direction not in default deny allows what no rule denies.
	if !enforced {
		k := mapstate.Key{Egress: b.egress}
		if a := b.entries[k]; a == nil {
			b.entries[k] = &entryAcc{plain: true}
		} else {
			a.plain = true
		}
	}
	// Step 4: denies cover the allows under them.
	var proxyPort uint16
	for k, a := range b.entries {
		e := mapstate.Entry{}
		switch {
		case a.deny:
			e = mapstate.Entry{Deny: true, Cookie: a.denyCookie}
		default:
			if c, ok := b.coveringDeny(k); ok {
				e = mapstate.Entry{Deny: true, Cookie: c}
			} else if a.plain {
				e = mapstate.Entry{Cookie: a.plainCookie}
			} else {
				if proxyPort == 0 {
					if b.r.cfg.ProxyPort != nil {
						proxyPort = b.r.cfg.ProxyPort(b.egress)
					}
					if proxyPort == 0 {
						return errNoProxyPort
					}
				}
				e = mapstate.Entry{ProxyPort: proxyPort, Cookie: a.l7Cookie}
				b.proxyPort = proxyPort
			}
		}
		res.MapState[k] = e
	}
	b.l7Policy(res)
	return nil
}

// l7Policy gives the proxy, for every port with L7 rules, the rules' peers
// and HTTP rules, and an allow-all rule for the peers of every plain allow
// rule covering the port (those requests are allowed whatever the L7 rules
// say: rules add up).
func (b *builder) l7Policy(res *Resolved) {
	for pk, contribs := range b.l7s {
		var sels []*l7.Selection
		for _, c := range sortedContribs(contribs) {
			sels = append(sels, &l7.Selection{AnyPeer: c.any, Identities: c.ids, Rules: c.rules, Origin: c.origin})
		}
		for _, ii := range sortedItems(b.plainKeys) {
			s := &l7.Selection{Identities: map[identity.NumericIdentity]bool{}, Origin: ii.origin().String()}
			for _, k := range b.plainKeys[ii] {
				if !k.CoversPort(pk.Protocol, pk.Port) {
					continue
				}
				if k.Identity == 0 {
					s.AnyPeer = true
				} else {
					s.Identities[k.Identity] = true
				}
			}
			if s.AnyPeer || len(s.Identities) > 0 {
				sels = append(sels, s)
			}
		}
		res.L7.Ports[pk] = sels
	}
}
