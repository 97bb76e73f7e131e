package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// This file reads and parses HTTP/1.x message heads. Requests are parsed
// strictly (RFC 9112, rejecting everything that two parsers could read
// differently); responses from upstream a little more leniently (bare LF
// line endings are accepted). Parsed values are slices of the head buffer:
// nothing is allocated per request.

var (
	errHeadTooLarge = errors.New("message head too large")
	errTooManyBlank = errors.New("too many empty lines before the request line")
)

// httpError is a request the proxy answers itself and then closes the
// connection.
type httpError struct {
	status int
	msg    string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(msg string) error { return &httpError{status: 400, msg: msg} }

// maxFields bounds the number of header fields of one message.
const maxFields = 256

// readHead reads one message head (start line, fields and the empty line)
// from br into dst, at most max bytes. Empty lines before the start line
// are skipped. It returns io.EOF only when nothing at all was read.
func readHead(br *bufio.Reader, dst []byte, max int) ([]byte, error) {
	dst = dst[:0]
	lineStart := 0
	blank := 0
	for {
		frag, err := br.ReadSlice('\n')
		if len(dst)+len(frag) > max {
			return dst, errHeadTooLarge
		}
		dst = append(dst, frag...)
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			if err == io.EOF {
				if len(dst) == 0 && blank == 0 {
					return dst, io.EOF
				}
				return dst, io.ErrUnexpectedEOF
			}
			return dst, err
		}
		line := dst[lineStart:]
		if len(line) == 1 || (len(line) == 2 && line[0] == '\r') {
			if lineStart == 0 {
				// RFC 9112 2.2: ignore empty lines before the request line.
				blank++
				if blank > 4 {
					return dst, errTooManyBlank
				}
				dst = dst[:0]
				continue
			}
			return dst, nil
		}
		lineStart = len(dst)
	}
}

// nextLine splits the first line off b. strict requires CRLF; otherwise a
// bare LF ends a line too. b always ends with an empty line (readHead).
func nextLine(b []byte, strict bool) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, nil, false
	}
	line, rest = b[:i], b[i+1:]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	} else if strict {
		return nil, nil, false
	}
	return line, rest, true
}

// Character classes (RFC 9110 5.6.2 and 5.5).
var (
	tchar     [256]bool // token characters
	fieldChar [256]bool // field-vchar, SP, HTAB (obs-text included)
	hostChar  [256]bool // reg-name, IP literal and port characters
)

func init() {
	for c := 0; c < 256; c++ {
		b := byte(c)
		isAlnum := b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9'
		tchar[c] = isAlnum || bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), b) >= 0
		fieldChar[c] = b == '\t' || (b >= 0x20 && b != 0x7f)
		hostChar[c] = isAlnum || bytes.IndexByte([]byte("-._~!$&'()*+,;=:[]%"), b) >= 0
	}
}

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return true
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// hdrKind names the header fields the proxy itself interprets.
type hdrKind uint8

const (
	hOther hdrKind = iota
	hContentLength
	hTransferEncoding
	hHost
	hConnection
	hUpgrade
	hExpect
	hTE
	hKeepAlive
	hProxyConnection
	hTrailer
)

func classify(name []byte) hdrKind {
	switch len(name) {
	case 2:
		if asciiEqualFold(name, "te") {
			return hTE
		}
	case 4:
		if asciiEqualFold(name, "host") {
			return hHost
		}
	case 6:
		if asciiEqualFold(name, "expect") {
			return hExpect
		}
	case 7:
		if asciiEqualFold(name, "upgrade") {
			return hUpgrade
		}
		if asciiEqualFold(name, "trailer") {
			return hTrailer
		}
	case 10:
		if asciiEqualFold(name, "connection") {
			return hConnection
		}
		if asciiEqualFold(name, "keep-alive") {
			return hKeepAlive
		}
	case 14:
		if asciiEqualFold(name, "content-length") {
			return hContentLength
		}
	case 16:
		if asciiEqualFold(name, "proxy-connection") {
			return hProxyConnection
		}
	case 17:
		if asciiEqualFold(name, "transfer-encoding") {
			return hTransferEncoding
		}
	}
	return hOther
}

