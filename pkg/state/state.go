// Package state owns the agent's state on disk: endpoints and their
// identities in one file, policies and the CIDR identities they need in
// another, each written atomically (temporary file, rename) when
// its part changes, so that a restarted agent finds what it had. It does
// not interpret what it stores.
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
const Version = 2

// State is everything the agent must not lose.
type State struct {
	EndpointsFile `json:"-"`
	PoliciesFile  `json:"-"`
}

// EndpointsFile is the endpoints file: endpoints, the identities of label sets
// and endpoint creations in progress.
type EndpointsFile struct {
	Version        int                  `json:"version"`
	NextEndpointID uint32               `json:"nextEndpointID"`
	Endpoints      []*endpoint.Endpoint `json:"endpoints"`
	Identities     []*identity.Identity `json:"identities"`
	// Pending are endpoints being created: an agent that finds some after
	// a crash removes what was made for them.
	Pending []Pending `json:"pending,omitempty"`
}

// PoliciesFile is the policies file: the imported documents, the repository's
// revision and the identities of the CIDRs they name (kept so that the
// numbers in the kernel's maps stay valid across a restart).
type PoliciesFile struct {
	Version        int                  `json:"version"`
	Revision       uint64               `json:"revision"`
	Policies       []Policy             `json:"policies"`
	CIDRIdentities []*identity.Identity `json:"cidrIdentities,omitempty"`
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

// Store reads and writes the state files in a directory.
type Store struct {
	dir string
}

const (
	endpointsFile = "endpoints.json"
	policiesFile  = "policies.json"
)

// Open prepares the state directory.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Dir is the state directory.
func (s *Store) Dir() string { return s.dir }

// Load reads the state; missing files are empty parts.
func (s *Store) Load() (*State, error) {
	st := &State{EndpointsFile: EndpointsFile{Version: Version, NextEndpointID: 1}, PoliciesFile: PoliciesFile{Version: Version}}
	if err := s.read(endpointsFile, &st.EndpointsFile); err != nil {
		return nil, err
	}
	if err := s.read(policiesFile, &st.PoliciesFile); err != nil {
		return nil, err
	}
	if st.NextEndpointID == 0 {
		st.NextEndpointID = 1
	}
	return st, nil
}

func (s *Store) read(name string, v interface{ version() int }) error {
	path := filepath.Join(s.dir, name)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse state %s: %w", path, err)
	}
	if v.version() != Version {
		return fmt.Errorf("state %s: version %d, this agent reads %d", path, v.version(), Version)
	}
	return nil
}

func (e *EndpointsFile) version() int { return e.Version }
func (p *PoliciesFile) version() int  { return p.Version }

// SaveEndpoints writes the endpoints file.
func (s *Store) SaveEndpoints(e *EndpointsFile) error {
	e.Version = Version
	return s.write(endpointsFile, e)
}

// SavePolicies writes the policies file.
func (s *Store) SavePolicies(p *PoliciesFile) error {
	p.Version = Version
	return s.write(policiesFile, p)
}

// write replaces a file atomically: a temporary file, then rename. There
// is no fsync: the state describes kernel objects (pins in bpffs, veths,
// namespaces) that a power loss erases too, and after an agent crash the
// page cache holds the file; a restarted agent reconciles with the kernel.
func (s *Store) write(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	path := filepath.Join(s.dir, name)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace state: %w", err)
	}
	return nil
}
