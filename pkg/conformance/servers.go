package conformance

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/membrane-net/membrane/pkg/nsutil"
)

// serverIdle is how long a server keeps an idle connection.
const serverIdle = 10 * time.Second

// serveTCP listens on port in the namespace at nsPath. A connection whose
// first byte is an upper-case letter is HTTP (an HTTP method) and gets the
// json-mock answer of Cilium's echo pods: 200 for any path. Any other
// connection is echoed back.
func serveTCP(nsPath string, port uint16) (io.Closer, error) {
	ln, err := nsutil.Listen(nsPath, "tcp4", fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, fmt.Errorf("serve tcp %d: %w", port, err)
	}
	s := &tcpServer{ln: ln, httpConns: make(chan net.Conn), done: make(chan struct{})}
	s.http = &http.Server{Handler: http.HandlerFunc(jsonMock), ReadHeaderTimeout: serverIdle, IdleTimeout: serverIdle}
	go s.http.Serve((*chanListener)(s))
	go s.accept()
	return s, nil
}

type tcpServer struct {
	ln        net.Listener
	http      *http.Server
	httpConns chan net.Conn
	done      chan struct{}
	once      sync.Once
}

func (s *tcpServer) accept() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go s.handle(c)
	}
}

func (s *tcpServer) handle(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(serverIdle))
	br := bufio.NewReader(c)
	first, err := br.Peek(1)
	if err != nil {
		c.Close()
		return
	}
	pc := &peekedConn{Conn: c, r: br}
	if first[0] >= 'A' && first[0] <= 'Z' {
		_ = c.SetReadDeadline(time.Time{})
		select {
		case s.httpConns <- pc:
		case <-s.done:
			c.Close()
		}
		return
	}
	defer c.Close()
	buf := make([]byte, 4096)
	for {
		_ = c.SetDeadline(time.Now().Add(serverIdle))
		n, err := pc.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (s *tcpServer) Close() error {
	s.once.Do(func() { close(s.done) })
	err := s.ln.Close()
	return errors.Join(err, s.http.Close())
}

// chanListener hands the HTTP connections of a tcpServer to http.Server.
type chanListener tcpServer

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.httpConns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error   { return nil }
func (l *chanListener) Addr() net.Addr { return l.ln.Addr() }

// peekedConn reads first what was peeked.
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(b []byte) (int, error) { return c.r.Read(b) }

// jsonMock answers like the json-mock server of Cilium's echo pods.
func jsonMock(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"method": r.Method, "path": r.URL.Path, "host": r.Host, "from": r.RemoteAddr,
	})
}

// serveUDP echoes datagrams on port in the namespace at nsPath.
func serveUDP(nsPath string, port uint16) (io.Closer, error) {
	pc, err := nsutil.ListenPacket(nsPath, "udp4", fmt.Sprintf(":%d", port))
	if err != nil {
		return nil, fmt.Errorf("serve udp %d: %w", port, err)
	}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	return pc, nil
}

// servePorts starts a server for every TCP and UDP port (SCTP is not
// served); on failure it closes what it started.
func servePorts(nsPath string, ports []ServedPort) (closers []io.Closer, err error) {
	defer func() {
		if err != nil {
			closeAll(closers)
			closers = nil
		}
	}()
	for _, sp := range ports {
		var c io.Closer
		switch sp.Protocol {
		case "TCP":
			c, err = serveTCP(nsPath, sp.Port)
		case "UDP":
			c, err = serveUDP(nsPath, sp.Port)
		default:
			continue
		}
		if err != nil {
			return closers, err
		}
		closers = append(closers, c)
	}
	return closers, nil
}

func closeAll(cs []io.Closer) {
	for _, c := range cs {
		_ = c.Close()
	}
}
