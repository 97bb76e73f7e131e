package endpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// GatewayIP is the next hop every endpoint routes through: a link-local
// address the host never owns, resolved by a static neighbour entry to the
// host side of the veth. No ARP, no proxy ARP.
var GatewayIP = netip.MustParseAddr("169.254.1.1")

// Errors of the plumbing.
var (
	ErrNetns       = errors.New("bad network namespace")
	ErrIfaceExists = errors.New("interface exists")
)

// HostIfName derives the host-side interface name of an endpoint: "lxc"
// and 11 hex digits of a hash of its agent (salt: the state directory, so
// two agents on one host never derive the same name), its name and id
// (interface names are at most 15 bytes; endpoint names are free text).
func HostIfName(salt, name string, id uint32) string {
	h := sha256.Sum256([]byte(salt + "\x00" + name + "\x00" + strconv.FormatUint(uint64(id), 10)))
	return "lxc" + hex.EncodeToString(h[:])[:11]
}

func tmpIfName(host string) string { return "tmp" + host[3:] }

// Veth is an endpoint's veth pair while it is being wired.
type Veth struct {
	HostName  string
	HostIndex int
	HostMAC   net.HardwareAddr
	ContName  string
	ContMAC   net.HardwareAddr
	netnsPath string
	ns        netns.NsHandle
	moved     bool
	spare     string // the peer's name while a spare (see CreateSpare)
}

// CheckNetns opens a network namespace path and checks it is one, and not
// the agent's own.
func CheckNetns(path string) (netns.NsHandle, error) {
	if path == "" {
		return -1, fmt.Errorf("%w: no path given", ErrNetns)
	}
	if _, err := os.Stat(path); err != nil {
		return -1, fmt.Errorf("%w %s: %v", ErrNetns, path, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return -1, fmt.Errorf("%w %s: %v", ErrNetns, path, err)
	}
	if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
		return -1, fmt.Errorf("%w %s: not a network namespace file", ErrNetns, path)
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return -1, fmt.Errorf("%w %s: %v", ErrNetns, path, err)
	}
	self, err := netns.Get()
	if err == nil {
		defer self.Close()
		if ns.Equal(self) {
			ns.Close()
			return -1, fmt.Errorf("%w %s: it is the host's own namespace", ErrNetns, path)
		}
	}
	return ns, nil
}

// PrepareVeth creates the veth pair in the host namespace, both ends down,
// after checking that the namespace exists and has no interface contName.
// Nothing can pass before Configure, and the caller attaches the datapath
// to HostIndex in between.
func PrepareVeth(netnsPath, hostName, contName string) (_ *Veth, err error) {
	ns, err := CheckNetns(netnsPath)
	if err != nil {
		return nil, err
	}
	v := &Veth{HostName: hostName, ContName: contName, netnsPath: netnsPath, ns: ns}
	defer func() {
		if err != nil {
			v.Delete()
		}
	}()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("open netlink in %s: %w", netnsPath, err)
	}
	defer nh.Close()
	if _, err := nh.LinkByName(contName); err == nil {
		return nil, fmt.Errorf("%w: %s in %s", ErrIfaceExists, contName, netnsPath)
	}
	if l, err := netlink.LinkByName(hostName); err == nil {
		// Left by a crash between create and record: ours by name.
		_ = netlink.LinkDel(l)
	}
	la := netlink.NewLinkAttrs()
	la.Name = hostName
	veth := &netlink.Veth{LinkAttrs: la, PeerName: tmpIfName(hostName)}
	if err := netlink.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("create veth %s: %w", hostName, err)
	}
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return nil, fmt.Errorf("find veth %s: %w", hostName, err)
	}
	v.HostIndex = host.Attrs().Index
	v.HostMAC = host.Attrs().HardwareAddr
	peer, err := netlink.LinkByName(tmpIfName(hostName))
	if err != nil {
		return nil, fmt.Errorf("find veth peer: %w", err)
	}
	v.ContMAC = peer.Attrs().HardwareAddr
	// No IPv6 on either side for now: the datapath drops it.
	if err := writeSysctl("net/ipv6/conf/"+hostName+"/disable_ipv6", "1"); err != nil {
		return nil, err
	}
	if err := writeSysctl("net/ipv4/conf/"+hostName+"/forwarding", "1"); err != nil {
		return nil, err
	}
	return v, nil
}

