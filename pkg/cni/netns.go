package cni

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/pkg/endpoint"
)

// CheckInterface verifies, in the namespace at path, that ifName is up,
// holds addr/32 and routes by default through the link-local gateway.
func CheckInterface(path, ifName string, addr netip.Addr) error {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	link, err := h.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("interface %s in %s: %w", ifName, path, err)
	}
	if link.Attrs().Flags&(1<<0) == 0 { // IFF_UP
		return fmt.Errorf("interface %s in %s is down", ifName, path)
	}
	addrs, err := h.AddrList(link, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("addresses of %s: %w", ifName, err)
	}
	have := false
	for _, a := range addrs {
		ones, _ := a.Mask.Size()
		if got, ok := netip.AddrFromSlice(a.IP.To4()); ok && got == addr && ones == 32 {
			have = true
		}
	}
	if !have {
		return fmt.Errorf("interface %s in %s does not hold %s/32", ifName, path, addr)
	}
	routes, err := h.RouteList(link, unix.AF_INET)
	if err != nil {
		return fmt.Errorf("routes of %s: %w", ifName, err)
	}
	for _, r := range routes {
		gw, _ := netip.AddrFromSlice(r.Gw.To4())
		if (r.Dst == nil || r.Dst.IP.IsUnspecified()) && gw == endpoint.GatewayIP {
			return nil
		}
	}
	return fmt.Errorf("interface %s in %s has no default route via %s", ifName, path, endpoint.GatewayIP)
}
