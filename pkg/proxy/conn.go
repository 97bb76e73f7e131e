package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/membrane-net/membrane/pkg/policy/l7"
)

// One client connection is served by at most one upstream connection
// (dialled on the first allowed request, to the original destination, and
// closed with the client connection: the client believes it talks to the
// server, so the two connections mirror each other), and by one or two
// goroutines, in one of two modes:
//
// Direct mode (c.fast), for a client that sends a request and waits for its
// response, the common case: the connection's goroutine reads a request,
// checks it, forwards it, reads the response and writes it to the client,
// then waits for the next request. No hand-off between goroutines.
// It takes only requests that it can serve that way: no upgrade or CONNECT,
// no Expect: 100-continue, no body or one already read whole, and nothing
// behind it (no pipelining). Any other request switches the connection to
// pipeline mode before it is forwarded.
//
// Pipeline mode, two goroutines:
//
//   - the reader (the connection's goroutine) reads request heads from the
//     client, checks them, queues an item per request (in order), and
//     either writes the request and streams its body upstream, or skips
//     the body and queues the proxy's own answer (403, 503, 400...).
//   - the responder takes the items in order and writes, for each, the
//     upstream's response (head rewritten, body streamed) or the proxy's
//     answer. So pipelined requests get their responses in order, a denied
//     one in its place.
//
// While nothing is pending the responder watches the upstream connection,
// so that when the server closes an idle connection the client's is closed
// too, as it would be without the proxy. In direct mode nobody can watch it
// while the goroutine waits for the client; so when the client has sent
// nothing for directWatchAfter, the connection switches to pipeline mode,
// whose responder watches the upstream until the next request. A request
// that arrives when the pipeline has answered everything switches it back
// to direct mode (the responder ends).

const (
	queueDepth    = 32              // pipelined requests in flight per connection
	lingerTimeout = 2 * time.Second // reading what the client still sends before closing
	lingerMax     = 4 << 20
	maxRespHead   = 256 << 10
	readerSize    = 8 << 10
	writerSize    = 8 << 10

	// directWatchAfter is how long a connection in direct mode waits for
	// the client's next request before it hands the upstream connection to
	// a responder that watches it (see above): the longest an upstream close
	// on an idle connection takes to reach the client. The wait's deadline
	// is not moved for every request (that costs more than the rest of the
	// wait), only when less than a quarter of it is left: so the hand-over
	// comes after between a quarter of it and all of it of silence.
	directWatchAfter = 4 * time.Millisecond
)

var aLongTimeAgo = time.Unix(1, 0)

// item is one request on its way through the connection.
type item struct {
	local      bool   // the proxy answers itself
	status     int    // local: the status
	body       string // local: the body
	closeAfter bool   // local: close the connection after the answer

	method, url, host string
	isHead            bool
	minor             int
	persist           bool // the client wants to keep the connection
	upgrade, connect  bool
	start             time.Time
	verdict, reason   string
	rule              string
	upgradeCh         chan bool // upgrade or CONNECT: did the tunnel open?
	refs              atomic.Int32

	// Guarded by conn.upMu.
	armed      bool      // the response timeout runs from armedAt
	armedAt    time.Time //
	sent       bool      // the whole request was written upstream
	failed     bool      // the request could not be forwarded whole
	failStatus int       // failed: the proxy's answer, 0 for none
	failReason string
}

var itemPool = sync.Pool{New: func() any { return new(item) }}

// pauseItem, queued by the reader, ends the responder so that the
// connection goes back to direct mode. It is no request: no event, no
// release.
var pauseItem = &item{}

func newItem() *item {
	it := itemPool.Get().(*item)
	it.refs.Store(1)
	return it
}

func (it *item) release() {
	if it.refs.Add(-1) == 0 {
		*it = item{}
		itemPool.Put(it)
	}
}

type outcome uint8

const (
	keepGoing outcome = iota
	endClose          // close the connection
	endTunnel         // the tunnel's upstream->client half is done
	endPause          // back to direct mode (pauseItem)
)

type conn struct {
	p        *Proxy
	client   *net.TCPConn
	src      netip.AddrPort // the client
	origDst  netip.AddrPort // the accepted socket's local address
	dst      netip.AddrPort // where upstream connects
	info     *ConnInfo
	fast     bool       // direct mode; the reader's (the connection goroutine's)
	queue    chan *item // pipeline mode: made with the responder
	respDone chan struct{}
	stopping atomic.Bool
	inflight atomic.Int32

	// Client side: cr/cbr read by the reader, cw/cbw written by the responder.
	cr  connReader
	cbr *bufio.Reader
	cw  connWriter
	cbw *bufio.Writer

	upMu     sync.Mutex
	up       *net.TCPConn // set once by the reader, under upMu
	closed   bool         // closeConns was called
	idle     bool         // the responder is watching an idle upstream
	headFor  *item        // the responder is waiting for this item's response head
	urd      time.Time    // the upstream read deadline, when urdKnown
	urdKnown bool

	// Upstream side: ur/ubr read by the responder, uw/ubw written by the reader.
	ur  connReader
	ubr *bufio.Reader
	uw  connWriter
	ubw *bufio.Writer

	// Reader state.
	head      []byte
	req       reqHead
	chk       checker
	rp        pipe // request bodies
	clientEOF bool
	tunneled  bool
	crd       time.Time // the client read deadline, when crdKnown
	crdKnown  bool
	lastURL   string
	lastHost  string

	// Responder state.
	rhead     []byte
	resp      respHead
	qp        pipe // response bodies
	responses int  // final responses received from upstream
}

