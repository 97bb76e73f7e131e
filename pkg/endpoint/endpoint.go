// Package endpoint owns what an endpoint is (one network namespace with
// one IPv4 address, labels and an identity) and its wiring to the host: the
// veth pair, addresses, routes and static neighbours. It does not allocate
// identities or addresses and does not touch eBPF; the agent composes
// those.
package endpoint

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// DefaultContainerIfName is the name of the interface inside the
// namespace.
const DefaultContainerIfName = "eth0"

// Endpoint is the record of one endpoint, as the agent keeps and shows it.
type Endpoint struct {
	ID                 uint32                   `json:"id"`
	Name               string                   `json:"name"`
	Netns              string                   `json:"netns"`
	IPv4               netip.Addr               `json:"ipv4"`
	Identity           identity.NumericIdentity `json:"identity"`
	Labels             labels.Labels            `json:"labels"`
	NamedPorts         []NamedPort              `json:"namedPorts,omitempty"`
	Interface          string                   `json:"interface"`
	IfIndex            int                      `json:"ifindex"`
	ContainerInterface string                   `json:"containerInterface"`
	MAC                string                   `json:"mac,omitempty"`
	ContainerID        string                   `json:"containerID,omitempty"`
	Audit              bool                     `json:"audit,omitempty"`
	Created            time.Time                `json:"created"`
}

// NamedPort names a port the endpoint serves, for policies that name
// ports.
type NamedPort struct {
	Name     string `json:"name"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"` // TCP, UDP or SCTP
}

// ProtocolNumber maps a protocol name to its number.
func ProtocolNumber(p string) (uint8, error) {
	switch strings.ToUpper(p) {
	case "TCP":
		return mapstate.ProtoTCP, nil
	case "UDP":
		return mapstate.ProtoUDP, nil
	case "SCTP":
		return mapstate.ProtoSCTP, nil
	}
	return 0, fmt.Errorf("protocol %q: want TCP, UDP or SCTP", p)
}

// ParseNamedPorts parses `name=port/PROTO,...` (PROTO defaults to TCP).
func ParseNamedPorts(s string) ([]NamedPort, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []NamedPort
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		name, rest, ok := strings.Cut(item, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("named port %q: want name=port/PROTO", item)
		}
		if err := validPortName(name); err != nil {
			return nil, fmt.Errorf("named port %q: %w", item, err)
		}
		portStr, proto, hasProto := strings.Cut(rest, "/")
		if !hasProto {
			proto = "TCP"
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil || port == 0 {
			return nil, fmt.Errorf("named port %q: %q is not a port (1-65535)", item, portStr)
		}
		if _, err := ProtocolNumber(proto); err != nil {
			return nil, fmt.Errorf("named port %q: %w", item, err)
		}
		if seen[name] {
			return nil, fmt.Errorf("named port %q: name %s given twice", item, name)
		}
		seen[name] = true
		out = append(out, NamedPort{Name: name, Port: uint16(port), Protocol: strings.ToUpper(proto)})
	}
	return out, nil
}

// ValidateNamedPorts checks named ports given as records (API input).
func ValidateNamedPorts(nps []NamedPort) ([]NamedPort, error) {
	seen := map[string]bool{}
	out := make([]NamedPort, 0, len(nps))
	for i, np := range nps {
		if err := validPortName(np.Name); err != nil {
			return nil, fmt.Errorf("namedPorts[%d]: %w", i, err)
		}
		if np.Port == 0 {
			return nil, fmt.Errorf("namedPorts[%d] (%s): port 0 is not a port", i, np.Name)
		}
		if np.Protocol == "" {
			np.Protocol = "TCP"
		}
		if _, err := ProtocolNumber(np.Protocol); err != nil {
			return nil, fmt.Errorf("namedPorts[%d] (%s): %w", i, np.Name, err)
		}
		np.Protocol = strings.ToUpper(np.Protocol)
		if seen[np.Name] {
			return nil, fmt.Errorf("namedPorts[%d]: name %s given twice", i, np.Name)
		}
		seen[np.Name] = true
		out = append(out, np)
	}
	return out, nil
}

// validPortName follows Kubernetes' IANA_SVC_NAME: at most 15 lowercase
// letters, digits and '-', with a letter.
func validPortName(n string) error {
	if len(n) == 0 || len(n) > 15 {
		return fmt.Errorf("port name %q: 1 to 15 characters", n)
	}
	hasLetter := false
	for _, c := range n {
		switch {
		case c >= 'a' && c <= 'z':
			hasLetter = true
		case c >= '0' && c <= '9', c == '-':
		default:
			return fmt.Errorf("port name %q: only lowercase letters, digits and '-'", n)
		}
	}
	if !hasLetter || n[0] == '-' || n[len(n)-1] == '-' {
		return fmt.Errorf("port name %q: needs a letter and cannot start or end with '-'", n)
	}
	return nil
}
