// Package state owns the agent's state on disk: endpoints, identities and
// policies, written atomically after every change so that a restarted
// agent finds what it had. It does not interpret what it stores.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/membrane-net/membrane/pkg/endpoint"
	"github.com/membrane-net/membrane/pkg/identity"
)

// Version of the file layout.
const Version = 1

// State is everything the agent must not lose.
type State struct {
	Version        int                  `json:"version"`
	NextEndpointID uint32               `json:"nextEndpointID"`
	Revision       uint64               `json:"revision"`
	Endpoints      []*endpoint.Endpoint `json:"endpoints"`
	Identities     []*identity.Identity `json:"identities"`
	Policies       []Policy             `json:"policies"`
	// Pending are endpoints being created: an agent that finds some after
	// a crash removes what was made for them.
	Pending []Pending `json:"pending,omitempty"`
}

// Pending is an endpoint whose creation started.
type Pending struct {
	ID        uint32 `json:"id"`
	Interface string `json:"interface"`
}

// Policy is one imported policy document as it was given.
type Policy struct {
	File     string          `json:"file"`
	Document int             `json:"document"`
	Object   json.RawMessage `json:"object"`
}

// Store reads and writes the state file in a directory.
type Store struct {
	path string
}

// Open prepares the state directory.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	return &Store{path: filepath.Join(dir, "state.json")}, nil
}

// Path is the state file.
func (s *Store) Path() string { return s.path }

// Load reads the state; a missing file is an empty state.
func (s *Store) Load() (*State, error) {
	b, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return &State{Version: Version, NextEndpointID: 1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parse state %s: %w", s.path, err)
	}
	if st.Version != Version {
		return nil, fmt.Errorf("state %s: version %d, this agent reads %d", s.path, st.Version, Version)
	}
	if st.NextEndpointID == 0 {
		st.NextEndpointID = 1
	}
	return &st, nil
}

// Save writes the state atomically: a temporary file, fsync, rename.
func (s *Store) Save(st *State) error {
	st.Version = Version
	b, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close state: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("replace state: %w", err)
	}
	return nil
}