// PrepareHostVeth creates a veth pair whose peer stays in the host
// namespace for a runtime to move into its container (Docker's
// libnetwork). Both ends start down.
func PrepareHostVeth(hostName string) (_ *Veth, err error) {
	v := &Veth{HostName: hostName, ns: -1}
	defer func() {
		if err != nil {
			v.Delete()
		}
	}()
	if l, err := netlink.LinkByName(hostName); err == nil {
		_ = netlink.LinkDel(l)
	}
	la := netlink.NewLinkAttrs()
	la.Name = hostName
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: tmpIfName(hostName)}); err != nil {
		return nil, fmt.Errorf("create veth %s: %w", hostName, err)
	}
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return nil, fmt.Errorf("find veth %s: %w", hostName, err)
	}
	v.HostIndex = host.Attrs().Index
	v.HostMAC = host.Attrs().HardwareAddr
	peer, err := netlink.LinkByName(tmpIfName(hostName))
	if err != nil {
		return nil, fmt.Errorf("find veth peer: %w", err)
	}
	v.ContMAC = peer.Attrs().HardwareAddr
	for _, n := range []string{hostName, tmpIfName(hostName)} {
		if err := writeSysctl("net/ipv6/conf/"+n+"/disable_ipv6", "1"); err != nil {
			return nil, err
		}
	}
	if err := writeSysctl("net/ipv4/conf/"+hostName+"/forwarding", "1"); err != nil {
		return nil, err
	}
	// The runtime gives the container a prefix and a gateway address it
	// resolves with ARP: the host answers for every address it routes
	// elsewhere.
	if err := writeSysctl("net/ipv4/conf/"+hostName+"/proxy_arp", "1"); err != nil {
		return nil, err
	}
	// Answer at once: delayed proxy ARP requests wait in a queue the kernel
	// empties, for the whole namespace, whenever any interface goes down,
	// so on a host where containers come and go first packets would stall.
	if err := writeSysctl("net/ipv4/neigh/"+hostName+"/proxy_delay", "0"); err != nil {
		return nil, err
	}
	return v, nil
}

// PeerName is the name of the peer while it is in the host namespace.
func (v *Veth) PeerName() string { return tmpIfName(v.HostName) }

// ConfigureHost sets up the host side only: up, a route to addr with src
// hostIP, a static neighbour for the peer's MAC.
func (v *Veth) ConfigureHost(addr, hostIP netip.Addr) error {
	return v.configureHost(addr, hostIP)
}

// Configure moves the peer into the namespace, renames it, gives it addr/32
// and a default route through GatewayIP, and routes addr to the host side
// with src hostIP. The host side comes up last.
func (v *Veth) Configure(addr, hostIP netip.Addr) error {
	if err := v.ConfigureNetns(addr); err != nil {
		return err
	}
	return v.configureHost(addr, hostIP)
}

// ConfigureNetns does the namespace's half of Configure: the peer moved,
// renamed, addressed, routed and up. Nothing passes while the host side is
// down, so it may run while the datapath attaches.
func (v *Veth) ConfigureNetns(addr netip.Addr) error {
	peer, err := netlink.LinkByName(tmpIfName(v.HostName))
	if err != nil {
		return fmt.Errorf("find veth peer: %w", err)
	}
	if err := netlink.LinkSetNsFd(peer, int(v.ns)); err != nil {
		return fmt.Errorf("move veth peer into %s: %w", v.netnsPath, err)
	}
	v.moved = true
	return inNetns(v.ns, func() error { return v.configureInside(addr) })
}

