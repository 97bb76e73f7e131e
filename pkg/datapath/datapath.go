// Package datapath owns Membrane's eBPF datapath in the kernel: it loads the
// precompiled object (bpf/membrane.c through bpf2go), pins maps and links
// under the bpffs directory so that enforcement survives the agent, attaches
// the programs to endpoints with TCX, and reads and writes the maps
// (endpoints, per-endpoint policy, ipcache, conntrack, events, metrics).
// It decides nothing: what to write comes from the policy engine and the
// endpoint manager.
package datapath

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// Config says where the datapath pins its objects and how big the
// per-endpoint policy maps are.
type Config struct {
	// BPFFSDir holds the pins: maps/ for the maps, endpoints/<id>/ for
	// each endpoint's links.
	BPFFSDir string
	// PolicyMapMaxEntries is each endpoint's share of the policy map.
	PolicyMapMaxEntries uint32
}

// DefaultPolicyMapMaxEntries is the capacity of a policy map when the
// configuration does not say.
const DefaultPolicyMapMaxEntries = 16384

// Names of the shared maps, as in bpf/membrane.c and under maps/.
var sharedMaps = []string{"ipcache", "endpoints", "endpoints_by_index", "policy", "ct", "frags", "config", "metrics", "events"}

// epArraySize bounds the ifindexes of endpoints_by_index (bpf/membrane.c).
const epArraySize = 65536

// ErrCapacity is returned when a policy does not fit an endpoint's map.
var ErrCapacity = errors.New("policy map capacity exceeded")

// Datapath is the loaded datapath. Its methods are safe for concurrent use.
type Datapath struct {
	cfg Config
	log *slog.Logger

	maps     map[string]*ebpf.Map
	fromProg *ebpf.Program
	toProg   *ebpf.Program
	hostProg *ebpf.Program

	cfgMu sync.Mutex
	cfg_  bpfDpConfig

	mu       sync.Mutex
	eps      map[uint32]*endpointState
	hostLink link.Link
	// pinned is the policy of endpoints found in the pinned map at Open,
	// until RestoreEndpoint or RemoveEndpoint takes them.
	pinned map[uint32]mapstate.MapState
}

type endpointState struct {
	ifindex int
	links   [2]link.Link // from_container (tcx ingress), to_container (tcx egress)
	current mapstate.MapState
}

// Open loads the datapath: shared maps are taken from their pins when
// compatible (so that conntrack and policy survive a restart) or created
// and pinned, and the programs are loaded against them.
func Open(cfg Config, log *slog.Logger) (_ *Datapath, err error) {
	if cfg.PolicyMapMaxEntries == 0 {
		cfg.PolicyMapMaxEntries = DefaultPolicyMapMaxEntries
	}
	if err := ensureBPFFS(cfg.BPFFSDir); err != nil {
		return nil, fmt.Errorf("bpffs: %w", err)
	}
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load object spec: %w", err)
	}
	d := &Datapath{cfg: cfg, log: log, maps: map[string]*ebpf.Map{}, eps: map[uint32]*endpointState{}}
	defer func() {
		if err != nil {
			d.closeMaps()
		}
	}()

	if err := os.MkdirAll(filepath.Join(cfg.BPFFSDir, "maps"), 0o700); err != nil {
		return nil, fmt.Errorf("create pin dir: %w", err)
	}
	for _, name := range sharedMaps {
		m, err := d.openSharedMap(spec.Maps[name], name)
		if err != nil {
			return nil, fmt.Errorf("map %s: %w", name, err)
		}
		d.maps[name] = m
	}
	coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{
		Maps:      spec.Maps,
		Programs:  spec.Programs,
		Variables: spec.Variables,
		Types:     spec.Types,
		ByteOrder: spec.ByteOrder,
	}, ebpf.CollectionOptions{MapReplacements: d.maps})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load programs: %+v", ve)
		}
		return nil, fmt.Errorf("load programs: %w", err)
	}
	d.fromProg = coll.DetachProgram("from_container")
	d.toProg = coll.DetachProgram("to_container")
	d.hostProg = coll.DetachProgram("from_host_dev")
	coll.Close()
	if d.fromProg == nil || d.toProg == nil || d.hostProg == nil {
		return nil, errors.New("load programs: object lacks from_container, to_container or from_host_dev")
	}
	if err := d.maps["config"].Lookup(uint32(0), &d.cfg_); err != nil {
		return nil, fmt.Errorf("read datapath config: %w", err)
	}
	if d.pinned, err = readPolicies(d.maps["policy"]); err != nil {
		return nil, fmt.Errorf("read pinned policy map: %w", err)
	}
	return d, nil
}

