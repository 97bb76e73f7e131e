package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"

	"github.com/membrane-net/membrane/pkg/datapath"
	"github.com/membrane-net/membrane/pkg/endpoint"
)

// Spare veth pairs with the programs already attached. Attaching a TCX
// program waits for an RCU grace period (about 10 ms here, twice per
// endpoint); a spare lets `endpoint add` skip both waits and the pair's
// creation. A spare is fail-closed: until an endpoint takes it, its
// interface is no endpoint, and the programs drop everything.

// spareTarget is how many spares the agent keeps ready.
const spareTarget = 2

type spare struct {
	veth *endpoint.Veth
	att  *datapath.Attachment
}

type sparePool struct {
	mu    sync.Mutex
	items []*spare
	n     uint64
	tag   string
	kick  chan struct{}
}

// SpareTag names the spare veth pairs of the agent with this state
// directory (interfaces endpoint.PoolPrefix+tag...): a restarted agent
// deletes those of its previous run, and so can a test after SIGKILL.
func SpareTag(stateDir string) string { return spareTag(stateDir) }

func spareTag(stateDir string) string {
	h := sha256.Sum256([]byte(stateDir))
	return hex.EncodeToString(h[:2])
}

// takeSpare returns a ready spare, or nil.
func (a *Agent) takeSpare() *spare {
	p := &a.spares
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.items) == 0 {
		return nil
	}
	sp := p.items[len(p.items)-1]
	p.items = p.items[:len(p.items)-1]
	return sp
}

// refillSpares asks for the spares to be made up. Called once an endpoint
// is wired: making a spare holds the kernel's rtnl lock through RCU waits,
// which would slow the wiring down.
func (a *Agent) refillSpares() {
	select {
	case a.spares.kick <- struct{}{}:
	default:
	}
}

// keepSpares keeps spareTarget spares ready until ctx ends, then deletes
// them.
func (a *Agent) keepSpares(ctx context.Context) {
	p := &a.spares
	defer a.dropSpares()
	for {
		for {
			p.mu.Lock()
			n := len(p.items)
			p.n++
			seq := p.n
			p.mu.Unlock()
			if n >= spareTarget || ctx.Err() != nil {
				break
			}
			sp, err := a.makeSpare(seq)
			if err != nil {
				a.log.Warn("make a spare veth pair", "error", err)
				break
			}
			p.mu.Lock()
			p.items = append(p.items, sp)
			p.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
	}
}

func (a *Agent) makeSpare(seq uint64) (*spare, error) {
	host := fmt.Sprintf("%s%s%d", endpoint.PoolPrefix, a.spares.tag, seq)
	peer := fmt.Sprintf("%s%s%d", endpoint.PoolPeerPrefix, a.spares.tag, seq)
	v, err := endpoint.CreateSpare(host, peer)
	if err != nil {
		return nil, err
	}
	att, err := a.dp.PreAttach(v.HostIndex)
	if err != nil {
		_ = v.Delete()
		return nil, err
	}
	return &spare{veth: v, att: att}, nil
}

func (a *Agent) dropSpares() {
	p := &a.spares
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, sp := range p.items {
		sp.att.Close()
		_ = sp.veth.Delete()
	}
	p.items = nil
}
