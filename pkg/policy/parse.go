package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// API versions of the kinds Membrane reads.
const (
	apiCilium = "cilium.io/v2"
	apiK8sNet = "networking.k8s.io/v1"
	apiCore   = "v1"
)

// Parse reads a policy file: YAML with one or more documents (`---`), or
// JSON (objects, or early Cilium's JSON list of rules). It returns one
// Policy per object (a List gives one per item; a rule list is one Policy
// named after the file). A file with any problem is rejected as a whole: the
// error is a *ParseError listing every problem found, each located by file,
// document, object and field path.
func Parse(file string, data []byte) ([]*Policy, error) { return parse(file, data, true) }

// parse is Parse, with or without its fast path (fastparse.go).
func parse(file string, data []byte, fast bool) ([]*Policy, error) {
	var out []*Policy
	var docs []rawDoc
	var errs []*FieldError
	done := false
	if fast {
		out, errs, done = parseJSONFast(file, data)
	}
	if !done {
		docs, errs = splitDocuments(file, data, fast)
	}
	for _, d := range docs {
		if fast {
			if pol, ok := parseDocumentFast(file, d.n, d.json); ok {
				out = append(out, pol)
				continue
			}
		}
		pols, fes := parseDocument(file, d.n, d.json)
		out = append(out, pols...)
		errs = append(errs, fes...)
	}
	if len(errs) > 0 {
		return nil, &ParseError{File: file, Errors: errs}
	}
	if len(out) == 0 {
		return nil, &ParseError{File: file, Errors: []*FieldError{{File: file, Msg: "no policy in file", Err: ErrInvalid}}}
	}
	return out, nil
}

// ParseObject parses one object as Parse found it in document doc of file:
// the agent stores Policy.Object, File and Document and parses them again on
// restart.
func ParseObject(file string, doc int, obj json.RawMessage) (*Policy, error) {
	return parseObject(file, doc, obj, true)
}

func parseObject(file string, doc int, obj json.RawMessage, fast bool) (*Policy, error) {
	if fast {
		if pol, ok := parseDocumentFast(file, doc, obj); ok {
			return pol, nil
		}
	}
	tree, err := decodeTree(obj)
	if err != nil {
		return nil, &ParseError{File: file, Errors: []*FieldError{{File: file, Document: doc, Msg: "JSON: " + err.Error(), Err: ErrInvalid}}}
	}
	pol, fes := parseObjectTree(file, doc, obj, tree, "")
	if len(fes) > 0 {
		return nil, &ParseError{File: file, Errors: fes}
	}
	return pol, nil
}

type rawDoc struct {
	n    int
	json []byte
}

var yamlSeparator = regexp.MustCompile(`^(---|\.\.\.)(\s.*)?$`)

// splitDocuments cuts a file into documents converted to JSON, numbered
// from 1, skipping empty ones.
func splitDocuments(file string, data []byte, fast bool) ([]rawDoc, []*FieldError) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		if docs, err := splitJSON(data); err == nil {
			return docs, nil
		} else if _, yerr := yaml.YAMLToJSONStrict(data); yerr != nil {
			// Not YAML either: the JSON error says most.
			return nil, []*FieldError{{File: file, Msg: err.Error(), Err: ErrInvalid}}
		}
	}
	var docs []rawDoc
	var errs []*FieldError
	lines := strings.SplitAfter(string(data), "\n")
	start := 0
	flush := func(end int) {
		chunk := strings.Join(lines[start:end], "")
		firstLine := start + 1
		start = end + 1
		if emptyYAML(chunk) {
			return
		}
		n := len(docs) + len(errs) + 1
		j, ok := []byte(nil), false
		if fast {
			j, ok = yamlToJSONFast(chunk)
		}
		if !ok {
			var err error
			j, err = yaml.YAMLToJSONStrict([]byte(chunk))
			if err != nil {
				errs = append(errs, &FieldError{File: file, Document: n, Msg: "YAML: " + shiftLines(err.Error(), firstLine-1), Err: ErrInvalid})
				return
			}
		}
		if string(j) == "null" {
			return
		}
		docs = append(docs, rawDoc{n: n, json: j})
	}
	for i, l := range lines {
		if (strings.HasPrefix(l, "---") || strings.HasPrefix(l, "...")) && yamlSeparator.MatchString(strings.TrimRight(l, "\r\n")) {
			flush(i)
		}
	}
	flush(len(lines))
	return docs, errs
}

