package policy

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// jsonReader reads JSON strictly, for the fast path of Parse (fastparse.go).
// It accepts exactly the JSON grammar (RFC 8259) and gives up (ok false) on
// anything else; the fast path then leaves the document to the decoder of
// decode.go, which reports where the problem is.
type jsonReader struct {
	data []byte
	pos  int
	ok   bool
	a    *fastAlloc // set by the fast path's readers
}

func newJSONReader(data []byte) *jsonReader { return &jsonReader{data: data, ok: true} }

// fail marks the input as unreadable by the fast path and returns false.
func (r *jsonReader) fail() bool {
	r.ok = false
	return false
}

func (r *jsonReader) ws() {
	for r.pos < len(r.data) {
		switch r.data[r.pos] {
		case ' ', '\t', '\n', '\r':
			r.pos++
		default:
			return
		}
	}
}

// peek returns the next byte after whitespace (0 at the end).
func (r *jsonReader) peek() byte {
	r.ws()
	if r.pos >= len(r.data) {
		return 0
	}
	return r.data[r.pos]
}

// consume reads byte c after whitespace.
func (r *jsonReader) consume(c byte) bool {
	if !r.ok || r.peek() != c {
		return r.fail()
	}
	r.pos++
	return true
}

// null reads a null if one comes next.
func (r *jsonReader) null() bool {
	if r.peek() == 'n' && r.literal("null") {
		return true
	}
	return false
}

func (r *jsonReader) literal(lit string) bool {
	if len(r.data)-r.pos < len(lit) || string(r.data[r.pos:r.pos+len(lit)]) != lit {
		return r.fail()
	}
	r.pos += len(lit)
	return true
}

// str reads a string. Strings with escapes or non-ASCII bytes are decoded
// by encoding/json, so that every string reads as the decoder's.
func (r *jsonReader) str() (string, bool) {
	b, ok := r.strBytes()
	if !ok {
		return "", false
	}
	return string(b), true
}

// strBytes reads a string; the bytes are the input's when it has no escape
// and no non-ASCII byte, else a decoded copy.
func (r *jsonReader) strBytes() ([]byte, bool) {
	if !r.ok || r.peek() != '"' {
		return nil, r.fail()
	}
	start := r.pos
	r.pos++
	for i := r.pos; i < len(r.data); i++ {
		c := r.data[i]
		switch {
		case c == '"':
			r.pos = i + 1
			return r.data[start+1 : i], true
		case c == '\\' || c >= utf8.RuneSelf:
			return r.strSlow(start)
		case c < 0x20:
			return nil, r.fail()
		}
	}
	return nil, r.fail()
}

// strSlow reads the string starting at start (its quote) with escapes.
func (r *jsonReader) strSlow(start int) ([]byte, bool) {
	i := start + 1
	for i < len(r.data) {
		c := r.data[i]
		switch {
		case c == '"':
			var s string
			if err := json.Unmarshal(r.data[start:i+1], &s); err != nil {
				return nil, r.fail()
			}
			r.pos = i + 1
			return []byte(s), true
		case c == '\\':
			if i+1 >= len(r.data) {
				return nil, r.fail()
			}
			switch r.data[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(r.data) {
					return nil, r.fail()
				}
				for _, h := range r.data[i+2 : i+6] {
					if !isHex(h) {
						return nil, r.fail()
					}
				}
				i += 6
			default:
				return nil, r.fail()
			}
		case c < 0x20:
			return nil, r.fail()
		default:
			i++
		}
	}
	return nil, r.fail()
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// number reads a number and returns its text, as json.Number has it.
func (r *jsonReader) number() (string, bool) {
	if !r.ok {
		return "", false
	}
	r.ws()
	start, i, d := r.pos, r.pos, r.data
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	default:
		return "", r.fail()
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || !isDigit(d[i]) {
			return "", r.fail()
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || !isDigit(d[i]) {
			return "", r.fail()
		}
		for i < len(d) && isDigit(d[i]) {
			i++
		}
	}
	r.pos = i
	return string(d[start:i]), true
}

// int32 reads an integer written as one (no fraction, no exponent).
func (r *jsonReader) int32() (int32, bool) {
	s, ok := r.number()
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		return 0, r.fail()
	}
	return int32(n), true
}

func (r *jsonReader) boolean() (bool, bool) {
	switch r.peek() {
	case 't':
		return true, r.literal("true")
	case 'f':
		return false, r.literal("false")
	}
	return false, r.fail()
}

// skip reads any value. Nesting is bounded as encoding/json bounds it.
func (r *jsonReader) skip() bool { return r.skipDepth(0) }

func (r *jsonReader) skipDepth(depth int) bool {
	if depth > 10000 {
		return r.fail()
	}
	switch r.peek() {
	case '{':
		return r.object(func(_ []byte) bool { return r.skipDepth(depth + 1) })
	case '[':
		return r.array(func() bool { return r.skipDepth(depth + 1) })
	case '"':
		_, ok := r.strBytes()
		return ok
	case 't':
		return r.literal("true")
	case 'f':
		return r.literal("false")
	case 'n':
		return r.literal("null")
	default:
		_, ok := r.number()
		return ok
	}
}

// object reads an object, calling field with each key, the reader at the
// value, which field must read.
func (r *jsonReader) object(field func(key []byte) bool) bool {
	if !r.consume('{') {
		return false
	}
	if r.peek() == '}' {
		r.pos++
		return true
	}
	for {
		key, ok := r.strBytes()
		if !ok || !r.consume(':') || !field(key) || !r.ok {
			return r.fail()
		}
		switch r.peek() {
		case ',':
			r.pos++
		case '}':
			r.pos++
			return true
		default:
			return r.fail()
		}
	}
}

// array reads an array, calling elem with the reader at each element.
func (r *jsonReader) array(elem func() bool) bool {
	if !r.consume('[') {
		return false
	}
	if r.peek() == ']' {
		r.pos++
		return true
	}
	for {
		if !elem() || !r.ok {
			return r.fail()
		}
		switch r.peek() {
		case ',':
			r.pos++
		case ']':
			r.pos++
			return true
		default:
			return r.fail()
		}
	}
}

// strings reads a list of strings; a null list is nil, an empty one is not.
func (r *jsonReader) strings() ([]string, bool) {
	if r.a == nil {
		r.a = &fastAlloc{}
	}
	return list(r, &r.a.strs, func() bool {
		s, ok := r.str()
		r.a.strs.scratch = append(r.a.strs.scratch, s)
		return ok
	})
}

// stringMap reads an object of strings.
func (r *jsonReader) stringMap() (map[string]string, bool) {
	if r.null() {
		return nil, true
	}
	out := map[string]string{}
	ok := r.object(func(k []byte) bool {
		if _, dup := out[string(k)]; dup {
			return false
		}
		v, ok := r.str()
		out[string(k)] = v
		return ok
	})
	return out, ok
}

// optString reads a string or null ("").
func (r *jsonReader) optString() (string, bool) {
	if r.null() {
		return "", true
	}
	return r.str()
}
