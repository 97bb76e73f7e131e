package api

import (
	"bufio"
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
	"syscall"

	"github.com/membrane-net/membrane/pkg/monitor"
	"github.com/membrane-net/membrane/pkg/policy"
)

// ErrAgentNotRunning says nothing listens on the socket.
var ErrAgentNotRunning = errors.New("membrane agent is not running")

// Client talks to the agent over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client for the agent listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Socket is the socket the client uses.
func (c *Client) Socket() string { return c.socket }

// APIError is an error the agent answered with.
type APIError struct {
	Code    int
	Message string
	Details []string
}

func (e *APIError) Error() string {
	if len(e.Details) == 0 {
		return e.Message
	}
	return e.Message + "\n  " + strings.Join(e.Details, "\n  ")
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://membrane"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.connError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = fmt.Sprintf("agent answered %s: %s", resp.Status, strings.TrimSpace(string(b)))
		}
		return &APIError{Code: resp.StatusCode, Message: e.Error, Details: e.Details}
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode agent answer: %w", err)
	}
	return nil
}

func (c *Client) connError(err error) error {
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%w (no agent listens on %s; start one with `membrane agent`)", ErrAgentNotRunning, c.socket)
	}
	return fmt.Errorf("reach agent on %s: %w", c.socket, err)
}

// Status asks for the agent's health.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	return &st, c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
}

// AddEndpoint creates an endpoint.
func (c *Client) AddEndpoint(ctx context.Context, req EndpointRequest) (*Endpoint, error) {
	var ep Endpoint
	return &ep, c.do(ctx, http.MethodPost, "/v1/endpoints", req, &ep)
}

// ListEndpoints lists endpoints.
func (c *Client) ListEndpoints(ctx context.Context) ([]Endpoint, error) {
	var eps []Endpoint
	return eps, c.do(ctx, http.MethodGet, "/v1/endpoints", nil, &eps)
}

// GetEndpoint returns one endpoint.
func (c *Client) GetEndpoint(ctx context.Context, id uint32) (*Endpoint, error) {
	var ep Endpoint
	return &ep, c.do(ctx, http.MethodGet, fmt.Sprintf("/v1/endpoints/%d", id), nil, &ep)
}

// UpdateEndpoint changes an endpoint.
func (c *Client) UpdateEndpoint(ctx context.Context, id uint32, upd EndpointUpdate) (*Endpoint, error) {
	var ep Endpoint
	return &ep, c.do(ctx, http.MethodPatch, fmt.Sprintf("/v1/endpoints/%d", id), upd, &ep)
}

// DeleteEndpoint deletes an endpoint.
func (c *Client) DeleteEndpoint(ctx context.Context, id uint32) error {
	return c.do(ctx, http.MethodDelete, fmt.Sprintf("/v1/endpoints/%d", id), nil, nil)
}

// ListIdentities lists identities.
func (c *Client) ListIdentities(ctx context.Context) ([]Identity, error) {
	var ids []Identity
	return ids, c.do(ctx, http.MethodGet, "/v1/identities", nil, &ids)
}

// ImportPolicy imports policy files.
func (c *Client) ImportPolicy(ctx context.Context, files []PolicyFile) (*PolicyResult, error) {
	var res PolicyResult
	return &res, c.do(ctx, http.MethodPost, "/v1/policy", PolicyRequest{Files: files}, &res)
}

// ValidatePolicy checks policy files without importing them.
func (c *Client) ValidatePolicy(ctx context.Context, files []PolicyFile) (*PolicyResult, error) {
	var res PolicyResult
	return &res, c.do(ctx, http.MethodPost, "/v1/policy/validate", PolicyRequest{Files: files}, &res)
}

// GetPolicy returns the repository.
func (c *Client) GetPolicy(ctx context.Context) (*PolicyList, error) {
	var pl PolicyList
	return &pl, c.do(ctx, http.MethodGet, "/v1/policy", nil, &pl)
}

// DeletePolicy deletes policies by name (NAME or NAMESPACE/NAME).
func (c *Client) DeletePolicy(ctx context.Context, name string) (*PolicyResult, error) {
	var res PolicyResult
	return &res, c.do(ctx, http.MethodDelete, "/v1/policy?name="+url.QueryEscape(name), nil, &res)
}

// DeleteAllPolicies empties the repository.
func (c *Client) DeleteAllPolicies(ctx context.Context) (*PolicyResult, error) {
	var res PolicyResult
	return &res, c.do(ctx, http.MethodDelete, "/v1/policy?all=true", nil, &res)
}

// TracePolicy explains the verdict of a flow.
func (c *Client) TracePolicy(ctx context.Context, req TraceRequest) (*policy.TraceResult, error) {
	var res policy.TraceResult
	return &res, c.do(ctx, http.MethodPost, "/v1/policy/trace", req, &res)
}

// BPFPolicy reads an endpoint's policy map.
func (c *Client) BPFPolicy(ctx context.Context, id uint32) (*BPFPolicy, error) {
	var res BPFPolicy
	return &res, c.do(ctx, http.MethodGet, fmt.Sprintf("/v1/bpf/policy/%d", id), nil, &res)
}

// BPFIPCache reads the ipcache map.
func (c *Client) BPFIPCache(ctx context.Context) ([]IPCacheEntry, error) {
	var res []IPCacheEntry
	return res, c.do(ctx, http.MethodGet, "/v1/bpf/ipcache", nil, &res)
}

// BPFCT reads the conntrack map.
func (c *Client) BPFCT(ctx context.Context) ([]CTEntry, error) {
	var res []CTEntry
	return res, c.do(ctx, http.MethodGet, "/v1/bpf/ct", nil, &res)
}

// MonitorStream is an open monitor subscription.
type MonitorStream struct {
	body io.ReadCloser
	sc   *bufio.Scanner
	ctx  context.Context
}

// OpenMonitor subscribes to events of the given types (none: all); it
// returns once the agent has registered the subscription, so no event after
// it is missed.
func (c *Client) OpenMonitor(ctx context.Context, types []string) (*MonitorStream, error) {
	q := url.Values{}
	for _, t := range types {
		q.Add("type", t)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://membrane/v1/monitor?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.connError(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e Error
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return nil, &APIError{Code: resp.StatusCode, Message: e.Error}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return &MonitorStream{body: resp.Body, sc: sc, ctx: ctx}, nil
}

// Next waits for the next event; io.EOF when the stream ends.
func (m *MonitorStream) Next() (monitor.Event, error) {
	var e monitor.Event
	if !m.sc.Scan() {
		if m.ctx.Err() != nil {
			return e, io.EOF
		}
		if err := m.sc.Err(); err != nil {
			return e, err
		}
		return e, io.EOF
	}
	if err := json.Unmarshal(m.sc.Bytes(), &e); err != nil {
		return e, fmt.Errorf("decode event: %w", err)
	}
	return e, nil
}

// Close ends the subscription.
func (m *MonitorStream) Close() error { return m.body.Close() }

// Monitor streams events of the given types (none: all) to fn until ctx
// ends or the agent goes away.
func (c *Client) Monitor(ctx context.Context, types []string, fn func(monitor.Event)) error {
	st, err := c.OpenMonitor(ctx, types)
	if err != nil {
		return err
	}
	defer st.Close()
	for {
		e, err := st.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		fn(e)
	}
}
