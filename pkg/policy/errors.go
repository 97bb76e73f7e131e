package policy

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Sentinel errors; every error of this package wraps one of them.
var (
	// ErrInvalid: a policy document is malformed or breaks a rule of its API.
	ErrInvalid = errors.New("invalid policy")
	// ErrUnsupported: a policy uses a feature Membrane does not implement.
	ErrUnsupported = errors.New("not supported by Membrane")
	// ErrNotFound: no policy has the name given.
	ErrNotFound = errors.New("policy not found")
	// ErrAmbiguous: a name without namespace or kind matches several policies.
	ErrAmbiguous = errors.New("ambiguous policy name")
	// ErrConflict: one import names the same policy twice.
	ErrConflict = errors.New("conflicting policies")
)

// FieldError is one problem in one document, located by file, document
// (1-based), object and field path.
type FieldError struct {
	File     string `json:"file"`
	Document int    `json:"document"`
	// Object names the object: `CiliumNetworkPolicy default/rule1`.
	Object string `json:"object,omitempty"`
	// Path is the field path inside the object: `spec.ingress[0].toPorts`.
	Path string `json:"path,omitempty"`
	Msg  string `json:"message"`
	// Err is ErrInvalid or ErrUnsupported (possibly wrapped).
	Err error `json:"-"`
}

func (e *FieldError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(": ")
	}
	if e.Document > 0 {
		fmt.Fprintf(&b, "document %d", e.Document)
		if e.Object != "" {
			fmt.Fprintf(&b, " (%s)", e.Object)
		}
		b.WriteString(": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

func (e *FieldError) Unwrap() error { return e.Err }

// ParseError holds every problem found in one file; a file with any problem
// is rejected as a whole.
type ParseError struct {
	File   string
	Errors []*FieldError
}

func (e *ParseError) Error() string {
	lines := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		lines[i] = fe.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.Is and errors.As see every field error.
func (e *ParseError) Unwrap() []error {
	out := make([]error, len(e.Errors))
	for i, fe := range e.Errors {
		out[i] = fe
	}
	return out
}

// problems collects the field errors of one object while it is decoded and
// translated. Paths are relative to the object.
type problems struct {
	list []*FieldError
}

func (p *problems) add(path string, sentinel error, format string, args ...any) {
	p.list = append(p.list, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...), Err: sentinel})
}

func (p *problems) invalid(path, format string, args ...any) {
	p.add(path, ErrInvalid, format, args...)
}

func (p *problems) unsupported(path, what string) {
	p.add(path, ErrUnsupported, "%s is not supported by Membrane", what)
}

func (p *problems) empty() bool { return len(p.list) == 0 }

// joinPath appends a field name to a path.
func joinPath(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

// indexPath appends an index to a path.
func indexPath(path string, i int) string {
	var buf [20]byte
	return path + "[" + string(strconv.AppendInt(buf[:0], int64(i), 10)) + "]"
}

// elemPath is indexPath(joinPath(path, field), i), in one allocation.
func elemPath(path, field string, i int) string {
	var buf [20]byte
	n := strconv.AppendInt(buf[:0], int64(i), 10)
	if path == "" {
		return field + "[" + string(n) + "]"
	}
	return path + "." + field + "[" + string(n) + "]"
}