var connPool = sync.Pool{New: func() any {
	return &conn{
		cbr: bufio.NewReaderSize(nil, readerSize),
		cbw: bufio.NewWriterSize(nil, writerSize),
		ubr: bufio.NewReaderSize(nil, readerSize),
		ubw: bufio.NewWriterSize(nil, writerSize),
	}
}}

func getConn(p *Proxy, nc *net.TCPConn) *conn {
	c := connPool.Get().(*conn)
	c.p, c.client = p, nc
	c.fast = true
	idle := p.cfg.IdleTimeout
	c.cw = connWriter{conn: nc, idle: idle}
	c.cbw.Reset(&c.cw)
	c.ubw.Reset(io.Discard)
	// Direct mode: before waiting for the client, send it what is written.
	c.cr = connReader{conn: nc, flush: c.cbw, idle: idle}
	c.cbr.Reset(&c.cr)
	c.rp = pipe{src: c.cbr, srcConn: nc, dst: c.ubw, idle: idle, strict: true}
	c.qp = pipe{dst: c.cbw, dstConn: nc, idle: idle}
	return c
}

func putConn(c *conn) {
	c.cbr.Reset(nil)
	c.cbw.Reset(nil)
	c.ubr.Reset(nil)
	c.ubw.Reset(nil)
	*c = conn{
		cbr: c.cbr, cbw: c.cbw, ubr: c.ubr, ubw: c.ubw,
		head: c.head[:0], rhead: c.rhead[:0],
		req:  reqHead{fields: c.req.fields[:0], conn: connOptions{nominated: c.req.conn.nominated[:0]}},
		resp: respHead{fields: c.resp.fields[:0], conn: connOptions{nominated: c.resp.conn.nominated[:0]}},
		chk: checker{hdr: c.chk.hdr, names: c.chk.names[:0], namesFor: c.chk.namesFor[:0], pols: c.chk.pols[:0], rules: c.chk.rules[:0], actions: c.chk.actions[:0], logged: c.chk.logged[:0],
			key: c.chk.key[:0], last: lastDecision{pols: c.chk.last.pols[:0], hdrKey: c.chk.last.hdrKey[:0]}},
	}
	clear(c.chk.hdr)
	connPool.Put(c)
}

// closeConns closes both connections; used at the end and by Proxy.Close.
func (c *conn) closeConns() {
	c.upMu.Lock()
	c.closed = true
	if c.up != nil {
		_ = c.up.Close()
	}
	c.upMu.Unlock()
	_ = c.client.Close()
}

func (c *conn) serve() {
	defer func() {
		c.p.dropConn(c)
		putConn(c)
	}()
	c.src = addrPortOf(c.client.RemoteAddr())
	c.origDst = addrPortOf(c.client.LocalAddr())
	log := c.p.log
	if c.p.cfg.Transparent && c.origDst.Port() == c.p.listenPort {
		// Connected to the proxy's own port: forwarding would loop.
		log.Warn("connection addressed to the proxy itself", "client", c.src, "local", c.origDst)
		c.closeConns()
		return
	}
	info, err := c.p.res.Resolve(c.src, c.origDst)
	if err == nil && info == nil {
		err = errors.New("no connection info")
	}
	if err == nil && !info.Dst.IsValid() && !c.p.cfg.Transparent {
		err = errors.New("no upstream destination for a non-transparent proxy")
	}
	if err != nil {
		c.p.resolveErrors.Add(1)
		log.Warn("resolve connection", "client", c.src, "dst", c.origDst, "error", err)
		_ = c.client.SetLinger(0) // reset: the connection is refused
		c.closeConns()
		return
	}
	c.info = info
	c.dst = info.Dst
	if !c.dst.IsValid() {
		c.dst = c.origDst
	}
	c.readLoop()
	if c.fast {
		// What the responder does at the end (respond), without a
		// responder to stop.
		_ = c.cbw.Flush()
		_ = c.client.CloseWrite()
		c.upMu.Lock()
		if c.up != nil {
			_ = c.up.Close()
		}
		c.upMu.Unlock()
	} else {
		_ = c.ubw.Flush() // the last request may still be in the buffer
		close(c.queue)
		c.wake()
		<-c.respDone
		// Requests the responder did not get to still get their event.
		for it := range c.queue {
			if it != pauseItem {
				c.drop(it)
			}
		}
	}
	if !c.tunneled && !c.clientEOF && !c.p.isClosed() {
		// Lingering close: the client may still be sending, and closing
		// with unread data would reset the connection and could destroy
		// the response in flight.
		_ = c.client.SetReadDeadline(time.Now().Add(lingerTimeout))
		_, _ = io.CopyN(io.Discard, c.client, lingerMax)
	}
	c.closeConns()
}

