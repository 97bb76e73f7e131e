package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"

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

// AddEndpoint writes an endpoint's policy and registers it, then attaches
// the programs to its host-side interface. The packet path is closed at
// every step: the programs drop packets of interfaces that are not (yet)
// endpoints, and an endpoint's traffic meets its policy from the first
// packet. On failure nothing is left behind. Entries and pins of an
// endpoint with the same id from an earlier run are taken over (see
// RestoreEndpoint).
func (d *Datapath) AddEndpoint(ep Endpoint, policy mapstate.MapState) (err error) {
	return d.AddAttachedEndpoint(ep, policy, nil)
}

// Attachment is the programs attached to an interface that is not yet an
// endpoint: they drop everything until AddAttachedEndpoint registers it.
// It lets the agent pay the attaches' RCU waits ahead of time.
type Attachment struct {
	ifindex int
	links   [2]link.Link
}

// PreAttach attaches the programs to an interface ahead of its endpoint.
func (d *Datapath) PreAttach(ifindex int) (*Attachment, error) {
	st := &endpointState{ifindex: ifindex}
	if err := d.attachLinks(st, ""); err != nil {
		st.close()
		return nil, err
	}
	return &Attachment{ifindex: ifindex, links: st.links}, nil
}

// Close detaches the programs of an unused attachment.
func (a *Attachment) Close() {
	for _, l := range a.links {
		if l != nil {
			l.Close()
		}
	}
}

// AddAttachedEndpoint is AddEndpoint for an interface whose programs
// PreAttach attached (att may be nil: attach now).
func (d *Datapath) AddAttachedEndpoint(ep Endpoint, policy mapstate.MapState, att *Attachment) (err error) {
	if err := d.checkCapacity(ep.ID, policy); err != nil {
		return err
	}
	if att != nil && att.ifindex != ep.IfIndex {
		return fmt.Errorf("endpoint %d: attachment of interface %d, endpoint on %d", ep.ID, att.ifindex, ep.IfIndex)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.eps[ep.ID]; ok {
		return fmt.Errorf("endpoint %d: already attached", ep.ID)
	}
	st := &endpointState{ifindex: ep.IfIndex, current: d.takePinned(ep.ID)}
	if att != nil {
		st.links = att.links
	}
	defer func() {
		if err != nil {
			d.removeLocked(ep.ID, st)
		}
	}()
	if err := d.register(ep, st, policy); err != nil {
		return err
	}
	d.eps[ep.ID] = st
	return nil
}

// register writes the policy, registers the endpoint and attaches.
func (d *Datapath) register(ep Endpoint, st *endpointState, policy mapstate.MapState) error {
	dir := d.epDir(ep.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin dir: %w", err)
	}
	if err := writePolicy(d.maps["policy"], ep.ID, st.current, policy); err != nil {
		return fmt.Errorf("endpoint %d: write policy: %w", ep.ID, err)
	}
	if err := d.putEndpoint(ep, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("endpoint %d: register: %w", ep.ID, err)
	}
	if err := d.attach(st, dir); err != nil {
		return fmt.Errorf("endpoint %d: %w", ep.ID, err)
	}
	return nil
}

func (d *Datapath) takePinned(id uint32) mapstate.MapState {
	ms := d.pinned[id]
	delete(d.pinned, id)
	if ms == nil {
		ms = mapstate.MapState{}
	}
	return ms
}

func (d *Datapath) checkCapacity(id uint32, policy mapstate.MapState) error {
	if len(policy) > int(d.cfg.PolicyMapMaxEntries) {
		return fmt.Errorf("endpoint %d: %w: %d entries, capacity %d", id, ErrCapacity, len(policy), d.cfg.PolicyMapMaxEntries)
	}
	return nil
}

// attach attaches both programs (or takes over the pinned links of an
// earlier run), and pins the links under dir.
func (d *Datapath) attach(st *endpointState, dir string) error {
	if st.links[0] != nil && st.links[1] != nil {
		// Pre-attached: pin them.
		for i, name := range [2]string{"from_container", "to_container"} {
			if err := st.links[i].Pin(filepath.Join(dir, name)); err != nil {
				return fmt.Errorf("pin %s link: %w", name, err)
			}
		}
		return nil
	}
	return d.attachLinks(st, dir)
}

// attachLinks attaches both programs, concurrently, pinning them under dir
// unless dir is empty; pinned links of an earlier run are reused.
func (d *Datapath) attachLinks(st *endpointState, dir string) error {
	progs := [2]*ebpf.Program{d.fromProg, d.toProg}
	attach := [2]ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress}
	names := [2]string{"from_container", "to_container"}
	var errs [2]error
	var wg sync.WaitGroup
	for i := range progs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			path := filepath.Join(dir, names[i])
			if dir == "" {
				path = ""
			}
			if l, err := link.LoadPinnedLink(path, nil); path != "" && err == nil {
				// Pinned by an earlier run: point it at this run's program.
				if err := l.Update(progs[i]); err != nil {
					l.Close()
					errs[i] = fmt.Errorf("update pinned %s link: %w", names[i], err)
					return
				}
				st.links[i] = l
				return
			}
			l, err := link.AttachTCX(link.TCXOptions{Interface: st.ifindex, Program: progs[i], Attach: attach[i]})
			if err != nil {
				errs[i] = fmt.Errorf("attach tcx %s: %w", names[i], err)
				return
			}
			st.links[i] = l
			if path == "" {
				return
			}
			if err := l.Pin(path); err != nil {
				errs[i] = fmt.Errorf("pin %s link: %w", names[i], err)
			}
		}(i)
	}
	wg.Wait()
	return errors.Join(errs[0], errs[1])
}

