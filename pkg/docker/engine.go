package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrNoSuchObject is what the engine answers for a container or network
// it does not know.
var ErrNoSuchObject = errors.New("no such object")

// Engine is the part of the Docker Engine API the plugin reads: the
// containers attached to its networks, their labels and the event stream.
type Engine interface {
	Ping(ctx context.Context) error
	// Networks lists the networks of a driver with their attachments.
	Networks(ctx context.Context, driver string) ([]Network, error)
	// Network inspects one network.
	Network(ctx context.Context, id string) (*Network, error)
	// Container returns a container's name and labels (from the list API,
	// which does not wait for a container that is being started).
	Container(ctx context.Context, id string) (*Container, error)
	// Reconnect disconnects a container from a network and connects it
	// again, asking for the same IPv4 address where Docker allows it.
	Reconnect(ctx context.Context, networkID, containerID, ipv4 string) error
	// Events calls fn for each container or network event until ctx ends
	// or the stream breaks; first with a "stream" "connected" event.
	Events(ctx context.Context, fn func(Event)) error
}

// Network is a Docker network and its attachments.
type Network struct {
	ID     string
	Name   string
	Driver string
	// Attachments by Docker endpoint ID.
	Attachments map[string]Attachment
}

// Attachment is one endpoint of a network: ContainerID is empty while the
// endpoint has no sandbox.
type Attachment struct {
	EndpointID  string
	ContainerID string
	Name        string
	IPv4        string // address/prefix
}

// Container is what the plugin needs of a container.
type Container struct {
	ID     string
	Name   string
	Labels map[string]string
}

// streamEvent is the type of the event Events sends when it connects.
const streamEvent = "stream"

// Event is a Docker event.
type Event struct {
	Type   string
	Action string
	ID     string
}

// EngineClient talks to the Docker Engine API over a unix socket or TCP.
type EngineClient struct {
	host string
	hc   *http.Client
}

// NewEngineClient returns a client for host: unix:///path, a bare path,
// or tcp://host:port.
func NewEngineClient(host string) (*EngineClient, error) {
	c := &EngineClient{}
	switch {
	case strings.HasPrefix(host, "unix://") || strings.HasPrefix(host, "/"):
		path := strings.TrimPrefix(host, "unix://")
		c.host = "http://docker"
		c.hc = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
		}}
	case strings.HasPrefix(host, "tcp://"):
		c.host = "http://" + strings.TrimPrefix(host, "tcp://")
		c.hc = &http.Client{}
	default:
		return nil, fmt.Errorf("docker host %q: want unix:///path or tcp://host:port", host)
	}
	return c, nil
}

func (c *EngineClient) get(ctx context.Context, path string, q url.Values, out any) error {
	return c.do(ctx, http.MethodGet, path, q, nil, out)
}

func (c *EngineClient) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	u := c.host + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("%s %s: %w", method, path, ErrNoSuchObject)
	}
	if resp.StatusCode >= 300 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s %s: docker answered %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Ping checks that the engine answers.
func (c *EngineClient) Ping(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/_ping", nil, nil, nil)
}

type networkJSON struct {
	ID         string `json:"Id"`
	Name       string
	Driver     string
	Containers map[string]struct {
		Name        string
		EndpointID  string
		IPv4Address string
	}
}

func (n *networkJSON) network() *Network {
	out := &Network{ID: n.ID, Name: n.Name, Driver: n.Driver, Attachments: map[string]Attachment{}}
	for key, c := range n.Containers {
		a := Attachment{EndpointID: c.EndpointID, Name: c.Name, IPv4: c.IPv4Address}
		// Endpoints without a sandbox are listed as "ep-<endpoint id>".
		if !strings.HasPrefix(key, "ep-") {
			a.ContainerID = key
		}
		out.Attachments[c.EndpointID] = a
	}
	return out
}

// Networks lists the networks of a driver with their attachments.
func (c *EngineClient) Networks(ctx context.Context, driver string) ([]Network, error) {
	f, _ := json.Marshal(map[string][]string{"driver": {driver}})
	var list []networkJSON
	if err := c.get(ctx, "/networks", url.Values{"filters": {string(f)}}, &list); err != nil {
		return nil, err
	}
	out := make([]Network, 0, len(list))
	for _, n := range list {
		if n.Driver != driver {
			continue
		}
		// The list does not carry the attachments.
		full, err := c.Network(ctx, n.ID)
		if errors.Is(err, ErrNoSuchObject) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, *full)
	}
	return out, nil
}

// Network inspects one network.
func (c *EngineClient) Network(ctx context.Context, id string) (*Network, error) {
	var n networkJSON
	if err := c.get(ctx, "/networks/"+url.PathEscape(id), nil, &n); err != nil {
		return nil, err
	}
	return n.network(), nil
}

// Container returns a container's name and labels.
func (c *EngineClient) Container(ctx context.Context, id string) (*Container, error) {
	f, _ := json.Marshal(map[string][]string{"id": {id}})
	var list []struct {
		ID     string `json:"Id"`
		Names  []string
		Labels map[string]string
	}
	if err := c.get(ctx, "/containers/json", url.Values{"all": {"1"}, "filters": {string(f)}}, &list); err != nil {
		return nil, err
	}
	for _, ct := range list {
		if ct.ID == id {
			out := &Container{ID: ct.ID, Labels: ct.Labels}
			if len(ct.Names) > 0 {
				out.Name = strings.TrimPrefix(ct.Names[0], "/")
			}
			return out, nil
		}
	}
	return nil, fmt.Errorf("container %s: %w", id, ErrNoSuchObject)
}

// Reconnect disconnects a container from a network and connects it again
// with the same address.
func (c *EngineClient) Reconnect(ctx context.Context, networkID, containerID, ipv4 string) error {
	p := "/networks/" + url.PathEscape(networkID)
	if err := c.do(ctx, http.MethodPost, p+"/disconnect", nil,
		map[string]any{"Container": containerID, "Force": true}, nil); err != nil {
		return fmt.Errorf("disconnect: %w", err)
	}
	conn := map[string]any{"Container": containerID}
	if ipv4 != "" {
		// Docker takes a requested address only on networks created with
		// --subnet; elsewhere the container gets a new one.
		withIP := map[string]any{"Container": containerID,
			"EndpointConfig": map[string]any{"IPAMConfig": map[string]string{"IPv4Address": ipv4}}}
		if err := c.do(ctx, http.MethodPost, p+"/connect", nil, withIP, nil); err == nil {
			return nil
		}
	}
	if err := c.do(ctx, http.MethodPost, p+"/connect", nil, conn, nil); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	return nil
}

// Events streams container and network events.
func (c *EngineClient) Events(ctx context.Context, fn func(Event)) error {
	f, _ := json.Marshal(map[string][]string{"type": {"container", "network"}})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.host+"/events?filters="+url.QueryEscape(string(f)), nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("events: docker answered %s", resp.Status)
	}
	fn(Event{Type: streamEvent, Action: "connected"})
	dec := json.NewDecoder(resp.Body)
	for {
		var e struct {
			Type   string
			Action string
			Actor  struct{ ID string }
		}
		if err := dec.Decode(&e); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("events: %w", err)
		}
		fn(Event{Type: e.Type, Action: e.Action, ID: e.Actor.ID})
	}
}

// pingTimeout bounds the calls that decide whether Docker is reachable.
const pingTimeout = 3 * time.Second