// ---- reader ----

func (c *conn) readLoop() {
	cfg := &c.p.cfg
	first := true
	for {
		if !c.awaitRequest(first) {
			return
		}
		first = false
		if !headBuffered(c.cbr) {
			c.clientDeadline(time.Now(), cfg.HeaderTimeout)
		}
		head, err := readHead(c.cbr, c.head, cfg.MaxHeaderBytes)
		c.head = head[:0]
		if err != nil {
			if c.stopping.Load() {
				return
			}
			c.req.reset()
			if err != io.EOF && err != io.ErrUnexpectedEOF {
				c.p.requests.Add(1)
			}
			switch {
			case err == errHeadTooLarge:
				c.localError(431, "request header fields too large")
			case err == errTooManyBlank:
				c.localError(400, "malformed request: "+err.Error())
			case isTimeout(err):
				c.localError(408, "request head not received in time")
			case err == io.EOF || err == io.ErrUnexpectedEOF:
				c.clientEOF = true
			}
			return
		}
		start := time.Now()
		c.p.requests.Add(1)
		if err := c.req.parse(head); err != nil {
			he := err.(*httpError)
			msg := "malformed request: " + he.msg
			if he.status != 400 {
				msg = he.msg
			}
			c.localError(he.status, msg)
			return
		}
		if !c.handleRequest(start) {
			return
		}
	}
}

// awaitRequest waits for the first byte of the next request: up to the
// header timeout for the first request of the connection, up to the idle
// timeout afterwards (but never while responses are still being sent).
// In direct mode with an upstream connection it first waits
// directWatchAfter, then switches to pipeline mode so that the upstream is
// watched; in pipeline mode with nothing pending, a new request switches
// back to direct mode.
func (c *conn) awaitRequest(first bool) bool {
	to := c.p.cfg.IdleTimeout
	if first {
		to = c.p.cfg.HeaderTimeout
	}
	for {
		if c.cbr.Buffered() > 0 {
			return true
		}
		if c.fast && c.up != nil {
			w := c.p.directWatch
			c.clientDeadlineSlack(time.Now(), w, w-w/4)
			_, err := c.cbr.Peek(1)
			if err == nil {
				return true
			}
			if !isTimeout(err) {
				if err == io.EOF {
					c.clientEOF = true
				}
				return false
			}
			c.startPipeline()
			continue
		}
		c.clientDeadline(time.Now(), to)
		_, err := c.cbr.Peek(1)
		if err == nil {
			if !c.fast && c.inflight.Load() == 0 {
				return c.pausePipeline()
			}
			return true
		}
		if c.stopping.Load() {
			return false
		}
		if isTimeout(err) && c.inflight.Load() > 0 {
			continue
		}
		if err == io.EOF {
			c.clientEOF = true
		}
		return false
	}
}

// localError queues the proxy's answer to a request it cannot serve, and
// the connection closes after it.
func (c *conn) localError(status int, reason string) {
	it := newItem()
	it.start = time.Now()
	if c.req.method != nil {
		it.method = internMethod(c.req.method)
		it.url = string(c.req.target)
		it.host = string(c.req.host)
		it.minor = c.req.minor
		it.isHead = it.method == "HEAD"
	} else {
		it.minor = 1
	}
	it.verdict, it.reason = VerdictError, reason
	it.local, it.status, it.body, it.closeAfter = true, status, reason, true
	c.queueLocal(it)
}

// startPipeline switches from direct mode to pipeline mode: the
// responder takes over the client writer and the upstream reader.
func (c *conn) startPipeline() {
	c.fast = false
	c.cr.flush = c.ubw
	c.queue = make(chan *item, queueDepth)
	c.respDone = make(chan struct{})
	c.p.pipelineStarts.Add(1)
	go c.respond()
}

// pausePipeline ends the responder, which has nothing pending, and goes
// back to direct mode. false: the responder ended the connection instead.
func (c *conn) pausePipeline() bool {
	select {
	case c.queue <- pauseItem:
	case <-c.respDone:
	}
	c.wake()
	<-c.respDone
	if c.stopping.Load() {
		return false
	}
	c.fast = true
	c.cr.flush = c.cbw
	c.p.pipelinePauses.Add(1)
	return true
}

func (c *conn) queueLocal(it *item) bool {
	if c.fast {
		out := c.writeLocalItem(it)
		it.release()
		return out == keepGoing
	}
	c.inflight.Add(1)
	if !c.enqueue(it) {
		c.drop(it)
		return false
	}
	c.wake()
	return true
}

// enqueue hands an item to the responder, flushing upstream writes first
// when the queue is full (the responder may be waiting for them).
func (c *conn) enqueue(it *item) bool {
	select {
	case c.queue <- it:
		return true
	default:
	}
	_ = c.ubw.Flush()
	select {
	case c.queue <- it:
		return true
	case <-c.respDone:
		return false
	}
}

// wake interrupts the responder's idle watch of the upstream connection.
func (c *conn) wake() {
	c.upMu.Lock()
	if c.idle && c.up != nil {
		c.upDeadline(aLongTimeAgo, 0)
	}
	c.upMu.Unlock()
}

