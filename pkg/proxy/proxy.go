// Package proxy owns Membrane's L7 proxy: a transparent HTTP/1.x proxy that
// receives the TCP connections the eBPF datapath redirects to it (TPROXY
// style, the accepted socket's local address is the original destination),
// checks every request against the L7 policies of the endpoints involved,
// forwards the allowed ones to the original destination from the client's
// own address, answers the others with 403, and reports one Event per
// request.
//
// It owns the listener, the HTTP/1.x parsing and framing, the upstream
// connections and their socket options (IP_TRANSPARENT, SO_MARK). It does
// not decide policy (pkg/policy/l7 does), nor which connections reach it
// or which identities the peers have (the datapath and the Resolver given
// to New do), and it never touches BPF maps, routes or iptables.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/policy/l7"
)

// Defaults for the zero values of Config.
const (
	DefaultListenAddr             = "0.0.0.0:15001"
	DefaultUpstreamMark    uint32 = 0xb00
	DefaultHeaderTimeout          = 10 * time.Second
	DefaultIdleTimeout            = 60 * time.Second
	DefaultMaxHeaderBytes         = 64 << 10
	DefaultDialTimeout            = 5 * time.Second
	DefaultResponseTimeout        = 60 * time.Second
	DefaultMaxDiscardBytes int64  = 1 << 20
)

// Verdicts of an Event.
const (
	VerdictForwarded = "forwarded"
	VerdictDenied    = "denied"
	VerdictError     = "error"
)

// ErrClosed is returned by Serve after Close.
var ErrClosed = errors.New("proxy closed")

// Config configures a Proxy. Zero values take the defaults above.
type Config struct {
	// ListenAddr is the listener's address ("0.0.0.0:15001"). The datapath
	// must look the listener up with a matching address.
	ListenAddr string
	// Transparent: IP_TRANSPARENT on the listener, and upstream connections
	// made from the client's address with IP_TRANSPARENT and SO_MARK. Needs
	// CAP_NET_ADMIN. When false, a plain listener and plain upstream dials
	// (no socket options at all): for unprivileged tests, and then the
	// Resolver must say where to connect (ConnInfo.Dst).
	Transparent bool
	// UpstreamMark is the SO_MARK of upstream sockets in transparent mode,
	// the datapath's sign that a flow was already checked by the proxy.
	// Never a value matching 0x200/0xf00 (the datapath's to-proxy mark).
	UpstreamMark uint32
	// KeepClientPort makes upstream connections use the client's source
	// port too (with SO_REUSEADDR). Default: a random port.
	KeepClientPort bool
	// HeaderTimeout is the time allowed to receive a whole request head,
	// from its first byte (and for the first request, from accept).
	// Exceeded: 408 and close.
	HeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection with no request for that
	// long; it is also the longest a body transfer may stall.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request head (request line and fields).
	// Exceeded: 431 and close.
	MaxHeaderBytes int
	// UpstreamDialTimeout bounds the upstream connect. Exceeded or
	// refused: 503.
	UpstreamDialTimeout time.Duration
	// ResponseHeaderTimeout is the time allowed for the response head once
	// the request has been sent. Exceeded: 502 and close.
	ResponseHeaderTimeout time.Duration
	// MaxDiscardBytes is how much of a rejected request's body the proxy
	// reads and drops to keep the connection; a longer body (or one the
	// client waits with Expect: 100-continue to send) gets 403 and close.
	MaxDiscardBytes int64
}