// framingLookalike reports whether name is Content-Length or
// Transfer-Encoding written with underscores, which some servers (CGI
// style) read as the real thing: a smuggling vector.
func framingLookalike(name []byte) bool {
	if (len(name) != 14 && len(name) != 17) || bytes.IndexByte(name, '_') < 0 {
		return false
	}
	var buf [17]byte
	n := copy(buf[:], name)
	for i := 0; i < n; i++ {
		if buf[i] == '_' {
			buf[i] = '-'
		}
	}
	k := classify(buf[:n])
	return k == hContentLength || k == hTransferEncoding
}

// hopByHop reports whether a field of this kind belongs to one connection
// and is never forwarded as received (RFC 9110 7.6.1).
func (k hdrKind) hopByHop() bool {
	switch k {
	case hContentLength, hTransferEncoding, hConnection, hUpgrade, hTE, hKeepAlive, hProxyConnection, hTrailer:
		return true
	}
	return false
}

func asciiEqualFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

func bytesEqualFold(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x >= 'A' && x <= 'Z' {
			x += 'a' - 'A'
		}
		if y >= 'A' && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

type field struct {
	name, value []byte
	kind        hdrKind
}

// parseField parses one "name: value" line.
func parseField(line []byte) (field, error) {
	if line[0] == ' ' || line[0] == '\t' {
		return field{}, badRequest("obsolete line folding in header")
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return field{}, badRequest("malformed header line")
	}
	name := line[:colon]
	if !isToken(name) {
		return field{}, badRequest("invalid header name")
	}
	value := trimOWS(line[colon+1:])
	for _, c := range value {
		if !fieldChar[c] {
			return field{}, badRequest("invalid character in header value")
		}
	}
	return field{name: name, value: value, kind: classify(name)}, nil
}

// connOptions holds what a Connection header says.
type connOptions struct {
	close, keepAlive, upgrade bool
	nominated                 [][]byte // other options: names of hop-by-hop fields
}

func (o *connOptions) reset() {
	o.close, o.keepAlive, o.upgrade = false, false, false
	o.nominated = o.nominated[:0]
}

// add parses one Connection field value: a comma-separated list of tokens.
func (o *connOptions) add(v []byte) bool {
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = trimOWS(v[:i]), v[i+1:]
		} else {
			tok, v = trimOWS(v), nil
		}
		if len(tok) == 0 {
			continue
		}
		if !isToken(tok) {
			return false
		}
		switch {
		case asciiEqualFold(tok, "close"):
			o.close = true
		case asciiEqualFold(tok, "keep-alive"):
			o.keepAlive = true
		case asciiEqualFold(tok, "upgrade"):
			o.upgrade = true
		default:
			o.nominated = append(o.nominated, tok)
		}
	}
	return true
}

func (o *connOptions) nominates(name []byte) bool {
	for _, n := range o.nominated {
		if bytesEqualFold(n, name) {
			return true
		}
	}
	return false
}

// parseContentLength parses 1*DIGIT, at most 18 digits.
func parseContentLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// reqHead is a parsed request head. Byte slices point into the head buffer.
type reqHead struct {
	method, target []byte
	minor          int // HTTP/1.minor
	fields         []field

	contentLength  int64 // -1: none
	chunked        bool
	hasTE          bool
	host           []byte
	hostCount      int
	conn           connOptions
	upgrade        []byte
	expectContinue bool
	teTrailers     bool

	// What the policy looks at.
	path      []byte // path and query
	checkHost []byte
	absolute  bool // absolute-form target
}

func (h *reqHead) reset() {
	h.method, h.target, h.minor = nil, nil, 0
	h.fields = h.fields[:0]
	h.contentLength, h.chunked, h.hasTE = -1, false, false
	h.host, h.hostCount = nil, 0
	h.conn.reset()
	h.upgrade, h.expectContinue, h.teTrailers = nil, false, false
	h.path, h.checkHost, h.absolute = nil, nil, false
}

