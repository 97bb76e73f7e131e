// Package demo owns `membrane demo`: the whole system end to end on
// defaults, with real namespaces, real eBPF and real traffic, narrated
// step by step, cleaning up everything it made.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/membrane-net/membrane/pkg/agent"
	"github.com/membrane-net/membrane/pkg/api"
	"github.com/membrane-net/membrane/pkg/monitor"
	"github.com/membrane-net/membrane/pkg/nsutil"
)

// Config says which agent to use.
type Config struct {
	Socket string
	Out    io.Writer
	// Prefix names the namespaces the demo makes.
	Prefix string
}

// Demo is one run.
type Demo struct {
	cfg     Config
	c       *api.Client
	out     io.Writer
	cleanup []func()
	eps     map[string]*api.Endpoint
	ns      map[string]string
}

// L3L4Policy is early Cilium's getting-started policy (its 2017 Docker
// guide), as written.
const L3L4Policy = `[{
    "endpointSelector": {"matchLabels":{"id":"app1"}},
    "ingress": [{
        "fromEndpoints": [
            {"matchLabels":{"id":"app2"}}
        ],
        "toPorts": [{
                "ports": [{"port": "80", "protocol": "TCP"}]
        }]
    }]
}]
`

// Run runs the demo; it returns an error if anything did not behave as
// the demo says it should.
func Run(ctx context.Context, cfg Config) (err error) {
	if cfg.Prefix == "" {
		cfg.Prefix = "membrane-demo"
	}
	d := &Demo{cfg: cfg, out: cfg.Out, eps: map[string]*api.Endpoint{}, ns: map[string]string{}}
	defer func() {
		d.say("\n== Cleaning up")
		for i := len(d.cleanup) - 1; i >= 0; i-- {
			d.cleanup[i]()
		}
		if err == nil {
			d.say("Done: everything the demo made is gone.")
		}
	}()
	if err := d.connect(ctx); err != nil {
		return err
	}
	if err := d.l3l4(ctx); err != nil {
		return err
	}
	if err := d.l7Guide(ctx); err != nil {
		return err
	}
	return d.starWars(ctx)
}

func (d *Demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

// connect uses a running agent, or starts one for the demo's duration with
// its own state, bpffs directory and socket.
func (d *Demo) connect(ctx context.Context) error {
	c := api.NewClient(d.cfg.Socket)
	if st, err := c.Status(ctx); err == nil {
		d.say("== Using the agent running on %s (healthy: %v)", d.cfg.Socket, st.Healthy)
		d.c = c
		return nil
	}
	tmp, err := os.MkdirTemp("", "membrane-demo-")
	if err != nil {
		return err
	}
	d.cleanup = append(d.cleanup, func() { os.RemoveAll(tmp) })
	bpffs := fmt.Sprintf("/sys/fs/bpf/membrane-demo-%d", os.Getpid())
	cfg := agent.Config{
		Socket: filepath.Join(tmp, "membrane.sock"), StateDir: filepath.Join(tmp, "state"),
		BPFFSDir: bpffs, HostIfName: "mbrdemo_host", Version: "demo", ProxyPort: agent.DefaultProxyPort,
	}
	logf, err := os.Create(filepath.Join(os.TempDir(), "membrane-demo-agent.log"))
	if err != nil {
		return err
	}
	a, err := agent.New(cfg, slog.New(slog.NewTextHandler(logf, nil)))
	if err != nil {
		logf.Close()
		return fmt.Errorf("start agent: %w", err)
	}
	actx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	d.cleanup = append(d.cleanup, func() {
		cancel()
		<-done
		a.Close()
		logf.Close()
		_ = os.RemoveAll(bpffs)
		_ = deleteLink("mbrdemo_host")
		d.say("Stopped the demo's agent; removed its pins (%s) and state.", bpffs)
	})
	d.c = api.NewClient(cfg.Socket)
	for i := 0; ; i++ {
		if _, err := d.c.Status(ctx); err == nil {
			break
		}
		select {
		case err := <-done:
			return fmt.Errorf("agent stopped: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if i > 100 {
			return errors.New("the demo's agent did not come up")
		}
	}
	d.say("== Started an agent for the demo (socket %s, log %s)", cfg.Socket, logf.Name())
	return nil
}

// endpoint makes a namespace and wires it as an endpoint.
func (d *Demo) endpoint(ctx context.Context, name string, labels ...string) (*api.Endpoint, error) {
	nsName := d.cfg.Prefix + "-" + name
	path, err := nsutil.Create(nsName)
	if err != nil {
		return nil, err
	}
	d.cleanup = append(d.cleanup, func() { _ = nsutil.Delete(nsName) })
	d.ns[name] = path
	ep, err := d.c.AddEndpoint(ctx, api.EndpointRequest{Netns: path, Name: name, Labels: labels})
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", name, err)
	}
	d.cleanup = append(d.cleanup, func() {
		if err := d.c.DeleteEndpoint(context.Background(), ep.ID); err != nil {
			d.say("delete endpoint %d: %v", ep.ID, err)
		}
	})
	d.eps[name] = ep
	d.say("$ ip netns add %s && membrane endpoint add --netns %s --name %s --labels %s", nsName, path, name, strings.Join(labels, ","))
	d.say("  endpoint %d: %s, identity %d", ep.ID, ep.IPv4, ep.Identity)
	return ep, nil
}

// serveHTTP runs an HTTP server on port 80 inside an endpoint.
func (d *Demo) serveHTTP(name string, h http.Handler) error {
	ln, err := nsutil.Listen(d.ns[name], "tcp4", ":80")
	if err != nil {
		return fmt.Errorf("listen in %s: %w", name, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	d.cleanup = append(d.cleanup, func() { srv.Close() })
	return nil
}

// client returns an HTTP client whose connections start in an endpoint.
func (d *Demo) client(name string, timeout time.Duration) *http.Client {
	path := d.ns[name]
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return nsutil.Dial(ctx, path, network, addr)
			},
		},
	}
}

