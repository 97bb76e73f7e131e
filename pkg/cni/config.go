// Package cni owns membrane-cni, Membrane's CNI plugin (spec 0.3.x to
// 1.1.0: ADD, DEL, CHECK, STATUS, GC, VERSION): it reads the network
// configuration and the runtime's arguments, gathers the container's
// labels, and asks the agent, over its API socket, to wire the namespace
// as an endpoint. The agent owns addresses, identities, routes and policy;
// this package never touches the kernel except to read back, for CHECK,
// what the agent configured.
package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/labels"
)

// DefaultPodmanSocket is where a rootful `podman system service` listens.
const DefaultPodmanSocket = "/run/podman/podman.sock"

// DefaultLabelTimeout bounds the wait for a runtime's labels.
const DefaultLabelTimeout = 2 * time.Minute

// NetConf is the plugin's part of a network configuration:
//
//	{"type": "membrane-cni", "socket": "/run/membrane/membrane.sock",
//	 "podmanSocket": "/run/podman/podman.sock",
//	 "args": {"labels": {"id": "app1"}}}
type NetConf struct {
	types.PluginConf
	// Socket is the agent's API socket (api.DefaultSocket if empty).
	Socket string `json:"socket,omitempty"`
	// PodmanSocket is the podman API the container's labels are read
	// from when it answers; absent: DefaultPodmanSocket; "": never.
	PodmanSocket *string `json:"podmanSocket,omitempty"`
	// LabelTimeout bounds the wait for the runtime's labels ("2m").
	LabelTimeout string `json:"labelTimeout,omitempty"`
	// LogFile receives what the plugin does in the background.
	LogFile string    `json:"logFile,omitempty"`
	Args    *ConfArgs `json:"args,omitempty"`

	labelTimeout time.Duration
}

// ConfArgs are the config's "args": labels as a map
// ({"labels": {"id": "app1"}}) or as CNI's convention has them
// ({"cni": {"labels": [{"key": "id", "value": "app1"}]}}).
type ConfArgs struct {
	Labels LabelList `json:"labels,omitempty"`
	CNI    *struct {
		Labels LabelList `json:"labels,omitempty"`
	} `json:"cni,omitempty"`
}

// LabelList reads labels given as a map or as a list of key/value pairs.
type LabelList []KV

// KV is one label of a config.
type KV struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// UnmarshalJSON accepts {"k": "v"} and [{"key": "k", "value": "v"}].
func (l *LabelList) UnmarshalJSON(b []byte) error {
	var m map[string]string
	if err := json.Unmarshal(b, &m); err == nil {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		*l = nil
		for _, k := range keys {
			*l = append(*l, KV{k, m[k]})
		}
		return nil
	}
	var kvs []KV
	if err := json.Unmarshal(b, &kvs); err != nil {
		return errors.New(`labels: want {"key": "value", ...} or [{"key": "k", "value": "v"}, ...]`)
	}
	*l = kvs
	return nil
}

// LoadConf parses and checks the network configuration.
func LoadConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, fmt.Errorf("parse network configuration: %w", err)
	}
	if conf.Name == "" {
		return nil, errors.New("network configuration: no network name")
	}
	if conf.Socket == "" {
		conf.Socket = api.DefaultSocket
	}
	if conf.PodmanSocket == nil {
		s := DefaultPodmanSocket
		conf.PodmanSocket = &s
	}
	conf.labelTimeout = DefaultLabelTimeout
	if conf.LabelTimeout != "" {
		d, err := time.ParseDuration(conf.LabelTimeout)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("network configuration: labelTimeout %q: want a duration such as 2m", conf.LabelTimeout)
		}
		conf.labelTimeout = d
	}
	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, fmt.Errorf("network configuration: prevResult: %w", err)
		}
	}
	if _, err := conf.confLabels(); err != nil {
		return nil, err
	}
	return conf, nil
}

// confLabels are the labels of the config's args.
func (c *NetConf) confLabels() ([]labels.Label, error) {
	if c.Args == nil {
		return nil, nil
	}
	kvs := append([]KV(nil), c.Args.Labels...)
	if c.Args.CNI != nil {
		kvs = append(kvs, c.Args.CNI.Labels...)
	}
	var out []labels.Label
	for _, kv := range kvs {
		l, err := parseKV(kv.Key, kv.Value, labels.SourceContainer)
		if err != nil {
			return nil, fmt.Errorf("network configuration: args: %w", err)
		}
		out = append(out, l)
	}
	return out, nil
}

