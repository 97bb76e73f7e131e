package proxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"
)

// This file streams message bodies from one connection to the other:
// by length, chunked (validated and re-framed), or until the end of the
// stream. Large runs of bytes go through splice(2) from socket to socket;
// small ones through the bufio buffers. Nothing is buffered whole.

var (
	errChunkLine    = errors.New("invalid chunk size line")
	errChunkCRLF    = errors.New("chunk data not followed by CRLF")
	errChunkTooLong = errors.New("chunk line too long")
	errTrailerLarge = errors.New("trailer section too large")
	errBadTrailer   = errors.New("invalid trailer field")
)

const (
	// spliceMin is the size from which a run of body bytes is spliced.
	spliceMin = 64 << 10
	// spliceStep bounds one splice call, so that idle deadlines can be
	// pushed forward between calls.
	spliceStep = 256 << 10
)

// connReader is what a bufio.Reader reads from. Before a read that may
// block it flushes the writer whose data the peer may be waiting for (so a
// response is never held back while we wait for the next request), and in
// body mode it pushes the read deadline forward (idle timeout).
type connReader struct {
	conn    *net.TCPConn
	flush   *bufio.Writer
	idle    time.Duration
	refresh bool
	last    time.Time

	// sendFirst, when set, is flushed by the next Read, which then waits
	// for the connection to be readable before it reads: for a response,
	// which cannot arrive before its request is sent, this saves the read
	// that would find nothing. The flush runs once the wait is armed
	// (RawConn.Read resets the readiness state before its first call of
	// the function), so the response's arrival cannot be missed. Only for
	// a request that is sent whole by that flush: bytes the server sends
	// before it (which it does not for a request it has not received) may
	// go unnoticed until more arrive.
	sendFirst *bufio.Writer
	raw       syscall.RawConn
	rawFn     func(fd uintptr) bool // r.rawStep, bound once
	// State of one sendThenRead, for rawStep.
	rawW     *bufio.Writer
	rawP     []byte
	rawN     int
	rawErr   error
	rawCalls int
}

func (r *connReader) Read(p []byte) (int, error) {
	if r.flush != nil && r.flush.Buffered() > 0 {
		if err := r.flush.Flush(); err != nil {
			return 0, err
		}
	}
	if r.refresh {
		r.touch()
	}
	if w := r.sendFirst; w != nil && len(p) > 0 {
		r.sendFirst = nil
		return r.sendThenRead(w, p)
	}
	return r.conn.Read(p)
}