// handleRequest decides and serves the parsed request c.req. It returns
// whether the connection goes on.
func (c *conn) handleRequest(start time.Time) bool {
	h := &c.req
	it := newItem()
	it.start = start
	it.method = internMethod(h.method)
	// Repeated requests reuse the previous request's strings.
	if string(h.target) != c.lastURL {
		c.lastURL = string(h.target)
	}
	if string(h.checkHost) != c.lastHost {
		c.lastHost = string(h.checkHost)
	}
	it.url, it.host = c.lastURL, c.lastHost
	path := it.url
	if h.absolute {
		path = string(h.path)
	}
	it.isHead = it.method == "HEAD"
	it.minor = h.minor
	it.persist = h.persistent()

	d := c.chk.check(c.info.Checks, h, it.method, path, it.host)
	it.rule = d.rule
	if len(d.logged) > 0 {
		it.reason = "header mismatch logged: " + strings.Join(d.logged, ", ")
		c.p.log.Info("L7 header mismatch", "client", c.src, "method", it.method, "url", it.url, "headers", d.logged, "rule", d.rule)
	}
	if !d.allowed {
		c.p.denied.Add(1)
		it.verdict, it.reason = VerdictDenied, d.reason
		return c.answer(it, 403, "Access denied")
	}
	if err := c.ensureUpstream(); err != nil {
		c.p.upErrs.Add(1)
		reason := "upstream connect error: " + dialErrorReason(err)
		c.p.log.Debug("dial upstream", "client", c.src, "dst", c.dst, "error", err)
		it.verdict, it.reason = VerdictError, reason
		return c.answer(it, 503, reason)
	}
	c.p.forwarded.Add(1)
	it.verdict = VerdictForwarded
	it.upgrade, it.connect = h.isUpgrade(), h.isConnect()
	if c.fast {
		if c.direct(h, it) {
			return c.forwardDirect(it, h, d.actions)
		}
		c.startPipeline()
	}
	if it.upgrade || it.connect {
		it.upgradeCh = make(chan bool, 1)
	}
	persist := it.persist
	it.refs.Store(2) // the reader keeps it until the body is sent
	c.inflight.Add(1)
	if !c.enqueue(it) {
		it.release()
		c.drop(it)
		return false
	}
	c.writeRequestHead(h, d.actions, it.upgrade)
	var err error
	if h.hasBody() {
		c.cr.refresh, c.cr.last = true, time.Time{}
		c.crdKnown = false
		if h.chunked {
			err = c.rp.copyChunked(true, c.p.cfg.MaxHeaderBytes)
		} else {
			err = c.rp.copyN(h.contentLength)
		}
		c.cr.refresh = false
	}
	if err != nil {
		c.bodyFailed(it, err)
		it.release()
		return false
	}
	c.markSent(it)
	if ch := it.upgradeCh; ch != nil {
		it.release()
		if c.ubw.Flush() != nil {
			return false
		}
		select {
		case ok := <-ch:
			if ok {
				c.tunnelToUpstream()
			}
			return !ok && persist
		case <-c.respDone:
			return false
		}
	}
	it.release()
	return persist
}

// direct reports whether request h (parsed, allowed) can be served in
// direct mode: nothing to do but to send it whole and relay one response.
// Its body, if any, is already read whole, and no byte follows it: a
// pipelining client is served in pipeline mode, where the next requests
// are forwarded without waiting for this response.
func (c *conn) direct(h *reqHead, it *item) bool {
	if it.upgrade || it.connect || h.expectContinue || h.chunked {
		return false
	}
	return int64(c.cbr.Buffered()) == max(h.contentLength, 0)
}

// forwardDirect forwards request h, whose body is buffered whole, and
// relays its response, in direct mode. It returns whether the connection
// goes on.
func (c *conn) forwardDirect(it *item, h *reqHead, acts []l7.HeaderAction) bool {
	writes := c.uw.writes
	c.writeRequestHead(h, acts, false)
	var err error
	if h.contentLength > 0 {
		err = c.rp.copyN(h.contentLength)
	}
	if err != nil {
		// Only writing upstream can fail here.
		c.bodyFailed(it, err)
	} else {
		c.markSent(it)
	}
	if err == nil && c.uw.writes == writes && c.ubr.Buffered() == 0 {
		// The whole request is in the buffer: reading the response
		// sends it first (see connReader.sendFirst).
		c.ur.sendFirst = c.ubw
	} else {
		_ = c.ubw.Flush()
	}
	out := c.forwardResponse(it)
	c.ur.sendFirst = nil
	it.release()
	return out == keepGoing
}

