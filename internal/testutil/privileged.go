// Package testutil holds helpers for Membrane's tests: the one place that
// decides whether a privileged test may run, network namespaces that clean
// up after themselves, and crafted packets.
package testutil

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// InCI reports whether the tests run in CI (CI=true), where a missing
// privilege or kernel feature is a failure, never a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// RequirePrivileged stops a test that needs root (CAP_NET_ADMIN,
// CAP_SYS_ADMIN, CAP_BPF): it skips with the reason outside CI and fails
// in CI.
func RequirePrivileged(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Unavailable(t, "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF)")
	}
}

// Unavailable stops a test whose requirement is missing: skip outside CI,
// fail in CI.
func Unavailable(t testing.TB, why string) {
	t.Helper()
	if InCI() {
		t.Fatalf("required for this test and missing in CI: %s", why)
	}
	t.Skipf("skipped: %s (set CI=true to make this a failure)", why)
}

// RequireKernelFeature checks a feature probe's error: nil means present.
func RequireKernelFeature(t testing.TB, name string, probeErr error) {
	t.Helper()
	if probeErr != nil {
		Unavailable(t, "kernel feature "+name+": "+probeErr.Error())
	}
}

// MountBPFFS mounts a private bpffs on a fresh temporary directory and
// unmounts it when the test ends.
func MountBPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		Unavailable(t, "mount bpffs: "+err.Error())
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}
