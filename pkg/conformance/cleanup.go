package conformance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/membrane-net/membrane/pkg/endpoint"
	"github.com/membrane-net/membrane/pkg/nsutil"
)

// lockPath is the machine-wide lock of conformance runs.
const lockPath = "/run/lock/membrane-conformance.lock"

// lockMachine takes the conformance lock, waiting (until ctx ends) while
// another run holds it.
func lockMachine(ctx context.Context, log *slog.Logger) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(lockPath), 0o755); err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	warned := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", lockPath, err)
		}
		if !warned {
			b, _ := os.ReadFile(lockPath)
			log.Warn("waiting for another conformance run to end", "lock", lockPath, "holder", strings.TrimSpace(string(b)))
			warned = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock: %w", ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d\n", os.Getpid())), 0)
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

var (
	staleNetns = regexp.MustCompile(`^mbrcf-(\d+)-`)
	staleLink  = regexp.MustCompile(`^(?:mbcw|mbcv|mbc)(\d+)(?:_host|_net)?$`)
	staleBPFFS = regexp.MustCompile(`^membrane-conformance-(\d+)$`)
	staleTmp   = regexp.MustCompile(`^membrane-conformance-(\d+)-\d+$`)
)

// cleanStale removes what runs that died (SIGKILL, a crash) left: their
// namespaces, world veths, private agents' host devices, pins and
// directories. Only names this package makes, and only of processes that
// are gone.
func cleanStale(log *slog.Logger) {
	dead := func(re *regexp.Regexp, name string) bool {
		m := re.FindStringSubmatch(name)
		if m == nil {
			return false
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() {
			return false
		}
		err = unix.Kill(pid, 0)
		return errors.Is(err, unix.ESRCH)
	}
	if ents, err := os.ReadDir(nsutil.Dir); err == nil {
		for _, e := range ents {
			if dead(staleNetns, e.Name()) {
				log.Info("removing a namespace a dead run left", "netns", e.Name())
				_ = nsutil.Delete(e.Name())
			}
		}
	}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			if n := l.Attrs().Name; dead(staleLink, n) {
				log.Info("removing a link a dead run left", "link", n)
				_ = endpoint.DeleteHostLink(n)
			}
		}
	}
	if ents, err := os.ReadDir(os.TempDir()); err == nil {
		for _, e := range ents {
			if e.IsDir() && dead(staleTmp, e.Name()) {
				log.Info("removing the agent directory of a dead run", "dir", e.Name())
				_ = os.RemoveAll(filepath.Join(os.TempDir(), e.Name()))
			}
		}
	}
	if ents, err := os.ReadDir("/sys/fs/bpf"); err == nil {
		for _, e := range ents {
			if dead(staleBPFFS, e.Name()) {
				log.Info("removing pins a dead run left", "dir", e.Name())
				_ = os.RemoveAll(filepath.Join("/sys/fs/bpf", e.Name()))
			}
		}
	}
}