// parseKV makes a label of a key (which may name its source, as in
// k8s:app) and a value.
func parseKV(k, v, defaultSource string) (labels.Label, error) {
	s := k
	if v != "" {
		s += "=" + v
	}
	l, err := labels.ParseLabel(s, defaultSource)
	if err != nil {
		return l, err
	}
	if l.Source == labels.SourceReserved || l.Source == labels.SourceCIDR {
		return l, fmt.Errorf("label %s: source %s is Membrane's own", l, l.Source)
	}
	if l.Value != v {
		return l, fmt.Errorf("label %q: the key holds '='", k)
	}
	return l, nil
}

// RuntimeArgs are the CNI_ARGS the plugin reads; others are ignored.
type RuntimeArgs struct {
	PodNamespace string
	PodName      string
	// Labels come from MEMBRANE_LABELS=k=v,k2=v2 (podman passes its own
	// CNI_ARGS environment variable on).
	Labels []labels.Label
}

// ParseArgs reads CNI_ARGS: `K=V;K2=V2`.
func ParseArgs(s string) (RuntimeArgs, error) {
	var ra RuntimeArgs
	for _, pair := range strings.Split(s, ";") {
		if strings.TrimSpace(pair) == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return ra, fmt.Errorf("CNI_ARGS: %q is not KEY=VALUE", pair)
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			ra.PodNamespace = v
		case "K8S_POD_NAME":
			ra.PodName = v
		case "MEMBRANE_LABELS":
			for _, item := range strings.Split(v, ",") {
				if strings.TrimSpace(item) == "" {
					continue
				}
				lk, lv, _ := strings.Cut(item, "=")
				l, err := parseKV(strings.TrimSpace(lk), lv, labels.SourceContainer)
				if err != nil {
					return ra, fmt.Errorf("CNI_ARGS MEMBRANE_LABELS: %w", err)
				}
				ra.Labels = append(ra.Labels, l)
			}
		}
	}
	return ra, nil
}

// k8sNamespaceLabel is the label of a pod's namespace.
const k8sNamespaceLabel = "io.kubernetes.pod.namespace"

// BaseLabels are the labels known when ADD runs: the config's args, then
// MEMBRANE_LABELS, then the pod's namespace; a later source:key replaces
// an earlier one.
func BaseLabels(conf *NetConf, ra RuntimeArgs) ([]string, error) {
	ls, err := conf.confLabels()
	if err != nil {
		return nil, err
	}
	ls = append(ls, ra.Labels...)
	if ra.PodNamespace != "" {
		ls = append(ls, labels.Label{Source: labels.SourceK8s, Key: k8sNamespaceLabel, Value: ra.PodNamespace})
	}
	return labels.New(ls...).Strings(), nil
}

// MergeLabels adds a runtime's container labels (source container) to
// base; labels Membrane cannot hold are returned in skipped.
func MergeLabels(base []string, container map[string]string) (out []string, skipped []string, err error) {
	ls, err := labels.ParseList(base, labels.SourceContainer)
	if err != nil {
		return nil, nil, err
	}
	keys := make([]string, 0, len(container))
	for k := range container {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		l, err := labels.ParseLabel(labels.SourceContainer+":"+k+"="+container[k], labels.SourceContainer)
		if err != nil || l.Key != k || l.Value != container[k] {
			skipped = append(skipped, k)
			continue
		}
		ls = append(ls, l)
	}
	return labels.New(ls...).Strings(), skipped, nil
}

// EndpointName is the endpoint's name: the pod's (namespace/name) when
// the runtime gives one (podman gives the container's name), else
// "cni-" and the container ID's first 12 characters.
func EndpointName(ra RuntimeArgs, containerID string) string {
	switch {
	case ra.PodName != "" && ra.PodNamespace != "":
		return ra.PodNamespace + "/" + ra.PodName
	case ra.PodName != "":
		return ra.PodName
	}
	return "cni-" + short(containerID)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Ref is what the plugin writes in an endpoint's ContainerID:
// "cni:<network>:<container id>". With the endpoint's container
// interface it names one attachment; the network keeps GC of one network
// away from the endpoints of another.
func Ref(network, containerID string) string { return refPrefix + network + ":" + containerID }

const refPrefix = "cni:"

// ParseRef reads a Ref.
func ParseRef(s string) (network, containerID string, ok bool) {
	rest, ok := strings.CutPrefix(s, refPrefix)
	if !ok {
		return "", "", false
	}
	network, containerID, ok = strings.Cut(rest, ":")
	return network, containerID, ok && network != "" && containerID != ""
}
