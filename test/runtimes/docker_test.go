package runtimes

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/nsutil"
)

// pluginDir is where dockerd looks for plugin sockets; it cannot be moved.
const pluginDir = "/run/docker/plugins"

// Dockerd is a dockerd of a test, with its own data root, exec root and
// API socket, no iptables, no bridge.
type Dockerd struct {
	t      *testing.T
	Dir    string
	Socket string
	bin    string
	cli    string
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
}

func startDockerd(t *testing.T) *Dockerd {
	t.Helper()
	bin := requireCommand(t, "dockerd")
	cli := requireCommand(t, "docker")
	// Short: containerd's sockets live under the exec root.
	dir, err := os.MkdirTemp("", "mbrd")
	if err != nil {
		t.Fatal(err)
	}
	d := &Dockerd{t: t, Dir: dir, Socket: filepath.Join(dir, "docker.sock"), bin: bin, cli: cli, log: filepath.Join(dir, "dockerd.log")}
	t.Cleanup(d.cleanup)
	d.start()
	return d
}

func (d *Dockerd) bind(t *testing.T) {
	prev := d.t
	d.t = t
	t.Cleanup(func() { d.t = prev })
}

func (d *Dockerd) start() {
	d.t.Helper()
	logf, err := os.OpenFile(d.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(d.bin,
		"--data-root", filepath.Join(d.Dir, "data"), "--exec-root", filepath.Join(d.Dir, "exec"),
		"--pidfile", filepath.Join(d.Dir, "dockerd.pid"), "-H", "unix://"+d.Socket,
		"--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none",
		"--storage-driver=overlay2", "--userland-proxy=false", "--log-level=info")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.cmd = cmd
	d.exited = make(chan struct{})
	exited := d.exited
	go func() { _ = cmd.Wait(); close(exited) }()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := d.docker("version", "--format", "{{.Server.Version}}"); err == nil {
			return
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(d.log)
			d.t.Fatalf("dockerd exited at start:\n%s", lastLines(string(b), 30))
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(d.log)
			d.t.Fatalf("dockerd did not come up:\n%s", lastLines(string(b), 30))
		}
	}
}

// kill stops dockerd with SIGKILL; its containers' shims live on.
func (d *Dockerd) kill() {
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGKILL)
	<-d.exited
	d.cmd = nil
	// Its containerd goes with it (parent death signal). Wait for that,
	// and drop the pid file: dockerd would take a process that reused the
	// number for its containerd and wait for it.
	pidFile := filepath.Join(d.Dir, "exec", "containerd", "containerd.pid")
	if b, err := os.ReadFile(pidFile); err == nil {
		var pid int
		fmt.Sscanf(string(b), "%d", &pid)
		for i := 0; i < 100 && pid > 0 && isContainerdOf(pid, d.Dir); i++ {
			time.Sleep(50 * time.Millisecond)
		}
		_ = os.Remove(pidFile)
	}
}

// isContainerdOf reports whether pid is a live containerd of dir.
func isContainerdOf(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && processAlive(pid) && strings.Contains(string(b), "containerd") && strings.Contains(string(b), dir)
}

// stop shuts dockerd down as an administrator would.
func (d *Dockerd) stop() {
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.exited
	}
	d.cmd = nil
}

// removeAll removes the containers and networks; while the agent runs, so
// that libnetwork leaves the plugin's endpoints through the plugin.
func (d *Dockerd) removeAll() {
	if d.cmd == nil {
		return
	}
	if ids, err := d.docker("ps", "-aq"); err == nil && strings.TrimSpace(ids) != "" {
		_, _ = d.docker(append([]string{"rm", "-f"}, strings.Fields(ids)...)...)
	}
	if nets, err := d.docker("network", "ls", "-q", "--filter", "type=custom"); err == nil && strings.TrimSpace(nets) != "" {
		_, _ = d.docker(append([]string{"network", "rm"}, strings.Fields(nets)...)...)
	}
}

func (d *Dockerd) cleanup() {
	if d.cmd != nil {
		if d.t.Failed() {
			b, _ := os.ReadFile(d.log)
			d.t.Logf("dockerd log (last lines):\n%s", lastLines(string(b), 40))
		}
		d.stop()
	}
	killProcessesMentioning(d.Dir)
	unmountUnder(d.Dir)
	_ = os.RemoveAll(d.Dir)
}

// docker runs the docker CLI against this dockerd.
func (d *Dockerd) docker(args ...string) (string, error) {
	cmd := exec.Command(d.cli, args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix://"+d.Socket)
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out) + string(ee.Stderr), err
		}
	}
	return string(out), err
}

