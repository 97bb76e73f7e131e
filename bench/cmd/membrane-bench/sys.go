package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/membrane-net/membrane/pkg/nsutil"
)

// cleaner undoes what the run made, last made first.
type cleaner struct {
	mu  sync.Mutex
	fns []cleanupFn
}

type cleanupFn struct {
	name string
	fn   func() error
}

func (c *cleaner) add(name string, fn func() error) {
	c.mu.Lock()
	c.fns = append(c.fns, cleanupFn{name, fn})
	c.mu.Unlock()
}

func (c *cleaner) run(logf func(string, ...any)) {
	c.mu.Lock()
	fns := c.fns
	c.fns = nil
	c.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		if err := fns[i].fn(); err != nil {
			logf("cleanup %s: %v", fns[i].name, err)
		}
	}
}

// proc is a long-running child process (agent, servers, nginx) in its own
// process group, recorded in a pid file so that a crashed run can be
// cleaned up by id.
type proc struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{}
	pidfile string
	logPath string
}

// startProc starts argv in its own process group, logging to
// work/logs/name.log. With ready set, it waits until the process prints a
// line containing ready on stdout.
func (b *bench) startProc(name string, argv []string, ready string) (*proc, error) {
	logPath := filepath.Join(b.work, "logs", name+".log")
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = logf
	var stdout io.ReadCloser
	if ready != "" {
		if stdout, err = cmd.StdoutPipe(); err != nil {
			logf.Close()
			return nil, err
		}
	} else {
		cmd.Stdout = logf
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), logPath: logPath,
		pidfile: filepath.Join(b.work, "pids", name+".pid")}
	_ = os.MkdirAll(filepath.Dir(p.pidfile), 0o755)
	_ = os.WriteFile(p.pidfile, []byte(fmt.Sprintf("%d\n%s\n", cmd.Process.Pid, filepath.Base(argv[len(argv)-1]))), 0o644)
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	b.cl.add("process "+name, p.stop)
	if ready == "" {
		return p, nil
	}
	found := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := false
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if !ok && strings.Contains(sc.Text(), ready) {
				ok = true
				found <- true
			}
		}
		if !ok {
			found <- false
		}
	}()
	select {
	case ok := <-found:
		if ok {
			return p, nil
		}
	case <-time.After(15 * time.Second):
	}
	_ = p.stop()
	return nil, fmt.Errorf("%s did not start: %s", name, tail(logPath, 10))
}

// stop ends the process group: SIGTERM, then SIGKILL after 3 s.
func (p *proc) stop() error {
	select {
	case <-p.done:
	default:
		pgid := p.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
	}
	_ = os.Remove(p.pidfile)
	return nil
}

func (p *proc) alive() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// run runs a short command and returns its standard output; the error
// carries standard error.
func run(ctx context.Context, timeout time.Duration, argv ...string) (string, error) {
	return runStdin(ctx, timeout, nil, argv...)
}

func runStdin(ctx context.Context, timeout time.Duration, stdin []byte, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(errb.String())
		if len(msg) > 600 {
			msg = msg[:600] + "..."
		}
		if ctx.Err() == context.DeadlineExceeded {
			return out.String(), fmt.Errorf("%s: timed out after %s: %s", strings.Join(short(argv), " "), timeout, msg)
		}
		return out.String(), fmt.Errorf("%s: %w: %s", strings.Join(short(argv), " "), err, msg)
	}
	return out.String(), nil
}

func short(argv []string) []string {
	if len(argv) > 12 {
		return append(argv[:12:12], "...")
	}
	return argv
}

