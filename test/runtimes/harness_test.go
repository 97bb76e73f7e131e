// Package runtimes holds Membrane's end-to-end tests with real container
// runtimes: a real dockerd (Debian's docker.io) using the agent's Docker
// network and IPAM plugin, rootful podman calling membrane-cni, and
// cnitool driving membrane-cni across CNI spec versions. Containers run an
// image imported from a rootfs with a static test program and busybox;
// traffic is real HTTP between containers, through the agent's eBPF
// datapath and L7 proxy. Every test removes the daemons, containers,
// images, namespaces, links and files it made, even when it fails.
package runtimes

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/internal/agenttest"
	"github.com/membrane-net/membrane/internal/testutil"
	"github.com/membrane-net/membrane/pkg/api"
)

var (
	membraneBin string // the agent and CLI
	cniBin      string // membrane-cni, in a directory of its own (CNI_PATH)
	cniDir      string
	rootfsTar   string // the test image: /bin/app, busybox
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "membrane-runtimes-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	membraneBin = filepath.Join(dir, "membrane")
	cniDir = filepath.Join(dir, "cni")
	cniBin = filepath.Join(cniDir, "membrane-cni")
	rootfsTar = filepath.Join(dir, "rootfs.tar")
	if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// build compiles the binaries and the image's root filesystem.
func build(dir string) error {
	for _, b := range [][]string{
		{"-o", membraneBin, "../../cmd/membrane"},
		{"-o", cniBin, "../../cmd/membrane-cni"},
	} {
		if out, err := exec.Command("go", append([]string{"build"}, b...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v\n%s", b[1], err, out)
		}
	}
	rootfs := filepath.Join(dir, "rootfs")
	for _, d := range []string{"bin", "etc", "tmp", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			return err
		}
	}
	cmd := exec.Command("go", "build", "-o", filepath.Join(rootfs, "bin", "app"), "./app")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build app: %v\n%s", err, out)
	}
	// busybox for sh and the like; the tests only need /bin/app.
	if bb, err := os.ReadFile("/bin/busybox"); err == nil {
		if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), bb, 0o755); err != nil {
			return err
		}
		for _, a := range []string{"sh", "ls", "cat", "ip", "wget", "sleep"} {
			_ = os.Symlink("busybox", filepath.Join(rootfs, "bin", a))
		}
	}
	if err := os.WriteFile(filepath.Join(rootfs, "etc", "passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644); err != nil {
		return err
	}
	if out, err := exec.Command("tar", "-C", rootfs, "-cf", rootfsTar, ".").CombinedOutput(); err != nil {
		return fmt.Errorf("tar rootfs: %v\n%s", err, out)
	}
	return nil
}

var seq atomic.Int32

// uniq is a small number unique to this process and call.
func uniq() int { return os.Getpid()%400*8 + int(seq.Add(1))%8 }

// requireCommand finds a binary the test needs: a skip outside CI, a
// failure in CI.
func requireCommand(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/root/go/bin", filepath.Join(os.Getenv("HOME"), "go", "bin")} {
			if _, serr := os.Stat(filepath.Join(dir, name)); serr == nil {
				return filepath.Join(dir, name)
			}
		}
		testutil.Unavailable(t, name+" is not installed (make deps)")
	}
	return p
}

// ---- the agent ----------------------------------------------------------

// Agent is a `membrane agent` process of a test.
type Agent struct {
	*agenttest.Proc
	t *testing.T
	// Proxy is the L7 proxy's port.
	Proxy int
	// seen are the host interfaces of every endpoint listed.
	seen map[string]bool
}

func startAgent(t *testing.T, args ...string) *Agent {
	t.Helper()
	p := agenttest.Start(t, agenttest.Options{Bin: membraneBin, Prefix: "rt", N: uniq(), Args: args})
	return &Agent{Proc: p, t: t, Proxy: p.ProxyPort, seen: map[string]bool{}}
}

// bind makes the helpers report to t (a subtest) until it ends; subtests
// of these tests run one after the other.
func (a *Agent) bind(t *testing.T) {
	prev := a.t
	a.t, a.Proc.T = t, t
	t.Cleanup(func() { a.t, a.Proc.T = prev, prev })
}

func (a *Agent) start()   { a.Proc.Start() }
func (a *Agent) stop()    { a.Proc.Stop() }
func (a *Agent) kill()    { a.Proc.Kill() }
func (a *Agent) restart() { a.Proc.Restart() }

func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie has exited.
	f := strings.Fields(string(b))
	return len(f) > 2 && f[2] != "Z"
}

func (a *Agent) cli(args ...string) (string, error) { return a.Proc.CLI(args...) }