func (d *Datapath) openSharedMap(spec *ebpf.MapSpec, name string) (*ebpf.Map, error) {
	path := filepath.Join(d.cfg.BPFFSDir, "maps", name)
	spec = spec.Copy()
	spec.Pinning = ebpf.PinNone
	if m, err := ebpf.LoadPinnedMap(path, nil); err == nil {
		if cerr := spec.Compatible(m); cerr == nil {
			return m, nil
		} else {
			d.log.Warn("pinned map is not compatible, replacing it", "map", name, "reason", cerr)
		}
		m.Close()
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale pin: %w", err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("load pin: %w", err)
	}
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return nil, fmt.Errorf("create: %w", err)
	}
	if err := m.Pin(path); err != nil {
		m.Close()
		return nil, fmt.Errorf("pin: %w", err)
	}
	return m, nil
}

// ensureBPFFS makes sure dir exists on a bpf filesystem, mounting one when
// needed (/sys/fs/bpf itself when dir is under it).
func ensureBPFFS(dir string) error {
	if dir == "" {
		return errors.New("no bpffs directory configured")
	}
	const sysBPF = "/sys/fs/bpf"
	if dir == sysBPF || strings.HasPrefix(dir, sysBPF+"/") {
		if !isBPFFS(sysBPF) {
			if err := unix.Mount("bpf", sysBPF, "bpf", 0, "mode=0700"); err != nil {
				return fmt.Errorf("mount bpffs on %s: %w", sysBPF, err)
			}
		}
		return os.MkdirAll(dir, 0o700)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if !isBPFFS(dir) {
		if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs on %s: %w", dir, err)
		}
	}
	return nil
}

func isBPFFS(dir string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return uint32(st.Type) == unix.BPF_FS_MAGIC
}

func (d *Datapath) closeMaps() {
	for _, m := range d.maps {
		m.Close()
	}
}

// Close releases the agent's handles. Pinned maps and links stay, so the
// kernel keeps enforcing policy while no agent runs.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ep := range d.eps {
		ep.close()
	}
	d.eps = map[uint32]*endpointState{}
	d.closeMaps()
	if d.fromProg != nil {
		d.fromProg.Close()
	}
	if d.toProg != nil {
		d.toProg.Close()
	}
	if d.hostProg != nil {
		d.hostProg.Close()
	}
	if d.hostLink != nil {
		d.hostLink.Close()
	}
	return nil
}

func (ep *endpointState) close() {
	for _, l := range ep.links {
		if l != nil {
			l.Close()
		}
	}
}

// Purge removes every pin under the bpffs directory: links detach, maps
// go when no program uses them. For uninstalling and for tests.
func Purge(bpffsDir string) error {
	if !isBPFFS(bpffsDir) && !isBPFFS(filepath.Dir(bpffsDir)) {
		return nil
	}
	return os.RemoveAll(bpffsDir)
}

// PolicyMapMaxEntries is the capacity of each endpoint's policy map.
func (d *Datapath) PolicyMapMaxEntries() int { return int(d.cfg.PolicyMapMaxEntries) }

// Map returns a shared map by name (ipcache, ct, ...), for the L7 proxy and
// tests. The datapath keeps ownership.
func (d *Datapath) Map(name string) *ebpf.Map { return d.maps[name] }
