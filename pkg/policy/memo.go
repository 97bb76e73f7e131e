package policy

import (
	"slices"
	"sort"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
)

// Memoized resolution: Resolve keeps, for each endpoint, its last result
// and what the result was computed from, and returns the same *Resolved
// again while none of it has changed, so that the agent can skip the
// endpoints a change does not concern. A result depends on
//   - the endpoint as given (identity, labels, named ports);
//   - the record of its identity (which decides the rules selecting it);
//   - the specs selecting it: none of them replaced or deleted, and none
//     of the specs bound since selecting it;
//   - the selections of the selectors its rules' peers use (each
//     selector's generation), the records of the reserved identities of
//     its entity peers, and, for some rules, every identity (a wildcard
//     narrowed by fromRequires) or every identity's named ports (egress
//     named ports of CIDR and wildcard peers);
//   - the L7 proxy ports the configuration gives.
//
// When in doubt (anything else), it resolves again.

// memo is the last resolution of one endpoint.
type memo struct {
	ep  Endpoint
	res *Resolved
	// round is the resolve round it was last used in.
	round uint64

	// Nothing changed at all: the repository's generations are the same.
	polGen, cacheGen uint64

	rec      *identRecord // the cache's record of ep.Identity (nil: none)
	specSeq  uint64       // specs bound after it are new to the memo
	specs    []*instSpec  // the specs that selected the endpoint
	deps     resolveDeps
	proxyFor [2]uint16 // the proxy port of each direction it used (0: none)
}

// resolveDeps collects what a resolution read besides the specs.
type resolveDeps struct {
	sels     []*cachedSelector
	fixed    []fixedDep
	allIDs   bool // every identity (a wildcard narrowed by requirements)
	allNamed bool // the named ports of every identity
}

type fixedDep struct {
	id  identity.NumericIdentity
	rec *identRecord
}

func (d *resolveDeps) sel(cs *cachedSelector) {
	if d != nil {
		d.sels = append(d.sels, cs)
	}
}

func (d *resolveDeps) fixedID(id identity.NumericIdentity, rec *identRecord) {
	if d != nil {
		d.fixed = append(d.fixed, fixedDep{id, rec})
	}
}

// memoRounds numbers resolve rounds: a round is the resolutions between
// two changes of the repository. A memo unused for memoKeepRounds rounds
// is dropped (its endpoint is most likely gone; ForgetEndpoint says so).
type memoRounds struct {
	round          uint64
	polGen, cgen   uint64
	lastSweepRound uint64
}

const memoKeepRounds = 256

// memoized returns the memoized resolution of ep when it still holds.
// The caller holds r.mu (read).
func (r *Repository) memoized(ep *Endpoint) *Resolved {
	r.memoMu.Lock()
	m := r.memos[ep.ID]
	round := r.advanceRound()
	if m != nil {
		m.round = round
	}
	r.memoMu.Unlock()
	if m == nil || !m.holds(r, ep) {
		return nil
	}
	if m.polGen != r.polGen || m.cacheGen != r.cache.gen {
		// Bring the memo to the present, so that the next check is the
		// quick one: no spec bound since selects the endpoint, no
		// dependency changed. Memos are not changed once stored.
		r.memoMu.Lock()
		if r.memos[ep.ID] == m {
			nm := *m
			nm.specSeq, nm.polGen, nm.cacheGen = r.specSeq, r.polGen, r.cache.gen
			r.memos[ep.ID] = &nm
		}
		r.memoMu.Unlock()
	}
	return m.res
}

// newMemo starts the memo of a resolution of ep. The caller holds r.mu.
func (r *Repository) newMemo(ep *Endpoint) *memo {
	return &memo{
		ep:     Endpoint{ID: ep.ID, Identity: ep.Identity, Labels: slices.Clone(ep.Labels), NamedPorts: slices.Clone(ep.NamedPorts)},
		polGen: r.polGen, cacheGen: r.cache.gen, rec: r.cache.ids[ep.Identity], specSeq: r.specSeq,
	}
}

