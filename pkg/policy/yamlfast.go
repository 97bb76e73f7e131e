package policy

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// yamlToJSONFast converts a YAML document written in the common subset of
// YAML that policy files use to the JSON that sigs.k8s.io/yaml's
// YAMLToJSONStrict gives for it, byte for byte, several times faster; ok
// false for anything outside the subset, which YAMLToJSONStrict then
// converts (or reports, with its line numbers). The subset:
//   - block mappings and block sequences (indented with spaces, sequences
//     in mappings indented or not), comments, blank lines;
//   - single-line scalars: plain ones resolved as go-yaml v2 resolves them
//     (strings, decimal integers, booleans, nulls; other numbers and
//     timestamps are left to YAMLToJSONStrict), and single- or
//     double-quoted ones without escapes;
//   - single-line flow mappings and sequences of such scalars.
//
// Anchors, aliases, tags, block scalars, multi-line scalars or flow
// collections, complex keys, merge keys, duplicate keys, tabs and carriage
// returns are outside it. TestYAMLFastAgrees and FuzzYAMLFast hold it to
// YAMLToJSONStrict.
func yamlToJSONFast(doc string) ([]byte, bool) {
	p := yamlParser{}
	if !p.lines(doc) || len(p.ls) == 0 {
		return nil, false
	}
	n, ok := p.block(p.ls[0].indent)
	if !ok || p.i != len(p.ls) {
		return nil, false
	}
	buf := make([]byte, 0, len(doc)+len(doc)/4)
	return n.appendJSON(buf), true
}

type yline struct {
	indent int
	text   string // after the indentation, trailing spaces removed
}

type yamlParser struct {
	ls    []yline
	i     int
	depth int
}

// maxDepth bounds nesting (go-yaml rejects nesting deeper than 10,000).
const maxDepth = 1000

type ykind uint8

const (
	yScalar ykind = iota
	yMap
	ySeq
)

// ynode is a YAML node; a scalar holds its JSON text.
type ynode struct {
	kind  ykind
	json  string
	keys  []string
	vals  []*ynode
	items []*ynode
}

var yNull = &ynode{json: "null"}

// lines cuts the document into its non-empty lines.
func (p *yamlParser) lines(doc string) bool {
	if !yamlPrintable(doc) {
		return false
	}
	for doc != "" {
		line := doc
		if i := strings.IndexByte(doc, '\n'); i >= 0 {
			line, doc = doc[:i], doc[i+1:]
		} else {
			doc = ""
		}
		text := strings.TrimLeft(line, " ")
		if text == "" || text[0] == '#' {
			continue
		}
		if text[0] == '%' || strings.HasPrefix(text, "---") || strings.HasPrefix(text, "...") {
			return false
		}
		p.ls = append(p.ls, yline{indent: len(line) - len(text), text: strings.TrimRight(text, " ")})
	}
	return true
}

