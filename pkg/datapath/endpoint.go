package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// Endpoint is what the datapath knows of an endpoint.
type Endpoint struct {
	ID       uint32
	IfIndex  int // host-side veth
	Identity uint32
	IPv4     netip.Addr
	// AuditIngress and AuditEgress let would-be drops pass, reported with
	// verdict AUDIT.
	AuditIngress, AuditEgress bool
}

func (ep Endpoint) info() bpfEndpointInfo {
	info := bpfEndpointInfo{EpId: ep.ID, Identity: ep.Identity, Ipv4: ep.IPv4.As4()}
	if ep.AuditIngress {
		info.Flags |= endpointAuditIngress
	}
	if ep.AuditEgress {
		info.Flags |= endpointAuditEgress
	}
	return info
}

func (d *Datapath) epDir(id uint32) string {
	return filepath.Join(d.cfg.BPFFSDir, "endpoints", strconv.FormatUint(uint64(id), 10))
}

// AddEndpoint gives an endpoint its policy map, filled with policy, and
// attaches the programs to its host-side interface. The packet path is
// closed at every step: the programs drop packets of interfaces that are not
// (yet) endpoints and of endpoints without a policy map. On failure nothing
// is left behind. If the endpoint is pinned from an earlier run, its pins
// are reused (see RestoreEndpoint).
func (d *Datapath) AddEndpoint(ep Endpoint, policy mapstate.MapState) (err error) {
	if len(policy) > int(d.cfg.PolicyMapMaxEntries) {
		return fmt.Errorf("endpoint %d: %w: %d entries, capacity %d", ep.ID, ErrCapacity, len(policy), d.cfg.PolicyMapMaxEntries)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.eps[ep.ID]; ok {
		return fmt.Errorf("endpoint %d: already attached", ep.ID)
	}
	dir := d.epDir(ep.ID)
	st := &endpointState{ifindex: ep.IfIndex, current: mapstate.MapState{}}
	defer func() {
		if err != nil {
			d.removeLocked(ep.ID, st)
		}
	}()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin dir: %w", err)
	}
	spec := d.inner.Copy()
	spec.Name = fmt.Sprintf("policy_%d", ep.ID)
	if st.policy, err = ebpf.NewMap(spec); err != nil {
		return fmt.Errorf("create policy map: %w", err)
	}
	if err := st.policy.Pin(filepath.Join(dir, "policy")); err != nil {
		return fmt.Errorf("pin policy map: %w", err)
	}
	if err := writePolicy(st.policy, st.current, policy); err != nil {
		return fmt.Errorf("write policy: %w", err)
	}
	if err := d.maps["policy"].Update(ep.ID, st.policy, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("register policy map: %w", err)
	}
	info := ep.info()
	if err := d.maps["endpoints"].Update(uint32(ep.IfIndex), &info, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("register endpoint: %w", err)
	}
	if err := d.attach(st, dir); err != nil {
		return err
	}
	d.eps[ep.ID] = st
	return nil
}

func (d *Datapath) attach(st *endpointState, dir string) error {
	progs := [2]*ebpf.Program{d.fromProg, d.toProg}
	attach := [2]ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress}
	names := [2]string{"from_container", "to_container"}
	for i := range progs {
		path := filepath.Join(dir, names[i])
		if l, err := link.LoadPinnedLink(path, nil); err == nil {
			// Pinned by an earlier run: point it at this run's program.
			if err := l.Update(progs[i]); err != nil {
				l.Close()
				return fmt.Errorf("update pinned %s link: %w", names[i], err)
			}
			st.links[i] = l
			continue
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: st.ifindex, Program: progs[i], Attach: attach[i]})
		if err != nil {
			return fmt.Errorf("attach tcx %s: %w", names[i], err)
		}
		st.links[i] = l
		if err := l.Pin(path); err != nil {
			return fmt.Errorf("pin %s link: %w", names[i], err)
		}
	}
	return nil
}

