package policy

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// checkYAMLFast fails when yamlToJSONFast converts a document otherwise
// than YAMLToJSONStrict.
func checkYAMLFast(t *testing.T, doc string) bool {
	t.Helper()
	got, ok := yamlToJSONFast(doc)
	if !ok {
		return false
	}
	want, err := yaml.YAMLToJSONStrict([]byte(doc))
	if err != nil {
		t.Fatalf("fast YAML converted what YAMLToJSONStrict rejects (%v):\n%s\ngot: %s", err, doc, got)
	}
	if string(got) != string(want) {
		t.Fatalf("fast YAML and YAMLToJSONStrict differ:\n%s\ngot:  %s\nwant: %s", doc, got, want)
	}
	return true
}

// yamlDocs cuts a file into documents as splitDocuments does.
func yamlDocs(data string) []string {
	var docs []string
	var cur []string
	for _, l := range strings.SplitAfter(data, "\n") {
		if yamlSeparator.MatchString(strings.TrimRight(l, "\r\n")) {
			docs = append(docs, strings.Join(cur, ""))
			cur = nil
			continue
		}
		cur = append(cur, l)
	}
	return append(docs, strings.Join(cur, ""))
}

// yamlCorpus is YAML documents: the fast parse corpus (its JSON documents
// also converted to YAML) and the conformance cases' files.
func yamlCorpus(t testing.TB) []string {
	var docs []string
	corpus := fastParseCorpus(t)
	names := make([]string, 0, len(corpus))
	for n := range corpus {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		data := corpus[n]
		docs = append(docs, yamlDocs(string(data))...)
		if ds, errs := splitDocuments(n, data, false); len(errs) == 0 {
			for _, d := range ds {
				if y, err := yaml.JSONToYAML(d.json); err == nil {
					docs = append(docs, string(y))
				}
			}
		}
	}
	for _, d := range []string{"../../test/conformance/cases"} {
		files, _ := filepath.Glob(filepath.Join(d, "*.yaml"))
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			docs = append(docs, yamlDocs(string(data))...)
		}
		if len(files) > 0 {
			break
		}
	}
	docs = append(docs,
		"a: 1\nb: -2\nc: +3\nd: 0\ne: 010\nf: 0x1f\ng: 1e3\nh: 1.5\ni: 1_000\nj: 2001-12-14\nk: 9223372036854775808\n",
		"a: y\nb: No\nc: on\nd: OFF\ne: ~\nf: null\ng:\nh: .inf\ni: .nan\nj: .foo\nk: yes please\n",
		"'quoted key': 'it''s'\n\"d\": \"x: y # not a comment\"\nplain: a # a comment\nurl: http://a/b#c\n",
		"list:\n- a\n-  b\n- - c\n  - d\n-\n  e: f\n- g: h\n  i: j\n-\n",
		"flow: {a: b, 'c': \"d\", e: [f, g, {h: i}], j: []}\nempty: {}\nnested: [[a], [b, c]] # comment\n",
		"key:\n  value\nother: x\n",
		"a: b\n  c\n",
		"a: &x b\nc: *x\n",
		"a: |\n  text\n",
		"a: 1\na: 2\n",
		"<<: {a: b}\n",
		"? a\n: b\n",
		"a: <b> & \"c\"\n",
		"a: é ü 中\n",
		"a:\tb\n",
		"k8s:app: web\nio.kubernetes.pod.namespace: x\n",
		"80: http\ntrue: x\n",
		"a: [a, b,]\n",
		"a: {b}\n",
		"a: [b: c]\n",
		"- a\n - b\n",
		"  a: 1\n  b: 2\n",
		"a:\n- b\n- c\nd: e\n",
		"a:\n  - b\n  -   c: d\n      e: f\n",
	)
	return docs
}

// TestYAMLFastAgrees holds the fast YAML conversion to YAMLToJSONStrict on
// the corpus and on random changes of its documents, and checks that it
// converts the YAML that JSONToYAML writes.
func TestYAMLFastAgrees(t *testing.T) {
	docs := yamlCorpus(t)
	converted := 0
	for _, d := range docs {
		if checkYAMLFast(t, d) {
			converted++
		}
	}
	t.Logf("%d of %d corpus documents converted by the fast path", converted, len(docs))
	if converted < len(docs)/2 {
		t.Fatalf("the fast path converts only %d of %d documents", converted, len(docs))
	}
	rng := rand.New(rand.NewPCG(11, 12))
	rounds := 20
	if testing.Short() {
		rounds = 4
	}
	for _, d := range docs {
		for i := 0; i < rounds; i++ {
			m := d
			for k := 0; k <= rng.IntN(3); k++ {
				m = mutateYAML(rng, m)
			}
			checkYAMLFast(t, m)
		}
	}
}