func emptyYAML(s string) bool {
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") && !strings.HasPrefix(l, "%") {
			return false
		}
	}
	return true
}

var lineRef = regexp.MustCompile(`line (\d+)`)

// shiftLines turns line numbers of a document into line numbers of the file.
func shiftLines(msg string, offset int) string {
	return lineRef.ReplaceAllStringFunc(msg, func(m string) string {
		n, _ := strconv.Atoi(strings.TrimPrefix(m, "line "))
		return fmt.Sprintf("line %d", n+offset)
	})
}

// splitJSON reads one or more concatenated JSON values.
func splitJSON(data []byte) ([]rawDoc, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var docs []rawDoc
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			var se *json.SyntaxError
			if errors.As(err, &se) {
				line, col := lineCol(data, se.Offset)
				return nil, fmt.Errorf("JSON: line %d column %d: %s", line, col, strings.TrimPrefix(err.Error(), "json: "))
			}
			return nil, fmt.Errorf("JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
		}
		docs = append(docs, rawDoc{n: len(docs) + 1, json: raw})
	}
}

func lineCol(data []byte, off int64) (int, int) {
	if off > int64(len(data)) {
		off = int64(len(data))
	}
	before := data[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := int(off) - bytes.LastIndexByte(before, '\n')
	return line, col
}

// decodeTree decodes JSON into the generic tree the decoder reads.
func decodeTree(raw []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, errors.New(strings.TrimPrefix(err.Error(), "json: "))
	}
	return v, nil
}

// parseDocument parses one document: an object, a List, or a rule list.
func parseDocument(file string, n int, raw []byte) ([]*Policy, []*FieldError) {
	tree, err := decodeTree(raw)
	if err != nil {
		return nil, []*FieldError{{File: file, Document: n, Msg: "JSON: " + err.Error(), Err: ErrInvalid}}
	}
	obj, ok := tree.(map[string]any)
	if !ok {
		pol, fes := parseObjectTree(file, n, raw, tree, "")
		if pol == nil {
			return nil, fes
		}
		return []*Policy{pol}, fes
	}
	kind, _ := obj["kind"].(string)
	api, _ := obj["apiVersion"].(string)
	elem, isList := listKinds[kind]
	if !isList {
		pol, fes := parseObjectTree(file, n, raw, tree, "")
		if pol == nil {
			return nil, fes
		}
		return []*Policy{pol}, fes
	}
	var p problems
	listObject := kind
	if want := listAPIVersion[kind]; api != want {
		p.invalid("apiVersion", "%s for kind %s (want %s)", quoteOrMissing(api), kind, want)
	}
	items, ok := obj["items"].([]any)
	if !ok && obj["items"] != nil {
		p.invalid("items", "want a list, got %s", describe(obj["items"]))
	}
	for _, k := range sortedKeys(obj) {
		switch k {
		case "apiVersion", "kind", "items", "metadata":
		default:
			p.invalid(k, "unknown field")
		}
	}
	fes := locate(p.list, file, n, listObject, "")
	var pols []*Policy
	for i, it := range items {
		prefix := indexPath("items", i)
		if m, ok := it.(map[string]any); ok && elem != "" {
			if _, has := m["kind"]; !has {
				m["kind"] = elem
			}
			if _, has := m["apiVersion"]; !has {
				m["apiVersion"] = listAPIVersion[kind]
			}
		}
		itemRaw, err := json.Marshal(it)
		if err != nil {
			fes = append(fes, &FieldError{File: file, Document: n, Object: listObject, Path: prefix, Msg: err.Error(), Err: ErrInvalid})
			continue
		}
		pol, ife := parseObjectTree(file, n, itemRaw, it, prefix)
		fes = append(fes, ife...)
		if pol != nil {
			pols = append(pols, pol)
		}
	}
	return pols, fes
}

