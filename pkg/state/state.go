// Package state owns the agent's state on disk: endpoints and their
// identities in one file; each policy document in a file of its own, with
// the repository's revision and the CIDR identities beside them; each file
// written atomically (temporary file, rename) when its part changes, so
// that a restarted agent finds what it had. It does not interpret what it
// stores.
package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

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

// PoliciesFile is what the policies directory holds: the imported
// documents (a file each), the repository's revision and the identities of
// the CIDRs they name (kept so that the numbers in the kernel's maps stay
// valid across a restart).
type PoliciesFile struct {
	Version        int            `json:"version"`
	Revision       uint64         `json:"revision"`
	Policies       []Policy       `json:"-"`
	CIDRIdentities []CIDRIdentity `json:"-"`
}

// CIDRIdentity is the identity of a policy CIDR.
type CIDRIdentity struct {
	Prefix string
	ID     identity.NumericIdentity
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
	policiesDir   = "policies"
	revisionFile  = "policies/revision.json"
	cidrIDsFile   = "policies/cidr-identities"
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
	if err := s.read(revisionFile, &st.PoliciesFile); err != nil {
		return nil, err
	}
	if err := s.readPolicies(st); err != nil {
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

// SaveRevision writes the repository's revision.
func (s *Store) SaveRevision(rev uint64) error {
	return s.write(revisionFile, &PoliciesFile{Version: Version, Revision: rev})
}

// PolicyFileName names a policy's file after its kind, namespace and name.
func PolicyFileName(kind, namespace, name string) string {
	h := sha256.Sum256([]byte(kind + "\x00" + namespace + "\x00" + name))
	return hex.EncodeToString(h[:12]) + ".json"
}

// SavePolicy writes one policy's file.
func (s *Store) SavePolicy(fileName string, p Policy) error {
	return s.write(filepath.Join(policiesDir, fileName), &p)
}

// DeletePolicy removes one policy's file; a missing one is not an error.
func (s *Store) DeletePolicy(fileName string) error {
	if err := os.Remove(filepath.Join(s.dir, policiesDir, fileName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete stored policy: %w", err)
	}
	return nil
}

// ReplacePolicies makes the directory hold exactly these policies.
func (s *Store) ReplacePolicies(files map[string]Policy) error {
	ents, err := os.ReadDir(filepath.Join(s.dir, policiesDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("list stored policies: %w", err)
	}
	for _, e := range ents {
		if _, keep := files[e.Name()]; !keep && isPolicyFile(e.Name()) {
			if err := s.DeletePolicy(e.Name()); err != nil {
				return err
			}
		}
	}
	for name, p := range files {
		if err := s.SavePolicy(name, p); err != nil {
			return err
		}
	}
	return nil
}

func isPolicyFile(name string) bool {
	return filepath.Ext(name) == ".json" && name != filepath.Base(revisionFile)
}

// SaveCIDRIdentities writes the CIDR identities, one "prefix id" a line.
func (s *Store) SaveCIDRIdentities(ids []CIDRIdentity) error {
	var b bytes.Buffer
	b.Grow(len(ids) * 32)
	for _, id := range ids {
		b.WriteString(id.Prefix)
		b.WriteByte(' ')
		b.WriteString(strconv.FormatUint(uint64(id.ID), 10))
		b.WriteByte('\n')
	}
	return s.writeBytes(cidrIDsFile, b.Bytes())
}

func (s *Store) readPolicies(st *State) error {
	dir := filepath.Join(s.dir, policiesDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read stored policies: %w", err)
	}
	for _, e := range ents {
		if !isPolicyFile(e.Name()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return fmt.Errorf("read stored policy: %w", err)
		}
		var p Policy
		if err := json.Unmarshal(b, &p); err != nil {
			return fmt.Errorf("parse stored policy %s: %w", e.Name(), err)
		}
		st.Policies = append(st.Policies, p)
	}
	sort.Slice(st.Policies, func(i, j int) bool {
		if st.Policies[i].File != st.Policies[j].File {
			return st.Policies[i].File < st.Policies[j].File
		}
		return st.Policies[i].Document < st.Policies[j].Document
	})
	b, err := os.ReadFile(filepath.Join(s.dir, cidrIDsFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read CIDR identities: %w", err)
	}
	for i, line := range strings.Split(string(b), "\n") {
		if line == "" {
			continue
		}
		p, n, ok := strings.Cut(line, " ")
		id, err := strconv.ParseUint(n, 10, 32)
		if !ok || err != nil {
			return fmt.Errorf("CIDR identities line %d: %q", i+1, line)
		}
		st.CIDRIdentities = append(st.CIDRIdentities, CIDRIdentity{Prefix: p, ID: identity.NumericIdentity(id)})
	}
	return nil
}

// write replaces a file with v in JSON atomically.
func (s *Store) write(name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	return s.writeBytes(name, b)
}

// writeBytes replaces a file atomically: a temporary file, then rename. There
// is no fsync: the state describes kernel objects (pins in bpffs, veths,
// namespaces) that a power loss erases too, and after an agent crash the
// page cache holds the file; a restarted agent reconciles with the kernel.
func (s *Store) writeBytes(name string, b []byte) error {
	path := filepath.Join(s.dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
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
