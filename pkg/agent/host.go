package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/ipcache"
)

// hostPeerName is the other end of the host device pair.
func (a *Agent) hostPeerName() string { return a.cfg.HostIfName[:len(a.cfg.HostIfName)-4] + "net" }

// ensureHostDevice makes the veth pair that holds the host's address in the
// pool (the source of host-to-endpoint traffic, like cilium_host).
func (a *Agent) ensureHostDevice() error {
	name := a.cfg.HostIfName
	l, err := netlink.LinkByName(name)
	if err != nil {
		la := netlink.NewLinkAttrs()
		la.Name = name
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: a.hostPeerName()}); err != nil {
			return fmt.Errorf("create %s: %w", name, err)
		}
		if l, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("find %s: %w", name, err)
		}
	}
	for _, n := range []string{name, a.hostPeerName()} {
		_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+n+"/disable_ipv6", []byte("1"), 0o644)
	}
	gw := a.pool.Gateway()
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: gw.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrReplace(l, addr); err != nil {
		return fmt.Errorf("address %s on %s: %w", gw, name, err)
	}
	for _, n := range []string{name, a.hostPeerName()} {
		if ll, err := netlink.LinkByName(n); err == nil {
			if err := netlink.LinkSetUp(ll); err != nil {
				return fmt.Errorf("set %s up: %w", n, err)
			}
		}
	}
	// Ingress L7 redirects are hairpinned into this device: it must not
	// filter them by reverse path.
	_ = os.WriteFile("/proc/sys/net/ipv4/conf/"+name+"/rp_filter", []byte("0"), 0o644)
	if err := a.dp.AttachHostDevice(l.Attrs().Index, l.Attrs().HardwareAddr); err != nil {
		return err
	}
	return nil
}

// hostAddrs lists the host's IPv4 addresses.
func hostAddrs() (map[netip.Addr]bool, error) {
	addrs, err := netlink.AddrList(nil, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	out := map[netip.Addr]bool{}
	for _, ad := range addrs {
		if a, ok := netip.AddrFromSlice(ad.IP.To4()); ok {
			out[a] = true
		}
	}
	return out, nil
}

// syncHostAddrs gives every host address the host identity in the
// ipcache; the caller holds mu.
func (a *Agent) syncHostAddrs() error {
	now, err := hostAddrs()
	if err != nil {
		return err
	}
	for ad := range now {
		if !a.hostIPs[ad] {
			if err := a.ipc.UpsertSecurity(netip.PrefixFrom(ad, 32), ipcache.Security{Identity: identity.Host, InCluster: true, Source: "host"}); err != nil {
				return err
			}
		}
	}
	for ad := range a.hostIPs {
		if !now[ad] {
			if err := a.ipc.DeleteSecurity(netip.PrefixFrom(ad, 32)); err != nil {
				return err
			}
		}
	}
	a.hostIPs = now
	return nil
}

// watchHostAddrs follows address changes on the host.
func (a *Agent) watchHostAddrs(ctx context.Context) {
	ch := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	if err := netlink.AddrSubscribe(ch, done); err != nil {
		a.log.Warn("cannot follow host address changes", "error", err)
		return
	}
	defer close(done)
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-ch:
			if !ok {
				return
			}
			a.mu.Lock()
			if err := a.syncHostAddrs(); err != nil {
				a.log.Warn("host addresses", "error", err)
			}
			a.mu.Unlock()
		}
	}
}
