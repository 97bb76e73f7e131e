package policy

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/membrane-net/membrane/pkg/identity"
)

// Enforcement modes, as Cilium's enable-policy.
const (
	// EnforcementDefault: an endpoint is in default deny in a direction
	// once a rule with that direction selects it.
	EnforcementDefault = "default"
	// EnforcementAlways: every endpoint is in default deny both ways.
	EnforcementAlways = "always"
	// EnforcementNever: no policy; everything is allowed.
	EnforcementNever = "never"
)

// Config configures a Repository.
type Config struct {
	// EnforcementMode is default, always or never ("" is default).
	EnforcementMode string
	// ProxyPort returns the port of the L7 proxy listener for a direction,
	// put in the entries of flows that need L7 checks. Policies with L7
	// rules are refused while it is nil.
	ProxyPort func(egress bool) uint16
}

// Validate reports whether the configuration is usable.
func (c Config) Validate() error {
	switch c.EnforcementMode {
	case "", EnforcementDefault, EnforcementAlways, EnforcementNever:
		return nil
	}
	return fmt.Errorf("policy config: enforcement mode %q: want default, always or never", c.EnforcementMode)
}

// RuleOrigin says where a map entry comes from: one rule of one policy.
type RuleOrigin struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// Path is the rule's path in its document: spec.ingress[0], [0].egress[1].
	Path        string `json:"path"`
	Description string `json:"description,omitempty"`
	File        string `json:"file,omitempty"`
	Document    int    `json:"document,omitempty"`
	Egress      bool   `json:"egress"`
	Deny        bool   `json:"deny"`
}

func (o RuleOrigin) String() string {
	name := o.Name
	if o.Namespace != "" {
		name = o.Namespace + "/" + name
	}
	s := fmt.Sprintf("%s %s %s", o.Kind, name, o.Path)
	if o.Description != "" {
		s += fmt.Sprintf(" (%s)", o.Description)
	}
	return s
}

// Repository holds the policies, the identities selectors choose among, and
// resolves endpoints' policies. It is safe for concurrent use.
type Repository struct {
	cfg  Config
	mode string
	log  *slog.Logger

	mu       sync.RWMutex
	revision uint64
	// Resolve reads specs without copying: changes build a new slice.
	policies map[policyKey]*installed
	order    []*installed // the policies in import order
	specs    []*instSpec  // of every installed policy, in import order
	cache    *selectorCache
	// Cookies name rules; a rule keeps its cookie while its policy keeps a
	// rule at the same path.
	cookies    map[cookieKey]uint32
	origins    map[uint32]*instItem
	nextCookie uint32
	// prefixes caches Prefixes until the policies change.
	prefixes atomic.Pointer[[]netip.Prefix]

	// polGen counts the changes of the installed specs; specSeq numbers
	// specs as they are bound, and recent holds the installed specs by
	// seq, so that a memoized resolution finds the specs bound after it.
	polGen  uint64
	specSeq uint64
	recent  []*instSpec
	// memos holds the last resolution of each endpoint (memo.go).
	memoMu sync.Mutex
	memos  map[uint64]*memo
	rounds memoRounds
}

type installed struct {
	pol   *Policy
	specs []*instSpec
	gone  bool // replaced or deleted
}

// instSpec is a specRule bound to the selector cache.
type instSpec struct {
	spec    *specRule
	pol     *Policy
	seq     uint64
	gone    bool // its policy was replaced or deleted
	subject *labelSelector
	// subjectCS: the identities the subject selector selects.
	subjectCS *cachedSelector
	items     []*instItem
}

type instItem struct {
	it     *item
	cookie uint32
	spec   *instSpec
	peers  []instPeer
}

// origin names the rule.
func (ii *instItem) origin() RuleOrigin {
	p, s := ii.spec.pol, ii.spec.spec
	return RuleOrigin{Kind: p.Kind, Namespace: p.Namespace, Name: p.Name, Path: ii.it.path,
		Description: s.description, File: p.File, Document: p.Document, Egress: ii.it.egress, Deny: ii.it.deny}
}