// inNS prefixes argv to run in a named namespace, pinned to a core.
func inNS(ns, core string, argv ...string) []string {
	out := []string{"ip", "netns", "exec", ns}
	if core != "" {
		out = append(out, "taskset", "-c", core)
	}
	return append(out, argv...)
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// newNS makes a namespace of the run; its cleanup kills what runs in it
// and deletes it.
func (b *bench) newNS(short string) (name, path string, err error) {
	name = nsPrefix + short
	if path, err = nsutil.Create(name); err != nil {
		return "", "", err
	}
	b.cl.add("netns "+name, func() error { return deleteNS(name) })
	return name, path, nil
}

// deleteNS kills the processes inside a namespace of the run and deletes
// it; its veths go with it.
func deleteNS(name string) error {
	if out, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	return nsutil.Delete(name)
}

// sysctlNS sets sysctls inside a namespace.
func sysctlNS(ctx context.Context, ns string, kv ...string) error {
	for _, s := range kv {
		if _, err := run(ctx, 5*time.Second, "ip", "netns", "exec", ns, "sysctl", "-q", "-w", s); err != nil {
			return err
		}
	}
	return nil
}

func deleteLink(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil
	}
	return netlink.LinkDel(l)
}

// sweep removes whatever a run (this one or a crashed earlier one) left:
// processes recorded in pid files, namespaces, links, netfilter rules and
// bpffs pins with the run's prefixes. Everything it touches carries one.
func sweep(work string, verbose bool) {
	logf := func(format string, args ...any) {
		if verbose {
			fmt.Fprintf(os.Stderr, "cleanup: "+format+"\n", args...)
		}
	}
	if work != "" {
		files, _ := filepath.Glob(filepath.Join(work, "pids", "*.pid"))
		for _, f := range files {
			b, _ := os.ReadFile(f)
			lines := strings.Split(string(b), "\n")
			pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
			if err == nil && pid > 1 && len(lines) > 1 {
				cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				if bytes.Contains(cmdline, []byte(strings.TrimSpace(lines[1]))) {
					logf("kill process group %d (%s)", pid, filepath.Base(f))
					_ = syscall.Kill(-pid, syscall.SIGTERM)
					time.Sleep(500 * time.Millisecond)
					_ = syscall.Kill(-pid, syscall.SIGKILL)
				}
			}
			_ = os.Remove(f)
		}
	}
	ents, _ := os.ReadDir(nsutil.Dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), nsPrefix) {
			logf("delete netns %s", e.Name())
			if err := deleteNS(e.Name()); err != nil {
				logf("%v", err)
			}
		}
	}
	iptRemoveAll(context.Background())
	for _, t := range []string{nftTable, nftUpdTable} {
		if _, err := run(context.Background(), 10*time.Second, "nft", "list", "table", "ip", t); err == nil {
			logf("delete nft table %s", t)
			_, _ = run(context.Background(), 10*time.Second, "nft", "delete", "table", "ip", t)
		}
	}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			n := l.Attrs().Name
			if strings.HasPrefix(n, plainPrefix) || strings.HasPrefix(n, plainTmp) || n == agentHostIf || n == agentHostNet {
				logf("delete link %s", n)
				_ = netlink.LinkDel(l)
			}
		}
	}
	pins, _ := filepath.Glob(bpffsPrefix + "*")
	for _, p := range pins {
		logf("remove pins %s", p)
		_ = os.RemoveAll(p)
	}
}

// procRSS reads a process's resident set size and its peak, in bytes.
func procRSS(pid int) (rss, hwm int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v * 1024
		case "VmHWM:":
			hwm = v * 1024
		}
	}
	if rss == 0 {
		return 0, 0, errors.New("no VmRSS")
	}
	return rss, hwm, nil
}

// cpuTicks reads a process's user+system CPU time, in clock ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command (which may hold spaces) start after ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, errors.New("short /proc/pid/stat")
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st, nil
}

// waitIdle waits until a process uses (almost) no CPU for two periods of
// 250 ms in a row (work an API call left behind, its garbage collection),
// for at most max.
func waitIdle(pid int, max time.Duration) {
	deadline := time.Now().Add(max)
	quiet := 0
	last, err := cpuTicks(pid)
	for err == nil && time.Now().Before(deadline) && quiet < 2 {
		time.Sleep(250 * time.Millisecond)
		var t int64
		if t, err = cpuTicks(pid); err != nil {
			return
		}
		if t-last <= 2 {
			quiet++
		} else {
			quiet = 0
		}
		last = t
	}
}
