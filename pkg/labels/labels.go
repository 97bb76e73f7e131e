// Package labels owns Membrane's labels (`source:key=value`) and label
// selectors (matchLabels and matchExpressions, as Kubernetes and Cilium
// write them). It knows nothing of identities or policies.
package labels

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode"
)

// Label sources.
const (
	SourceContainer = "container" // Docker and podman labels
	SourceK8s       = "k8s"       // Kubernetes pod and namespace labels
	SourceReserved  = "reserved"  // identities Membrane defines: host, world, ...
	SourceCIDR      = "cidr"      // addresses named by policies
	SourceUnspec    = "unspec"    // given without a source
	SourceAny       = "any"       // selectors only: matches every source
)

// Kubernetes conventions for namespaces, as Cilium writes them.
const (
	PodNamespaceLabel     = "io.kubernetes.pod.namespace"
	NamespaceLabelsPrefix = "io.cilium.k8s.namespace.labels."
	DefaultNamespace      = "default"
)

var knownSources = map[string]bool{
	SourceContainer: true, SourceK8s: true, SourceReserved: true,
	SourceCIDR: true, SourceUnspec: true,
}

// IsSource reports whether s names a label source (any included).
func IsSource(s string) bool { return knownSources[s] || s == SourceAny }

// ErrMalformed is wrapped by every parse error of this package.
var ErrMalformed = errors.New("malformed label")

// Label is one `source:key=value` label. Value may be empty.
type Label struct {
	Source string `json:"source"`
	Key    string `json:"key"`
	Value  string `json:"value"`
}

// String renders the label as `source:key=value` (`source:key` when the
// value is empty).
func (l Label) String() string {
	if l.Value == "" {
		return l.Source + ":" + l.Key
	}
	return l.Source + ":" + l.Key + "=" + l.Value
}

// splitSource splits `source:rest` when the text before the first colon is a
// known source and comes before any '='.
func splitSource(s string) (source, rest string) {
	i := strings.IndexByte(s, ':')
	if i < 0 {
		return "", s
	}
	if eq := strings.IndexByte(s, '='); eq >= 0 && eq < i {
		return "", s
	}
	return s[:i], s[i+1:]
}

// ParseLabel parses `[source:]key[=value]`; a label without a source gets
// defaultSource.
func ParseLabel(s, defaultSource string) (Label, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Label{}, fmt.Errorf("%w: empty label", ErrMalformed)
	}
	src, rest := splitSource(s)
	if src == "" {
		src = defaultSource
	} else if !knownSources[src] {
		return Label{}, fmt.Errorf("%w %q: unknown source %q (want one of container, k8s, reserved, cidr, unspec)", ErrMalformed, s, src)
	}
	key, value, _ := strings.Cut(rest, "=")
	if err := validKey(key); err != nil {
		return Label{}, fmt.Errorf("%w %q: %v", ErrMalformed, s, err)
	}
	if err := validValue(value); err != nil {
		return Label{}, fmt.Errorf("%w %q: %v", ErrMalformed, s, err)
	}
	return Label{Source: src, Key: key, Value: value}, nil
}

func validKey(k string) error {
	if k == "" {
		return errors.New("empty key")
	}
	if len(k) > 253 {
		return errors.New("key longer than 253 characters")
	}
	for _, r := range k {
		switch {
		case r < 128 && (unicode.IsLetter(r) || unicode.IsDigit(r)):
		case r == '.' || r == '-' || r == '_' || r == '/':
		default:
			return fmt.Errorf("key %q: character %q not allowed (letters, digits, '.', '-', '_', '/')", k, r)
		}
	}
	return nil
}

func validValue(v string) error {
	if len(v) > 1024 {
		return errors.New("value longer than 1024 characters")
	}
	for _, r := range v {
		if unicode.IsControl(r) || r == ',' {
			return fmt.Errorf("value %q: character %q not allowed", v, r)
		}
	}
	return nil
}

// Labels is a set of labels, sorted by source and key, with at most one
// value per source:key. The zero value is the empty set.
type Labels []Label

// New builds a label set; a later label with the same source:key replaces an
// earlier one.
func New(ls ...Label) Labels {
	m := make(map[string]Label, len(ls))
	for _, l := range ls {
		m[l.Source+":"+l.Key] = l
	}
	out := make(Labels, 0, len(m))
	for _, l := range m {
		out = append(out, l)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Source != out[j].Source {
			return out[i].Source < out[j].Source
		}
		return out[i].Key < out[j].Key
	})
	return out
}

// Parse parses a comma-separated list such as `id=app1,k8s:app=web`.
func Parse(s, defaultSource string) (Labels, error) {
	if strings.TrimSpace(s) == "" {
		return Labels{}, nil
	}
	return ParseList(strings.Split(s, ","), defaultSource)
}

// ParseList parses each string with ParseLabel; a source:key given twice
// with different values is an error.
func ParseList(ss []string, defaultSource string) (Labels, error) {
	seen := map[string]string{}
	ls := make([]Label, 0, len(ss))
	for _, s := range ss {
		l, err := ParseLabel(s, defaultSource)
		if err != nil {
			return nil, err
		}
		k := l.Source + ":" + l.Key
		if v, ok := seen[k]; ok && v != l.Value {
			return nil, fmt.Errorf("%w: %s given twice with values %q and %q", ErrMalformed, k, v, l.Value)
		}
		seen[k] = l.Value
		ls = append(ls, l)
	}
	return New(ls...), nil
}

// String renders the set as a comma-separated list in canonical order; it is
// the identity key of the set.
func (ls Labels) String() string {
	parts := make([]string, len(ls))
	for i, l := range ls {
		parts[i] = l.String()
	}
	return strings.Join(parts, ",")
}

// Strings renders each label.
func (ls Labels) Strings() []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.String()
	}
	return out
}

// Equal reports whether two sets hold the same labels.
func (ls Labels) Equal(o Labels) bool {
	if len(ls) != len(o) {
		return false
	}
	for i := range ls {
		if ls[i] != o[i] {
			return false
		}
	}
	return true
}

// Get returns the value of key from source (SourceAny: the first source that
// has it).
func (ls Labels) Get(source, key string) (string, bool) {
	for _, l := range ls {
		if l.Key == key && (source == SourceAny || source == l.Source) {
			return l.Value, true
		}
	}
	return "", false
}

// Has reports whether the set holds this exact label.
func (ls Labels) Has(l Label) bool {
	for _, x := range ls {
		if x == l {
			return true
		}
	}
	return false
}

// HasSource reports whether any label has this source.
func (ls Labels) HasSource(source string) bool {
	for _, l := range ls {
		if l.Source == source {
			return true
		}
	}
	return false
}

// Namespace returns the Kubernetes namespace the labels put an endpoint in:
// the value of io.kubernetes.pod.namespace (any source), else "default".
func (ls Labels) Namespace() string {
	if v, ok := ls.Get(SourceAny, PodNamespaceLabel); ok {
		return v
	}
	return DefaultNamespace
}
