package runtimes

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
)

// Podman is rootful podman with the CNI backend, its own storage, run
// directories and network configurations, configured as this kind of
// machine needs (runc, cgroupfs, ulimits it may set), and its API
// service, from which membrane-cni reads the containers' labels.
type Podman struct {
	t       *testing.T
	Dir     string
	bin     string
	conf    string
	netDir  string
	APISock string
	svc     *exec.Cmd
	svcDone chan struct{}
}

func startPodman(t *testing.T) *Podman {
	t.Helper()
	bin := requireCommand(t, "podman")
	requireCommand(t, "runc")
	dir, err := os.MkdirTemp("", "mbrp")
	if err != nil {
		t.Fatal(err)
	}
	p := &Podman{t: t, Dir: dir, bin: bin, conf: filepath.Join(dir, "containers.conf"),
		netDir: filepath.Join(dir, "net.d"), APISock: filepath.Join(dir, "podman.sock")}
	t.Cleanup(p.cleanup)
	if err := os.MkdirAll(p.netDir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[network]
network_backend = "cni"
cni_plugin_dirs = [%q, "/usr/lib/cni"]
network_config_dir = %q
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
runtime = "runc"
`, cniDir, p.netDir, filepath.Join(dir, "events.log"))
	if err := os.WriteFile(p.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// The API service, for the labels.
	svc := p.command("system", "service", "--time=0", "unix://"+p.APISock)
	logf, _ := os.Create(filepath.Join(dir, "service.log"))
	svc.Stdout, svc.Stderr = logf, logf
	svc.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	p.svc, p.svcDone = svc, make(chan struct{})
	go func() { _ = svc.Wait(); close(p.svcDone) }()
	for deadline := time.Now().Add(15 * time.Second); !exists(p.APISock); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("podman system service did not come up")
		}
	}
	return p
}

func (p *Podman) bind(t *testing.T) {
	prev := p.t
	p.t = t
	t.Cleanup(func() { p.t = prev })
}

func (p *Podman) command(args ...string) *exec.Cmd {
	all := append([]string{"--root", filepath.Join(p.Dir, "root"), "--runroot", filepath.Join(p.Dir, "run"),
		"--tmpdir", filepath.Join(p.Dir, "tmp"), "--storage-driver", "vfs"}, args...)
	cmd := exec.Command(p.bin, all...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+p.conf)
	return cmd
}

func (p *Podman) podman(args ...string) (string, error) {
	out, err := p.command(args...).CombinedOutput()
	return string(out), err
}

func (p *Podman) must(args ...string) string {
	p.t.Helper()
	out, err := p.podman(args...)
	if err != nil {
		p.t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(out)
}

func (p *Podman) get(container, url string) (string, string) {
	out, _ := p.podman("exec", container, "/bin/app", "get", url)
	code, body, _ := strings.Cut(lastLines(strings.TrimSpace(out), 1), " ")
	return code, body
}

func (p *Podman) expectGet(t *testing.T, container, url, wantCode, wantBody string) {
	t.Helper()
	code, body := p.get(container, url)
	if code != wantCode || (wantBody != "" && !strings.Contains(body, wantBody)) {
		routes, _ := p.podman("exec", container, "ip", "route")
		neigh, _ := p.podman("exec", container, "ip", "neigh")
		t.Errorf("%s: GET %s = %s %q, want %s %q\n%s routes: %s neighbours: %s\nhost: %s", container, url, code, body, wantCode, wantBody,
			container, routes, neigh, hostNetDebug())
	}
}

func (p *Podman) cleanup() {
	_, _ = p.podman("rm", "-a", "-f", "-t", "0")
	_, _ = p.podman("rmi", "-a", "-f")
	if p.svc != nil {
		_ = p.svc.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.svcDone:
		case <-time.After(10 * time.Second):
			_ = p.svc.Process.Signal(syscall.SIGKILL)
			<-p.svcDone
		}
	}
	killProcessesMentioning(p.Dir)
	unmountUnder(p.Dir)
	_ = os.RemoveAll(p.Dir)
}

// TestPrivilegedPodmanGuide is the 2017 guide with rootful podman and
// membrane-cni: containers labelled with `podman run -l`, which the
// plugin reads from podman's API once podman lets go of them.
func TestPrivilegedPodmanGuide(t *testing.T) {
	a := startAgent(t)
	p := startPodman(t)
	conflist := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "membrane-net", "plugins": [
  {"type": "membrane-cni", "socket": %q, "podmanSocket": %q, "logFile": %q}]}`,
		a.Socket, p.APISock, filepath.Join(p.Dir, "membrane-cni.log"))
	if err := os.WriteFile(filepath.Join(p.netDir, "10-membrane.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	p.must("import", "--change", `CMD ["/bin/app","serve",":80"]`, rootfsTar, "localhost/membrane-test:latest")
	// Container names (which name the endpoints) of this run only: the
	// agent derives host interface names from endpoint names and numbers,
	// and another agent on the host with an endpoint app2 number 2 would
	// take over the interface.
	n := uniq()
	name := map[string]string{}
	for _, app := range []string{"app1", "app2", "app3"} {
		name[app] = fmt.Sprintf("%s-%d", app, n)
		p.must("run", "-d", "--name", name[app], "--network", "membrane-net", "-l", "id="+app, "localhost/membrane-test:latest")
	}
	app1 := a.waitEndpoint("container:id=app1")
	app2 := a.waitEndpoint("container:id=app2")
	app3 := a.waitEndpoint("container:id=app3")
	if app1.Name != name["app1"] || app1.ContainerInterface != "eth0" {
		t.Errorf("app1's endpoint: name %q interface %q, want %s, eth0", app1.Name, app1.ContainerInterface, name["app1"])
	}
	if ip := p.must("inspect", "-f", "{{(index .NetworkSettings.Networks \"membrane-net\").IPAddress}}", name["app1"]); ip != app1.IPv4.String() {
		t.Errorf("podman says app1 has %s, the agent %s", ip, app1.IPv4)
	}
	pub, priv := fmt.Sprintf("http://%s/public", app1.IPv4), fmt.Sprintf("http://%s/private", app1.IPv4)

	t.Run("no policy", func(t *testing.T) {
		a.bind(t)
		p.bind(t)
		p.expectGet(t, name["app2"], pub, "200", "public from")
		p.expectGet(t, name["app3"], priv, "200", "private from")
		if code, body := httpFromHost(pub); code != 200 {
			t.Errorf("host: GET %s = %d %s", pub, code, body)
		}
	})
	t.Run("L3/L4 policy", func(t *testing.T) {
		a.bind(t)
		p.bind(t)
		a.importPolicy("l3.json", l3Policy)
		p.expectGet(t, name["app2"], pub, "200", "public from")
		p.expectGet(t, name["app3"], pub, "000", "")
		a.mustCLI("policy", "delete", "--all")
	})
	t.Run("L7 policy", func(t *testing.T) {
		a.bind(t)
		p.bind(t)
		a.importPolicy("l7.json", l7Policy)
		p.expectGet(t, name["app2"], pub, "200", "public from")
		p.expectGet(t, name["app2"], priv, "403", "Access denied")
		p.expectGet(t, name["app3"], pub, "000", "")
		a.mustCLI("policy", "delete", "--all")
	})
	t.Run("stop and rm", func(t *testing.T) {
		a.bind(t)
		p.bind(t)
		p.must("stop", "-t", "0", name["app3"])
		a.waitGone(app3)
		p.must("rm", "-f", "-t", "0", name["app1"], name["app2"], name["app3"])
		for _, ep := range []api.Endpoint{app1, app2} {
			a.waitGone(ep)
		}
		if extra := a.leftInterfaces(); len(extra) != 0 {
			t.Errorf("interfaces left: %v", extra)
		}
		if ids := a.userIdentities(); len(ids) != 0 {
			t.Errorf("identities left: %v", ids)
		}
		if st := a.usedAddresses(); !strings.Contains(st, "(0 addresses used)") {
			t.Errorf("addresses still held: %s", st)
		}
	})
}
