package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

func policyKey(id uint32, k mapstate.Key) bpfPolicyKey {
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], k.Port)
	egress := uint8(0)
	if k.Egress {
		egress = 1
	}
	return bpfPolicyKey{
		Prefixlen: 32 + k.PrefixLen(),
		EpId:      id,
		Identity:  uint32(k.Identity),
		Egress:    egress,
		Protocol:  k.Protocol,
		Dport:     binary.NativeEndian.Uint16(port[:]),
	}
}

func fromPolicyKey(bk bpfPolicyKey) (uint32, mapstate.Key) {
	var port [2]byte
	binary.NativeEndian.PutUint16(port[:], bk.Dport)
	k := mapstate.Key{Identity: identity.NumericIdentity(bk.Identity), Egress: bk.Egress == 1, Protocol: bk.Protocol}
	plen := bk.Prefixlen - 32 // without the endpoint id
	if plen > 48 {
		k.PortPrefixLen = uint8(plen - 48)
		k.Port = binary.BigEndian.Uint16(port[:])
	}
	if plen <= 40 {
		k.Protocol = mapstate.ProtoAny
	}
	return bk.EpId, k
}

func policyValue(k mapstate.Key, e mapstate.Entry) bpfPolicyEntry {
	v := bpfPolicyEntry{ProxyPort: e.ProxyPort, Cookie: e.Cookie, Prefixlen: uint8(k.PrefixLen())}
	if e.Deny {
		v.Flags |= policyFlagDeny
	}
	return v
}

// writePolicy brings an endpoint's entries from current to desired with
// the writes of mapstate.Diff, in its order, and keeps current equal to
// what the map holds, even when a write fails.
func writePolicy(m *ebpf.Map, id uint32, current, desired mapstate.MapState) error {
	return writeChanges(m, id, current, desired, mapstate.Diff(current, desired))
}

// writeChanges is writePolicy for changes computed already (Diff of
// current and desired).
func writeChanges(m *ebpf.Map, id uint32, current, desired mapstate.MapState, changes []mapstate.Change) error {
	for _, c := range changes {
		if c.Delete {
			break // deletions come last
		}
		if err := c.Key.Valid(); err != nil {
			return fmt.Errorf("key %s: %w", c.Key, err)
		}
	}
	// Upserts first, in batches, then deletions (Diff's order).
	var keys []bpfPolicyKey
	var vals []bpfPolicyEntry
	var upKeys []mapstate.Key
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		n, err := m.BatchUpdate(keys, vals, nil)
		for i := 0; i < n && i < len(upKeys); i++ {
			current[upKeys[i]] = desired[upKeys[i]]
		}
		if err != nil {
			if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.E2BIG) {
				return fmt.Errorf("%w: %v", ErrCapacity, err)
			}
			return fmt.Errorf("update %d entries: %w", len(keys), err)
		}
		keys, vals, upKeys = keys[:0], vals[:0], upKeys[:0]
		return nil
	}
	for _, c := range changes {
		if c.Delete {
			if err := flush(); err != nil {
				return err
			}
			bk := policyKey(id, c.Key)
			if err := m.Delete(&bk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("delete %s: %w", c.Key, err)
			}
			delete(current, c.Key)
			continue
		}
		keys = append(keys, policyKey(id, c.Key))
		vals = append(vals, policyValue(c.Key, c.Entry))
		upKeys = append(upKeys, c.Key)
	}
	return flush()
}

// readPolicies reads the whole policy map, by endpoint (want: only that
// endpoint; 0: all).
func readPolicies(m *ebpf.Map, want ...uint32) (map[uint32]mapstate.MapState, error) {
	out := map[uint32]mapstate.MapState{}
	var bk bpfPolicyKey
	var v bpfPolicyEntry
	it := m.Iterate()
	for it.Next(&bk, &v) {
		id, k := fromPolicyKey(bk)
		if len(want) > 0 && id != want[0] {
			continue
		}
		ms := out[id]
		if ms == nil {
			ms = mapstate.MapState{}
			out[id] = ms
		}
		ms[k] = mapstate.Entry{Deny: v.Flags&policyFlagDeny != 0, ProxyPort: v.ProxyPort, Cookie: v.Cookie}
	}
	return out, it.Err()
}

// SyncPolicy brings an endpoint's policy map to policy, writing only the
// entries that change (new and changed entries first, then deletions, so
// flows the change does not touch keep their verdict throughout). It
// returns the number of writes, and whether the change may take away
// something allowed (a deletion, a changed entry, a deny or an L7
// redirect): adding allows only cannot affect connections already open.
func (d *Datapath) SyncPolicy(id uint32, policy mapstate.MapState) (writes int, restrictive bool, err error) {
	if err := d.checkCapacity(id, policy); err != nil {
		return 0, false, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.eps[id]
	if !ok {
		return 0, false, fmt.Errorf("endpoint %d: not attached", id)
	}
	changes := mapstate.Diff(st.current, policy)
	for _, c := range changes {
		if _, existed := st.current[c.Key]; c.Delete || existed || c.Entry.Deny || c.Entry.ProxyPort != 0 {
			restrictive = true
			break
		}
	}
	if err := writeChanges(d.maps["policy"], id, st.current, policy, changes); err != nil {
		return 0, false, fmt.Errorf("endpoint %d: %w", id, err)
	}
	return len(changes), restrictive, nil
}

// ReadPolicy returns what the kernel's policy map holds for an endpoint,
// read from the map itself.
func (d *Datapath) ReadPolicy(id uint32) (mapstate.MapState, error) {
	all, err := readPolicies(d.maps["policy"], id)
	if err != nil {
		return nil, err
	}
	if ms := all[id]; ms != nil {
		return ms, nil
	}
	return mapstate.MapState{}, nil
}
