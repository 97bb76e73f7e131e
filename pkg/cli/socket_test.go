package cli

import (
	"bytes"
	"strings"
	"testing"
)

// TestSocketFlagAnywhere: every command finds the agent through --socket,
// given before or after the command, or MEMBRANE_SOCKET.
func TestSocketFlagAnywhere(t *testing.T) {
	cases := []struct {
		args []string
		env  string
		want string
	}{
		{args: []string{"--socket", "/nonexistent/a.sock", "endpoint", "list"}, want: "/nonexistent/a.sock"},
		{args: []string{"endpoint", "list", "--socket", "/nonexistent/b.sock"}, want: "/nonexistent/b.sock"},
		{args: []string{"status", "--socket=/nonexistent/c.sock"}, want: "/nonexistent/c.sock"},
		{args: []string{"identity", "list"}, env: "/nonexistent/d.sock", want: "/nonexistent/d.sock"},
		{args: []string{"policy", "get", "--socket", "/nonexistent/e.sock"}, env: "/nonexistent/d.sock", want: "/nonexistent/e.sock"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			t.Setenv("MEMBRANE_SOCKET", c.env)
			root := NewRoot()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetErr(&out)
			root.SetArgs(c.args)
			err := root.Execute()
			if err == nil {
				t.Fatal("no error without an agent")
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "not running") {
				t.Fatalf("error %q does not name the socket %s and say the agent is not running", err, c.want)
			}
		})
	}
}

func TestOutputFlagValidated(t *testing.T) {
	root := NewRoot()
	root.SetArgs([]string{"-o", "xml", "endpoint", "list"})
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "xml") {
		t.Fatalf("-o xml: %v", err)
	}
}
