package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// IPCacheValue is what the ipcache says of the addresses of a prefix.
type IPCacheValue struct {
	Identity     uint32 `json:"identity"`
	CIDRIdentity uint32 `json:"cidrIdentity,omitempty"`
	// InCluster: an endpoint's or the host's address, not world.
	InCluster bool `json:"inCluster,omitempty"`
}

func ipcacheKey(p netip.Prefix) (bpfIpcacheKey, error) {
	if !p.Addr().Is4() {
		return bpfIpcacheKey{}, fmt.Errorf("prefix %s: only IPv4 is supported", p)
	}
	k := bpfIpcacheKey{Prefixlen: uint32(32 + p.Bits()), Family: familyIPv4}
	a := p.Masked().Addr().As4()
	copy(k.Addr[:], a[:])
	return k, nil
}

// UpsertIPCache writes the entry of a prefix.
func (d *Datapath) UpsertIPCache(p netip.Prefix, v IPCacheValue) error {
	k, err := ipcacheKey(p)
	if err != nil {
		return err
	}
	bv := bpfIpcacheValue{Identity: v.Identity, CidrIdentity: v.CIDRIdentity}
	if v.InCluster {
		bv.Flags |= ipcacheFlagCluster
	}
	if err := d.maps["ipcache"].Update(&k, &bv, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("ipcache update %s: %w", p, err)
	}
	return nil
}

// DeleteIPCache removes the entry of a prefix; a missing entry is not an
// error.
func (d *Datapath) DeleteIPCache(p netip.Prefix) error {
	k, err := ipcacheKey(p)
	if err != nil {
		return err
	}
	if err := d.maps["ipcache"].Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("ipcache delete %s: %w", p, err)
	}
	return nil
}

// IPCacheEntry is one prefix and its value.
type IPCacheEntry struct {
	Prefix netip.Prefix
	Value  IPCacheValue
}

// ApplyIPCache writes upserts, then removes deletes, in batches.
func (d *Datapath) ApplyIPCache(upserts []IPCacheEntry, deletes []netip.Prefix) error {
	if len(upserts) > 0 {
		keys := make([]bpfIpcacheKey, 0, len(upserts))
		vals := make([]bpfIpcacheValue, 0, len(upserts))
		for _, e := range upserts {
			k, err := ipcacheKey(e.Prefix)
			if err != nil {
				return err
			}
			v := bpfIpcacheValue{Identity: e.Value.Identity, CidrIdentity: e.Value.CIDRIdentity}
			if e.Value.InCluster {
				v.Flags |= ipcacheFlagCluster
			}
			keys = append(keys, k)
			vals = append(vals, v)
		}
		if _, err := d.maps["ipcache"].BatchUpdate(keys, vals, nil); err != nil {
			return fmt.Errorf("ipcache update of %d entries: %w", len(keys), err)
		}
	}
	for _, p := range deletes {
		if err := d.DeleteIPCache(p); err != nil {
			return err
		}
	}
	return nil
}

// ListIPCache reads every entry of the kernel's ipcache.
func (d *Datapath) ListIPCache() (map[netip.Prefix]IPCacheValue, error) {
	out := map[netip.Prefix]IPCacheValue{}
	var k bpfIpcacheKey
	var v bpfIpcacheValue
	it := d.maps["ipcache"].Iterate()
	for it.Next(&k, &v) {
		if k.Family != familyIPv4 || k.Prefixlen < 32 {
			continue
		}
		a := netip.AddrFrom4([4]byte(k.Addr[:4]))
		p := netip.PrefixFrom(a, int(k.Prefixlen-32))
		out[p] = IPCacheValue{Identity: v.Identity, CIDRIdentity: v.CidrIdentity, InCluster: v.Flags&ipcacheFlagCluster != 0}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("ipcache list: %w", err)
	}
	return out, nil
}

// LookupIPCache returns the entry the datapath would use for an address.
func (d *Datapath) LookupIPCache(a netip.Addr) (IPCacheValue, bool) {
	k, err := ipcacheKey(netip.PrefixFrom(a, 32))
	if err != nil {
		return IPCacheValue{}, false
	}
	var v bpfIpcacheValue
	if err := d.maps["ipcache"].Lookup(&k, &v); err != nil {
		return IPCacheValue{}, false
	}
	return IPCacheValue{Identity: v.Identity, CIDRIdentity: v.CidrIdentity, InCluster: v.Flags&ipcacheFlagCluster != 0}, true
}