// answer queues the proxy's own answer to the request in c.req after
// skipping its body when that is safe; it returns whether the connection
// goes on.
func (c *conn) answer(it *item, status int, body string) bool {
	h := &c.req
	closeAfter := !h.persistent()
	if h.hasBody() && !closeAfter {
		max := c.p.cfg.MaxDiscardBytes
		c.cr.refresh, c.cr.last = true, time.Time{}
		c.crdKnown = false
		switch {
		case h.expectContinue:
			// The client waits for 100 Continue before sending the body.
			closeAfter = true
		case h.chunked:
			if !discardChunked(c.cbr, max, c.p.cfg.MaxHeaderBytes) {
				closeAfter = true
			}
		case h.contentLength > max:
			closeAfter = true
		default:
			if discardN(c.cbr, h.contentLength) != nil {
				closeAfter = true
			}
		}
		c.cr.refresh = false
	}
	it.local, it.status, it.body, it.closeAfter = true, status, body, closeAfter
	if !c.queueLocal(it) {
		return false
	}
	return !closeAfter
}

func (c *conn) ensureUpstream() error {
	if c.up != nil {
		return nil
	}
	up, err := c.p.dialUpstream(c.p.ctx, c.src, c.dst)
	if err != nil {
		return err
	}
	idle := c.p.cfg.IdleTimeout
	c.upMu.Lock()
	defer c.upMu.Unlock()
	if c.closed {
		_ = up.Close()
		return errors.New("connection closing")
	}
	c.up = up
	c.uw = connWriter{conn: up, idle: idle}
	c.ubw.Reset(&c.uw)
	c.ur = connReader{conn: up, flush: c.cbw, idle: idle}
	c.ubr.Reset(&c.ur)
	c.rp.dstConn = up
	c.qp.src, c.qp.srcConn = c.ubr, up
	return nil
}

// markSent records that the whole request is written: its response
// timeout starts.
func (c *conn) markSent(it *item) {
	now := time.Now()
	c.upMu.Lock()
	it.sent, it.armed, it.armedAt = true, true, now
	if c.headFor == it || c.idle {
		rht := c.p.cfg.ResponseHeaderTimeout
		c.upDeadline(now.Add(rht), rht/8)
	}
	c.upMu.Unlock()
}

// bodyFailed records that a request's body could not be forwarded whole.
func (c *conn) bodyFailed(it *item, err error) {
	status, reason := 0, "request body: "+err.Error()
	switch {
	case c.stopping.Load():
	case errors.Is(err, errChunkLine), errors.Is(err, errChunkCRLF), errors.Is(err, errChunkTooLong),
		errors.Is(err, errTrailerLarge), errors.Is(err, errBadTrailer):
		status, reason = 400, "malformed request: chunked body: "+err.Error()
	case isTimeout(err):
		status, reason = 408, "request body not received in time"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		reason = "client closed the connection during the request body"
		c.clientEOF = true
	}
	now := time.Now()
	c.upMu.Lock()
	it.failed, it.failStatus, it.failReason = true, status, reason
	if !it.armed {
		it.armed, it.armedAt = true, now
	}
	if c.headFor == it || c.idle {
		d := now.Add(c.p.cfg.ResponseHeaderTimeout)
		if status != 0 {
			d = aLongTimeAgo
		}
		c.upDeadline(d, 0)
	}
	c.upMu.Unlock()
}

// writeRequestHead writes the request head upstream: request line as
// received, end-to-end fields as received (minus those the header actions
// remove), then the framing and connection fields the proxy owns, then the
// fields the actions add.
func (c *conn) writeRequestHead(h *reqHead, acts []l7.HeaderAction, upgrade bool) {
	w := c.ubw
	_, _ = w.Write(h.method)
	_ = w.WriteByte(' ')
	_, _ = w.Write(h.target)
	if h.minor == 1 {
		_, _ = w.WriteString(" HTTP/1.1\r\n")
	} else {
		_, _ = w.WriteString(" HTTP/1.0\r\n")
	}
	for _, f := range h.fields {
		if f.kind.hopByHop() && !(f.kind == hTrailer && h.chunked) {
			continue
		}
		if f.kind == hOther && (h.conn.nominates(f.name) || removedByAction(acts, f.name)) {
			continue
		}
		writeField(w, f.name, f.value)
	}
	if h.contentLength >= 0 {
		_, _ = w.WriteString("Content-Length: ")
		writeInt(w, h.contentLength, 10)
		_, _ = w.WriteString("\r\n")
	}
	if h.chunked {
		_, _ = w.WriteString("Transfer-Encoding: chunked\r\n")
	}
	switch {
	case upgrade:
		_, _ = w.WriteString("Connection: Upgrade\r\n")
		writeField(w, upgradeName, h.upgrade)
	case h.minor == 1 && h.conn.close:
		_, _ = w.WriteString("Connection: close\r\n")
	case h.minor == 0 && h.persistent():
		_, _ = w.WriteString("Connection: keep-alive\r\n")
	}
	if h.teTrailers {
		_, _ = w.WriteString("TE: trailers\r\n")
	}
	for _, a := range acts {
		if a.Action == l7.MismatchAdd || a.Action == l7.MismatchReplace {
			_, _ = w.WriteString(a.Name)
			_, _ = w.WriteString(": ")
			_, _ = w.WriteString(a.Value)
			_, _ = w.WriteString("\r\n")
		}
	}
	_, _ = w.WriteString("\r\n")
}

var upgradeName = []byte("Upgrade")

