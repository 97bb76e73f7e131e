package policy

import (
	"net/netip"

	"github.com/membrane-net/membrane/pkg/identity"
)

// flowPeerForTest describes a peer by identity and address, as Trace does.
func (r *Repository) flowPeerForTest(id identity.NumericIdentity, addr netip.Addr, inCluster bool) *flowPeer {
	r.mu.RLock()
	defer r.mu.RUnlock()
	te, err := r.tracePeer(TracePeer{IP: addr, Identity: id, InCluster: inCluster})
	if err != nil {
		panic(err)
	}
	return &te.peer
}
