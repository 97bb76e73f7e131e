// Package nsutil owns creating, using and removing network namespaces for
// the demo, the conformance runner and tests: named namespaces under
// /var/run/netns (as `ip netns` makes them), and sockets opened inside
// them from a Go program without running a process there.
package nsutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named namespaces live.
const Dir = "/var/run/netns"

// Path returns the path of a named namespace.
func Path(name string) string { return filepath.Join(Dir, name) }

// Create makes a named namespace (like `ip netns add`) with lo up; an
// existing one of the same name is replaced.
func Create(name string) (string, error) {
	_ = Delete(name)
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return "", fmt.Errorf("create netns %s: %w", name, err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err != nil {
			_ = netns.Set(orig)
			errc <- err
			runtime.UnlockOSThread()
			return
		}
		ns.Close()
		err = loUp()
		if serr := netns.Set(orig); serr != nil {
			// The thread stays locked and dies with the goroutine.
			errc <- errors.Join(err, serr)
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		_ = Delete(name)
		return "", fmt.Errorf("create netns %s: %w", name, err)
	}
	return Path(name), nil
}

func loUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// Delete removes a named namespace; a missing one is not an error. The
// namespace goes away with its last user (its interfaces with it).
func Delete(name string) error {
	p := Path(name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	return nil
}

// Do runs fn on a thread inside the namespace at path. Sockets fn opens
// belong to that namespace and stay usable after Do returns.
func Do(path string, fn func() error) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		// Locked and never unlocked: the thread dies with the goroutine
		// instead of returning, in the namespace, to Go's pool.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Listen opens a listener inside the namespace.
func Listen(path, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := Do(path, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the namespace.
func ListenPacket(path, network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := Do(path, func() error {
		var err error
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// Dial connects from inside the namespace.
func Dial(ctx context.Context, path, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := Do(path, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// DialTimeout is Dial with a timeout.
func DialTimeout(path, network, addr string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return Dial(ctx, path, network, addr)
}