// RestoreEndpoint takes over an endpoint of an earlier agent run: its
// entries in the pinned policy map are brought to policy by writing only
// the differences, its pinned links are pointed at the current programs.
// Missing pins are recreated. Enforcement never stops while this runs.
func (d *Datapath) RestoreEndpoint(ep Endpoint, policy mapstate.MapState) error {
	return d.AddEndpoint(ep, policy)
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
	if err := d.putEndpoint(ep, ebpf.UpdateExist); err != nil {
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
		// Links pinned by an earlier run go with their pins.
	}
	return d.removeLocked(id, st)
}

func (d *Datapath) removeLocked(id uint32, st *endpointState) error {
	var errs []error
	if st.current == nil {
		st.current = d.takePinned(id)
	}
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
		if err := d.deleteEndpoint(st.ifindex); err != nil {
			errs = append(errs, fmt.Errorf("unregister endpoint: %w", err))
		}
	}
	if err := writePolicy(d.maps["policy"], id, st.current, nil); err != nil {
		errs = append(errs, fmt.Errorf("delete policy entries: %w", err))
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
// directory or entries in the policy map, whether or not this run
// attached them.
func (d *Datapath) PinnedEndpoints() ([]uint32, error) {
	ents, err := os.ReadDir(filepath.Join(d.cfg.BPFFSDir, "endpoints"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	seen := map[uint32]bool{}
	var ids []uint32
	for _, e := range ents {
		if n, err := strconv.ParseUint(e.Name(), 10, 32); err == nil && !seen[uint32(n)] {
			seen[uint32(n)] = true
			ids = append(ids, uint32(n))
		}
	}
	d.mu.Lock()
	for id := range d.pinned {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	d.mu.Unlock()
	return ids, nil
}

// putEndpoint writes an endpoint's entry: the hash, and the array when the
// ifindex fits it (array first on update, so both always agree).
func (d *Datapath) putEndpoint(ep Endpoint, flags ebpf.MapUpdateFlags) error {
	info := ep.info()
	if ep.IfIndex < epArraySize {
		if err := d.maps["endpoints_by_index"].Update(uint32(ep.IfIndex), &info, ebpf.UpdateAny); err != nil {
			return err
		}
	}
	return d.maps["endpoints"].Update(uint32(ep.IfIndex), &info, flags)
}

// deleteEndpoint removes an endpoint's entries.
func (d *Datapath) deleteEndpoint(ifindex int) error {
	if ifindex < epArraySize {
		var empty bpfEndpointInfo
		if err := d.maps["endpoints_by_index"].Update(uint32(ifindex), &empty, ebpf.UpdateAny); err != nil {
			return err
		}
	}
	if err := d.maps["endpoints"].Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}
