package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// listenControl sets IP_TRANSPARENT (and IPV6_TRANSPARENT on IPv6
// sockets) on the listener, so that it may accept connections addressed to
// other hosts' addresses.
func listenControl(transparent bool) func(network, address string, rc syscall.RawConn) error {
	if !transparent {
		return nil
	}
	return func(network, _ string, rc syscall.RawConn) error {
		return control(rc, func(fd int) error {
			if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
				return fmt.Errorf("set IP_TRANSPARENT: %w", err)
			}
			if network == "tcp6" {
				if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); err != nil {
					return fmt.Errorf("set IPV6_TRANSPARENT: %w", err)
				}
			}
			return nil
		})
	}
}

// upstreamControl prepares a transparent upstream socket: IP_TRANSPARENT to
// bind the client's address, SO_MARK so that the datapath lets the flow
// through as already checked, SO_REUSEADDR when the client's port is reused.
func upstreamControl(mark uint32, reuseAddr bool) func(network, address string, rc syscall.RawConn) error {
	return func(network, _ string, rc syscall.RawConn) error {
		return control(rc, func(fd int) error {
			if network == "tcp6" {
				if err := unix.SetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); err != nil {
					return fmt.Errorf("set IPV6_TRANSPARENT: %w", err)
				}
			} else if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
				return fmt.Errorf("set IP_TRANSPARENT: %w", err)
			}
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
				return fmt.Errorf("set SO_MARK: %w", err)
			}
			if reuseAddr {
				if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
					return fmt.Errorf("set SO_REUSEADDR: %w", err)
				}
			}
			return nil
		})
	}
}

func control(rc syscall.RawConn, f func(fd int) error) error {
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// dialUpstream connects to dst: transparently from the client's address,
// or plainly.
func (p *Proxy) dialUpstream(ctx context.Context, client, dst netip.AddrPort) (*net.TCPConn, error) {
	d := p.dialer
	if p.cfg.Transparent {
		port := 0
		if p.cfg.KeepClientPort {
			port = int(client.Port())
		}
		d.LocalAddr = &net.TCPAddr{IP: client.Addr().AsSlice(), Port: port}
		d.Control = upstreamControl(p.cfg.UpstreamMark, p.cfg.KeepClientPort)
	}
	var nc net.Conn
	dial := func() error {
		var err error
		nc, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	}
	var err error
	if p.inNetns != nil {
		err = p.inNetns(dial)
	} else {
		err = dial()
	}
	if err != nil {
		return nil, err
	}
	return nc.(*net.TCPConn), nil
}

// dialErrorReason names why a connect failed, for the 503 body.
func dialErrorReason(err error) string {
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		return errno.Error()
	case isTimeout(err), errors.Is(err, context.DeadlineExceeded):
		return "connection timed out"
	case errors.Is(err, context.Canceled):
		return "proxy shutting down"
	}
	return err.Error()
}

func isTemporary(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED:
			return true
		}
	}
	return false
}