// persistent reports whether the client wants the connection kept after
// this request (RFC 9112 9.3).
func (h *reqHead) persistent() bool {
	if h.conn.close {
		return false
	}
	return h.minor == 1 || h.conn.keepAlive
}

// isUpgrade reports whether the request asks for a protocol upgrade that
// the proxy lets through. An upgrade to h2c is not: the HTTP/2 requests
// that would follow could not be checked, so such a request is forwarded
// as a plain HTTP/1.1 request (its Upgrade field dropped).
func (h *reqHead) isUpgrade() bool {
	return h.minor == 1 && h.conn.upgrade && h.upgrade != nil && !h.conn.close && !hasToken(h.upgrade, "h2c")
}

// hasToken reports whether the comma-separated list v holds token tok
// (case-insensitively, ignoring "/version" suffixes).
func hasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		var t []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			t, v = trimOWS(v[:i]), v[i+1:]
		} else {
			t, v = trimOWS(v), nil
		}
		if i := bytes.IndexByte(t, '/'); i >= 0 {
			t = t[:i]
		}
		if asciiEqualFold(t, tok) {
			return true
		}
	}
	return false
}

func (h *reqHead) isConnect() bool { return string(h.method) == "CONNECT" }

func (h *reqHead) hasBody() bool { return h.chunked || h.contentLength > 0 }

// parse parses a request head read by readHead.
func (h *reqHead) parse(head []byte) error {
	h.reset()
	line, rest, ok := nextLine(head, true)
	if !ok {
		return badRequest("request line not terminated by CRLF")
	}
	if err := h.parseRequestLine(line); err != nil {
		return err
	}
	for {
		line, rest, ok = nextLine(rest, true)
		if !ok {
			return badRequest("header line not terminated by CRLF")
		}
		if len(line) == 0 {
			break
		}
		f, err := parseField(line)
		if err != nil {
			return err
		}
		if len(h.fields) >= maxFields {
			return &httpError{status: 431, msg: "too many header fields"}
		}
		if f.kind == hOther && framingLookalike(f.name) {
			return badRequest("header name looks like a framing header")
		}
		h.fields = append(h.fields, f)
		if err := h.interpret(f); err != nil {
			return err
		}
	}
	return h.validate()
}

func (h *reqHead) parseRequestLine(line []byte) error {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return badRequest("malformed request line")
	}
	h.method = line[:sp1]
	if !isToken(h.method) {
		return badRequest("invalid method")
	}
	r := line[sp1+1:]
	sp2 := bytes.IndexByte(r, ' ')
	if sp2 <= 0 {
		return badRequest("malformed request line")
	}
	h.target = r[:sp2]
	for _, c := range h.target {
		if c <= 0x20 || c >= 0x7f || c == '#' {
			return badRequest("invalid character in request target")
		}
	}
	switch v := r[sp2+1:]; string(v) {
	case "HTTP/1.1":
		h.minor = 1
	case "HTTP/1.0":
		h.minor = 0
	default:
		if len(v) == 8 && string(v[:5]) == "HTTP/" && v[5] >= '0' && v[5] <= '9' && v[6] == '.' && v[7] >= '0' && v[7] <= '9' {
			return &httpError{status: 505, msg: "HTTP version not supported"}
		}
		return badRequest("malformed HTTP version")
	}
	return nil
}

func (h *reqHead) interpret(f field) error {
	switch f.kind {
	case hContentLength:
		n, ok := parseContentLength(f.value)
		if !ok {
			return badRequest("invalid Content-Length")
		}
		if h.contentLength >= 0 && h.contentLength != n {
			return badRequest("conflicting Content-Length")
		}
		h.contentLength = n
	case hTransferEncoding:
		if err := h.addTransferEncoding(f.value); err != nil {
			return err
		}
	case hHost:
		h.hostCount++
		for _, c := range f.value {
			if !hostChar[c] {
				return badRequest("invalid Host")
			}
		}
		h.host = f.value
	case hConnection:
		if !h.conn.add(f.value) {
			return badRequest("invalid Connection")
		}
	case hUpgrade:
		if h.upgrade != nil {
			return badRequest("repeated Upgrade")
		}
		if len(f.value) == 0 {
			return badRequest("empty Upgrade")
		}
		h.upgrade = f.value
	case hExpect:
		if asciiEqualFold(f.value, "100-continue") {
			h.expectContinue = true
		}
	case hTE:
		for _, tok := range bytes.Split(f.value, []byte(",")) {
			tok = trimOWS(tok)
			if i := bytes.IndexByte(tok, ';'); i >= 0 {
				tok = trimOWS(tok[:i])
			}
			if asciiEqualFold(tok, "trailers") {
				h.teTrailers = true
			}
		}
	}
	return nil
}