// RestoreEndpoint takes over an endpoint pinned by an earlier agent run:
// its policy map is reused and brought to policy by writing only the
// differences, its links are pointed at the current programs. Missing pins
// are recreated. Enforcement never stops while this runs.
func (d *Datapath) RestoreEndpoint(ep Endpoint, policy mapstate.MapState) error {
	if len(policy) > int(d.cfg.PolicyMapMaxEntries) {
		return fmt.Errorf("endpoint %d: %w: %d entries, capacity %d", ep.ID, ErrCapacity, len(policy), d.cfg.PolicyMapMaxEntries)
	}
	dir := d.epDir(ep.ID)
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, "policy"), nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return d.AddEndpoint(ep, policy)
		}
		return fmt.Errorf("endpoint %d: load pinned policy map: %w", ep.ID, err)
	}
	if cerr := d.inner.Compatible(m); cerr != nil {
		m.Close()
		d.log.Warn("pinned policy map is not compatible, recreating it", "endpoint", ep.ID, "reason", cerr)
		if err := os.Remove(filepath.Join(dir, "policy")); err != nil {
			return fmt.Errorf("endpoint %d: remove stale policy map: %w", ep.ID, err)
		}
		return d.AddEndpoint(ep, policy)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st := &endpointState{ifindex: ep.IfIndex, policy: m}
	if st.current, err = readPolicy(m); err != nil {
		st.close()
		return fmt.Errorf("endpoint %d: read policy map: %w", ep.ID, err)
	}
	if err := writePolicy(m, st.current, policy); err != nil {
		st.close()
		return fmt.Errorf("endpoint %d: write policy: %w", ep.ID, err)
	}
	if err := d.maps["policy"].Update(ep.ID, m, ebpf.UpdateAny); err != nil {
		st.close()
		return fmt.Errorf("endpoint %d: register policy map: %w", ep.ID, err)
	}
	info := ep.info()
	if err := d.maps["endpoints"].Update(uint32(ep.IfIndex), &info, ebpf.UpdateAny); err != nil {
		st.close()
		return fmt.Errorf("endpoint %d: register endpoint: %w", ep.ID, err)
	}
	if err := d.attach(st, dir); err != nil {
		st.close()
		return fmt.Errorf("endpoint %d: %w", ep.ID, err)
	}
	d.eps[ep.ID] = st
	return nil
}

// UpdateEndpoint rewrites an endpoint's identity and flags in one map
// update.
func (d *Datapath) UpdateEndpoint(ep Endpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.eps[ep.ID]
	if !ok {
		return fmt.Errorf("endpoint %d: not attached", ep.ID)
	}
	if st.ifindex != ep.IfIndex {
		return fmt.Errorf("endpoint %d: interface changed from %d to %d", ep.ID, st.ifindex, ep.IfIndex)
	}
	info := ep.info()
	if err := d.maps["endpoints"].Update(uint32(ep.IfIndex), &info, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("endpoint %d: update: %w", ep.ID, err)
	}
	return nil
}

// RemoveEndpoint detaches the programs and removes every pin and map entry
// of the endpoint, and its conntrack entries. Removing an endpoint that is
// not attached removes whatever pins of it remain.
func (d *Datapath) RemoveEndpoint(id uint32, ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.eps[id]
	if st == nil {
		st = &endpointState{ifindex: ifindex}
	}
	return d.removeLocked(id, st)
}

func (d *Datapath) removeLocked(id uint32, st *endpointState) error {
	var errs []error
	for i, l := range st.links {
		if l == nil {
			continue
		}
		if err := l.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unpin link: %w", err))
		}
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach link: %w", err))
		}
		st.links[i] = nil
	}
	if st.ifindex > 0 {
		if err := d.maps["endpoints"].Delete(uint32(st.ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("unregister endpoint: %w", err))
		}
	}
	if err := d.maps["policy"].Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("unregister policy map: %w", err))
	}
	if st.policy != nil {
		st.policy.Close()
		st.policy = nil
	}
	// Pins of this endpoint, including those of an earlier run.
	if err := os.RemoveAll(d.epDir(id)); err != nil {
		errs = append(errs, fmt.Errorf("remove pins: %w", err))
	}
	delete(d.eps, id)
	if _, err := d.flushCT(func(k *bpfCtKey, v *bpfCtEntry) bool { return v.EpId == id }); err != nil {
		errs = append(errs, fmt.Errorf("flush conntrack: %w", err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("endpoint %d: remove: %w", id, errors.Join(errs...))
	}
	return nil
}

// PinnedEndpoints lists the endpoint ids with pins under the bpffs
// directory, whether or not this run attached them.
func (d *Datapath) PinnedEndpoints() ([]uint32, error) {
	ents, err := os.ReadDir(filepath.Join(d.cfg.BPFFSDir, "endpoints"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []uint32
	for _, e := range ents {
		if n, err := strconv.ParseUint(e.Name(), 10, 32); err == nil {
			ids = append(ids, uint32(n))
		}
	}
	return ids, nil
}