// advanceRound returns the current round, starting a new one when the
// repository changed since the last resolution. The caller holds memoMu.
func (r *Repository) advanceRound() uint64 {
	rd := &r.rounds
	if rd.polGen != r.polGen || rd.cgen != r.cache.gen {
		rd.round++
		rd.polGen, rd.cgen = r.polGen, r.cache.gen
		if rd.round-rd.lastSweepRound >= memoKeepRounds {
			rd.lastSweepRound = rd.round
			for id, o := range r.memos {
				if rd.round-o.round >= memoKeepRounds {
					delete(r.memos, id)
				}
			}
		}
	}
	return rd.round
}

// remember stores a resolution and what it read.
func (r *Repository) remember(m *memo) {
	r.memoMu.Lock()
	defer r.memoMu.Unlock()
	m.round = r.advanceRound()
	r.memos[m.ep.ID] = m
}

// ForgetEndpoint drops what Resolve remembers of an endpoint (call it when
// the endpoint goes; Resolve also forgets endpoints it has not resolved
// for a while).
func (r *Repository) ForgetEndpoint(id uint64) {
	r.memoMu.Lock()
	defer r.memoMu.Unlock()
	delete(r.memos, id)
}

// holds reports whether the memo is still the resolution of ep. The
// caller holds r.mu (read).
func (m *memo) holds(r *Repository, ep *Endpoint) bool {
	if m.ep.Identity != ep.Identity || !m.ep.Labels.Equal(ep.Labels) || !sameNamedPorts(m.ep.NamedPorts, ep.NamedPorts) {
		return false
	}
	for egress, port := range m.proxyFor {
		if port != 0 && (r.cfg.ProxyPort == nil || r.cfg.ProxyPort(egress == 1) != port) {
			return false
		}
	}
	c := r.cache
	if m.polGen == r.polGen && m.cacheGen == c.gen {
		return true
	}
	if c.ids[ep.Identity] != m.rec {
		return false
	}
	if m.polGen != r.polGen {
		for _, s := range m.specs {
			if s.gone {
				return false
			}
		}
		sel := newSubjectMatcher(r, ep)
		recent := r.recent
		for i := sort.Search(len(recent), func(i int) bool { return recent[i].seq > m.specSeq }); i < len(recent); i++ {
			if sel.selects(recent[i]) {
				return false
			}
		}
	}
	if m.cacheGen != c.gen {
		d := &m.deps
		if (d.allIDs && c.idsGen > m.cacheGen) || (d.allNamed && c.namedGen > m.cacheGen) {
			return false
		}
		for _, cs := range d.sels {
			if cs.gen > m.cacheGen {
				return false
			}
		}
		for _, f := range d.fixed {
			if c.ids[f.id] != f.rec {
				return false
			}
		}
	}
	return true
}

func sameNamedPorts(a, b []NamedPort) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// subjectMatcher tells whether a spec selects an endpoint: from the
// selector cache when the endpoint's identity is known with these labels,
// else by matching the labels.
type subjectMatcher struct {
	id    identity.NumericIdentity
	known bool
	eff   labels.Labels
	class idClass
}

func newSubjectMatcher(r *Repository, ep *Endpoint) *subjectMatcher {
	m := &subjectMatcher{id: ep.Identity}
	if rec, ok := r.cache.ids[ep.Identity]; ok && ep.Identity != identity.Unknown && rec.raw.Equal(ep.Labels) {
		m.known = true
		return m
	}
	m.class = classOf(ep.Identity)
	m.eff = effectiveLabels(ep.Labels, m.class)
	return m
}

func (m *subjectMatcher) selects(s *instSpec) bool {
	if m.known {
		_, ok := s.subjectCS.selected[m.id]
		return ok
	}
	return s.subject.matches(m.eff, m.class)
}
