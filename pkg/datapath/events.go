package datapath

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// Event is one datapath event: a drop, or the policy verdict of a new flow.
type Event struct {
	Time        time.Time  `json:"time"`
	Type        uint8      `json:"-"`
	EndpointID  uint32     `json:"endpoint"`
	IfIndex     uint32     `json:"ifindex"`
	Dir         uint8      `json:"-"`
	Src         netip.Addr `json:"src"`
	Dst         netip.Addr `json:"dst"`
	SrcPort     uint16     `json:"srcPort"`
	DstPort     uint16     `json:"dstPort"`
	Protocol    uint8      `json:"protocol"`
	SrcIdentity uint32     `json:"srcIdentity"`
	DstIdentity uint32     `json:"dstIdentity"`
	Verdict     uint8      `json:"-"`
	Reason      uint8      `json:"-"`
	Match       uint8      `json:"-"`
	Cookie      uint32     `json:"cookie,omitempty"`
	ProxyPort   uint16     `json:"proxyPort,omitempty"`
	Length      uint32     `json:"length"`
}

// bootTime maps CLOCK_MONOTONIC to wall time.
func bootTime() time.Time {
	return time.Now().Add(-time.Duration(monotonicNow()))
}

func decodeEvent(raw []byte, boot time.Time) (Event, error) {
	var e bpfEvent
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	return Event{
		Time:        boot.Add(time.Duration(e.TsNs)),
		Type:        e.Type,
		EndpointID:  e.EpId,
		IfIndex:     e.Ifindex,
		Dir:         e.Dir,
		Src:         netip.AddrFrom4([4]byte(e.Saddr[:4])),
		Dst:         netip.AddrFrom4([4]byte(e.Daddr[:4])),
		SrcPort:     e.Sport,
		DstPort:     e.Dport,
		Protocol:    e.Protocol,
		SrcIdentity: e.SrcIdentity,
		DstIdentity: e.DstIdentity,
		Verdict:     e.Verdict,
		Reason:      e.Reason,
		Match:       e.Match,
		Cookie:      e.Cookie,
		ProxyPort:   e.ProxyPort,
		Length:      e.PktLen,
	}, nil
}

// ReadEvents reads the ring buffer until ctx ends, calling fn for every
// event. Only one reader should run.
func (d *Datapath) ReadEvents(ctx context.Context, fn func(Event)) error {
	rd, err := ringbuf.NewReader(d.maps["events"])
	if err != nil {
		return fmt.Errorf("open ring buffer: %w", err)
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	boot := bootTime()
	var rec ringbuf.Record
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, ringbuf.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read ring buffer: %w", err)
		}
		ev, err := decodeEvent(rec.RawSample, boot)
		if err != nil {
			continue
		}
		fn(ev)
	}
}

// SetVerdictEvents turns the policy-verdict events of new flows on or off
// (drops are always reported).
func (d *Datapath) SetVerdictEvents(on bool) error {
	return d.updateConfig(func(c *bpfDpConfig) {
		c.Flags &^= cfgVerdictEvents
		if on {
			c.Flags |= cfgVerdictEvents
		}
	})
}

func (d *Datapath) updateConfig(change func(*bpfDpConfig)) error {
	d.cfgMu.Lock()
	defer d.cfgMu.Unlock()
	c := d.cfg_
	change(&c)
	if err := d.maps["config"].Update(uint32(0), &c, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("datapath config: %w", err)
	}
	d.cfg_ = c
	return nil
}

// Counters are the datapath's packet counters: forwarded per direction and
// dropped per direction and reason.
type Counters struct {
	Forwarded map[string]uint64            `json:"forwarded"`
	Dropped   map[string]map[string]uint64 `json:"dropped"`
}

// ReadCounters sums the per-CPU counters.
func (d *Datapath) ReadCounters() (Counters, error) {
	c := Counters{Forwarded: map[string]uint64{}, Dropped: map[string]map[string]uint64{}}
	for dir := uint8(0); dir < 2; dir++ {
		for r := 0; r < reasonCount; r++ {
			var vals []uint64
			if err := d.maps["metrics"].Lookup(uint32(dir)*counterMax+uint32(r), &vals); err != nil {
				return c, fmt.Errorf("read counters: %w", err)
			}
			var sum uint64
			for _, v := range vals {
				sum += v
			}
			if r == int(ReasonNone) {
				c.Forwarded[DirName(dir)] = sum
			} else if sum > 0 {
				if c.Dropped[DirName(dir)] == nil {
					c.Dropped[DirName(dir)] = map[string]uint64{}
				}
				c.Dropped[DirName(dir)][ReasonName(uint8(r))] = sum
			}
		}
	}
	return c, nil
}
