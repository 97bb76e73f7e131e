package identity

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/membrane-net/membrane/pkg/labels"
)

// LocalAllocator allocates identities on this node: user identities from
// MinUser up, and node-local ones (label sets with a cidr label) from
// LocalScope up. Numbers of released identities are reused only after the
// whole range has been used once, so a number seen in an old event or
// connection does not soon stand for other labels.
type LocalAllocator struct {
	mu        sync.Mutex
	byID      map[NumericIdentity]*Identity
	byKey     map[string]*Identity
	nextUser  NumericIdentity
	nextLocal NumericIdentity
}

// NewLocalAllocator returns an allocator holding the reserved identities.
func NewLocalAllocator() *LocalAllocator {
	a := &LocalAllocator{
		byID:      map[NumericIdentity]*Identity{},
		byKey:     map[string]*Identity{},
		nextUser:  MinUser,
		nextLocal: LocalScope,
	}
	for _, id := range Reserved() {
		a.byID[id.ID] = id
		a.byKey[id.Labels.String()] = id
	}
	return a
}

func isLocalSet(lbls labels.Labels) bool { return lbls.HasSource(labels.SourceCIDR) }

// Allocate implements Allocator.
func (a *LocalAllocator) Allocate(_ context.Context, lbls labels.Labels) (*Identity, bool, error) {
	if err := Validate(lbls); err != nil {
		return nil, false, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	key := lbls.String()
	if id, ok := a.byKey[key]; ok {
		if !id.ID.IsReserved() {
			id.Refs++
		}
		return id.copy(), false, nil
	}
	num, err := a.nextFree(isLocalSet(lbls))
	if err != nil {
		return nil, false, err
	}
	id := &Identity{ID: num, Labels: lbls, Refs: 1}
	a.byID[num] = id
	a.byKey[key] = id
	return id.copy(), true, nil
}

func (a *LocalAllocator) nextFree(local bool) (NumericIdentity, error) {
	next, lo, hi := &a.nextUser, MinUser, MaxUser
	if local {
		next, lo, hi = &a.nextLocal, LocalScope, MaxLocal
	}
	for i := 0; i <= int(hi-lo); i++ {
		n := *next
		*next++
		if *next > hi {
			*next = lo
		}
		if _, used := a.byID[n]; !used {
			return n, nil
		}
	}
	return 0, fmt.Errorf("allocate identity: %w", ErrExhausted)
}

// Release implements Allocator.
func (a *LocalAllocator) Release(_ context.Context, num NumericIdentity) (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id, ok := a.byID[num]
	if !ok {
		return false, fmt.Errorf("release identity %d: %w", num, ErrNotFound)
	}
	if num.IsReserved() {
		return false, nil
	}
	id.Refs--
	if id.Refs > 0 {
		return false, nil
	}
	delete(a.byID, num)
	delete(a.byKey, id.Labels.String())
	return true, nil
}

// Restore puts back identities saved before a restart, with their numbers
// and reference counts.
func (a *LocalAllocator) Restore(ids []*Identity) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, in := range ids {
		if in.ID.IsReserved() {
			continue
		}
		if in.ID < MinUser || in.ID > MaxLocal {
			return fmt.Errorf("restore identity %d: out of range", in.ID)
		}
		key := in.Labels.String()
		if old, ok := a.byKey[key]; ok && old.ID != in.ID {
			return fmt.Errorf("restore identity %d: labels %s already have identity %d", in.ID, key, old.ID)
		}
		if old, ok := a.byID[in.ID]; ok && old.Labels.String() != key {
			return fmt.Errorf("restore identity %d: number already used by %s", in.ID, old.Labels)
		}
		id := in.copy()
		a.byID[id.ID] = id
		a.byKey[key] = id
		if id.ID.IsLocal() && id.ID >= a.nextLocal {
			a.nextLocal = id.ID + 1
		} else if !id.ID.IsLocal() && id.ID >= a.nextUser {
			a.nextUser = id.ID + 1
		}
	}
	return nil
}

// Lookup implements Allocator.
func (a *LocalAllocator) Lookup(num NumericIdentity) *Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.byID[num]; ok {
		return id.copy()
	}
	return nil
}

// LookupByLabels implements Allocator.
func (a *LocalAllocator) LookupByLabels(lbls labels.Labels) *Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.byKey[lbls.String()]; ok {
		return id.copy()
	}
	return nil
}

// Users returns the identities of label sets (neither reserved nor
// node-local), unordered.
func (a *LocalAllocator) Users() []*Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*Identity
	for _, id := range a.byID {
		if !id.ID.IsReserved() && !id.ID.IsLocal() {
			out = append(out, id.copy())
		}
	}
	return out
}

// List implements Allocator.
func (a *LocalAllocator) List() []*Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*Identity, 0, len(a.byID))
	for _, id := range a.byID {
		out = append(out, id.copy())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

func (id *Identity) copy() *Identity {
	c := *id
	return &c
}