// instPeer is a peer with its cached selection.
type instPeer struct {
	p peer
	// wildcard: the peer is every identity (identity 0).
	wildcard bool
	// fixed: reserved identities the peer always stands for.
	fixed []identity.NumericIdentity
	// cs: the cached selection (nil for wildcards and fixed entities).
	cs *cachedSelector
}

// NewRepository returns an empty repository. An invalid enforcement mode
// (see Config.Validate) is logged and treated as always: failing closed.
func NewRepository(cfg Config, log *slog.Logger) *Repository {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mode := cfg.EnforcementMode
	if mode == "" {
		mode = EnforcementDefault
	}
	if err := cfg.Validate(); err != nil {
		log.Error("invalid policy enforcement mode, enforcing always", "mode", cfg.EnforcementMode)
		mode = EnforcementAlways
	}
	return &Repository{
		cfg: cfg, mode: mode, log: log,
		revision:   1,
		policies:   map[policyKey]*installed{},
		cache:      newSelectorCache(),
		cookies:    map[cookieKey]uint32{},
		memos:      map[uint64]*memo{},
		origins:    map[uint32]*instItem{},
		nextCookie: 1,
	}
}

// Revision returns the policy revision; every change adds one.
func (r *Repository) Revision() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.revision
}

// Import adds policies, replacing those of the same kind, namespace and
// name, all at once: on error nothing changes.
func (r *Repository) Import(pols []*Policy) (uint64, error) {
	if err := r.check(pols); err != nil {
		return 0, fmt.Errorf("import policies: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	replaced := map[*installed]*installed{}
	for _, p := range pols {
		old := r.policies[p.key()]
		inst := &installed{pol: p, specs: r.bind(p)}
		if old != nil {
			r.unbind(old, cookiesOf(inst))
			replaced[old] = inst
		} else {
			r.order = append(r.order, inst)
		}
		r.policies[p.key()] = inst
	}
	if len(replaced) > 0 {
		for i, in := range r.order {
			if n, ok := replaced[in]; ok {
				r.order[i] = n
			}
		}
	}
	r.rebuild()
	r.revision++
	r.log.Info("policies imported", "count", len(pols), "revision", r.revision)
	return r.revision, nil
}

// Restore replaces every policy with pols at once and sets the revision:
// for an agent restarting from its saved state, or putting back the
// policies it had before a change it could not enforce. Rules that keep
// their path keep their cookies. On error nothing changes.
func (r *Repository) Restore(pols []*Policy, revision uint64) error {
	if err := r.check(pols); err != nil {
		return fmt.Errorf("restore policies: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	fresh := map[policyKey]*installed{}
	var order []*installed
	keep := map[uint32]bool{}
	for _, p := range pols {
		inst := &installed{pol: p, specs: r.bind(p)}
		for c := range cookiesOf(inst) {
			keep[c] = true
		}
		fresh[p.key()] = inst
		order = append(order, inst)
	}
	for _, old := range r.policies {
		r.unbind(old, keep)
	}
	r.policies, r.order = fresh, order
	r.rebuild()
	r.revision = revision
	r.log.Info("policies restored", "count", len(pols), "revision", r.revision)
	return nil
}

// check refuses what Import and Restore cannot take.
func (r *Repository) check(pols []*Policy) error {
	seen := map[policyKey]*Policy{}
	for _, p := range pols {
		if p == nil || p.Kind == "" {
			return fmt.Errorf("%w: empty policy", ErrInvalid)
		}
		if prev, ok := seen[p.key()]; ok {
			return fmt.Errorf("%w: %s is given twice (%s document %d and %s document %d)",
				ErrConflict, p, prev.File, prev.Document, p.File, p.Document)
		}
		seen[p.key()] = p
		if r.cfg.ProxyPort == nil && hasL7(p) {
			return fmt.Errorf("%s: %w: L7 rules need the L7 proxy, which is not configured", p, ErrUnsupported)
		}
	}
	return nil
}

func cookiesOf(in *installed) map[uint32]bool {
	out := map[uint32]bool{}
	for _, s := range in.specs {
		for _, ii := range s.items {
			out[ii.cookie] = true
		}
	}
	return out
}

func hasL7(p *Policy) bool {
	for _, s := range p.specs {
		for _, it := range s.items {
			for _, ps := range it.ports {
				if ps.l7 {
					return true
				}
			}
		}
	}
	return false
}

// cookieKey names a rule across imports: its policy and its path.
type cookieKey struct {
	pol  policyKey
	path string
}

// bind acquires the selectors and cookies of a policy's rules.
func (r *Repository) bind(p *Policy) []*instSpec {
	out := make([]*instSpec, 0, len(p.specs))
	pk := p.key()
	for _, s := range p.specs {
		r.specSeq++
		is := &instSpec{spec: s, pol: p, seq: r.specSeq, subject: s.subject, subjectCS: r.cache.acquire(s.subject)}
		r.recent = append(r.recent, is)
		// One allocation for all items of the spec.
		items := make([]instItem, len(s.items))
		is.items = make([]*instItem, len(s.items))
		npeers := 0
		for _, it := range s.items {
			npeers += len(it.peers)
		}
		peers := make([]instPeer, 0, npeers)
		for i, it := range s.items {
			ck := cookieKey{pk, it.path}
			c, ok := r.cookies[ck]
			if !ok {
				c = r.nextCookie
				r.nextCookie++
				r.cookies[ck] = c
			}
			ii := &items[i]
			*ii = instItem{it: it, cookie: c, spec: is}
			r.origins[c] = ii
			start := len(peers)
			for _, pr := range it.peers {
				peers = append(peers, r.bindPeer(pr))
			}
			if len(peers) > start {
				ii.peers = peers[start:len(peers):len(peers)]
			}
			is.items[i] = ii
		}
		out = append(out, is)
	}
	return out
}

func (r *Repository) bindPeer(p peer) instPeer {
	ip := instPeer{p: p}
	switch p.kind {
	case peerSelector:
		ip.wildcard = p.sel.wildcard()
		ip.cs = r.cache.acquire(p.sel)
	case peerEntity:
		switch p.entity {
		case EntityAll:
			ip.wildcard = true
		case EntityNone:
		case EntityCluster:
			ip.fixed = clusterReserved
			ip.cs = r.cache.acquire(clusterSelector{})
		default:
			ip.fixed = []identity.NumericIdentity{entityIDs[p.entity]}
		}
	case peerCIDR:
		ip.cs = r.cache.acquire(p.cidr)
	}
	return ip
}

// unbind releases what an installed policy holds, but the cookies in keep
// (those the policies replacing it still use).
func (r *Repository) unbind(old *installed, keep map[uint32]bool) {
	old.gone = true
	for _, s := range old.specs {
		s.gone = true
		r.cache.release(s.subjectCS)
		for _, ii := range s.items {
			for _, ip := range ii.peers {
				if ip.cs != nil {
					r.cache.release(ip.cs)
				}
			}
			if !keep[ii.cookie] {
				delete(r.cookies, cookieKey{old.pol.key(), ii.it.path})
				delete(r.origins, ii.cookie)
			}
		}
	}
}

// rebuild drops deleted policies from the import order and lists the
// installed specs in that order.
func (r *Repository) rebuild() {
	order := r.order[:0]
	specs := make([]*instSpec, 0, len(r.specs)+8)
	for _, in := range r.order {
		if in.gone {
			continue
		}
		order = append(order, in)
		specs = append(specs, in.specs...)
	}
	clear(r.order[len(order):])
	r.order, r.specs = order, specs
	r.prefixes.Store(nil)
	recent := r.recent[:0]
	for _, s := range r.recent {
		if !s.gone {
			recent = append(recent, s)
		}
	}
	clear(r.recent[len(recent):])
	r.recent = recent
	r.polGen++
}

// Delete removes the policies a name designates: NAME (any namespace),
// NAMESPACE/NAME, or KIND/NAMESPACE/NAME (KIND/NAME for clusterwide policies
// and rule lists); KIND may be a kind or cnp, ccnp, netpol, rules. It fails
// when nothing matches, or when NAME alone matches policies in several
// namespaces or of several kinds.
func (r *Repository) Delete(name string) (uint64, []*Policy, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	keys, err := r.match(name)
	if err != nil {
		return r.revision, nil, fmt.Errorf("delete policy: %w", err)
	}
	var deleted []*Policy
	for _, k := range keys {
		in := r.policies[k]
		r.unbind(in, nil)
		delete(r.policies, k)
		deleted = append(deleted, in.pol)
	}
	r.rebuild()
	r.revision++
	r.log.Info("policies deleted", "name", name, "count", len(deleted), "revision", r.revision)
	return r.revision, deleted, nil
}

// DeleteAll removes every policy.
func (r *Repository) DeleteAll() (uint64, []*Policy) {
	r.mu.Lock()
	defer r.mu.Unlock()
	deleted := r.listLocked()
	for _, in := range r.policies {
		r.unbind(in, nil)
	}
	r.policies = map[policyKey]*installed{}
	r.order = nil
	r.rebuild()
	r.revision++
	return r.revision, deleted
}

var kindAliases = map[string]string{
	"ciliumnetworkpolicy": KindCNP, "cnp": KindCNP,
	"ciliumclusterwidenetworkpolicy": KindCCNP, "ccnp": KindCCNP,
	"networkpolicy": KindKNP, "netpol": KindKNP, "knp": KindKNP,
	"ciliumrulelist": KindRuleList, "rules": KindRuleList, "rulelist": KindRuleList,
}

func (r *Repository) match(name string) ([]policyKey, error) {
	parts := strings.Split(name, "/")
	var kind, ns, n string
	nsGiven := false
	switch len(parts) {
	case 1:
		n = parts[0]
	case 2:
		ns, n, nsGiven = parts[0], parts[1], true
		if k, ok := kindAliases[strings.ToLower(parts[0])]; ok && !r.hasNamespace(parts[0]) {
			kind, ns, nsGiven = k, "", false
		}
	case 3:
		k, ok := kindAliases[strings.ToLower(parts[0])]
		if !ok {
			return nil, fmt.Errorf("%w: %q: unknown kind %q", ErrNotFound, name, parts[0])
		}
		kind, ns, n, nsGiven = k, parts[1], parts[2], true
	default:
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	var keys []policyKey
	for k := range r.policies {
		if k.name == n && (kind == "" || k.kind == kind) && (!nsGiven || k.namespace == ns) {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool { return keyLess(keys[i], keys[j]) })
	switch {
	case len(keys) == 0:
		return nil, fmt.Errorf("%w: %q", ErrNotFound, name)
	case len(keys) > 1:
		names := make([]string, len(keys))
		for i, k := range keys {
			names[i] = r.policies[k].pol.String()
		}
		return nil, fmt.Errorf("%w: %q matches %s; give NAMESPACE/NAME or KIND/NAMESPACE/NAME", ErrAmbiguous, name, strings.Join(names, ", "))
	}
	return keys, nil
}

func (r *Repository) hasNamespace(ns string) bool {
	for k := range r.policies {
		if k.namespace == ns {
			return true
		}
	}
	return false
}

func keyLess(a, b policyKey) bool {
	if a.kind != b.kind {
		return a.kind < b.kind
	}
	if a.namespace != b.namespace {
		return a.namespace < b.namespace
	}
	return a.name < b.name
}

// List returns the policies by kind, namespace and name.
func (r *Repository) List() []*Policy {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.listLocked()
}

func (r *Repository) listLocked() []*Policy {
	keys := make([]policyKey, 0, len(r.policies))
	for k := range r.policies {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keyLess(keys[i], keys[j]) })
	out := make([]*Policy, len(keys))
	for i, k := range keys {
		out[i] = r.policies[k].pol
	}
	return out
}

// Prefixes returns every CIDR the policies name, deduplicated and sorted.
func (r *Repository) Prefixes() []netip.Prefix {
	r.mu.RLock()
	defer r.mu.RUnlock()
	pfs := r.prefixes.Load()
	if pfs == nil {
		lists := make([][]netip.Prefix, 0, len(r.order))
		for _, in := range r.order {
			lists = append(lists, in.pol.prefixes)
		}
		merged := mergePrefixes(lists)
		pfs = &merged
		r.prefixes.Store(pfs)
	}
	return append([]netip.Prefix(nil), (*pfs)...)
}

// mergePrefixes merges sorted lists of prefixes into one, without
// duplicates.
func mergePrefixes(lists [][]netip.Prefix) []netip.Prefix {
	for len(lists) > 1 {
		var next [][]netip.Prefix
		for i := 0; i < len(lists); i += 2 {
			if i+1 == len(lists) {
				next = append(next, lists[i])
				break
			}
			a, b := lists[i], lists[i+1]
			m := make([]netip.Prefix, 0, len(a)+len(b))
			for len(a) > 0 && len(b) > 0 {
				switch c := comparePrefixes(a[0], b[0]); {
				case c < 0:
					m, a = append(m, a[0]), a[1:]
				case c > 0:
					m, b = append(m, b[0]), b[1:]
				default:
					m, a, b = append(m, a[0]), a[1:], b[1:]
				}
			}
			next = append(next, append(append(m, a...), b...))
		}
		lists = next
	}
	if len(lists) == 0 {
		return []netip.Prefix{}
	}
	return lists[0]
}

// PrefixDiff compares two lists of prefixes sorted as Prefixes sorts
// them: added are those only in next, removed those only in prev, both in
// that order. It costs one pass over the lists and allocates only its
// results.
func PrefixDiff(prev, next []netip.Prefix) (added, removed []netip.Prefix) {
	for len(prev) > 0 && len(next) > 0 {
		switch c := comparePrefixes(prev[0], next[0]); {
		case c < 0:
			removed, prev = append(removed, prev[0]), prev[1:]
		case c > 0:
			added, next = append(added, next[0]), next[1:]
		default:
			prev, next = prev[1:], next[1:]
		}
	}
	return append(added, next...), append(removed, prev...)
}

// Origin returns the rule a cookie names.
func (r *Repository) Origin(cookie uint32) (RuleOrigin, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ii, ok := r.origins[cookie]
	if !ok {
		return RuleOrigin{}, false
	}
	return ii.origin(), true
}

// UpsertIdentity tells the repository of an identity, or of new labels or
// named ports of one. Telling it again of an identity as it knows it
// changes nothing. Its cost does not grow with the number of selectors or
// identities (see selectorcache.go).
func (r *Repository) UpsertIdentity(si SelectableIdentity) {
	rec := newIdentRecord(si)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cache.upsert(rec)
}

// UpsertIdentities is UpsertIdentity for many identities at once (one
// lock).
func (r *Repository) UpsertIdentities(sis []SelectableIdentity) {
	recs := make([]identRecord, len(sis))
	for i, si := range sis {
		recs[i] = *newIdentRecord(si)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range recs {
		r.cache.upsert(&recs[i])
	}
}

func newIdentRecord(si SelectableIdentity) *identRecord {
	rec := &identRecord{id: si.ID, raw: si.Labels, class: classOf(si.ID), prefix: si.Prefix.Masked()}
	if len(si.NamedPorts) > 0 {
		rec.namedPorts = append([]NamedPort(nil), si.NamedPorts...)
	}
	if rec.class == classCIDR && !rec.prefix.IsValid() {
		rec.prefix = prefixFromLabels(si.Labels)
	}
	rec.labels = effectiveLabels(si.Labels, rec.class)
	return rec
}

// RemoveIdentity forgets an identity.
func (r *Repository) RemoveIdentity(id identity.NumericIdentity) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cache.remove(id)
}

// RemoveIdentities is RemoveIdentity for many identities at once.
func (r *Repository) RemoveIdentities(ids []identity.NumericIdentity) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, id := range ids {
		r.cache.remove(id)
	}
}
