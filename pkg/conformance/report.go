package conformance

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// Statuses of a case.
const (
	StatusPass        = "pass"
	StatusFail        = "fail"
	StatusUnsupported = "unsupported"
	StatusSkipped     = "skipped"
)

// Report is the result of a run.
type Report struct {
	Dir      string       `json:"dir"`
	Agent    string       `json:"agent"`
	Started  time.Time    `json:"started"`
	Duration string       `json:"duration"`
	Cases    []CaseResult `json:"cases"`
	Summary  Summary      `json:"summary"`
}

// Summary counts cases and probes.
type Summary struct {
	Passed            int `json:"passed"`
	Failed            int `json:"failed"`
	Unsupported       int `json:"unsupported"`
	Skipped           int `json:"skipped"`
	Probes            int `json:"probes"`
	ProbesFailed      int `json:"probesFailed"`
	ProbesSkipped     int `json:"probesSkipped"`
	ProbesUnsupported int `json:"probesUnsupported"`
}

// CaseResult is the result of one case.
type CaseResult struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	File   string `json:"file"`
	Status string `json:"status"`
	// Reason says why a case failed as a whole, or is unsupported or
	// skipped.
	Reason string   `json:"reason,omitempty"`
	Notes  []string `json:"notes,omitempty"`
	// Probes were sent (selector rows evaluated); Passed of them matched.
	Probes      int `json:"probes"`
	Passed      int `json:"passed"`
	Skipped     int `json:"skipped"`
	Unsupported int `json:"unsupported"`
	// Flaky probes mismatched, then matched when sent again; Flakes
	// lists them with what they gave the first time.
	Flaky  int           `json:"flaky,omitempty"`
	Flakes []ProbeResult `json:"flakes,omitempty"`
	// SkipReasons counts skipped and unsupported probes by reason.
	SkipReasons map[string]int `json:"skipReasons,omitempty"`
	Failures    []ProbeResult  `json:"failures,omitempty"`
	Duration    string         `json:"duration"`
	// Incremental: applied on top of the previous step of its test.
	Incremental bool `json:"incremental,omitempty"`
}

// ProbeResult is a probe that did not give what the case expects.
type ProbeResult struct {
	Index    int          `json:"index"`
	From     string       `json:"from"`
	To       string       `json:"to"`
	Port     string       `json:"port,omitempty"`
	Protocol string       `json:"protocol,omitempty"`
	HTTP     *HTTPRequest `json:"http,omitempty"`
	Want     Expectation  `json:"want"`
	Got      Outcome      `json:"got"`
}

// Failed reports whether the case counts as failed.
func (c CaseResult) Failed() bool { return c.Status == StatusFail }

func (s *Summary) add(c CaseResult) {
	switch c.Status {
	case StatusPass:
		s.Passed++
	case StatusFail:
		s.Failed++
	case StatusUnsupported:
		s.Unsupported++
	case StatusSkipped:
		s.Skipped++
	}
	s.Probes += c.Probes
	s.ProbesFailed += len(c.Failures)
	s.ProbesSkipped += c.Skipped
	s.ProbesUnsupported += c.Unsupported
}

// WriteCase writes a case's line, and one line per failing probe.
func WriteCase(w io.Writer, c CaseResult) {
	var parts []string
	if c.Probes > 0 {
		parts = append(parts, fmt.Sprintf("%d probes", c.Probes))
	}
	if n := len(c.Failures); n > 0 {
		parts = append(parts, fmt.Sprintf("%d failed", n))
	}
	if c.Skipped > 0 {
		parts = append(parts, fmt.Sprintf("%d skipped", c.Skipped))
	}
	if c.Unsupported > 0 {
		parts = append(parts, fmt.Sprintf("%d unsupported", c.Unsupported))
	}
	if c.Flaky > 0 {
		parts = append(parts, fmt.Sprintf("%d flaky: matched only when sent again", c.Flaky))
	}
	if c.Incremental {
		parts = append(parts, "applied incrementally")
	}
	line := fmt.Sprintf("%s %s %s", strings.ToUpper(c.Status), c.ID, c.Name)
	if len(parts) > 0 {
		line += " (" + strings.Join(parts, ", ") + ")"
	}
	if c.Reason != "" {
		line += ": " + c.Reason
	}
	var extra []string
	extra = append(extra, c.Notes...)
	for _, r := range sortedKeys(c.SkipReasons) {
		extra = append(extra, fmt.Sprintf("%d %s", c.SkipReasons[r], r))
	}
	if len(extra) > 0 {
		line += " [" + strings.Join(extra, "; ") + "]"
	}
	fmt.Fprintln(w, line)
	for _, f := range c.Failures {
		fmt.Fprintf(w, "    %s\n", f)
	}
}

func (f ProbeResult) String() string {
	what := ""
	if f.Port != "" || f.Protocol != "" {
		what = " " + f.Port + "/" + f.Protocol
		if f.Protocol == "ICMP" {
			what = " ICMP"
		}
	}
	if f.HTTP != nil {
		what += fmt.Sprintf(" %s %s", f.HTTP.Method, f.HTTP.Path)
		for _, k := range sortedKeys(f.HTTP.Headers) {
			what += fmt.Sprintf(" [%s: %s]", k, f.HTTP.Headers[k])
		}
	}
	return fmt.Sprintf("%s -> %s%s: want %s, got %s", f.From, f.To, what, f.Want, f.Got)
}

// WriteSummary writes the final lines: exactly `N passed, M failed`, then
// the counts of unsupported and skipped cases and of probes.
func WriteSummary(w io.Writer, r *Report) {
	s := r.Summary
	fmt.Fprintf(w, "%d passed, %d failed\n", s.Passed, s.Failed)
	fmt.Fprintf(w, "%d unsupported, %d skipped; %d probes sent, %d failed, %d skipped, %d unsupported; %s, agent: %s\n",
		s.Unsupported, s.Skipped, s.Probes, s.ProbesFailed, s.ProbesSkipped, s.ProbesUnsupported, r.Duration, r.Agent)
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
