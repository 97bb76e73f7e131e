package conformance

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// ErrBadCase says a case file does not follow the schema.
var ErrBadCase = errors.New("bad conformance case")

// Levels of a case.
const (
	LevelPod      = "pod"
	LevelIdentity = "identity"
	LevelSelector = "selector"
)

// Case is one conformance case file (schemaVersion 1, see the cases'
// README). Fields the runner does not use are not decoded.
type Case struct {
	// File is the path the case was read from.
	File          string            `json:"-"`
	SchemaVersion int               `json:"schemaVersion"`
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Source        Source            `json:"source"`
	Features      []string          `json:"features"`
	Level         string            `json:"level"`
	Topology      *Topology         `json:"topology"`
	Policies      []json.RawMessage `json:"policies"`
	Expected      Expected          `json:"expected"`
}

// Source says where the case comes from.
type Source struct {
	Repo   string `json:"repo"`
	Commit string `json:"commit"`
	Path   string `json:"path"`
	Test   string `json:"test"`
	Step   *Step  `json:"step"`
}

// Step places a case in a multi-step test.
type Step struct {
	Index int `json:"index"`
	Of    int `json:"of"`
}

// Topology is the pods, namespaces and outside peers of a case.
type Topology struct {
	Namespaces  map[string]Namespace `json:"namespaces"`
	Pods        []Pod                `json:"pods"`
	ServedPorts []ServedPort         `json:"servedPorts"`
	Nodes       []Node               `json:"nodes"`
	External    []External           `json:"external"`
	Identities  []IdentitySpec       `json:"identities"`
}

// Namespace is a Kubernetes namespace.
type Namespace struct {
	Labels map[string]string `json:"labels"`
}

// Pod is one pod; Name is `<namespace>/<pod>`.
type Pod struct {
	Name                string            `json:"name"`
	Namespace           string            `json:"namespace"`
	Labels              map[string]string `json:"labels"`
	IP                  string            `json:"ip"`
	Node                string            `json:"node"`
	CiliumDerivedLabels map[string]string `json:"ciliumDerivedLabels"`
	ServedPorts         []ServedPort      `json:"servedPorts"`
}

// ServedPort is a port every pod (or one pod) serves; Name is the
// container port name (`serve-80-tcp`), empty when unnamed.
type ServedPort struct {
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	Name     string `json:"name"`
}

// Node is a node of the case's cluster.
type Node struct {
	Name       string   `json:"name"`
	InternalIP string   `json:"internalIP"`
	PodsOnNode []string `json:"podsOnNode"`
}

// External is a peer outside the cluster (kind ip or fqdn).
type External struct {
	Name       string   `json:"name"`
	Kind       string   `json:"kind"`
	ResolvesTo []string `json:"resolvesTo"`
	Entity     string   `json:"entity"`
	Ports      []uint16 `json:"ports"`
}

// IdentitySpec is an identity of an identity-level case. Labels is a list,
// or a Go expression when the upstream test computes them.
type IdentitySpec struct {
	Name      string          `json:"name"`
	Labels    json.RawMessage `json:"labels"`
	ExampleIP string          `json:"exampleIP"`
	Role      string          `json:"role"`
}

// LabelList returns the identity's labels when they are a list.
func (s IdentitySpec) LabelList() ([]string, bool) {
	var ls []string
	if err := json.Unmarshal(s.Labels, &ls); err != nil {
		return nil, false
	}
	return ls, true
}

// Expected is the case's truth table.
type Expected struct {
	Derivation      string          `json:"derivation"`
	IgnoreLoopback  bool            `json:"ignoreLoopback"`
	Partial         bool            `json:"partial"`
	Probes          []ProbeSpec     `json:"probes"`
	SelectorMatches []SelectorMatch `json:"selectorMatches"`
}

// ProbeSpec is one expected probe. Pod-level cases set Allowed; Cilium
// cases set Result (and HTTPStatus for HTTP); identity-level cases set
// PeerIdentity, Direction and Subject.
type ProbeSpec struct {
	From            string            `json:"from"`
	To              string            `json:"to"`
	Port            PortValue         `json:"port"`
	Protocol        string            `json:"protocol"`
	Allowed         *bool             `json:"allowed"`
	LoopbackIgnored bool              `json:"loopbackIgnored"`
	Method          string            `json:"method"`
	Path            string            `json:"path"`
	Headers         map[string]string `json:"headers"`
	Result          string            `json:"result"`
	HTTPStatus      *int              `json:"httpStatus"`
	URL             string            `json:"url"`
	Probe           string            `json:"probe"`
	PeerIdentity    string            `json:"peerIdentity"`
	Direction       string            `json:"direction"`
	Subject         string            `json:"subject"`
}

// PortValue is a port number, or `any` (Any, Port 0).
type PortValue struct {
	Port uint16
	Any  bool
}