func (d *Dockerd) must(args ...string) string {
	d.t.Helper()
	out, err := d.docker(args...)
	if err != nil {
		d.t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(out)
}

// get runs `app get URL` in a container: the status ("000" if none) and
// the body.
func (d *Dockerd) get(container, url string) (string, string) {
	out, _ := d.docker("exec", container, "/bin/app", "get", url)
	code, body, _ := strings.Cut(strings.TrimSpace(out), " ")
	return code, body
}

func (d *Dockerd) expectGet(t *testing.T, container, url, wantCode, wantBody string) {
	t.Helper()
	code, body := d.get(container, url)
	if code != wantCode || (wantBody != "" && !strings.Contains(body, wantBody)) {
		neigh, _ := d.docker("exec", container, "ip", "neigh")
		t.Errorf("%s: GET %s = %s %q, want %s %q\n%s neighbours: %s\nhost: %s", container, url, code, body, wantCode, wantBody,
			container, neigh, hostNetDebug())
	}
}

// hostNetDebug describes what decides forwarding on the host side.
func hostNetDebug() string {
	var b strings.Builder
	fwd, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	fmt.Fprintf(&b, "ip_forward=%s", strings.TrimSpace(string(fwd)))
	ents, _ := os.ReadDir("/proc/sys/net/ipv4/conf")
	off := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "lxc") {
			v, _ := os.ReadFile("/proc/sys/net/ipv4/conf/" + e.Name() + "/forwarding")
			if strings.TrimSpace(string(v)) != "1" {
				off++
			}
		}
	}
	fmt.Fprintf(&b, ", lxc devices without forwarding: %d", off)
	return b.String()
}

