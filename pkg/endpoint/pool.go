package endpoint

import (
	"fmt"
	"strings"

	"github.com/vishvananda/netlink"
)

// Spare veth pairs: made ahead of time, both ends down, with the names
// PoolPrefix+tag+n (host side) and PoolPeerPrefix+tag+n (peer), so that an
// endpoint can take one instead of waiting for its creation and for the
// datapath's attach. Adopt renames one into an endpoint's names.
const (
	PoolPrefix     = "mbp"
	PoolPeerPrefix = "mbq"
)

// CreateSpare makes a spare pair; the sysctls of host sides are set.
func CreateSpare(hostName, peerName string) (_ *Veth, err error) {
	v := &Veth{HostName: hostName, ns: -1, spare: peerName}
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
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: la, PeerName: peerName}); err != nil {
		return nil, fmt.Errorf("create spare veth %s: %w", hostName, err)
	}
	host, err := netlink.LinkByName(hostName)
	if err != nil {
		return nil, fmt.Errorf("find spare veth %s: %w", hostName, err)
	}
	v.HostIndex = host.Attrs().Index
	v.HostMAC = host.Attrs().HardwareAddr
	peer, err := netlink.LinkByName(peerName)
	if err != nil {
		return nil, fmt.Errorf("find spare veth peer: %w", err)
	}
	v.ContMAC = peer.Attrs().HardwareAddr
	for _, n := range []string{hostName, peerName} {
		if err := writeSysctl("net/ipv6/conf/"+n+"/disable_ipv6", "1"); err != nil {
			return nil, err
		}
	}
	for _, kv := range [][2]string{
		{"net/ipv4/conf/" + hostName + "/forwarding", "1"},
		{"net/ipv4/neigh/" + hostName + "/proxy_delay", "0"},
	} {
		if err := writeSysctl(kv[0], kv[1]); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// Adopt gives a spare pair an endpoint's names: the host side hostName, the
// peer tmpIfName(hostName). With a netns path, it checks the namespace
// first (as PrepareVeth does); prepared endpoints (a runtime moves the
// peer) give none and get proxy ARP on the host side.
func (v *Veth) Adopt(netnsPath, hostName, contName string) error {
	if netnsPath != "" {
		ns, err := CheckNetns(netnsPath)
		if err != nil {
			return err
		}
		v.ns, v.netnsPath = ns, netnsPath
		nh, err := netlink.NewHandleAt(ns)
		if err != nil {
			return fmt.Errorf("open netlink in %s: %w", netnsPath, err)
		}
		_, exists := nh.LinkByName(contName)
		nh.Close()
		if exists == nil {
			return fmt.Errorf("%w: %s in %s", ErrIfaceExists, contName, netnsPath)
		}
	}
	v.ContName = contName
	if l, err := netlink.LinkByName(hostName); err == nil && l.Attrs().Index != v.HostIndex {
		_ = netlink.LinkDel(l) // left by a crash: ours by name
	}
	host, err := netlink.LinkByIndex(v.HostIndex)
	if err != nil {
		return fmt.Errorf("find spare veth: %w", err)
	}
	if err := netlink.LinkSetName(host, hostName); err != nil {
		return fmt.Errorf("rename spare veth to %s: %w", hostName, err)
	}
	v.HostName = hostName
	peer, err := netlink.LinkByName(v.spare)
	if err != nil {
		return fmt.Errorf("find spare veth peer: %w", err)
	}
	if err := netlink.LinkSetName(peer, tmpIfName(hostName)); err != nil {
		return fmt.Errorf("rename spare veth peer: %w", err)
	}
	v.spare = ""
	if netnsPath == "" {
		return writeSysctl("net/ipv4/conf/"+hostName+"/proxy_arp", "1")
	}
	return nil
}

// DeleteSpares deletes the spare pairs of an agent (their host-side names
// start with PoolPrefix+tag), left by an earlier run.
func DeleteSpares(tag string) {
	links, err := netlink.LinkList()
	if err != nil {
		return
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, PoolPrefix+tag) {
			_ = netlink.LinkDel(l)
		}
	}
}