// writeInt writes n in the given base without allocating.
func writeInt(w *bufio.Writer, n int64, base int) {
	_, _ = w.Write(strconv.AppendInt(w.AvailableBuffer(), n, base))
}

func writeField(w *bufio.Writer, name, value []byte) {
	_, _ = w.Write(name)
	_, _ = w.WriteString(": ")
	_, _ = w.Write(value)
	_, _ = w.WriteString("\r\n")
}

// tunnelToUpstream copies client bytes upstream after a 101 or a CONNECT's
// 2xx, until the client ends its side.
func (c *conn) tunnelToUpstream() {
	c.tunneled = true
	c.uw.idle = 0
	_ = c.client.SetReadDeadline(time.Time{})
	_ = c.up.SetWriteDeadline(time.Time{})
	c.cr.flush = nil
	p := pipe{src: c.cbr, srcConn: c.client, dst: c.ubw, dstConn: c.up}
	err := p.copyEOF()
	if err == nil {
		err = c.ubw.Flush()
	}
	if err != nil {
		c.closeConns()
		return
	}
	_ = c.up.CloseWrite()
}

// ---- responder ----

func (c *conn) respond() {
	defer close(c.respDone)
	out := c.respondLoop()
	switch out {
	case endTunnel:
		return
	case endPause:
		// The reader takes the client writer back.
		_ = c.cbw.Flush()
		return
	}
	_ = c.cbw.Flush()
	_ = c.client.CloseWrite()
	// Stop the reader: it may be blocked reading the client or writing
	// upstream.
	c.stopping.Store(true)
	_ = c.client.SetReadDeadline(aLongTimeAgo)
	c.upMu.Lock()
	if c.up != nil {
		_ = c.up.Close()
	}
	c.upMu.Unlock()
}

func (c *conn) respondLoop() outcome {
	for {
		it, ok := c.next()
		if !ok {
			return endClose
		}
		if it == pauseItem {
			return endPause
		}
		var out outcome
		if it.local {
			out = c.writeLocalItem(it)
		} else {
			out = c.forwardResponse(it)
		}
		c.inflight.Add(-1)
		it.release()
		if out != keepGoing {
			return out
		}
	}
}

// next returns the next item, flushing the client writer and watching the
// idle upstream connection while there is none.
func (c *conn) next() (*item, bool) {
	select {
	case it, ok := <-c.queue:
		return it, ok
	default:
	}
	if c.cbw.Buffered() > 0 {
		if err := c.cbw.Flush(); err != nil {
			return nil, false
		}
	}
	c.upMu.Lock()
	up := c.up
	c.upMu.Unlock()
	if up == nil {
		it, ok := <-c.queue
		return it, ok
	}
	for {
		// A deadline left from the last response may fire while idle:
		// that only loops here.
		c.setIdle(true)
		select {
		case it, ok := <-c.queue:
			c.setIdle(false)
			return it, ok
		default:
		}
		_, err := c.ubr.Peek(1)
		c.setIdle(false)
		select {
		case it, ok := <-c.queue:
			return it, ok
		default:
		}
		switch {
		case err == nil:
			c.p.log.Debug("unsolicited bytes from upstream", "client", c.src, "dst", c.dst)
			return nil, false
		case isTimeout(err):
			c.upMu.Lock()
			c.upDeadline(time.Time{}, 0)
			c.upMu.Unlock()
			continue
		default:
			// The server closed the idle connection: so does the proxy.
			return nil, false
		}
	}
}

// drop reports a request that gets no response because the connection
// ended first, and releases the responder's hold on it.
func (c *conn) drop(it *item) {
	verdict := VerdictError
	if it.verdict == VerdictDenied {
		verdict = VerdictDenied
	}
	c.emit(it, 0, verdict, "connection closed before the response")
	it.release()
}

func (c *conn) setIdle(v bool) {
	c.upMu.Lock()
	c.idle = v
	c.upMu.Unlock()
}

func (c *conn) emit(it *item, status int, verdict, reason string) {
	if verdict == VerdictError {
		c.p.errs.Add(1)
	}
	now := time.Now()
	info := c.info
	c.p.events(Event{
		Time:        now,
		SrcIdentity: info.SrcIdentity, DstIdentity: info.DstIdentity,
		SrcEndpoint: info.SrcEndpoint, DstEndpoint: info.DstEndpoint,
		Src: c.src, Dst: c.dst,
		Method: it.method, URL: it.url, Host: it.host,
		Status: status, Verdict: verdict, Reason: reason, Rule: it.rule,
		Latency: now.Sub(it.start),
	})
}

func (c *conn) writeLocalItem(it *item) outcome {
	writeLocal(c.cbw, it.status, it.body, it.closeAfter, it.isHead, it.minor)
	c.emit(it, it.status, it.verdict, it.reason)
	if it.closeAfter {
		return endClose
	}
	return keepGoing
}

