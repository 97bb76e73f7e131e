package conformance

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/pkg/endpoint"
	"github.com/membrane-net/membrane/pkg/nsutil"
)

// worldGateway is the world namespace's next hop: a link-local address
// resolved by a static neighbour to the host side of its veth, as the
// endpoints do.
var worldGateway = netip.MustParseAddr("169.254.1.1")

// world is the namespace that holds the addresses outside the cluster
// (external servers, CIDR peers) behind a veth to the host. The host routes
// each of those addresses (/32) to the veth, so nothing leaves the machine
// even for addresses of real networks. The host side of the veth also
// holds the node addresses, which makes them the host's.
type world struct {
	nsName, nsPath string
	hostIf         string
	addrs          []netip.Addr
	hostAddrs      []netip.Addr
}

// names of what the world of process pid makes.
func worldNSName(pid int) string { return fmt.Sprintf("mbrcf-%d-world", pid) }
func worldHostIf(pid int) string { return fmt.Sprintf("mbcw%d", pid) }
func worldPeerIf(pid int) string { return fmt.Sprintf("mbcv%d", pid) }

// newWorld builds the world namespace; on failure it removes what it
// made.
func newWorld(pid int, addrs, hostAddrs []netip.Addr) (_ *world, err error) {
	w := &world{nsName: worldNSName(pid), hostIf: worldHostIf(pid), addrs: addrs, hostAddrs: hostAddrs}
	defer func() {
		if err != nil {
			_ = w.delete()
		}
	}()
	if w.nsPath, err = nsutil.Create(w.nsName); err != nil {
		return nil, fmt.Errorf("world namespace: %w", err)
	}
	_ = endpoint.DeleteHostLink(w.hostIf)
	la := netlink.NewLinkAttrs()
	la.Name = w.hostIf
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: worldPeerIf(pid)}); err != nil {
		return nil, fmt.Errorf("world veth %s: %w", w.hostIf, err)
	}
	host, err := netlink.LinkByName(w.hostIf)
	if err != nil {
		return nil, fmt.Errorf("world veth %s: %w", w.hostIf, err)
	}
	peer, err := netlink.LinkByName(worldPeerIf(pid))
	if err != nil {
		return nil, fmt.Errorf("world veth peer: %w", err)
	}
	for _, s := range []struct{ name, val string }{
		{"net/ipv6/conf/" + w.hostIf + "/disable_ipv6", "1"},
		{"net/ipv6/conf/" + worldPeerIf(pid) + "/disable_ipv6", "1"},
		{"net/ipv4/conf/" + w.hostIf + "/forwarding", "1"},
	} {
		if err := os.WriteFile(filepath.Join("/proc/sys", s.name), []byte(s.val), 0o644); err != nil {
			return nil, fmt.Errorf("world veth: sysctl %s: %w", s.name, err)
		}
	}
	ns, err := netns.GetFromPath(w.nsPath)
	if err != nil {
		return nil, fmt.Errorf("world namespace: %w", err)
	}
	defer ns.Close()
	if err := netlink.LinkSetNsFd(peer, int(ns)); err != nil {
		return nil, fmt.Errorf("world veth: move peer: %w", err)
	}
	hostMAC := host.Attrs().HardwareAddr
	var peerMAC net.HardwareAddr
	if err := nsutil.Do(w.nsPath, func() error {
		var err error
		peerMAC, err = w.configureInside(worldPeerIf(pid), hostMAC)
		return err
	}); err != nil {
		return nil, fmt.Errorf("world namespace: %w", err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return nil, fmt.Errorf("world veth: up: %w", err)
	}
	for _, a := range hostAddrs {
		if err := netlink.AddrAdd(host, &netlink.Addr{IPNet: hostNet(a)}); err != nil {
			return nil, fmt.Errorf("node address %s on %s: %w", a, w.hostIf, err)
		}
	}
	idx := host.Attrs().Index
	for _, a := range addrs {
		if err := netlink.NeighSet(&netlink.Neigh{
			LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			IP: a.AsSlice(), HardwareAddr: peerMAC,
		}); err != nil {
			return nil, fmt.Errorf("world neighbour %s: %w", a, err)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Scope: netlink.SCOPE_LINK, Dst: hostNet(a)}); err != nil {
			return nil, fmt.Errorf("world route %s: %w", a, err)
		}
	}
	return w, nil
}

// configureInside runs in the world namespace: eth0 with every address,
// a default route through worldGateway.
func (w *world) configureInside(peerName string, hostMAC net.HardwareAddr) (net.HardwareAddr, error) {
	l, err := netlink.LinkByName(peerName)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", peerName, err)
	}
	if err := netlink.LinkSetName(l, "eth0"); err != nil {
		return nil, fmt.Errorf("rename %s: %w", peerName, err)
	}
	for _, a := range w.addrs {
		if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: hostNet(a)}); err != nil {
			return nil, fmt.Errorf("address %s: %w", a, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("eth0 up: %w", err)
	}
	idx := l.Attrs().Index
	if err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: worldGateway.AsSlice(), HardwareAddr: hostMAC,
	}); err != nil {
		return nil, fmt.Errorf("gateway neighbour: %w", err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Scope: netlink.SCOPE_LINK, Dst: hostNet(worldGateway)}); err != nil {
		return nil, fmt.Errorf("gateway route: %w", err)
	}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: worldGateway.AsSlice(), Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}); err != nil {
		return nil, fmt.Errorf("default route: %w", err)
	}
	return l.Attrs().HardwareAddr, nil
}

// delete removes the veth (its routes, neighbours and addresses go with
// it) and the namespace.
func (w *world) delete() error {
	return errors.Join(endpoint.DeleteHostLink(w.hostIf), nsutil.Delete(w.nsName))
}

func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
}

// checkFree fails when the host already has one of the addresses, or a
// /32 route for it: another run, or something of the machine's, uses it.
func checkFree(addrs []netip.Addr) error {
	own, err := netlink.AddrList(nil, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list host addresses: %w", err)
	}
	routes, err := netlink.RouteList(nil, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("list host routes: %w", err)
	}
	for _, a := range addrs {
		for _, o := range own {
			if o.IP.Equal(a.AsSlice()) {
				return fmt.Errorf("address %s is already on the host (%s): another run or the machine uses it", a, linkName(o.LinkIndex))
			}
		}
		for _, r := range routes {
			if r.Dst != nil && r.Dst.IP.Equal(a.AsSlice()) {
				if ones, _ := r.Dst.Mask.Size(); ones == 32 {
					return fmt.Errorf("address %s is already routed on the host (dev %s): another run or the machine uses it", a, linkName(r.LinkIndex))
				}
			}
		}
	}
	return nil
}

func linkName(idx int) string {
	if l, err := netlink.LinkByIndex(idx); err == nil {
		return l.Attrs().Name
	}
	return fmt.Sprint(idx)
}
