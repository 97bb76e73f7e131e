package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// CTEntry is one connection tracking entry as the kernel holds it.
type CTEntry struct {
	Src          netip.AddrPort `json:"src"`
	Dst          netip.AddrPort `json:"dst"`
	Protocol     uint8          `json:"protocol"`
	Dir          string         `json:"direction"` // the hook that created it
	EndpointID   uint32         `json:"endpoint"`
	PeerIdentity uint32         `json:"peerIdentity"`
	ProxyPort    uint16         `json:"proxyPort,omitempty"`
	Closing      bool           `json:"closing,omitempty"`
	Audit        bool           `json:"audit,omitempty"`
	SeenReply    bool           `json:"seenReply,omitempty"`
	// ProxyUpstream: a connection the L7 proxy opened.
	ProxyUpstream bool `json:"proxyUpstream,omitempty"`
	// Reply: the entry of a connection's reverse tuple, which its replies
	// find (Src and Dst are the reply's; Dir the hook they pass).
	Reply     bool          `json:"reply,omitempty"`
	ExpiresIn time.Duration `json:"expiresIn"`
	Age       time.Duration `json:"age"`
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

func ctEntry(k *bpfCtKey, v *bpfCtEntry, now uint64) CTEntry {
	src := netip.AddrFrom4([4]byte(k.Saddr[:4]))
	dst := netip.AddrFrom4([4]byte(k.Daddr[:4]))
	return CTEntry{
		Src: netip.AddrPortFrom(src, k.Sport), Dst: netip.AddrPortFrom(dst, k.Dport),
		Protocol: k.Protocol, Dir: DirName(k.Dir), EndpointID: v.EpId, PeerIdentity: v.PeerIdentity,
		ProxyPort: v.ProxyPort, Closing: v.Flags&ctFlagClosing != 0, Audit: v.Flags&ctFlagAudit != 0,
		SeenReply: v.Flags&ctFlagSeenReply != 0, ProxyUpstream: v.Flags&ctFlagProxyUpstream != 0,
		Reply:     v.Flags&ctFlagReply != 0,
		ExpiresIn: time.Duration(int64(v.ExpiresNs) - int64(now)),
		Age:       time.Duration(int64(now) - int64(v.CreatedNs)),
	}
}

// Original returns the connection as its first packet went: source,
// destination and the hook ("ingress" or "egress") that allowed it.
func (e CTEntry) Original() (src, dst netip.AddrPort, dir string) {
	if !e.Reply {
		return e.Src, e.Dst, e.Dir
	}
	dir = "egress"
	if e.Dir == "egress" {
		dir = "ingress"
	}
	return e.Dst, e.Src, dir
}

// ListCT reads the live entries of the kernel's conntrack map.
func (d *Datapath) ListCT() ([]CTEntry, error) {
	now := monotonicNow()
	var out []CTEntry
	var k bpfCtKey
	var v bpfCtEntry
	it := d.maps["ct"].Iterate()
	for it.Next(&k, &v) {
		if v.ExpiresNs <= now {
			continue
		}
		out = append(out, ctEntry(&k, &v, now))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("conntrack list: %w", err)
	}
	return out, nil
}

// GCCT deletes expired conntrack entries and returns how many.
func (d *Datapath) GCCT() (int, error) {
	now := monotonicNow()
	return d.flushCT(func(_ *bpfCtKey, v *bpfCtEntry) bool { return v.ExpiresNs <= now })
}

// FlushCT deletes the conntrack entries for which drop returns true.
func (d *Datapath) FlushCT(drop func(CTEntry) bool) (int, error) {
	now := monotonicNow()
	return d.flushCT(func(k *bpfCtKey, v *bpfCtEntry) bool { return drop(ctEntry(k, v, now)) })
}

func (d *Datapath) flushCT(drop func(*bpfCtKey, *bpfCtEntry) bool) (int, error) {
	m := d.maps["ct"]
	var keys []bpfCtKey
	var k bpfCtKey
	var v bpfCtEntry
	it := m.Iterate()
	for it.Next(&k, &v) {
		if drop(&k, &v) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, err
	}
	n := 0
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, err
		}
		n++
	}
	return n, nil
}