// writeLocal writes one of the proxy's own responses.
func writeLocal(w *bufio.Writer, status int, body string, closeAfter, head bool, minor int) {
	_, _ = w.WriteString("HTTP/1.1 ")
	writeInt(w, int64(status), 10)
	_ = w.WriteByte(' ')
	_, _ = w.WriteString(http.StatusText(status))
	_, _ = w.WriteString("\r\nContent-Type: text/plain\r\nContent-Length: ")
	writeInt(w, int64(len(body)), 10)
	_, _ = w.WriteString("\r\n")
	if closeAfter {
		_, _ = w.WriteString("Connection: close\r\n")
	} else if minor == 0 {
		_, _ = w.WriteString("Connection: keep-alive\r\n")
	}
	_, _ = w.WriteString("\r\n")
	if !head {
		_, _ = w.WriteString(body)
	}
}

// Response body framings.
type framing uint8

const (
	fNone    framing = iota // no body
	fLength                 // Content-Length
	fChunked                // chunked, re-chunked to the client
	fDechunk                // chunked from upstream, close-delimited to an HTTP/1.0 client
	fEOF                    // close-delimited
	fTunnel                 // 101 or CONNECT 2xx: bytes both ways
)

// forwardResponse relays upstream's response to item it.
func (c *conn) forwardResponse(it *item) outcome {
	c.upMu.Lock()
	c.headFor = it
	failStatus := 0
	if it.failed {
		failStatus = it.failStatus
	}
	var dl time.Time
	rht := c.p.cfg.ResponseHeaderTimeout
	if it.armed {
		dl = it.armedAt.Add(rht)
	}
	c.upDeadline(dl, rht/8)
	c.upMu.Unlock()
	if failStatus != 0 {
		return c.upstreamFailed(it, nil, false)
	}
	c.ur.refresh = false
	r := &c.resp
	for {
		head, err := readHead(c.ubr, c.rhead, maxRespHead)
		c.rhead = head[:0]
		if err != nil {
			return c.upstreamFailed(it, err, len(head) > 0)
		}
		if err := r.parse(head); err != nil {
			return c.gatewayError(it, "invalid response from upstream")
		}
		if r.status >= 200 || r.status == 101 {
			break
		}
		// Interim response (100 Continue...): relayed to HTTP/1.1 clients.
		if it.minor == 1 {
			c.writeResponseHead(r, it, fNone, true)
			if err := c.cbw.Flush(); err != nil {
				return endClose
			}
		}
	}
	c.upMu.Lock()
	c.headFor = nil
	sent, failed := it.sent, it.failed
	c.upMu.Unlock()
	c.responses++

	var fr framing
	switch {
	case r.status == 101:
		if !it.upgrade {
			return c.gatewayError(it, "upstream switched protocols without an upgrade request")
		}
		fr = fTunnel
	case it.connect && r.status/100 == 2:
		fr = fTunnel
	case r.bodyless(it.isHead):
		fr = fNone
	case r.chunked:
		fr = fChunked
		if it.minor == 0 {
			fr = fDechunk
		}
	case r.hasTE:
		return c.gatewayError(it, "unsupported transfer coding from upstream")
	case r.contentLength >= 0:
		fr = fLength
	default:
		fr = fEOF
	}
	if it.upgradeCh != nil && fr != fTunnel {
		it.upgradeCh <- false
	}
	persist := it.persist && r.persistent() && sent && !failed &&
		(fr == fNone || fr == fLength || fr == fChunked)
	c.writeResponseHead(r, it, fr, persist)
	c.emit(it, r.status, VerdictForwarded, it.reason)

	if fr == fTunnel {
		if c.cbw.Flush() != nil {
			return endClose
		}
		it.upgradeCh <- true
		return c.tunnelToClient()
	}
	var err error
	// The response timeout stays until the body's idle timeout replaces
	// it, if the body is not buffered already.
	c.ur.refresh, c.ur.last = true, time.Time{}
	c.qp.spliced = false
	switch fr {
	case fLength:
		err = c.qp.copyN(r.contentLength)
	case fChunked, fDechunk:
		err = c.qp.copyChunked(fr == fChunked, maxRespHead)
	case fEOF:
		err = c.qp.copyEOF()
	}
	c.ur.refresh = false
	if !c.ur.last.IsZero() || c.qp.spliced {
		// The deadline was moved behind upDeadline's back.
		c.upMu.Lock()
		c.urdKnown = false
		c.upMu.Unlock()
	}
	if err != nil {
		c.p.errs.Add(1)
		c.p.log.Debug("response body", "client", c.src, "dst", c.dst, "url", it.url, "error", err)
		return endClose
	}
	if !persist {
		return endClose
	}
	return keepGoing
}