var yamlTokens = []string{"y", "no", "On", "~", "null", "010", "1e3", "0x10", "+1", "-1", "1.5", "2001-01-01", "1_0", ".5",
	"'a''b'", "'a", "\"x\"", "\"a\\nb\"", "[a, b]", "{a: b}", "[a", "{}", "[]", "&a x", "*a", "!!str x", "|", ">", "a: b", "#c",
	"- a", "-", "? a", ": b", "a,b", "http://x", "<&>", "é", "\t", "\u2028", "a #b", "a#b", "%x", "@x", "`x", "''", "\"\""}

// mutateYAML changes a document's text: a line dropped, doubled or
// indented otherwise, a value or key replaced by a token.
func mutateYAML(rng *rand.Rand, doc string) string {
	lines := strings.Split(doc, "\n")
	if len(lines) == 0 {
		return doc
	}
	i := rng.IntN(len(lines))
	l := lines[i]
	switch rng.IntN(7) {
	case 0:
		lines = append(lines[:i], lines[i+1:]...)
	case 1:
		lines = append(lines[:i+1], lines[i:]...)
	case 2:
		lines[i] = strings.Repeat(" ", rng.IntN(3)) + l
	case 3:
		lines[i] = strings.TrimPrefix(l, strings.Repeat(" ", 1+rng.IntN(2)))
	case 4:
		if j := strings.Index(l, ": "); j >= 0 {
			lines[i] = l[:j+2] + yamlTokens[rng.IntN(len(yamlTokens))]
		} else {
			lines[i] = l + " " + yamlTokens[rng.IntN(len(yamlTokens))]
		}
	case 5:
		indent := len(l) - len(strings.TrimLeft(l, " "))
		lines[i] = l[:indent] + yamlTokens[rng.IntN(len(yamlTokens))] + ": " + yamlTokens[rng.IntN(len(yamlTokens))]
	case 6:
		if j := rng.IntN(len(l) + 1); j <= len(l) {
			lines[i] = l[:j] + yamlTokens[rng.IntN(len(yamlTokens))] + l[j:]
		}
	}
	return strings.Join(lines, "\n")
}

// FuzzYAMLFast: on any document, the fast YAML conversion gives what
// YAMLToJSONStrict gives, or leaves the document to it.
//
//	go test -run '^$' -fuzz FuzzYAMLFast -fuzztime 2m ./pkg/policy/
func FuzzYAMLFast(f *testing.F) {
	for _, d := range yamlCorpus(f) {
		if len(d) < 4096 {
			f.Add(d)
		}
	}
	f.Fuzz(func(t *testing.T, doc string) {
		if len(doc) > 1<<13 {
			return
		}
		checkYAMLFast(t, doc)
	})
}

func TestYAMLFastExamples(t *testing.T) {
	for _, c := range []struct {
		doc  string
		want string // "" when the fast path leaves it
	}{
		{"a: 1\nb: x\n", `{"a":1,"b":"x"}`},
		{"b: [x, 'y', \"z\"]\na: {c: d}\n", `{"a":{"c":"d"},"b":["x","y","z"]}`},
		{"a:\n- 1\n- b: c\n  d: e\n", `{"a":[1,{"b":"c","d":"e"}]}`},
		{"a: yes\nb: ~\nc: '010'\n", `{"a":true,"b":null,"c":"010"}`},
		{"a: 010\n", ""},
		{"a: &x b\n", ""},
	} {
		got, ok := yamlToJSONFast(c.doc)
		if (c.want == "") == ok || (ok && string(got) != c.want) {
			t.Errorf("%q: got %s (%v), want %s", c.doc, got, ok, c.want)
		}
		checkYAMLFast(t, c.doc)
	}
}

// TestYAMLNumberSyntax holds the hand-written matchers to go-yaml v2's
// regular expressions.
func TestYAMLNumberSyntax(t *testing.T) {
	float := regexp.MustCompile(`^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`)
	decimal := regexp.MustCompile(`^[-+]?(0|[1-9][0-9]*)$`)
	rng := rand.New(rand.NewPCG(1, 1))
	alphabet := "0123456789.eE+-_x "
	for i := 0; i < 200000; i++ {
		b := make([]byte, rng.IntN(7))
		for j := range b {
			b[j] = alphabet[rng.IntN(len(alphabet))]
		}
		s := string(b)
		if got, want := isYAMLStyleFloat(s), float.MatchString(s); got != want {
			t.Fatalf("isYAMLStyleFloat(%q) = %v, want %v", s, got, want)
		}
		if got, want := isDecimal(s), decimal.MatchString(s); got != want {
			t.Fatalf("isDecimal(%q) = %v, want %v", s, got, want)
		}
	}
}
