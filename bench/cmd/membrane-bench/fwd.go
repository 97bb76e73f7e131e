package main

import (
	"context"
	"os"
	"strings"
	"sync"
	"time"
)

// fwdKeeper turns forwarding back on for the host sides of the bench's
// veths. Writing net.ipv4.ip_forward (other tests on a shared machine do;
// test/e2e's TestPrivilegedForwardingReset does) resets the forwarding of
// every interface, which cuts every path of the topology; the keeper
// notices within 100 ms and the report counts the events.
type fwdKeeper struct {
	mu     sync.Mutex
	ifs    map[string]bool
	events []time.Time
}

func newFwdKeeper() *fwdKeeper { return &fwdKeeper{ifs: map[string]bool{}} }

func (k *fwdKeeper) add(name string) {
	k.mu.Lock()
	k.ifs[name] = true
	k.mu.Unlock()
}

func (k *fwdKeeper) remove(name string) {
	k.mu.Lock()
	delete(k.ifs, name)
	k.mu.Unlock()
}

func (k *fwdKeeper) run(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		k.mu.Lock()
		names := make([]string, 0, len(k.ifs))
		for n := range k.ifs {
			names = append(names, n)
		}
		k.mu.Unlock()
		reset := false
		for _, n := range names {
			p := "/proc/sys/net/ipv4/conf/" + n + "/forwarding"
			b, err := os.ReadFile(p)
			if err != nil || strings.TrimSpace(string(b)) != "0" {
				continue
			}
			if os.WriteFile(p, []byte("1"), 0o644) == nil {
				reset = true
			}
		}
		if reset {
			k.mu.Lock()
			k.events = append(k.events, time.Now())
			k.mu.Unlock()
		}
	}
}

func (k *fwdKeeper) resets() []time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]time.Time(nil), k.events...)
}