// request sends one request and describes the outcome.
func (d *Demo) request(from, method, url string) (status int, body string, err error) {
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := d.client(from, 2*time.Second).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, strings.TrimSpace(string(b)), nil
}

// expect sends a request from an endpoint and checks the outcome: status
// 0 means the connection must fail (dropped).
func (d *Demo) expect(from, method, url string, wantStatus int, wantBody string) error {
	d.say("$ %s: curl -X %s %s", from, method, url)
	status, body, err := d.request(from, method, url)
	switch {
	case wantStatus == 0 && err != nil:
		d.say("  no answer (%s): dropped, as the policy says", shortErr(err))
		return nil
	case wantStatus == 0:
		return fmt.Errorf("%s %s from %s: got %d %q, want the connection dropped", method, url, from, status, body)
	case err != nil:
		return fmt.Errorf("%s %s from %s: %w, want %d", method, url, from, err, wantStatus)
	case status != wantStatus || (wantBody != "" && body != wantBody):
		return fmt.Errorf("%s %s from %s: got %d %q, want %d %q", method, url, from, status, body, wantStatus, wantBody)
	}
	d.say("  %d %s", status, body)
	return nil
}

func shortErr(err error) string {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timed out"
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

// watch collects monitor events of the given types until stop is called.
func (d *Demo) watch(ctx context.Context, types ...string) (stop func() []monitor.Event) {
	ctx, cancel := context.WithCancel(ctx)
	st, err := d.c.OpenMonitor(ctx, types)
	if err != nil {
		cancel()
		d.say("  (monitor unavailable: %v)", err)
		return func() []monitor.Event { return nil }
	}
	var mu sync.Mutex
	var evs []monitor.Event
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			e, err := st.Next()
			if err != nil {
				return
			}
			mu.Lock()
			evs = append(evs, e)
			mu.Unlock()
		}
	}()
	return func() []monitor.Event {
		time.Sleep(200 * time.Millisecond) // events in flight
		cancel()
		st.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		return evs
	}
}

func (d *Demo) importPolicy(ctx context.Context, name, content string) error {
	res, err := d.c.ImportPolicy(ctx, []api.PolicyFile{{Name: name, Content: content}})
	if err != nil {
		return fmt.Errorf("import %s: %w", name, err)
	}
	d.say("$ membrane policy import %s\n  Revision: %d", name, res.Revision)
	return nil
}

func (d *Demo) l3l4(ctx context.Context) error {
	d.say("\n== L3/L4 policy: the 2017 getting-started guide")
	for _, n := range []string{"app1", "app2", "app3"} {
		if _, err := d.endpoint(ctx, n, "id="+n); err != nil {
			return err
		}
	}
	app1 := http.NewServeMux()
	app1.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from app1 (%s %s)\n", r.Method, r.URL.Path)
	})
	app1.HandleFunc("/public", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "public data") })
	app1.HandleFunc("/private", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "private data") })
	if err := d.serveHTTP("app1", app1); err != nil {
		return err
	}
	url := fmt.Sprintf("http://%s:80/", d.eps["app1"].IPv4)
	d.say("\nNo policy selects app1 yet: everyone may reach it.")
	for _, from := range []string{"app2", "app3"} {
		if err := d.expect(from, "GET", url, 200, ""); err != nil {
			return err
		}
	}
	d.say("\nThe policy: only id=app2 may reach id=app1, on TCP port 80.\n%s", indent(L3L4Policy))
	if err := d.importPolicy(ctx, "l3_l4_policy.json", L3L4Policy); err != nil {
		return err
	}
	if err := d.expect("app2", "GET", url, 200, ""); err != nil {
		return err
	}
	stop := d.watch(ctx, monitor.TypeDrop)
	if err := d.expect("app3", "GET", url, 0, ""); err != nil {
		stop()
		return err
	}
	evs := stop()
	found := false
	for _, e := range evs {
		if e.Src == d.eps["app3"].IPv4.String() && e.Dst == d.eps["app1"].IPv4.String() {
			if !found {
				d.say("$ membrane monitor --type drop\n  %s", e.String())
			}
			found = true
		}
	}
	if !found {
		return fmt.Errorf("the monitor showed no drop of app3 -> app1 (%d other events)", len(evs))
	}
	d.say("\n$ membrane policy delete l3_l4_policy")
	res, err := d.c.DeletePolicy(ctx, "l3_l4_policy")
	if err != nil {
		return err
	}
	d.say("  Revision: %d", res.Revision)
	for _, from := range []string{"app2", "app3"} {
		if err := d.expect(from, "GET", url, 200, ""); err != nil {
			return err
		}
	}
	return nil
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}