func (a *Agent) mustCLI(args ...string) string {
	a.t.Helper()
	return a.Proc.MustCLI(args...)
}

// importPolicy writes a policy to a file and imports it with the CLI.
func (a *Agent) importPolicy(name, content string) {
	a.t.Helper()
	p := filepath.Join(a.Dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		a.t.Fatal(err)
	}
	a.mustCLI("policy", "import", p)
}

func (a *Agent) endpoints() []api.Endpoint {
	a.t.Helper()
	eps, err := a.Client.ListEndpoints(context.Background())
	if err != nil {
		a.t.Fatalf("list endpoints: %v", err)
	}
	for _, ep := range eps {
		a.seen[ep.Interface] = true
	}
	return eps
}

// leftInterfaces are the host interfaces of endpoints this agent listed
// that still exist (other tests may make interfaces meanwhile: the host's
// list is no measure).
func (a *Agent) leftInterfaces() []string {
	var out []string
	for n := range a.seen {
		if linkExists(n) || linkExists("tmp"+strings.TrimPrefix(n, "lxc")) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// waitEndpoint waits for an endpoint with a label and returns it.
func (a *Agent) waitEndpoint(label string) api.Endpoint {
	a.t.Helper()
	var last []api.Endpoint
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		last = a.endpoints()
		for _, ep := range last {
			for _, l := range ep.Labels {
				if l.String() == label {
					return ep
				}
			}
		}
	}
	a.t.Fatalf("no endpoint with label %s; endpoints: %s", label, describe(last))
	return api.Endpoint{}
}

// waitEndpoints waits until the agent has n endpoints.
func (a *Agent) waitEndpoints(n int) []api.Endpoint {
	a.t.Helper()
	var eps []api.Endpoint
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if eps = a.endpoints(); len(eps) == n {
			return eps
		}
	}
	a.t.Fatalf("want %d endpoints, have %d: %s", n, len(eps), describe(eps))
	return nil
}

// waitGone waits until an endpoint and its host interface are gone.
func (a *Agent) waitGone(ep api.Endpoint) {
	a.t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		found := false
		for _, e := range a.endpoints() {
			found = found || e.ID == ep.ID
		}
		if !found && !linkExists(ep.Interface) {
			return
		}
	}
	a.t.Fatalf("endpoint %d (%s, %s) is still there", ep.ID, ep.Name, ep.Interface)
}

// usedAddresses reads how many pool addresses the agent holds.
func (a *Agent) usedAddresses() string {
	a.t.Helper()
	st, err := a.Client.Status(context.Background())
	if err != nil {
		a.t.Fatal(err)
	}
	for _, p := range st.Parts {
		if p.Name == "endpoints" {
			return p.State
		}
	}
	return ""
}

// userIdentities lists the identities that are not reserved.
func (a *Agent) userIdentities() []string {
	a.t.Helper()
	ids, err := a.Client.ListIdentities(context.Background())
	if err != nil {
		a.t.Fatal(err)
	}
	var out []string
	for _, id := range ids {
		if !id.Reserved {
			out = append(out, fmt.Sprintf("%d:%s", id.ID, id.Labels))
		}
	}
	return out
}

func describe(eps []api.Endpoint) string {
	var s []string
	for _, ep := range eps {
		s = append(s, fmt.Sprintf("%d %s %s id=%d [%s] ref=%s", ep.ID, ep.Name, ep.IPv4, ep.Identity, ep.Labels, ep.ContainerID))
	}
	return "[" + strings.Join(s, "; ") + "]"
}

func linkExists(name string) bool {
	_, err := os.Stat("/sys/class/net/" + name)
	return err == nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ---- policies of the 2017 guide ------------------------------------------

const l3Policy = `[{"endpointSelector": {"matchLabels":{"id":"app1"}}, "ingress": [{"fromEndpoints": [{"matchLabels":{"id":"app2"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}]}]}]}]`

const l7Policy = `[{"endpointSelector": {"matchLabels":{"id":"app1"}}, "ingress": [{"fromEndpoints": [{"matchLabels":{"id":"app2"}}], "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}], "rules": {"HTTP": [{"method": "GET", "path": "/public"}]}}]}]}]`

// ---- cleanup helpers ----------------------------------------------------

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(dir string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			mounts = append(mounts, fields[4])
		}
	}
	f.Close()
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
}

// killProcessesMentioning kills, by PID, the processes whose command line
// names dir (the shims and daemons a test started there).
func killProcessesMentioning(dir string) {
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || !strings.Contains(string(b), dir) {
			continue
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// httpFromHost asks a URL from the host; 0 means no answer.
func httpFromHost(url string) (int, string) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 512)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	return resp.StatusCode, strings.TrimSpace(b.String())
}