// sendThenRead flushes w, then waits until the connection is readable and
// reads (see sendFirst).
func (r *connReader) sendThenRead(w *bufio.Writer, p []byte) (int, error) {
	if r.raw == nil {
		raw, err := r.conn.SyscallConn()
		if err != nil {
			if err := w.Flush(); err != nil {
				return 0, err
			}
			return r.conn.Read(p)
		}
		r.raw, r.rawFn = raw, r.rawStep
	}
	r.rawW, r.rawP, r.rawN, r.rawErr, r.rawCalls = w, p, 0, nil, 0
	rerr := r.raw.Read(r.rawFn)
	n, err, calls := r.rawN, r.rawErr, r.rawCalls
	r.rawW, r.rawP, r.rawErr = nil, nil, nil
	switch {
	case rerr != nil:
		// Deadline, or the connection closed (before the flush, if the
		// deadline had passed already).
		return 0, rerr
	case calls == 1:
		return 0, err // the flush failed
	case err != nil:
		return 0, &net.OpError{Op: "read", Net: "tcp", Source: r.conn.LocalAddr(), Addr: r.conn.RemoteAddr(), Err: os.NewSyscallError("read", err)}
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// rawStep is sendThenRead's function for RawConn.Read: its first call
// flushes, the next ones read until a read does not find the socket empty.
func (r *connReader) rawStep(fd uintptr) bool {
	r.rawCalls++
	if r.rawCalls == 1 {
		r.rawErr = r.rawW.Flush()
		return r.rawErr != nil
	}
	for {
		r.rawN, r.rawErr = syscall.Read(int(fd), r.rawP)
		if r.rawErr != syscall.EINTR {
			break
		}
	}
	if r.rawErr != nil {
		r.rawN = 0
	}
	return r.rawErr != syscall.EAGAIN
}

func (r *connReader) touch() {
	if r.idle <= 0 {
		return
	}
	now := time.Now()
	if now.Sub(r.last) > r.idle/8 {
		_ = r.conn.SetReadDeadline(now.Add(r.idle))
		r.last = now
	}
}

// connWriter is what a bufio.Writer writes to: it pushes the write deadline
// forward, so a peer that stops reading is given up after the idle timeout.
type connWriter struct {
	conn   *net.TCPConn
	idle   time.Duration
	last   time.Time
	writes int // calls of Write
}

func (w *connWriter) Write(p []byte) (int, error) {
	w.writes++
	if w.idle > 0 {
		now := time.Now()
		if now.Sub(w.last) > w.idle/8 {
			_ = w.conn.SetWriteDeadline(now.Add(w.idle))
			w.last = now
		}
	}
	return w.conn.Write(p)
}

// pipe copies a body from src (buffered srcConn) to dst (buffered dstConn).
type pipe struct {
	src     *bufio.Reader
	srcConn *net.TCPConn
	dst     *bufio.Writer
	dstConn *net.TCPConn
	idle    time.Duration // 0: no deadlines (tunnels)
	strict  bool          // chunk lines must end in CRLF (requests)
	spliced bool          // splice was called (it sets deadlines)
	lr      io.LimitedReader
}

// splice moves up to n bytes straight from srcConn to dstConn. It returns
// the count moved; fewer than n with a nil error means end of stream.
func (p *pipe) splice(n int64) (int64, error) {
	if err := p.dst.Flush(); err != nil {
		return 0, err
	}
	p.spliced = true
	if p.idle > 0 {
		d := time.Now().Add(p.idle)
		_ = p.srcConn.SetReadDeadline(d)
		_ = p.dstConn.SetWriteDeadline(d)
	}
	p.lr.R, p.lr.N = p.srcConn, n
	m, err := p.dstConn.ReadFrom(&p.lr)
	p.lr.R = nil
	return m, err
}

// copyN copies exactly n bytes.
func (p *pipe) copyN(n int64) error {
	for n > 0 {
		if b := p.src.Buffered(); b > 0 {
			k := b
			if int64(k) > n {
				k = int(n)
			}
			buf, _ := p.src.Peek(k)
			if _, err := p.dst.Write(buf); err != nil {
				return err
			}
			_, _ = p.src.Discard(k)
			n -= int64(k)
			continue
		}
		if n > spliceMin {
			// The last byte always goes through dst's buffer: the peer
			// cannot see the end of the body before the caller has
			// recorded that it is sent (the buffer is flushed later).
			step := min(n-1, spliceStep)
			m, err := p.splice(step)
			n -= m
			if err != nil {
				return err
			}
			if m < step {
				return io.ErrUnexpectedEOF
			}
			continue
		}
		if _, err := p.src.Peek(1); err != nil {
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// copyEOF copies until the end of src's stream.
func (p *pipe) copyEOF() error {
	for {
		if b := p.src.Buffered(); b > 0 {
			buf, _ := p.src.Peek(b)
			if _, err := p.dst.Write(buf); err != nil {
				return err
			}
			_, _ = p.src.Discard(b)
		}
		m, err := p.splice(spliceStep)
		if err != nil {
			return err
		}
		if m < spliceStep {
			return nil
		}
	}
}

// discard reads and drops exactly n bytes of src.
func discardN(src *bufio.Reader, n int64) error {
	for n > 0 {
		k := int64(src.Buffered())
		if k == 0 {
			if _, err := src.Peek(1); err != nil {
				if err == io.EOF {
					return io.ErrUnexpectedEOF
				}
				return err
			}
			continue
		}
		k = min(k, n)
		_, _ = src.Discard(int(k))
		n -= k
	}
	return nil
}

// readLine reads one line (chunk size or trailer) without its line ending.
// The slice is valid until the next read of src.
func readLine(src *bufio.Reader, strict bool) ([]byte, error) {
	line, err := src.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return nil, errChunkTooLong
	}
	if err != nil {
		if err == io.EOF {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	} else if strict {
		return nil, errChunkLine
	}
	return line, nil
}

// parseChunkSize parses "1*HEXDIG [ chunk-ext ]" (RFC 9112 7.1). Extensions
// are checked for control characters and then dropped.
func parseChunkSize(line []byte, strict bool) (int64, error) {
	var n int64
	i := 0
	for ; i < len(line); i++ {
		v, ok := unhex(line[i])
		if !ok {
			break
		}
		if i >= 15 {
			return 0, errChunkLine
		}
		n = n<<4 | int64(v)
	}
	if i == 0 {
		return 0, errChunkLine
	}
	rest := line[i:]
	j := 0
	for j < len(rest) && (rest[j] == ' ' || rest[j] == '\t') {
		j++
	}
	if j == len(rest) {
		if j > 0 && strict {
			// "5 " without an extension: parsers disagree on it.
			return 0, errChunkLine
		}
		return n, nil
	}
	if rest[j] != ';' {
		return 0, errChunkLine
	}
	for _, c := range rest[j:] {
		if !fieldChar[c] {
			return 0, errChunkLine
		}
	}
	return n, nil
}

// copyChunked copies a chunked body. With rechunk the output is chunked
// again (same sizes, no extensions, trailer fields kept); without it only
// the data is written (for HTTP/1.0 clients).
func (p *pipe) copyChunked(rechunk bool, maxTrailer int) error {
	for {
		line, err := readLine(p.src, p.strict)
		if err != nil {
			return err
		}
		size, err := parseChunkSize(line, p.strict)
		if err != nil {
			return err
		}
		if size == 0 {
			break
		}
		if rechunk {
			b := strconv.AppendInt(p.dst.AvailableBuffer(), size, 16)
			b = append(b, '\r', '\n')
			if _, err := p.dst.Write(b); err != nil {
				return err
			}
		}
		if err := p.copyN(size); err != nil {
			return err
		}
		line, err = readLine(p.src, p.strict)
		if err != nil {
			return err
		}
		if len(line) != 0 {
			return errChunkCRLF
		}
		if rechunk {
			if _, err := p.dst.WriteString("\r\n"); err != nil {
				return err
			}
		}
	}
	if rechunk {
		if _, err := p.dst.WriteString("0\r\n"); err != nil {
			return err
		}
	}
	total := 0
	for {
		line, err := readLine(p.src, p.strict)
		if err != nil {
			return err
		}
		if len(line) == 0 {
			break
		}
		total += len(line) + 2
		if total > maxTrailer {
			return errTrailerLarge
		}
		f, err := parseField(line)
		if err != nil {
			return errBadTrailer
		}
		if rechunk && f.kind == hOther {
			if _, err := p.dst.Write(line); err != nil {
				return err
			}
			if _, err := p.dst.WriteString("\r\n"); err != nil {
				return err
			}
		}
	}
	if rechunk {
		if _, err := p.dst.WriteString("\r\n"); err != nil {
			return err
		}
	}
	return nil
}

// discardChunked reads and drops a chunked body of at most max data bytes.
// It reports false when the body is longer or malformed.
func discardChunked(src *bufio.Reader, max int64, maxTrailer int) bool {
	var total int64
	for {
		line, err := readLine(src, true)
		if err != nil {
			return false
		}
		size, err := parseChunkSize(line, true)
		if err != nil {
			return false
		}
		if size == 0 {
			break
		}
		total += size
		if total > max {
			return false
		}
		if discardN(src, size) != nil {
			return false
		}
		if line, err := readLine(src, true); err != nil || len(line) != 0 {
			return false
		}
	}
	n := 0
	for {
		line, err := readLine(src, true)
		if err != nil {
			return false
		}
		if len(line) == 0 {
			return true
		}
		n += len(line) + 2
		if n > maxTrailer {
			return false
		}
		if _, err := parseField(line); err != nil {
			return false
		}
	}
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }
