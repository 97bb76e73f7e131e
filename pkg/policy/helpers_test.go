package policy

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/membrane-net/membrane/pkg/identity"
	"github.com/membrane-net/membrane/pkg/labels"
	"github.com/membrane-net/membrane/pkg/policy/l7"
	"github.com/membrane-net/membrane/pkg/policy/mapstate"
)

// Proxy ports the tests configure.
const (
	testIngressProxy uint16 = 15001
	testEgressProxy  uint16 = 15002
)

func testConfig(mode string) Config {
	return Config{EnforcementMode: mode, ProxyPort: func(egress bool) uint16 {
		if egress {
			return testEgressProxy
		}
		return testIngressProxy
	}}
}

func newTestRepo(t testing.TB, mode string) *Repository {
	t.Helper()
	return NewRepository(testConfig(mode), nil)
}

func mustParse(t testing.TB, file, data string) []*Policy {
	t.Helper()
	pols, err := Parse(file, []byte(data))
	if err != nil {
		t.Fatalf("parse %s: %v", file, err)
	}
	return pols
}

func mustImport(t testing.TB, r *Repository, file, data string) {
	t.Helper()
	if _, err := r.Import(mustParse(t, file, data)); err != nil {
		t.Fatalf("import %s: %v", file, err)
	}
}

// lbls parses `k8s:app=web,io.kubernetes.pod.namespace=x` style labels.
func lbls(t testing.TB, s string) labels.Labels {
	t.Helper()
	ls, err := labels.Parse(s, labels.SourceK8s)
	if err != nil {
		t.Fatalf("labels %q: %v", s, err)
	}
	return ls
}

func upsertReserved(r *Repository) {
	for _, id := range identity.Reserved() {
		r.UpsertIdentity(SelectableIdentity{ID: id.ID, Labels: id.Labels})
	}
}

// upsertCIDRs gives every prefix of the repository's policies a CIDR
// identity, as the agent does, and returns them by prefix.
func upsertCIDRs(r *Repository) map[netip.Prefix]identity.NumericIdentity {
	out := map[netip.Prefix]identity.NumericIdentity{}
	for i, pf := range r.Prefixes() {
		id := identity.LocalScope + identity.NumericIdentity(i)
		out[pf] = id
		r.UpsertIdentity(SelectableIdentity{ID: id, Prefix: pf,
			Labels: labels.New(labels.Label{Source: labels.SourceCIDR, Key: strings.ReplaceAll(pf.String(), ":", "-")})})
	}
	return out
}

// cidrOf returns the CIDR identity the ipcache gives addr.
func cidrOf(cidrs map[netip.Prefix]identity.NumericIdentity, addr netip.Addr) identity.NumericIdentity {
	best, bits := identity.NumericIdentity(0), -1
	for pf, id := range cidrs {
		if pf.Contains(addr) && pf.Bits() > bits {
			best, bits = id, pf.Bits()
		}
	}
	return best
}

func protoNum(s string) uint8 {
	switch strings.ToUpper(s) {
	case "TCP":
		return mapstate.ProtoTCP
	case "UDP":
		return mapstate.ProtoUDP
	case "SCTP":
		return mapstate.ProtoSCTP
	case "ICMP":
		return mapstate.ProtoICMP
	}
	return 255
}

func l7PortKey(egress bool, port uint16) l7.PortKey {
	return l7.PortKey{Egress: egress, Protocol: mapstate.ProtoTCP, Port: port}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