func (c Config) withDefaults() Config {
	if c.ListenAddr == "" {
		c.ListenAddr = DefaultListenAddr
	}
	if c.UpstreamMark == 0 {
		c.UpstreamMark = DefaultUpstreamMark
	}
	if c.HeaderTimeout <= 0 {
		c.HeaderTimeout = DefaultHeaderTimeout
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.UpstreamDialTimeout <= 0 {
		c.UpstreamDialTimeout = DefaultDialTimeout
	}
	if c.ResponseHeaderTimeout <= 0 {
		c.ResponseHeaderTimeout = DefaultResponseTimeout
	}
	if c.MaxDiscardBytes <= 0 {
		c.MaxDiscardBytes = DefaultMaxDiscardBytes
	}
	return c
}

// Resolver tells the proxy, for each accepted connection, what to check.
// It is called once per connection, before any byte is read; the policies
// inside are re-read for every request, so a policy change applies to the
// next request without dropping the connection. An error (or a nil
// ConnInfo) closes the connection: nothing is forwarded unchecked.
type Resolver interface {
	Resolve(client, origDst netip.AddrPort) (*ConnInfo, error)
}

// ResolverFunc adapts a function to Resolver.
type ResolverFunc func(client, origDst netip.AddrPort) (*ConnInfo, error)

// Resolve calls f.
func (f ResolverFunc) Resolve(client, origDst netip.AddrPort) (*ConnInfo, error) {
	return f(client, origDst)
}

// ConnInfo is what the proxy checks for one connection.
type ConnInfo struct {
	SrcIdentity, DstIdentity identity.NumericIdentity
	SrcEndpoint, DstEndpoint uint64 // 0 when not a local endpoint
	// Checks: a request is forwarded only when every check allows it (for
	// example the client's egress L7 policy AND the server's ingress L7
	// policy when both are local endpoints). No checks: every request is
	// denied.
	Checks []Check
	// Dst is where to connect upstream. Zero: the original destination
	// (the accepted socket's local address). Required when the proxy is not
	// transparent.
	Dst netip.AddrPort
}

// Check is one policy a request must pass.
type Check struct {
	EndpointID uint64
	Port       l7.PortKey
	Peer       l7.Peer
	// Policy returns the endpoint's current L7 policy; called for every
	// request. nil denies. A returned policy must never be modified: a
	// change is a new *l7.EndpointPolicy (the proxy reuses a connection's
	// last decision for an identical request while the pointers stay the
	// same).
	Policy func() *l7.EndpointPolicy
}

// Event reports one request (for `membrane monitor --type l7`).
type Event struct {
	Time                     time.Time
	SrcIdentity, DstIdentity identity.NumericIdentity
	SrcEndpoint, DstEndpoint uint64
	Src, Dst                 netip.AddrPort
	Method, URL, Host        string
	Status                   int
	Verdict                  string // VerdictForwarded, VerdictDenied or VerdictError
	Reason                   string
	Rule                     string // the rule(s) that allowed the request
	// Latency: from the end of the request head to the response head (or
	// to the proxy's own answer).
	Latency time.Duration
}

// Stats are counters since New.
type Stats struct {
	Accepted       uint64 // connections accepted
	Active         int64  // connections open now
	ResolveErrors  uint64 // connections closed because the Resolver failed
	Requests       uint64 // request heads received (parsed or not)
	Forwarded      uint64 // requests forwarded upstream
	Denied         uint64 // requests answered 403 by policy
	Errors         uint64 // requests answered with an error status or cut
	UpstreamErrors uint64 // upstream connects that failed
}

// Proxy is the L7 proxy. New binds it; Serve runs it.
type Proxy struct {
	cfg        Config
	res        Resolver
	events     func(Event)
	log        *slog.Logger
	ln         *net.TCPListener
	listenPort uint16
	dialer     net.Dialer

	ctx    context.Context
	cancel context.CancelFunc

	// inNetns, when set (by tests), runs the creation of upstream sockets,
	// so that they belong to another network namespace than the thread's.
	inNetns func(func() error) error
	// directWatch is directWatchAfter; tests set it before Serve.
	directWatch time.Duration

	mu      sync.Mutex
	conns   map[*conn]struct{}
	closed  bool
	serving bool
	wg      sync.WaitGroup

	accepted, resolveErrors, requests, forwarded, denied, errs, upErrs atomic.Uint64
	active                                                             atomic.Int64
	// Switches between the connections' modes (see conn.go): to pipeline
	// mode, and back to direct mode. For tests and profiling.
	pipelineStarts, pipelinePauses atomic.Uint64
}

// New validates cfg and binds the listener. events (may be nil) receives
// one Event per request; it is called concurrently from the connections'
// goroutines and must not block.
func New(cfg Config, res Resolver, events func(Event), log *slog.Logger) (*Proxy, error) {
	if res == nil {
		return nil, errors.New("new proxy: nil resolver")
	}
	cfg = cfg.withDefaults()
	if cfg.UpstreamMark&0xf00 == 0x200 {
		return nil, fmt.Errorf("new proxy: upstream mark %#x matches the to-proxy mark 0x200/0xf00", cfg.UpstreamMark)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if events == nil {
		events = func(Event) {}
	}
	lc := net.ListenConfig{Control: listenControl(cfg.Transparent)}
	l, err := lc.Listen(context.Background(), "tcp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.ListenAddr, err)
	}
	p := &Proxy{
		cfg: cfg, res: res, events: events, log: log,
		ln:    l.(*net.TCPListener),
		conns: make(map[*conn]struct{}),
	}
	p.listenPort = uint16(p.ln.Addr().(*net.TCPAddr).Port)
	p.dialer = net.Dialer{Timeout: cfg.UpstreamDialTimeout}
	p.directWatch = directWatchAfter
	p.ctx, p.cancel = context.WithCancel(context.Background())
	return p, nil
}

// Addr is the listener's address.
func (p *Proxy) Addr() net.Addr { return p.ln.Addr() }

// Serve accepts connections until ctx is done or Close is called. It
// returns ErrClosed after Close, ctx.Err() when ctx ends (and then closes
// the proxy), or the accept error that stopped it.
func (p *Proxy) Serve(ctx context.Context) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return ErrClosed
	}
	if p.serving {
		p.mu.Unlock()
		return errors.New("serve: already serving")
	}
	p.serving = true
	p.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { _ = p.Close() })
	defer stop()
	var backoff time.Duration
	for {
		nc, err := p.ln.AcceptTCP()
		if err != nil {
			if p.isClosed() {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return ErrClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// Out of file descriptors or similar: wait and retry.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				p.log.Warn("accept", "error", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		backoff = 0
		c := p.newConn(nc)
		if c == nil {
			continue
		}
		go c.serve()
	}
}

func (p *Proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// Close stops the listener, closes every connection and waits for their
// goroutines. It is safe to call more than once.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		p.wg.Wait()
		return nil
	}
	p.closed = true
	err := p.ln.Close()
	p.cancel()
	for c := range p.conns {
		c.closeConns()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("close listener: %w", err)
	}
	return nil
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Accepted:       p.accepted.Load(),
		Active:         p.active.Load(),
		ResolveErrors:  p.resolveErrors.Load(),
		Requests:       p.requests.Load(),
		Forwarded:      p.forwarded.Load(),
		Denied:         p.denied.Load(),
		Errors:         p.errs.Load(),
		UpstreamErrors: p.upErrs.Load(),
	}
}

// newConn registers an accepted connection; nil when the proxy is closing.
func (p *Proxy) newConn(nc *net.TCPConn) *conn {
	p.accepted.Add(1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = nc.Close()
		return nil
	}
	c := getConn(p, nc)
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	p.active.Add(1)
	return c
}

func (p *Proxy) dropConn(c *conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.active.Add(-1)
	p.wg.Done()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