// listKinds maps list kinds to the kind of their items ("" for List).
var listKinds = map[string]string{
	"List":                               "",
	"CiliumNetworkPolicyList":            KindCNP,
	"CiliumClusterwideNetworkPolicyList": KindCCNP,
	"NetworkPolicyList":                  KindKNP,
}

var listAPIVersion = map[string]string{
	"List":                               apiCore,
	"CiliumNetworkPolicyList":            apiCilium,
	"CiliumClusterwideNetworkPolicyList": apiCilium,
	"NetworkPolicyList":                  apiK8sNet,
}

var kindAPIVersion = map[string]string{
	KindCNP:  apiCilium,
	KindCCNP: apiCilium,
	KindKNP:  apiK8sNet,
}

func quoteOrMissing(s string) string {
	if s == "" {
		return "missing"
	}
	return strconv.Quote(s)
}

// parseObjectTree parses one policy object; prefix locates it in its
// document (items[2] in a List).
func parseObjectTree(file string, n int, raw []byte, tree any, prefix string) (*Policy, []*FieldError) {
	if list, ok := tree.([]any); ok {
		name := ruleListName(file, n)
		pol, p := parseRuleList(list, name)
		pol.File, pol.Document, pol.Object = file, n, append(json.RawMessage(nil), raw...)
		return finish(pol, p, file, n, prefix)
	}
	obj, ok := tree.(map[string]any)
	if !ok {
		return nil, []*FieldError{{File: file, Document: n, Path: prefix, Msg: fmt.Sprintf("want a policy object or a list of rules, got %s", describe(tree)), Err: ErrInvalid}}
	}
	kind, _ := obj["kind"].(string)
	api, _ := obj["apiVersion"].(string)
	var p problems
	switch {
	case obj["kind"] == nil:
		p.invalid("kind", "missing (want CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy)")
	case kindAPIVersion[kind] == "":
		p.invalid("kind", "unknown kind %q (want CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy, or a List of them)", kind)
	case api != kindAPIVersion[kind]:
		p.invalid("apiVersion", "%s is not an API version of %s (want %s)", quoteOrMissing(api), kind, kindAPIVersion[kind])
	}
	if !p.empty() {
		return nil, locate(p.list, file, n, kind, prefix)
	}
	var pol *Policy
	switch kind {
	case KindCNP, KindCCNP:
		pol, p = parseCilium(kind, obj)
	case KindKNP:
		pol, p = parseKNP(obj)
	}
	pol.File, pol.Document, pol.Object = file, n, append(json.RawMessage(nil), raw...)
	return finish(pol, p, file, n, prefix)
}

func finish(pol *Policy, p problems, file string, n int, prefix string) (*Policy, []*FieldError) {
	if !p.empty() {
		return nil, locate(p.list, file, n, pol.String(), prefix)
	}
	pol.computePrefixes()
	return pol, nil
}

// locate fills in where field errors are.
func locate(fes []*FieldError, file string, n int, object, prefix string) []*FieldError {
	for _, fe := range fes {
		fe.File, fe.Document, fe.Object = file, n, strings.TrimSpace(object)
		if prefix != "" {
			if fe.Path == "" {
				fe.Path = prefix
			} else if strings.HasPrefix(fe.Path, "[") {
				fe.Path = prefix + fe.Path
			} else {
				fe.Path = prefix + "." + fe.Path
			}
		}
	}
	return fes
}

// ruleListName names a rule list after its file: `l3_policy.json` gives
// `l3_policy` (and `l3_policy-2` for a second list in the same file).
func ruleListName(file string, n int) string {
	base := filepath.Base(file)
	if file == "" || file == "-" || base == "." || base == "/" {
		base = "rules"
	}
	if ext := filepath.Ext(base); ext != "" && ext != base {
		base = strings.TrimSuffix(base, ext)
	}
	if n > 1 {
		base = fmt.Sprintf("%s-%d", base, n)
	}
	return base
}
