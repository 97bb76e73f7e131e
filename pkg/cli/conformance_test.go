package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestConformanceRunFlags(t *testing.T) {
	root := NewRoot()
	cmd, _, err := root.Find([]string{"conformance", "run"})
	if err != nil || cmd.Name() != "run" {
		t.Fatalf("conformance run: %v", err)
	}
	for _, f := range []string{"socket", "run", "timeout", "keep", "parallel"} {
		if cmd.Flags().Lookup(f) == nil {
			t.Errorf("flag --%s missing", f)
		}
	}
	if u := cmd.Flags().Lookup("socket").Usage; !strings.Contains(u, "DANGEROUS") {
		t.Errorf("--socket help does not warn: %q", u)
	}
	if d := cmd.Flags().Lookup("socket").DefValue; d != "" {
		t.Errorf("--socket defaults to %q: the default must be a private agent", d)
	}
}

func TestConformanceRunBadInput(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"conformance", "run"}, "accepts 1 arg"},
		{[]string{"conformance", "run", "dir", "--run", "("}, "--run"},
	}
	for _, tt := range tests {
		root := NewRoot()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(tt.args)
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: err = %v, want %q", tt.args, err, tt.want)
		}
	}
}
