// Package api owns the agent's REST+JSON interface over its unix socket:
// the request and response types, the HTTP handlers (which call a
// Backend, the agent) and the client the CLI, the CNI plugin and the
// Docker driver use. It holds no state.
package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/membrane-net/membrane/pkg/datapath"
	"github.com/membrane-net/membrane/pkg/endpoint"
	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
)

// DefaultSocket is where the agent listens unless told otherwise.
const DefaultSocket = "/run/membrane/membrane.sock"

// EndpointRequest asks for a new endpoint.
type EndpointRequest struct {
	Netns string `json:"netns"`
	Name  string `json:"name,omitempty"`
	// Labels are `[source:]key[=value]`; no source means unspec.
	Labels     []string             `json:"labels"`
	IPv4       string               `json:"ipv4,omitempty"`
	NamedPorts []endpoint.NamedPort `json:"namedPorts,omitempty"`
	// Interface is the name inside the namespace, eth0 by default.
	Interface   string `json:"interface,omitempty"`
	ContainerID string `json:"containerID,omitempty"`
	Audit       bool   `json:"audit,omitempty"`
}

// EndpointUpdate changes an endpoint: Labels replaces its labels (a new
// identity), Audit switches its audit mode.
type EndpointUpdate struct {
	Labels []string `json:"labels,omitempty"`
	Audit  *bool    `json:"audit,omitempty"`
}

// Endpoint is an endpoint as the API shows it.
type Endpoint struct {
	endpoint.Endpoint
	State  string         `json:"state"`
	Policy EndpointPolicy `json:"policy"`
}

// EndpointPolicy summarises what an endpoint enforces.
type EndpointPolicy struct {
	IngressEnforced bool   `json:"ingressEnforced"`
	EgressEnforced  bool   `json:"egressEnforced"`
	Revision        uint64 `json:"revision"`
	Entries         int    `json:"entries"`
}

// Identity is an identity as the API shows it.
type Identity struct {
	ID        identity.NumericIdentity `json:"id"`
	Labels    labels.Labels            `json:"labels"`
	Reserved  bool                     `json:"reserved,omitempty"`
	Endpoints int                      `json:"endpoints"`
}

// Part is the state of one part of the agent.
type Part struct {
	Name    string `json:"name"`
	Healthy bool   `json:"healthy"`
	State   string `json:"state"`
}

// Status is the agent's health.
type Status struct {
	Healthy bool   `json:"healthy"`
	Version string `json:"version"`
	Parts   []Part `json:"parts"`
}

// PolicyFile is one file given to import or validate.
type PolicyFile struct {
	Name    string `json:"name"`
	Content string `json:"content"`
}

// PolicyRequest carries policy files.
type PolicyRequest struct {
	Files []PolicyFile `json:"files"`
}

// PolicyRef names one policy.
type PolicyRef struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	File      string `json:"file,omitempty"`
	Document  int    `json:"document,omitempty"`
}

// PolicyResult is the answer to an import, a validation or a delete.
type PolicyResult struct {
	Revision uint64      `json:"revision"`
	Policies []PolicyRef `json:"policies"`
}

// Policy is one stored policy with its original object.
type Policy struct {
	PolicyRef
	Object json.RawMessage `json:"object"`
}

// PolicyList is the repository.
type PolicyList struct {
	Revision uint64   `json:"revision"`
	Policies []Policy `json:"policies"`
}

// TraceRequest asks why a flow would be allowed or dropped. Exactly one
// source and one destination field is set.
type TraceRequest struct {
	SrcEndpoint uint32   `json:"srcEndpoint,omitempty"`
	SrcLabels   []string `json:"srcLabels,omitempty"`
	SrcIP       string   `json:"srcIP,omitempty"`
	DstEndpoint uint32   `json:"dstEndpoint,omitempty"`
	DstLabels   []string `json:"dstLabels,omitempty"`
	DstIP       string   `json:"dstIP,omitempty"`
	// DPort is `80/TCP` (protocol defaults to TCP); ICMP: `8/ICMP` (type).
	DPort string `json:"dport"`
}

// BPFPolicyEntry is one entry of an endpoint's policy map, read from the
// kernel.
type BPFPolicyEntry struct {
	Identity  identity.NumericIdentity `json:"identity"`
	Direction string                   `json:"direction"`
	Protocol  string                   `json:"protocol"`
	Ports     string                   `json:"ports"` // "80", "8000-8003", "any"
	Verdict   string                   `json:"verdict"`
	ProxyPort uint16                   `json:"proxyPort,omitempty"`
	Cookie    uint32                   `json:"cookie,omitempty"`
	Rule      string                   `json:"rule,omitempty"`
	Labels    labels.Labels            `json:"labels,omitempty"`
}

// BPFPolicy is an endpoint's policy map.
type BPFPolicy struct {
	Endpoint uint32           `json:"endpoint"`
	Capacity int              `json:"capacity"`
	Entries  []BPFPolicyEntry `json:"entries"`
}

// IPCacheEntry is one entry of the kernel's ipcache.
type IPCacheEntry struct {
	Prefix       string                   `json:"prefix"`
	Identity     identity.NumericIdentity `json:"identity"`
	CIDRIdentity identity.NumericIdentity `json:"cidrIdentity,omitempty"`
	InCluster    bool                     `json:"inCluster"`
	Source       string                   `json:"source,omitempty"`
}

// CTEntry is one conntrack entry.
type CTEntry = datapath.CTEntry

// Error is the body of every error response.
type Error struct {
	Error   string   `json:"error"`
	Details []string `json:"details,omitempty"`
}

// StatusError is an error with the HTTP status the API answers with.
type StatusError struct {
	Code    int
	Err     error
	Details []string
}

func (e *StatusError) Error() string { return e.Err.Error() }
func (e *StatusError) Unwrap() error { return e.Err }

// Errorf builds a StatusError.
func Errorf(code int, format string, args ...any) error {
	return &StatusError{Code: code, Err: fmt.Errorf(format, args...)}
}

// WithStatus gives err an HTTP status.
func WithStatus(code int, err error) error {
	if err == nil {
		return nil
	}
	return &StatusError{Code: code, Err: err}
}

// statusOf picks the HTTP status of an error.
func statusOf(err error) int {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return http.StatusInternalServerError
}
