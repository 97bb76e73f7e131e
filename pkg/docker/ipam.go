package docker

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
)

// The IPAM driver hands out the agent's addresses: one pool, the agent's,
// whose gateway is the host's address in it.

const (
	addressSpace     = "membrane"
	gatewayOption    = "com.docker.network.gateway"
	requestTypeOpt   = "RequestAddressType"
	poolIDPrefix     = "membrane-"
	ipamOwnerPrefix  = "docker ipam "
	errIPv6NotYetMsg = "IPv6 is not supported yet"
)

type requestPoolRequest struct {
	AddressSpace string
	Pool         string
	SubPool      string
	Options      map[string]string
	V6           bool
}

type requestAddressRequest struct {
	PoolID  string
	Address string
	Options map[string]string
}

type releaseAddressRequest struct {
	PoolID  string
	Address string
}

func (p *Plugin) ipamCapabilities(context.Context, []byte) (any, error) {
	return map[string]bool{"RequiresMACAddress": false, "RequiresRequestReplay": false}, nil
}

func (p *Plugin) addressSpaces(context.Context, []byte) (any, error) {
	return map[string]string{"LocalDefaultAddressSpace": addressSpace, "GlobalDefaultAddressSpace": addressSpace + "-global"}, nil
}

func (p *Plugin) poolID() string {
	pool, _ := p.agent.Pool()
	return poolIDPrefix + pool.String()
}

// requestPool gives every network the agent's pool; a --subnet must be
// that pool.
func (p *Plugin) requestPool(ctx context.Context, body []byte) (any, error) {
	var req requestPoolRequest
	if err := decode(body, &req); err != nil {
		return nil, fmt.Errorf("request pool: %w", err)
	}
	if req.V6 {
		return nil, errors.New("request pool: " + errIPv6NotYetMsg)
	}
	pool, gw := p.agent.Pool()
	if req.Pool != "" {
		want, err := netip.ParsePrefix(req.Pool)
		if err != nil || want.Masked() != pool {
			return nil, fmt.Errorf("request pool: --subnet %s: the agent's pool is %s (leave --subnet out)", req.Pool, pool)
		}
	}
	if req.SubPool != "" {
		return nil, errors.New("request pool: --ip-range is not supported (the agent allocates from its whole pool)")
	}
	return map[string]any{
		"PoolID": p.poolID(),
		"Pool":   pool.String(),
		"Data":   map[string]string{gatewayOption: netip.PrefixFrom(gw, pool.Bits()).String()},
	}, nil
}

// requestAddress allocates an address, reserves a requested one (docker
// run --ip), or returns the gateway.
func (p *Plugin) requestAddress(ctx context.Context, body []byte) (any, error) {
	var req requestAddressRequest
	if err := decode(body, &req); err != nil {
		return nil, fmt.Errorf("request address: %w", err)
	}
	if req.PoolID != p.poolID() {
		return nil, fmt.Errorf("request address: unknown pool %q (the agent's is %s)", req.PoolID, p.poolID())
	}
	pool, gw := p.agent.Pool()
	var want netip.Addr
	if req.Address != "" {
		a, err := netip.ParseAddr(req.Address)
		if err != nil {
			pf, perr := netip.ParsePrefix(req.Address)
			if perr != nil {
				return nil, fmt.Errorf("request address: %q is not an IPv4 address", req.Address)
			}
			a = pf.Addr()
		}
		want = a
	}
	if req.Options[requestTypeOpt] == gatewayOption {
		if want.IsValid() && want != gw {
			return nil, fmt.Errorf("request address: gateway %s: the gateway is the agent's host address %s", want, gw)
		}
		return map[string]any{"Address": netip.PrefixFrom(gw, pool.Bits()).String()}, nil
	}
	var addr netip.Addr
	if want.IsValid() {
		if !pool.Contains(want) {
			return nil, fmt.Errorf("request address: %s is outside the agent's pool %s", want, pool)
		}
		if err := p.agent.ReserveAddress(want, ipamOwnerPrefix+"(requested)"); err != nil {
			return nil, fmt.Errorf("request address: %w", err)
		}
		addr = want
	} else {
		a, err := p.agent.AllocateAddress(ipamOwnerPrefix + "(allocated)")
		if err != nil {
			return nil, fmt.Errorf("request address: %w", err)
		}
		addr = a
	}
	return map[string]any{"Address": netip.PrefixFrom(addr, pool.Bits()).String()}, nil
}

// releaseAddress gives an address back unless an endpoint holds it.
func (p *Plugin) releaseAddress(ctx context.Context, body []byte) (any, error) {
	var req releaseAddressRequest
	if err := decode(body, &req); err != nil {
		return nil, fmt.Errorf("release address: %w", err)
	}
	a, err := netip.ParseAddr(req.Address)
	if err != nil {
		pf, perr := netip.ParsePrefix(req.Address)
		if perr != nil {
			return nil, fmt.Errorf("release address: %q is not an IPv4 address", req.Address)
		}
		a = pf.Addr()
	}
	if _, gw := p.agent.Pool(); a != gw {
		p.agent.ReleaseAddress(a)
	}
	return struct{}{}, nil
}