// dockerSetup starts a dockerd, an agent serving the Docker plugin for it
// (under a name of its own), and imports the test image.
func dockerSetup(t *testing.T, agentArgs ...string) (*Dockerd, *Agent, string) {
	t.Helper()
	// dockerd and the plugin make /run/docker/plugins; it goes if it was
	// not there (and is empty: rmdir).
	hadDir := exists(filepath.Dir(pluginDir))
	driver := fmt.Sprintf("mbrr%d", uniq())
	sock := filepath.Join(pluginDir, driver+".sock")
	t.Cleanup(func() {
		_ = os.Remove(sock)
		if !hadDir {
			_ = os.Remove(pluginDir)
			_ = os.Remove(filepath.Dir(pluginDir))
		}
	})
	d := startDockerd(t)
	a := startAgent(t, append([]string{"--docker-plugin", sock, "--docker-host", "unix://" + d.Socket}, agentArgs...)...)
	// Cleanups run last first: containers go while the agent runs.
	t.Cleanup(d.removeAll)
	d.must("import", "-c", `CMD ["/bin/app","serve",":80"]`, rootfsTar, "membrane-test:latest")
	return d, a, driver
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// TestPrivilegedDockerGuide is the 2017 getting-started guide with Docker:
// a network of the membrane driver and IPAM, three containers labelled
// id=app1..3, the L3/L4 policy (app2 answered, app3 dropped), then the L7
// policy (GET /public answered, GET /private denied with 403), and at the
// end nothing left.
func TestPrivilegedDockerGuide(t *testing.T) {
	d, a, driver := dockerSetup(t)

	d.must("network", "create", "--driver", driver, "--ipam-driver", driver, "membrane-net")
	for _, app := range []string{"app1", "app2", "app3"} {
		d.must("run", "-d", "--name", app, "--net", "membrane-net", "-l", "id="+app, "membrane-test:latest")
	}
	app1 := a.waitEndpoint("container:id=app1")
	app2 := a.waitEndpoint("container:id=app2")
	app3 := a.waitEndpoint("container:id=app3")
	ids := map[uint32]bool{uint32(app1.Identity): true, uint32(app2.Identity): true, uint32(app3.Identity): true}
	if len(ids) != 3 || ids[5] {
		t.Fatalf("want three distinct user identities: %s", describe([]api.Endpoint{app1, app2, app3}))
	}
	// Docker shows the agent's address.
	if ip := d.must("inspect", "-f", "{{(index .NetworkSettings.Networks \"membrane-net\").IPAddress}}", "app1"); ip != app1.IPv4.String() {
		t.Errorf("docker says app1 has %s, the agent %s", ip, app1.IPv4)
	}
	// Only the container's interface and loopback: no docker_gwbridge.
	if out := d.must("exec", "app1", "ip", "-o", "link"); strings.Count(out, "\n") != 1 || !strings.Contains(out, "eth0") {
		t.Errorf("app1 interfaces:\n%s", out)
	}
	pub, priv := fmt.Sprintf("http://%s/public", app1.IPv4), fmt.Sprintf("http://%s/private", app1.IPv4)

	t.Run("no policy", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		d.expectGet(t, "app2", pub, "200", "public from")
		d.expectGet(t, "app3", priv, "200", "private from")
		if code, body := httpFromHost(pub); code != 200 {
			t.Errorf("host: GET %s = %d %s", pub, code, body)
		}
	})
	t.Run("L3/L4 policy", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		a.importPolicy("l3.json", l3Policy)
		d.expectGet(t, "app2", pub, "200", "public from")
		d.expectGet(t, "app3", pub, "000", "")
		if code, _ := httpFromHost(pub); code != 0 {
			t.Errorf("host: GET %s answered %d; the policy allows only app2", pub, code)
		}
		a.mustCLI("policy", "delete", "--all")
	})
	t.Run("L7 policy", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		a.importPolicy("l7.json", l7Policy)
		d.expectGet(t, "app2", pub, "200", "public from")
		d.expectGet(t, "app2", priv, "403", "Access denied")
		d.expectGet(t, "app3", pub, "000", "")
		a.mustCLI("policy", "delete", "--all")
	})

	t.Run("cleanup", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		d.must("rm", "-f", "app1", "app2", "app3")
		for _, ep := range []api.Endpoint{app1, app2, app3} {
			a.waitGone(ep)
		}
		d.must("network", "rm", "membrane-net")
		if eps := a.endpoints(); len(eps) != 0 {
			t.Errorf("endpoints left: %s", describe(eps))
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

// TestPrivilegedDockerLifecycle goes through what happens to containers
// and daemons: a container killed with SIGKILL, a name reused with other
// labels, the agent restarted, labels unknown (init identity) then found,
// an endpoint deleted behind Docker's back, a stale endpoint, and dockerd
// restarted.
func TestPrivilegedDockerLifecycle(t *testing.T) {
	d, a, driver := dockerSetup(t, "--docker-reconcile-interval", "1s")
	d.must("network", "create", "--driver", driver, "--ipam-driver", driver, "membrane-net")
	d.must("run", "-d", "--name", "app1", "--net", "membrane-net", "-l", "id=app1", "membrane-test:latest")
	app1 := a.waitEndpoint("container:id=app1")
	a.importPolicy("l3.json", l3Policy)
	pub := func(ep api.Endpoint) string { return fmt.Sprintf("http://%s/public", ep.IPv4) }

	t.Run("docker kill", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		d.must("run", "-d", "--name", "app2", "--net", "membrane-net", "-l", "id=app2", "membrane-test:latest")
		app2 := a.waitEndpoint("container:id=app2")
		d.expectGet(t, "app2", pub(app1), "200", "public")
		d.must("kill", "app2")
		a.waitGone(app2)
	})

	t.Run("first packets while host interfaces come and go", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		// The kernel drops the proxy ARP requests it holds back whenever
		// an interface of the host goes down; the endpoints must answer
		// at once (proxy_delay 0).
		stop := churnInterfaces(t)
		for i := 0; i < 3; i++ {
			d.must("run", "-d", "--name", "app5", "--net", "membrane-net", "-l", "id=app2", "membrane-test:latest")
			ep := a.waitEndpoint("container:id=app2")
			d.expectGet(t, "app5", pub(app1), "200", "public")
			d.must("rm", "-f", "app5")
			a.waitGone(ep)
		}
		stop()
	})

	t.Run("name reused", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		d.must("rm", "app2")
		d.must("run", "-d", "--name", "app2", "--net", "membrane-net", "-l", "id=app3", "membrane-test:latest")
		other := a.waitEndpoint("container:id=app3")
		d.expectGet(t, "app2", pub(app1), "000", "")
		d.must("rm", "-f", "app2")
		a.waitGone(other)
		d.must("run", "-d", "--name", "app2", "--net", "membrane-net", "-l", "id=app2", "membrane-test:latest")
		a.waitEndpoint("container:id=app2")
		d.expectGet(t, "app2", pub(app1), "200", "public")
	})

	t.Run("agent restarted", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		a.restart()
		again := a.waitEndpoint("container:id=app1")
		if again.ID != app1.ID || again.IPv4 != app1.IPv4 || again.Identity != app1.Identity {
			t.Errorf("app1 changed across the restart: %s -> %s", describe([]api.Endpoint{app1}), describe([]api.Endpoint{again}))
		}
		d.expectGet(t, "app2", pub(app1), "200", "public")
		app2 := a.waitEndpoint("container:id=app2")
		d.must("rm", "-f", "app2")
		a.waitGone(app2)
	})

	t.Run("init identity until labels are known", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		// An agent that cannot read Docker's containers: the endpoint
		// stays reserved:init, and app1 admits only app2's identity.
		args := a.Args
		a.Args = append(append([]string{}, args...), "--docker-host", "unix://"+filepath.Join(a.Dir, "nothing.sock"))
		a.restart()
		d.must("run", "-d", "--name", "app4", "--net", "membrane-net", "-l", "id=app2", "membrane-test:latest")
		init := a.waitEndpoint("reserved:init")
		if init.Identity != 5 {
			t.Errorf("endpoint before its labels: identity %d, want 5 (init)", init.Identity)
		}
		d.expectGet(t, "app4", pub(app1), "000", "")
		// With Docker reachable again, the reconciliation finds them.
		a.Args = args
		a.restart()
		ep := a.waitEndpoint("container:id=app2")
		if ep.ID != init.ID {
			t.Errorf("labels went to endpoint %d, want %d", ep.ID, init.ID)
		}
		d.expectGet(t, "app4", pub(app1), "200", "public")
	})

	t.Run("endpoint deleted behind docker's back", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		a.mustCLI("endpoint", "delete", fmt.Sprint(app1.ID))
		// The reconciliation reconnects the container through Docker.
		var again api.Endpoint
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			again = a.waitEndpoint("container:id=app1")
			if again.ID != app1.ID {
				break
			}
		}
		if again.ID == app1.ID {
			t.Fatal("app1 did not get a new endpoint")
		}
		if ip := d.must("inspect", "-f", "{{(index .NetworkSettings.Networks \"membrane-net\").IPAddress}}", "app1"); ip != again.IPv4.String() {
			t.Errorf("docker says app1 has %s, the agent %s", ip, again.IPv4)
		}
		d.expectGet(t, "app4", pub(again), "200", "public")
		app1 = again
	})

	t.Run("stale endpoint", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		// An endpoint that claims a Docker endpoint Docker does not have.
		ns := newNetns(t, "stale")
		nid := strings.TrimSpace(d.must("network", "inspect", "-f", "{{.Id}}", "membrane-net"))
		stale, err := a.Client.AddEndpoint(context.Background(), api.EndpointRequest{
			Netns: ns, Name: "stale", Labels: []string{"id=stale"},
			ContainerID: "docker:" + nid + ":" + strings.Repeat("ab", 32),
		})
		if err != nil {
			t.Fatal(err)
		}
		// Made before this plugin started: the reconciliation at start
		// deletes it.
		a.restart()
		a.waitGone(*stale)
		a.waitEndpoint("container:id=app1")
	})

	t.Run("dockerd restarted", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		eps := a.endpoints()
		d.kill()
		d.start()
		// dockerd stops the containers it finds running (no live-restore):
		// their endpoints go.
		for _, ep := range eps {
			a.waitGone(ep)
		}
		d.must("start", "app1")
		app1 = a.waitEndpoint("container:id=app1")
		d.must("start", "app4")
		a.waitEndpoint("container:id=app2")
		d.expectGet(t, "app4", pub(app1), "200", "public")
	})

	t.Run("cleanup", func(t *testing.T) {
		a.bind(t)
		d.bind(t)
		d.must("rm", "-f", "app1", "app4")
		a.waitEndpoints(0)
		d.must("network", "rm", "membrane-net")
		if extra := a.leftInterfaces(); len(extra) != 0 {
			t.Errorf("interfaces left: %v", extra)
		}
		if st := a.usedAddresses(); !strings.Contains(st, "(0 addresses used)") {
			t.Errorf("addresses still held: %s", st)
		}
	})
}

// newNetns makes a named namespace removed at the end of the test.
func newNetns(t *testing.T, hint string) string {
	t.Helper()
	name := fmt.Sprintf("mbrrt-%d-%s", uniq(), hint)
	path, err := nsutil.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nsutil.Delete(name) })
	return path
}

// churnInterfaces adds, raises and deletes a veth pair on the host, over
// and over, until stop is called.
func churnInterfaces(t *testing.T) (stop func()) {
	t.Helper()
	name := fmt.Sprintf("mbrrc%d", uniq())
	done, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		for {
			select {
			case <-done:
				return
			default:
			}
			_ = exec.Command("ip", "link", "add", name, "type", "veth", "peer", "name", name+"p").Run()
			_ = exec.Command("ip", "link", "set", name, "up").Run()
			time.Sleep(30 * time.Millisecond)
			_ = exec.Command("ip", "link", "del", name).Run()
		}
	}()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			close(done)
			<-finished
			_ = exec.Command("ip", "link", "del", name).Run()
		}
	}
	t.Cleanup(stop)
	return stop
}