// addTransferEncoding accepts exactly one "chunked" coding over all
// Transfer-Encoding fields: the only framing the proxy forwards.
func (h *reqHead) addTransferEncoding(v []byte) error {
	h.hasTE = true
	any := false
	for len(v) > 0 {
		var tok []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			tok, v = trimOWS(v[:i]), v[i+1:]
		} else {
			tok, v = trimOWS(v), nil
		}
		if len(tok) == 0 {
			continue
		}
		any = true
		if h.chunked {
			// Anything after chunked: the body length is unknowable.
			return badRequest("chunked is not the final transfer coding")
		}
		if !asciiEqualFold(tok, "chunked") {
			if !isToken(tok) {
				return badRequest("invalid Transfer-Encoding")
			}
			return &httpError{status: 501, msg: "unsupported transfer coding"}
		}
		h.chunked = true
	}
	if !any {
		return badRequest("empty Transfer-Encoding")
	}
	return nil
}

func (h *reqHead) validate() error {
	if h.hasTE {
		if h.contentLength >= 0 {
			return badRequest("both Content-Length and Transfer-Encoding")
		}
		if h.minor == 0 {
			return badRequest("Transfer-Encoding in an HTTP/1.0 request")
		}
		if !h.chunked {
			return badRequest("chunked is not the final transfer coding")
		}
	}
	if h.hostCount > 1 {
		return badRequest("more than one Host")
	}
	if h.minor == 1 && h.hostCount == 0 {
		return badRequest("missing Host")
	}
	h.checkHost = h.host
	t := h.target
	switch {
	case t[0] == '/':
		h.path = t
	case string(t) == "*":
		if string(h.method) != "OPTIONS" {
			return badRequest("asterisk-form target with a method other than OPTIONS")
		}
		h.path = t
	case h.isConnect():
		// authority-form: host:port.
		for _, c := range t {
			if !hostChar[c] {
				return badRequest("invalid CONNECT target")
			}
		}
		if bytes.IndexByte(t, ':') < 0 {
			return badRequest("CONNECT target without port")
		}
		h.path = t
	default:
		if err := h.parseAbsolute(t); err != nil {
			return err
		}
	}
	if h.isConnect() && t[0] == '/' {
		return badRequest("CONNECT needs an authority-form target")
	}
	if hasDotSegment(h.path) {
		return badRequest("dot segment in request path")
	}
	return nil
}

// parseAbsolute handles "http://authority/path?query". The authority is
// what the policy's host rule sees; a Host header that says otherwise is
// rejected, so that the upstream cannot pick the other one.
func (h *reqHead) parseAbsolute(t []byte) error {
	i := bytes.Index(t, []byte("://"))
	if i <= 0 {
		return badRequest("invalid request target")
	}
	scheme := t[:i]
	if !asciiEqualFold(scheme, "http") && !asciiEqualFold(scheme, "https") {
		return badRequest("unsupported scheme in request target")
	}
	rest := t[i+3:]
	end := len(rest)
	if j := bytes.IndexAny(rest, "/?"); j >= 0 {
		end = j
	}
	auth := rest[:end]
	if len(auth) == 0 || bytes.IndexByte(auth, '@') >= 0 {
		return badRequest("invalid authority in request target")
	}
	for _, c := range auth {
		if !hostChar[c] {
			return badRequest("invalid authority in request target")
		}
	}
	if h.hostCount == 1 && !bytesEqualFold(h.host, auth) {
		return badRequest("Host does not match the request target")
	}
	h.absolute = true
	h.checkHost = auth
	p := rest[end:]
	if len(p) == 0 || p[0] != '/' {
		p = append([]byte{'/'}, p...)
	}
	h.path = p
	return nil
}