// UnmarshalJSON reads 80, "80" or "any".
func (p *PortValue) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "null" || s == "" {
		*p = PortValue{}
		return nil
	}
	if strings.EqualFold(s, "any") {
		*p = PortValue{Any: true}
		return nil
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return fmt.Errorf("port %s: want a number or any", b)
	}
	*p = PortValue{Port: uint16(n)}
	return nil
}

// MarshalJSON writes the port as a number, or "any".
func (p PortValue) MarshalJSON() ([]byte, error) {
	if p.Any {
		return []byte(`"any"`), nil
	}
	return []byte(strconv.Itoa(int(p.Port))), nil
}

func (p PortValue) String() string {
	if p.Any {
		return "any"
	}
	return strconv.Itoa(int(p.Port))
}

// SelectorMatch is one row of a selector table.
type SelectorMatch struct {
	Name     string            `json:"name"`
	Selector *LabelSelector    `json:"selector"`
	Labels   map[string]string `json:"labels"`
	Match    bool              `json:"match"`
}

// LabelSelector is a Kubernetes metav1.LabelSelector.
type LabelSelector struct {
	MatchLabels      map[string]string `json:"matchLabels"`
	MatchExpressions []struct {
		Key      string   `json:"key"`
		Operator string   `json:"operator"`
		Values   []string `json:"values"`
	} `json:"matchExpressions"`
}

var stepSuffix = regexp.MustCompile(`/step-(\d+)$`)

// Group is the name of the test a multi-step case belongs to (its name
// without `/step-N`); a single-step case is its own group.
func (c *Case) Group() string { return stepSuffix.ReplaceAllString(c.Name, "") }

// StepIndex is the case's step (1 for a single-step case).
func (c *Case) StepIndex() int {
	if c.Source.Step != nil && c.Source.Step.Index > 0 {
		return c.Source.Step.Index
	}
	if m := stepSuffix.FindStringSubmatch(c.Name); m != nil {
		n, _ := strconv.Atoi(m[1])
		return n
	}
	return 1
}

// Parse reads one case.
func Parse(file string, data []byte) (*Case, error) {
	var c Case
	if err := yaml.Unmarshal(data, &c); err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrBadCase, file, err)
	}
	c.File = file
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("%w %s: %v", ErrBadCase, file, err)
	}
	return &c, nil
}

func (c *Case) validate() error {
	if c.SchemaVersion != 1 {
		return fmt.Errorf("schemaVersion %d: want 1", c.SchemaVersion)
	}
	if c.ID == "" || c.Name == "" {
		return errors.New("id and name are required")
	}
	if c.Level == "" {
		c.Level = LevelPod
	}
	switch c.Level {
	case LevelPod, LevelIdentity:
		if c.Topology == nil {
			return errors.New("topology is required")
		}
		if len(c.Expected.Probes) == 0 {
			return errors.New("expected.probes is empty")
		}
	case LevelSelector:
		if len(c.Expected.SelectorMatches) == 0 {
			return errors.New("expected.selectorMatches is empty")
		}
	default:
		return fmt.Errorf("level %q: want pod, identity or selector", c.Level)
	}
	for i, p := range c.Expected.Probes {
		if c.Level == LevelIdentity {
			if p.PeerIdentity == "" || (p.Direction != "ingress" && p.Direction != "egress") {
				return fmt.Errorf("expected.probes[%d]: want peerIdentity and direction ingress or egress", i)
			}
		} else if p.From == "" || p.To == "" {
			return fmt.Errorf("expected.probes[%d]: want from and to", i)
		}
		if p.Allowed == nil && p.Result == "" {
			return fmt.Errorf("expected.probes[%d]: want allowed or result", i)
		}
		switch p.Result {
		case "", ResultAllowed, ResultDropped, ResultL7Denied:
		default:
			return fmt.Errorf("expected.probes[%d]: result %q: want allowed, dropped or l7-denied", i, p.Result)
		}
	}
	return nil
}

// Load reads one case file.
func Load(path string) (*Case, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read case: %w", err)
	}
	return Parse(path, b)
}

// LoadDir reads every *.yaml / *.yml case of dir, sorted by file name; with
// run set, only cases whose file name, id or name matches.
func LoadDir(dir string, run *regexp.Regexp) ([]*Case, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read case directory: %w", err)
	}
	var names []string
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() || !(strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) {
			continue
		}
		names = append(names, n)
	}
	sort.Strings(names)
	var out []*Case
	for _, n := range names {
		c, err := Load(filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		if run != nil && !run.MatchString(n) && !run.MatchString(c.ID) && !run.MatchString(c.Name) {
			continue
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("read case directory %s: no case file (*.yaml) matched", dir)
	}
	return out, nil
}
