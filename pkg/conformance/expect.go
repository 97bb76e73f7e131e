package conformance

import "fmt"

// Results of a probe. The first three are what cases expect; the others
// are outcomes no case expects, so they never match.
const (
	ResultAllowed  = "allowed"
	ResultDropped  = "dropped"
	ResultL7Denied = "l7-denied"
	// ResultRefused: the connection was refused (TCP RST, ICMP port
	// unreachable): packets passed the policy, but nothing listened.
	ResultRefused = "refused"
	// ResultError: anything else (no echo after connecting, unreachable).
	ResultError = "error"
)

// Expectation is what a probe must give: Result, and the HTTP status when
// Status is not 0.
type Expectation struct {
	Result string `json:"result"`
	Status int    `json:"httpStatus,omitempty"`
}

// Outcome is what a probe gave.
type Outcome struct {
	Result string `json:"result"`
	Status int    `json:"httpStatus,omitempty"`
	// Detail says more (the error, the first attempt of a retried probe).
	Detail string `json:"detail,omitempty"`
}

// ExpectationOf reads a probe's expectation: `allowed: true|false` of
// pod-level cases, or `result` (+ `httpStatus`) of Cilium cases.
func ExpectationOf(p ProbeSpec) Expectation {
	if p.Result != "" {
		e := Expectation{Result: p.Result}
		if p.HTTPStatus != nil {
			e.Status = *p.HTTPStatus
		}
		return e
	}
	if p.Allowed != nil && *p.Allowed {
		return Expectation{Result: ResultAllowed}
	}
	return Expectation{Result: ResultDropped}
}

// Matches reports whether an outcome is what the expectation says: the
// same result and, when the expectation names one, the same HTTP status.
// A refused connection matches nothing: with servers on every probed port
// it means the packets passed when they should not have, or a server is
// missing.
func (e Expectation) Matches(o Outcome) bool {
	if e.Result != o.Result {
		return false
	}
	return e.Status == 0 || e.Status == o.Status
}

func (e Expectation) String() string {
	if e.Status != 0 {
		return fmt.Sprintf("%s (HTTP %d)", e.Result, e.Status)
	}
	return e.Result
}

func (o Outcome) String() string {
	s := o.Result
	if o.Status != 0 {
		s = fmt.Sprintf("%s (HTTP %d)", o.Result, o.Status)
	}
	if o.Detail != "" {
		s += ": " + o.Detail
	}
	return s
}

// outcomeOfHTTP classifies an HTTP answer: 403 is the proxy's denial
// (the probed servers never answer 403), anything else got through.
func outcomeOfHTTP(status int, body string) Outcome {
	if status == 403 {
		o := Outcome{Result: ResultL7Denied, Status: status}
		if body != "" && body != "Access denied" {
			o.Detail = fmt.Sprintf("body %q", truncate(body, 60))
		}
		return o
	}
	return Outcome{Result: ResultAllowed, Status: status}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
