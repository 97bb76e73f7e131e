// Package ipam owns the agent's IPv4 address pool: which addresses are
// free, which are taken and by whom. It does not configure interfaces.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
)

// Errors of the pool.
var (
	ErrInUse     = errors.New("address in use")
	ErrExhausted = errors.New("address pool exhausted")
	ErrInvalid   = errors.New("invalid address")
)

// Pool hands out addresses of one prefix. The network address, the
// broadcast address and the first host address (the gateway on the host)
// are never handed out. Addresses outside the prefix can be reserved too.
type Pool struct {
	mu     sync.Mutex
	prefix netip.Prefix
	gw     netip.Addr
	used   map[netip.Addr]string
	next   netip.Addr
}

// New returns a pool for an IPv4 prefix of at most /30.
func New(prefix netip.Prefix) (*Pool, error) {
	if !prefix.Addr().Is4() {
		return nil, fmt.Errorf("pool %s: %w: only IPv4 pools are supported", prefix, ErrInvalid)
	}
	if prefix.Bits() > 30 {
		return nil, fmt.Errorf("pool %s: %w: a pool needs at least 4 addresses", prefix, ErrInvalid)
	}
	prefix = prefix.Masked()
	gw := prefix.Addr().Next()
	return &Pool{prefix: prefix, gw: gw, used: map[netip.Addr]string{}, next: gw.Next()}, nil
}

// Prefix is the pool's prefix.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Gateway is the address the host takes in the pool.
func (p *Pool) Gateway() netip.Addr { return p.gw }

func (p *Pool) broadcast() netip.Addr {
	a := p.prefix.Addr().As4()
	hostBits := 32 - p.prefix.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= (1 << hostBits) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Allocate takes the next free address of the pool for owner.
func (p *Pool) Allocate(owner string) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	bc := p.broadcast()
	a := p.next
	for i := 0; i < 1<<(32-p.prefix.Bits()); i++ {
		if !p.prefix.Contains(a) || a == bc {
			a = p.gw.Next()
		}
		if _, taken := p.used[a]; !taken && a != p.gw {
			p.used[a] = owner
			p.next = a.Next()
			return a, nil
		}
		a = a.Next()
	}
	return netip.Addr{}, fmt.Errorf("pool %s: %w", p.prefix, ErrExhausted)
}

// Reserve takes a given address, in or outside the pool, for owner.
func (p *Pool) Reserve(a netip.Addr, owner string) error {
	if !a.Is4() || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return fmt.Errorf("address %s: %w: want a unicast IPv4 address", a, ErrInvalid)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if a == p.gw {
		return fmt.Errorf("address %s: %w: it is the host's gateway address", a, ErrInUse)
	}
	if p.prefix.Contains(a) && (a == p.prefix.Addr() || a == p.broadcast()) {
		return fmt.Errorf("address %s: %w: network or broadcast address of the pool", a, ErrInvalid)
	}
	if o, taken := p.used[a]; taken {
		return fmt.Errorf("address %s: %w by %s", a, ErrInUse, o)
	}
	p.used[a] = owner
	return nil
}

// Release frees an address; releasing a free address is not an error.
func (p *Pool) Release(a netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.used, a)
}

// Owner tells who holds an address.
func (p *Pool) Owner(a netip.Addr) (string, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	o, ok := p.used[a]
	return o, ok
}

// Used counts the addresses taken.
func (p *Pool) Used() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.used)
}