// yamlPrintable reports whether the document holds only characters that
// go-yaml v2 reads as printable and that break no line but '\n' (so no
// tab, carriage return, NEL, line or paragraph separator, byte order mark,
// control character or invalid UTF-8).
func yamlPrintable(doc string) bool {
	for i := 0; i < len(doc); {
		c := doc[i]
		if c < utf8.RuneSelf {
			if (c < 0x20 && c != '\n') || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(doc[i:])
		switch {
		case r == utf8.RuneError && n == 1, r < 0xA0, r == 0x2028, r == 0x2029, r == 0xFEFF,
			r >= 0xD800 && r <= 0xDFFF, r == 0xFFFE, r == 0xFFFF:
			return false
		}
		i += n
	}
	return true
}

func isSeqEntry(text string) bool { return text == "-" || strings.HasPrefix(text, "- ") }

// block parses the node whose first line is the current one, at indent n.
func (p *yamlParser) block(n int) (*ynode, bool) {
	if p.depth++; p.depth > maxDepth {
		return nil, false
	}
	defer func() { p.depth-- }()
	text := p.ls[p.i].text
	if isSeqEntry(text) {
		return p.seq(n)
	}
	if _, _, ok := splitKey(text); ok {
		return p.mapping(n)
	}
	v, ok := inlineValue(text)
	if !ok || v == nil {
		return nil, false
	}
	p.i++
	if p.i < len(p.ls) && p.ls[p.i].indent >= n {
		return nil, false
	}
	return v, true
}

func (p *yamlParser) seq(n int) (*ynode, bool) {
	node := &ynode{kind: ySeq}
	for p.i < len(p.ls) && p.ls[p.i].indent == n && isSeqEntry(p.ls[p.i].text) {
		rest := p.ls[p.i].text[1:]
		content := strings.TrimLeft(rest, " ")
		if content == "" || content[0] == '#' {
			p.i++
			if p.i < len(p.ls) && p.ls[p.i].indent > n {
				v, ok := p.block(p.ls[p.i].indent)
				if !ok {
					return nil, false
				}
				node.items = append(node.items, v)
			} else {
				node.items = append(node.items, yNull)
			}
			continue
		}
		// The entry's content starts a node at its column.
		col := n + 1 + len(rest) - len(content)
		p.ls[p.i] = yline{indent: col, text: content}
		v, ok := p.block(col)
		if !ok {
			return nil, false
		}
		node.items = append(node.items, v)
	}
	if p.i < len(p.ls) && p.ls[p.i].indent > n {
		return nil, false
	}
	return node, true
}

func (p *yamlParser) mapping(n int) (*ynode, bool) {
	node := &ynode{kind: yMap}
	for p.i < len(p.ls) && p.ls[p.i].indent == n && !isSeqEntry(p.ls[p.i].text) {
		key, rest, ok := splitKey(p.ls[p.i].text)
		if !ok || slices.Contains(node.keys, key) {
			return nil, false
		}
		p.i++
		var v *ynode
		if rest == "" || rest[0] == '#' {
			switch {
			case p.i < len(p.ls) && p.ls[p.i].indent > n:
				v, ok = p.block(p.ls[p.i].indent)
			case p.i < len(p.ls) && p.ls[p.i].indent == n && isSeqEntry(p.ls[p.i].text):
				v, ok = p.seq(n)
			default:
				v = yNull
			}
		} else {
			v, ok = inlineValue(rest)
			if ok && p.i < len(p.ls) && p.ls[p.i].indent > n {
				ok = false // a value going on on the next line
			}
		}
		if !ok || v == nil {
			return nil, false
		}
		node.keys = append(node.keys, key)
		node.vals = append(node.vals, v)
	}
	if p.i < len(p.ls) && p.ls[p.i].indent > n {
		return nil, false
	}
	return node, true
}

// splitKey splits `key: rest` (rest without the spaces after the colon);
// the key is a plain or quoted scalar that resolves to a string.
func splitKey(text string) (key, rest string, ok bool) {
	var raw string
	switch text[0] {
	case '\'', '"':
		s, n, ok := quoted(text)
		if !ok || n >= len(text) || text[n] != ':' || (n+1 < len(text) && text[n+1] != ' ') {
			return "", "", false
		}
		key, raw = s, text[:n]
	default:
		i := strings.Index(text, ": ")
		if i < 0 {
			if !strings.HasSuffix(text, ":") {
				return "", "", false
			}
			i = len(text) - 1
		}
		raw = text[:i]
		if raw == "" || raw[len(raw)-1] == ' ' || strings.Contains(raw, " #") || !plainStart(raw) {
			return "", "", false
		}
		j, ok := resolvePlain(raw)
		if !ok || j[0] != '"' {
			return "", "", false // a key that is no string
		}
		key = raw
	}
	if len(raw) > maxSimpleKey {
		return "", "", false
	}
	return key, strings.TrimLeft(text[len(raw)+1:], " "), true
}

// maxSimpleKey: YAML limits implicit keys to 1024 characters, and go-yaml
// rejects longer ones; keys near it are left alone.
const maxSimpleKey = 1000

// plainStart reports whether s may start a plain scalar (and not be one
// of the indicators this subset leaves alone).
func plainStart(s string) bool {
	switch s[0] {
	case '[', ']', '{', '}', ',', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`', '?', ':':
		return false
	case '-':
		return len(s) > 1 && s[1] >= '0' && s[1] <= '9'
	}
	return true
}

// inlineValue parses the value after `key: ` or `- `: a quoted or plain
// scalar, or a flow collection, with an optional comment.
func inlineValue(text string) (*ynode, bool) {
	switch text[0] {
	case '{', '[':
		f := flowParser{s: text}
		v, ok := f.value()
		if !ok {
			return nil, false
		}
		if rest := f.s[f.i:]; rest != "" && !(rest[0] == ' ' && strings.HasPrefix(strings.TrimLeft(rest, " "), "#")) {
			return nil, false
		}
		return v, true
	case '\'', '"':
		s, n, ok := quoted(text)
		if !ok {
			return nil, false
		}
		if rest := text[n:]; rest != "" && !(rest[0] == ' ' && strings.HasPrefix(strings.TrimLeft(rest, " "), "#")) {
			return nil, false
		}
		return &ynode{json: jsonString(s)}, true
	}
	if i := strings.Index(text, " #"); i >= 0 {
		text = strings.TrimRight(text[:i], " ")
	}
	if !plainStart(text) || strings.Contains(text, ": ") || strings.HasSuffix(text, ":") {
		return nil, false
	}
	j, ok := resolvePlain(text)
	if !ok {
		return nil, false
	}
	return &ynode{json: j}, true
}

// quoted reads the quoted scalar at the start of s and returns it and the
// length it takes; double-quoted scalars with escapes are left alone.
func quoted(s string) (string, int, bool) {
	q := s[0]
	if q == '"' {
		end := strings.IndexByte(s[1:], '"')
		if end < 0 || strings.ContainsAny(s[1:1+end], "\\") || hasControl(s[1:1+end]) {
			return "", 0, false
		}
		return s[1 : 1+end], end + 2, true
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] != '\'' {
			continue
		}
		if i+1 < len(s) && s[i+1] == '\'' {
			b.WriteString(s[1:i])
			b.WriteByte('\'')
			rest, n, ok := quoted("'" + s[i+2:])
			if !ok {
				return "", 0, false
			}
			b.WriteString(rest)
			return b.String(), i + 1 + n, !hasControl(b.String())
		}
		return s[1:i], i + 1, !hasControl(s[1:i])
	}
	return "", 0, false
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}

// isDecimal reports whether s is `[-+]?(0|[1-9][0-9]*)`.
func isDecimal(s string) bool {
	if s != "" && (s[0] == '-' || s[0] == '+') {
		s = s[1:]
	}
	if s == "" || (s[0] == '0' && len(s) > 1) {
		return false
	}
	return digits(s) == len(s)
}

func digits(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

// isYAMLStyleFloat is go-yaml v2's yamlStyleFloat:
// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
func isYAMLStyleFloat(s string) bool {
	if s != "" && (s[0] == '-' || s[0] == '+') {
		s = s[1:]
	}
	if s != "" && s[0] == '.' {
		n := digits(s[1:])
		if n == 0 {
			return false
		}
		s = s[1+n:]
	} else {
		n := digits(s)
		if n == 0 {
			return false
		}
		s = s[n:]
		if s != "" && s[0] == '.' {
			s = s[1+digits(s[1:]):]
		}
	}
	if s == "" {
		return true
	}
	if s[0] != 'e' && s[0] != 'E' {
		return false
	}
	s = s[1:]
	if s != "" && (s[0] == '-' || s[0] == '+') {
		s = s[1:]
	}
	return s != "" && digits(s) == len(s)
}

// resolvePlain resolves a plain scalar as go-yaml v2's resolve does, and
// returns its JSON; ok false for the values this subset leaves alone.
func resolvePlain(s string) (string, bool) {
	if hasControl(s) {
		return "", false
	}
	switch s {
	case "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON":
		return "true", true
	case "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF":
		return "false", true
	case "", "~", "null", "Null", "NULL":
		return "null", true
	case ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF", "<<":
		return "", false
	}
	switch c := s[0]; {
	case c == '+' || c == '-' || (c >= '0' && c <= '9'):
		if isDecimal(s) {
			n, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return "", false
			}
			return strconv.FormatInt(n, 10), true
		}
		if looksTimestamp(s) {
			return "", false
		}
		plain := strings.ReplaceAll(s, "_", "")
		if _, err := strconv.ParseInt(plain, 0, 64); err == nil {
			return "", false
		}
		if _, err := strconv.ParseUint(plain, 0, 64); err == nil {
			return "", false
		}
		if isYAMLStyleFloat(plain) || strings.HasPrefix(plain, "0b") || strings.HasPrefix(plain, "-0b") {
			return "", false
		}
	case c == '.':
		if _, err := strconv.ParseFloat(s, 64); err == nil {
			return "", false
		}
	}
	return jsonString(s), true
}

// looksTimestamp: go-yaml v2 tries timestamps on what starts with YYYY-.
func looksTimestamp(s string) bool {
	return len(s) > 4 && s[4] == '-' && strings.IndexFunc(s[:4], func(r rune) bool { return r < '0' || r > '9' }) < 0
}

// jsonString encodes s as json.Marshal does (with HTML escaping).
func jsonString(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s)
			return string(b)
		}
	}
	return `"` + s + `"`
}

// flowParser reads a single-line flow collection.
type flowParser struct {
	s     string
	i     int
	depth int
}

func (f *flowParser) ws() {
	for f.i < len(f.s) && f.s[f.i] == ' ' {
		f.i++
	}
}

func (f *flowParser) value() (*ynode, bool) {
	f.ws()
	if f.i >= len(f.s) {
		return nil, false
	}
	switch f.s[f.i] {
	case '{':
		return f.collection('}')
	case '[':
		return f.collection(']')
	case '\'', '"':
		s, n, ok := quoted(f.s[f.i:])
		if !ok {
			return nil, false
		}
		f.i += n
		return &ynode{json: jsonString(s)}, true
	}
	s, ok := f.plain()
	if !ok {
		return nil, false
	}
	j, ok := resolvePlain(s)
	if !ok {
		return nil, false
	}
	return &ynode{json: j}, true
}

// plain reads a plain scalar of a flow collection: up to a flow
// indicator, or a colon (which must then be followed by a space).
func (f *flowParser) plain() (string, bool) {
	start := f.i
	for f.i < len(f.s) {
		switch c := f.s[f.i]; c {
		case ',', '[', ']', '{', '}':
			goto end
		case '#', '\'', '"':
			return "", false
		case ':':
			if f.i+1 < len(f.s) && f.s[f.i+1] != ' ' {
				return "", false
			}
			goto end
		}
		f.i++
	}
end:
	s := strings.TrimRight(f.s[start:f.i], " ")
	if s == "" || !plainStart(s) {
		return "", false
	}
	return s, true
}

// collection reads a flow mapping or sequence; every entry of a mapping
// must have a value, and there is no trailing comma.
func (f *flowParser) collection(end byte) (*ynode, bool) {
	if f.depth++; f.depth > maxDepth {
		return nil, false
	}
	defer func() { f.depth-- }()
	f.i++ // the opening bracket
	node := &ynode{kind: ySeq}
	if end == '}' {
		node.kind = yMap
	}
	f.ws()
	if f.i < len(f.s) && f.s[f.i] == end {
		f.i++
		return node, true
	}
	for {
		if node.kind == yMap {
			f.ws()
			keyStart := f.i
			quotedKey := f.i < len(f.s) && (f.s[f.i] == '"' || f.s[f.i] == '\'')
			k, ok := f.value()
			if !ok || k.kind != yScalar || k.json[0] != '"' {
				return nil, false
			}
			var key string
			if err := json.Unmarshal([]byte(k.json), &key); err != nil || slices.Contains(node.keys, key) {
				return nil, false
			}
			f.ws()
			if f.i-keyStart > maxSimpleKey {
				return nil, false
			}
			// After a plain key the colon needs a space; after a quoted
			// one (JSON) it does not.
			if f.i+1 >= len(f.s) || f.s[f.i] != ':' || (f.s[f.i+1] != ' ' && !quotedKey) {
				return nil, false
			}
			f.i++
			v, ok := f.value()
			if !ok {
				return nil, false
			}
			node.keys = append(node.keys, key)
			node.vals = append(node.vals, v)
		} else {
			v, ok := f.value()
			if !ok {
				return nil, false
			}
			f.ws()
			if f.i < len(f.s) && f.s[f.i] == ':' {
				return nil, false // a single-pair mapping
			}
			node.items = append(node.items, v)
		}
		f.ws()
		if f.i >= len(f.s) {
			return nil, false
		}
		switch f.s[f.i] {
		case ',':
			f.i++
			f.ws()
			if f.i < len(f.s) && (f.s[f.i] == end || f.s[f.i] == ',') {
				return nil, false
			}
		case end:
			f.i++
			return node, true
		default:
			return nil, false
		}
	}
}

// appendJSON writes the node as json.Marshal writes what YAMLToJSONStrict
// makes of it: map keys sorted.
func (n *ynode) appendJSON(b []byte) []byte {
	switch n.kind {
	case yMap:
		idx := make([]int, len(n.keys))
		for i := range idx {
			idx[i] = i
		}
		slices.SortFunc(idx, func(a, c int) int { return strings.Compare(n.keys[a], n.keys[c]) })
		b = append(b, '{')
		for j, i := range idx {
			if j > 0 {
				b = append(b, ',')
			}
			b = append(b, jsonString(n.keys[i])...)
			b = append(b, ':')
			b = n.vals[i].appendJSON(b)
		}
		return append(b, '}')
	case ySeq:
		b = append(b, '[')
		for i, it := range n.items {
			if i > 0 {
				b = append(b, ',')
			}
			b = it.appendJSON(b)
		}
		return append(b, ']')
	}
	return append(b, n.json...)
}
