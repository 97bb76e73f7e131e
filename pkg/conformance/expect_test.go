package conformance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"testing"
)

func TestExpectationOf(t *testing.T) {
	yes, no, s403 := true, false, 403
	tests := []struct {
		name string
		in   ProbeSpec
		want Expectation
	}{
		{"allowed", ProbeSpec{Allowed: &yes}, Expectation{Result: ResultAllowed}},
		{"denied", ProbeSpec{Allowed: &no}, Expectation{Result: ResultDropped}},
		{"result wins", ProbeSpec{Allowed: &yes, Result: ResultDropped}, Expectation{Result: ResultDropped}},
		{"http status", ProbeSpec{Result: ResultL7Denied, HTTPStatus: &s403}, Expectation{Result: ResultL7Denied, Status: 403}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ExpectationOf(tt.in); got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestMatches is the truth-table comparison: {want, got, match}.
func TestMatches(t *testing.T) {
	tests := []struct {
		want  Expectation
		got   Outcome
		match bool
	}{
		{Expectation{Result: ResultAllowed}, Outcome{Result: ResultAllowed}, true},
		{Expectation{Result: ResultAllowed}, Outcome{Result: ResultDropped}, false},
		{Expectation{Result: ResultDropped}, Outcome{Result: ResultDropped}, true},
		{Expectation{Result: ResultDropped}, Outcome{Result: ResultAllowed}, false},
		// A refused connection passed the policy: it matches no expectation.
		{Expectation{Result: ResultDropped}, Outcome{Result: ResultRefused}, false},
		{Expectation{Result: ResultAllowed}, Outcome{Result: ResultRefused}, false},
		{Expectation{Result: ResultDropped}, Outcome{Result: ResultError, Detail: "connected, but no echo"}, false},
		// HTTP: the status counts when the case names one.
		{Expectation{Result: ResultAllowed, Status: 200}, Outcome{Result: ResultAllowed, Status: 200}, true},
		{Expectation{Result: ResultAllowed, Status: 200}, Outcome{Result: ResultAllowed, Status: 404}, false},
		{Expectation{Result: ResultAllowed}, Outcome{Result: ResultAllowed, Status: 404}, true},
		{Expectation{Result: ResultL7Denied, Status: 403}, Outcome{Result: ResultL7Denied, Status: 403}, true},
		{Expectation{Result: ResultL7Denied, Status: 403}, Outcome{Result: ResultAllowed, Status: 200}, false},
		{Expectation{Result: ResultDropped}, Outcome{Result: ResultL7Denied, Status: 403}, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%s", tt.want, tt.got), func(t *testing.T) {
			if got := tt.want.Matches(tt.got); got != tt.match {
				t.Fatalf("Matches = %v, want %v", got, tt.match)
			}
		})
	}
}

func TestOutcomeOfHTTP(t *testing.T) {
	if o := outcomeOfHTTP(403, "Access denied"); o.Result != ResultL7Denied || o.Detail != "" {
		t.Fatalf("403: %+v", o)
	}
	if o := outcomeOfHTTP(403, "nope"); o.Result != ResultL7Denied || o.Detail == "" {
		t.Fatalf("403 with another body: %+v", o)
	}
	if o := outcomeOfHTTP(200, "{}"); o.Result != ResultAllowed || o.Status != 200 {
		t.Fatalf("200: %+v", o)
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassify(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{context.DeadlineExceeded, ResultDropped},
		{&net.OpError{Op: "dial", Err: timeoutErr{}}, ResultDropped},
		{&net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, ResultRefused},
		{&net.OpError{Op: "read", Err: os.NewSyscallError("read", syscall.EHOSTUNREACH)}, ResultError},
		{errors.New("something else"), ResultError},
	}
	for _, tt := range tests {
		if got := classify(tt.err); got.Result != tt.want {
			t.Errorf("classify(%v) = %+v, want %s", tt.err, got, tt.want)
		}
	}
}

func TestICMPEchoChecksum(t *testing.T) {
	b := icmpEcho(0x1234, 1, []byte("membrane-probe"))
	if b[0] != 8 || b[4] != 0x12 || b[5] != 0x34 {
		t.Fatalf("header % x", b[:8])
	}
	// A message with its checksum sums to 0xffff, i.e. checksum() of it is 0.
	if c := checksum(b); c != 0 {
		t.Fatalf("checksum over the message = %#x, want 0", c)
	}
}

func TestSequencerUnique(t *testing.T) {
	s := newSequencer()
	seen := map[uint16]bool{}
	for i := 0; i < 5000; i++ {
		p := s.port("x/a")
		if p < firstSourcePort || p > lastSourcePort || seen[p] {
			t.Fatalf("port %d (round %d) out of range or given twice", p, i)
		}
		seen[p] = true
	}
	if s.id("x/a") == s.id("x/a") {
		t.Fatal("echo ids repeat")
	}
}
