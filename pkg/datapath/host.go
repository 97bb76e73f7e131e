package datapath

import (
	"fmt"
	"net"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Marks shared with the L7 proxy and the host's policy routing (see
// bpf/common.h).
const (
	MarkMask      = 0xf00
	MarkToProxy   = 0x200
	MarkFromProxy = 0xb00
)

// AttachHostDevice attaches the hairpin program to the host device (the
// ingress L7 redirects arrive there) and tells the datapath where it is.
// A link pinned by an earlier run is reused.
func (d *Datapath) AttachHostDevice(ifindex int, mac net.HardwareAddr) error {
	if len(mac) != 6 {
		return fmt.Errorf("host device %d: MAC %s is not Ethernet", ifindex, mac)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	path := filepath.Join(d.cfg.BPFFSDir, "host_dev_link")
	var l link.Link
	if old, err := link.LoadPinnedLink(path, nil); err == nil {
		info, ierr := old.Info()
		if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
			if err := old.Update(d.hostProg); err != nil {
				old.Close()
				return fmt.Errorf("update host device link: %w", err)
			}
			l = old
		} else {
			_ = old.Unpin()
			old.Close()
		}
	}
	if l == nil {
		nl, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: d.hostProg, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return fmt.Errorf("attach tcx to host device: %w", err)
		}
		if err := nl.Pin(path); err != nil {
			nl.Close()
			return fmt.Errorf("pin host device link: %w", err)
		}
		l = nl
	}
	if d.hostLink != nil {
		d.hostLink.Close()
	}
	d.hostLink = l
	return d.updateConfig(func(c *bpfDpConfig) {
		c.HostIfindex = uint32(ifindex)
		copy(c.HostMac[:], mac)
	})
}
