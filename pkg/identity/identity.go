// Package identity owns security identities: the numeric identity of each
// distinct label set, the reserved identities, and their allocation and
// release. It does not know about endpoints or policies; the allocator sits
// behind the Allocator interface so that a kvstore-backed one can replace
// the local one when several hosts share identities.
package identity

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/membrane-net/membrane/pkg/labels"
)

// NumericIdentity is the number the datapath sees.
type NumericIdentity uint32

// Reserved identities, as in Cilium.
const (
	Unknown    NumericIdentity = 0
	Host       NumericIdentity = 1
	World      NumericIdentity = 2
	Unmanaged  NumericIdentity = 3
	Health     NumericIdentity = 4
	Init       NumericIdentity = 5
	RemoteNode NumericIdentity = 6

	// MinUser is the first identity given to a label set.
	MinUser NumericIdentity = 256
	// MaxUser is the last cluster-scoped identity.
	MaxUser NumericIdentity = 1<<24 - 1
	// LocalScope is the first node-local identity (CIDR identities).
	LocalScope NumericIdentity = 1 << 24
	// MaxLocal is the last node-local identity; the datapath adds
	// CIDRInClusterOffset to local identities, so they stay below it.
	MaxLocal NumericIdentity = LocalScope + CIDRInClusterOffset - 1
	// CIDRInClusterOffset is added to a CIDR identity when the address
	// belongs to the cluster (see bpf/common.h).
	CIDRInClusterOffset NumericIdentity = 1 << 22
)

var reservedNames = map[NumericIdentity]string{
	Host: "host", World: "world", Unmanaged: "unmanaged", Health: "health",
	Init: "init", RemoteNode: "remote-node",
}

// ReservedByName maps the name of a reserved identity to its number.
var ReservedByName = map[string]NumericIdentity{}

func init() {
	for id, n := range reservedNames {
		ReservedByName[n] = id
	}
}

// IsReserved reports whether id is one of the reserved identities.
func (id NumericIdentity) IsReserved() bool { _, ok := reservedNames[id]; return ok }

// IsLocal reports whether id is node-local (a CIDR identity).
func (id NumericIdentity) IsLocal() bool { return id >= LocalScope }

func (id NumericIdentity) String() string {
	if n, ok := reservedNames[id]; ok {
		return n
	}
	return strconv.FormatUint(uint64(id), 10)
}

// Identity is a numeric identity and the labels it stands for.
type Identity struct {
	ID     NumericIdentity `json:"id"`
	Labels labels.Labels   `json:"labels"`
	// Refs counts the users (endpoints, policies) holding the identity;
	// reserved identities are never released.
	Refs int `json:"refs"`
}

// ReservedLabels returns the label set of a reserved identity.
func ReservedLabels(id NumericIdentity) labels.Labels {
	return labels.New(labels.Label{Source: labels.SourceReserved, Key: reservedNames[id]})
}

// Reserved returns the reserved identities in numeric order.
func Reserved() []*Identity {
	out := make([]*Identity, 0, len(reservedNames))
	for id := Host; id <= RemoteNode; id++ {
		out = append(out, &Identity{ID: id, Labels: ReservedLabels(id)})
	}
	return out
}

// Errors of the allocators.
var (
	ErrExhausted = errors.New("no identity left")
	ErrNotFound  = errors.New("identity not found")
)

// Allocator gives label sets their numeric identities. Allocate of a set
// that has one returns it with one more reference; Release drops a
// reference and frees the identity when none is left.
type Allocator interface {
	Allocate(ctx context.Context, lbls labels.Labels) (id *Identity, isNew bool, err error)
	Release(ctx context.Context, id NumericIdentity) (released bool, err error)
	Lookup(id NumericIdentity) *Identity
	LookupByLabels(lbls labels.Labels) *Identity
	// List returns every identity, reserved ones included, by number.
	List() []*Identity
}

// ForLabels returns the reserved identity a label set stands for (one
// reserved label), or Unknown.
func ForLabels(lbls labels.Labels) NumericIdentity {
	if len(lbls) == 1 && lbls[0].Source == labels.SourceReserved {
		return ReservedByName[lbls[0].Key]
	}
	return Unknown
}

// Validate reports why a label set cannot get a user identity.
func Validate(lbls labels.Labels) error {
	for _, l := range lbls {
		if l.Source == labels.SourceReserved && ForLabels(lbls) == Unknown {
			return fmt.Errorf("label %s: reserved labels stand alone", l)
		}
	}
	return nil
}