func (v *Veth) configureHost(addr, hostIP netip.Addr) error {
	host, err := netlink.LinkByIndex(v.HostIndex)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", v.HostName, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("set %s up: %w", v.HostName, err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: v.HostIndex, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: addr.AsSlice(), HardwareAddr: v.ContMAC,
	}); err != nil {
		return fmt.Errorf("neighbour %s on %s: %w", addr, v.HostName, err)
	}
	route := &netlink.Route{
		LinkIndex: v.HostIndex, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)},
	}
	if hostIP.IsValid() {
		route.Src = hostIP.AsSlice()
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("route %s via %s: %w", addr, v.HostName, err)
	}
	return nil
}

func (v *Veth) configureInside(addr netip.Addr) error {
	peer, err := netlink.LinkByName(tmpIfName(v.HostName))
	if err != nil {
		return fmt.Errorf("find moved veth peer: %w", err)
	}
	if err := netlink.LinkSetName(peer, v.ContName); err != nil {
		return fmt.Errorf("rename veth peer to %s: %w", v.ContName, err)
	}
	if err := writeSysctl("net/ipv6/conf/"+v.ContName+"/disable_ipv6", "1"); err != nil {
		return err
	}
	if lo, err := netlink.LinkByName("lo"); err == nil {
		_ = netlink.LinkSetUp(lo)
	}
	if err := netlink.AddrAdd(peer, &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
		return fmt.Errorf("address %s on %s: %w", addr, v.ContName, err)
	}
	if err := netlink.LinkSetUp(peer); err != nil {
		return fmt.Errorf("set %s up: %w", v.ContName, err)
	}
	idx := peer.Attrs().Index
	if err := netlink.NeighSet(&netlink.Neigh{
		LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		IP: GatewayIP.AsSlice(), HardwareAddr: v.HostMAC,
	}); err != nil {
		return fmt.Errorf("gateway neighbour: %w", err)
	}
	if err := netlink.RouteReplace(&netlink.Route{
		LinkIndex: idx, Scope: netlink.SCOPE_LINK,
		Dst: &net.IPNet{IP: GatewayIP.AsSlice(), Mask: net.CIDRMask(32, 32)},
	}); err != nil {
		return fmt.Errorf("gateway route: %w", err)
	}
	if err := netlink.RouteReplace(&netlink.Route{
		LinkIndex: idx, Gw: GatewayIP.AsSlice(),
		Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)},
	}); err != nil {
		return fmt.Errorf("default route: %w", err)
	}
	return nil
}

// Delete removes the pair (deleting one end deletes both) and closes the
// namespace handle. Deleting a pair that is gone is not an error.
func (v *Veth) Delete() error {
	defer v.closeNS()
	if err := DeleteHostLink(v.HostName); err != nil {
		return err
	}
	if v.moved {
		// The peer may have been renamed inside the namespace.
		_ = inNetns(v.ns, func() error {
			if l, err := netlink.LinkByName(v.ContName); err == nil && l.Type() == "veth" {
				return netlink.LinkDel(l)
			}
			return nil
		})
	}
	return nil
}

// Close releases the namespace handle, keeping the pair.
func (v *Veth) Close() { v.closeNS() }

func (v *Veth) closeNS() {
	if v.ns >= 0 {
		v.ns.Close()
		v.ns = -1
	}
}

// DeleteHostLink deletes a host-side interface by name; a missing one is
// not an error.
func DeleteHostLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// HostLinkIndex returns the ifindex of a host-side interface, 0 if gone.
func HostLinkIndex(name string) int {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0
	}
	return l.Attrs().Index
}

// inNetns runs fn with the calling goroutine's thread in ns.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is left in ns on purpose and dies with the goroutine
		// (no UnlockOSThread), so it never runs other goroutines.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func writeSysctl(name, value string) error {
	if err := os.WriteFile(filepath.Join("/proc/sys", name), []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}