// upstreamFailed answers item it when no response head could be read.
func (c *conn) upstreamFailed(it *item, err error, partial bool) outcome {
	c.upMu.Lock()
	c.headFor = nil
	failed, failStatus, failReason := it.failed, it.failStatus, it.failReason
	c.upMu.Unlock()
	if it.upgradeCh != nil {
		it.upgradeCh <- false
	}
	switch {
	case failed && failStatus != 0:
		return c.answerAndClose(it, failStatus, failReason)
	case failed:
		// The client went away or stalled mid-body: nobody to answer.
		c.emit(it, 0, VerdictError, failReason)
		return endClose
	case isTimeout(err):
		return c.gatewayError(it, "upstream response timeout")
	case !partial && c.responses > 0 && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)):
		// The server closed a reused connection as the request arrived:
		// the client sees the same close it would have seen directly.
		// (EPIPE: the server's reset came back before the request was
		// written, or it reset a connection it had already closed.)
		c.emit(it, 0, VerdictError, "upstream closed the connection")
		return endClose
	case partial:
		return c.gatewayError(it, "upstream closed the connection mid-response")
	case errors.Is(err, io.EOF):
		return c.gatewayError(it, "upstream closed the connection before responding")
	case errors.Is(err, errHeadTooLarge):
		return c.gatewayError(it, "upstream response head too large")
	default:
		return c.gatewayError(it, "upstream read error: "+dialErrorReason(err))
	}
}

func (c *conn) gatewayError(it *item, reason string) outcome {
	return c.answerAndClose(it, 502, reason)
}

func (c *conn) answerAndClose(it *item, status int, reason string) outcome {
	writeLocal(c.cbw, status, reason, true, it.isHead, it.minor)
	c.emit(it, status, VerdictError, reason)
	return endClose
}

// writeResponseHead writes the response head to the client: status line
// and end-to-end fields as received, then the framing and connection
// fields for the client's connection.
func (c *conn) writeResponseHead(r *respHead, it *item, fr framing, persist bool) {
	w := c.cbw
	_, _ = w.Write(r.statusLine)
	_, _ = w.WriteString("\r\n")
	for _, f := range r.fields {
		if f.kind.hopByHop() && !(f.kind == hTrailer && fr == fChunked) {
			continue
		}
		if f.kind == hOther && r.conn.nominates(f.name) {
			continue
		}
		writeField(w, f.name, f.value)
	}
	if r.status < 200 {
		if r.status == 101 {
			_, _ = w.WriteString("Connection: Upgrade\r\n")
			if r.upgrade != nil {
				writeField(w, upgradeName, r.upgrade)
			}
		}
		_, _ = w.WriteString("\r\n")
		return
	}
	switch fr {
	case fLength:
		_, _ = w.WriteString("Content-Length: ")
		writeInt(w, r.contentLength, 10)
		_, _ = w.WriteString("\r\n")
	case fChunked:
		_, _ = w.WriteString("Transfer-Encoding: chunked\r\n")
	case fNone:
		// HEAD and 304 keep the fields that describe the full body.
		if r.status != 204 {
			if r.contentLength >= 0 {
				_, _ = w.WriteString("Content-Length: ")
				writeInt(w, r.contentLength, 10)
				_, _ = w.WriteString("\r\n")
			} else if r.chunked && it.minor == 1 {
				_, _ = w.WriteString("Transfer-Encoding: chunked\r\n")
			}
		}
	}
	switch {
	case fr == fTunnel:
	case !persist:
		_, _ = w.WriteString("Connection: close\r\n")
	case it.minor == 0:
		_, _ = w.WriteString("Connection: keep-alive\r\n")
	}
	_, _ = w.WriteString("\r\n")
}

// tunnelToClient copies upstream bytes to the client after a 101 or a
// CONNECT's 2xx, until upstream ends its side.
func (c *conn) tunnelToClient() outcome {
	_ = c.up.SetReadDeadline(time.Time{})
	_ = c.client.SetWriteDeadline(time.Time{})
	c.ur.flush = nil
	c.cw.idle = 0
	p := pipe{src: c.ubr, srcConn: c.up, dst: c.cbw, dstConn: c.client}
	err := p.copyEOF()
	if err == nil {
		err = c.cbw.Flush()
	}
	if err != nil {
		return endClose
	}
	_ = c.client.CloseWrite()
	return endTunnel
}

// clientDeadline sets the client read deadline to now+d, unless the
// current one is already between now+d-d/8 and now+d. Reader only.
func (c *conn) clientDeadline(now time.Time, d time.Duration) {
	c.clientDeadlineSlack(now, d, d/8)
}

// clientDeadlineSlack sets the client read deadline to now+d, unless the
// current one is already between now+d-slack and now+d. Reader only.
func (c *conn) clientDeadlineSlack(now time.Time, d, slack time.Duration) {
	want := now.Add(d)
	if c.crdKnown && !c.crd.After(want) && !c.crd.Before(want.Add(-slack)) {
		return
	}
	_ = c.client.SetReadDeadline(want)
	c.crd, c.crdKnown = want, true
}

// upDeadline sets the upstream read deadline to d (zero: none), unless the
// current one is already between d-slack and d. Caller holds upMu.
func (c *conn) upDeadline(d time.Time, slack time.Duration) {
	if c.urdKnown {
		if d.IsZero() && c.urd.IsZero() {
			return
		}
		if !d.IsZero() && !c.urd.IsZero() && !c.urd.After(d) && !c.urd.Before(d.Add(-slack)) {
			return
		}
	}
	_ = c.up.SetReadDeadline(d)
	c.urd, c.urdKnown = d, true
}

// headBuffered reports whether a whole request head is already buffered,
// so that reading it cannot block.
func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, crlfcrlf)
}

var crlfcrlf = []byte("\r\n\r\n")