// hasDotSegment reports whether the path part of target has a "." or ".."
// segment, also when written with percent-encoding or with backslashes or
// encoded slashes as separators: a policy that allows /public/.* must not
// let /public/../admin through to a server that normalises paths.
func hasDotSegment(target []byte) bool {
	p := target
	if i := bytes.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	segLen, dots := 0, 0
	check := func() bool { return segLen > 0 && segLen == dots && dots <= 2 }
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c == '%' && i+2 < len(p) {
			if v, ok := unhex2(p[i+1], p[i+2]); ok {
				c = v
				i += 2
			}
		}
		switch c {
		case '/', '\\':
			if check() {
				return true
			}
			segLen, dots = 0, 0
		case '.':
			segLen++
			dots++
		default:
			segLen++
		}
	}
	return check()
}

func unhex2(a, b byte) (byte, bool) {
	x, ok1 := unhex(a)
	y, ok2 := unhex(b)
	return x<<4 | y, ok1 && ok2
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// respHead is a parsed response head from upstream.
type respHead struct {
	statusLine    []byte
	minor         int
	status        int
	fields        []field
	contentLength int64 // -1: none
	chunked       bool
	hasTE         bool
	conn          connOptions
	upgrade       []byte
}

func (r *respHead) reset() {
	r.statusLine, r.minor, r.status = nil, 0, 0
	r.fields = r.fields[:0]
	r.contentLength, r.chunked, r.hasTE = -1, false, false
	r.conn.reset()
	r.upgrade = nil
}

var errBadResponse = errors.New("invalid response head")

// parse parses a response head; bare LF line endings are accepted.
func (r *respHead) parse(head []byte) error {
	r.reset()
	line, rest, ok := nextLine(head, false)
	if !ok || len(line) < 12 || string(line[:7]) != "HTTP/1." || (line[7] != '0' && line[7] != '1') || line[8] != ' ' {
		return errBadResponse
	}
	r.minor = int(line[7] - '0')
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return errBadResponse
		}
		r.status = r.status*10 + int(c-'0')
	}
	if r.status < 100 || (len(line) > 12 && line[12] != ' ') {
		return errBadResponse
	}
	for _, c := range line[12:] {
		if !fieldChar[c] {
			return errBadResponse
		}
	}
	r.statusLine = line
	for {
		line, rest, ok = nextLine(rest, false)
		if !ok {
			return errBadResponse
		}
		if len(line) == 0 {
			break
		}
		f, err := parseField(line)
		if err != nil || len(r.fields) >= maxFields {
			return errBadResponse
		}
		r.fields = append(r.fields, f)
		switch f.kind {
		case hContentLength:
			n, ok := parseContentLength(f.value)
			if !ok || (r.contentLength >= 0 && r.contentLength != n) {
				return errBadResponse
			}
			r.contentLength = n
		case hTransferEncoding:
			r.hasTE = true
			// chunked counts only as the final coding (RFC 9112 6.3).
			v := trimOWS(f.value)
			r.chunked = false
			if i := bytes.LastIndexByte(v, ','); i >= 0 {
				v = trimOWS(v[i+1:])
			}
			r.chunked = asciiEqualFold(v, "chunked")
		case hConnection:
			if !r.conn.add(f.value) {
				return errBadResponse
			}
		case hUpgrade:
			r.upgrade = f.value
		}
	}
	if r.hasTE && r.contentLength >= 0 {
		// A smuggling or splitting attempt, or a broken server.
		return errBadResponse
	}
	return nil
}

// persistent reports whether upstream keeps the connection after this
// response.
func (r *respHead) persistent() bool {
	if r.conn.close {
		return false
	}
	return r.minor == 1 || r.conn.keepAlive
}

// bodyless reports whether a response to this request has no body whatever
// its fields say.
func (r *respHead) bodyless(head bool) bool {
	return head || r.status == 204 || r.status == 304 || (r.status >= 100 && r.status < 200)
}
