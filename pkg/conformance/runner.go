package conformance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"time"

	"github.com/membrane-net/membrane/pkg/api"
)

// Defaults of the configuration.
const (
	DefaultTimeout  = 500 * time.Millisecond
	DefaultParallel = 64
)

// Config configures a run.
type Config struct {
	// Dir holds the case files.
	Dir string
	// Socket is a running agent's API socket. Empty: the runner starts a
	// private agent. A running agent gets the runner's endpoints (on the
	// cases' addresses) and policies for the run's duration.
	Socket string
	// Run selects cases by file name, id or name.
	Run *regexp.Regexp
	// Timeout is how long a probe waits before calling it dropped (HTTP
	// probes wait three times as long).
	Timeout time.Duration
	// Parallel is how many probes are in flight at once.
	Parallel int
	// OnCase is called with each case's result as soon as it is known.
	OnCase func(CaseResult)
}

// Runner runs cases against one agent. It is not safe for concurrent use.
type Runner struct {
	cfg    Config
	log    *slog.Logger
	pid    int
	client *api.Client
	agent  *privateAgent
	unlock func()
	// keepLog keeps the private agent's log after Close.
	keepLog bool
	sctp    bool
	seq     *sequencer

	topo     *liveTopo
	nsSeq    int
	policies map[policyRef]bool
	// prev is the last case run with its policies applied.
	prev *Case
}

// New prepares a runner: it takes the machine-wide conformance lock (the
// cases' addresses are fixed, so two runs cannot share a machine), removes
// what crashed runs left, and connects to the agent (starting a private
// one unless cfg.Socket is set). Close releases everything.
func New(ctx context.Context, cfg Config, log *slog.Logger) (_ *Runner, err error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = DefaultParallel
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("conformance run: needs root (network namespaces, veth pairs, eBPF)")
	}
	r := &Runner{cfg: cfg, log: log, pid: os.Getpid(), seq: newSequencer(), policies: map[policyRef]bool{}}
	defer func() {
		if err != nil {
			_ = r.Close()
		}
	}()
	if r.unlock, err = lockMachine(ctx, log); err != nil {
		return nil, err
	}
	cleanStale(log)
	r.sctp = sctpAvailable()
	if cfg.Socket == "" {
		if r.agent, err = startPrivateAgent(ctx, log); err != nil {
			return nil, err
		}
		r.client = api.NewClient(r.agent.socket)
	} else {
		r.client = api.NewClient(cfg.Socket)
		if _, err := r.client.Status(ctx); err != nil {
			return nil, fmt.Errorf("connect to agent: %w", err)
		}
	}
	return r, nil
}

// Agent describes the agent the runner uses.
func (r *Runner) Agent() string {
	if r.agent != nil {
		return "private (socket " + r.agent.socket + ")"
	}
	return r.cfg.Socket
}

// Socket is the API socket of the agent the runner uses.
func (r *Runner) Socket() string {
	if r.agent != nil {
		return r.agent.socket
	}
	return r.cfg.Socket
}

// KeepAgentLog keeps the private agent's log when the runner closes and
// returns where it will be ("" with a running agent).
func (r *Runner) KeepAgentLog() string {
	if r.agent == nil {
		return ""
	}
	r.keepLog = true
	return r.agent.savedLog()
}

// Run runs every selected case of cfg.Dir in file-name order.
func (r *Runner) Run(ctx context.Context) (*Report, error) {
	cases, err := LoadDir(r.cfg.Dir, r.cfg.Run)
	if err != nil {
		return nil, err
	}
	return r.RunCases(ctx, cases)
}

// RunCases runs the given cases in order.
func (r *Runner) RunCases(ctx context.Context, cases []*Case) (*Report, error) {
	start := time.Now()
	rep := &Report{Dir: r.cfg.Dir, Agent: r.Agent(), Started: start.UTC()}
	for _, c := range cases {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		res := r.runCase(ctx, c)
		if ctx.Err() != nil {
			// Interrupted: the case's probes were cut short; no verdict.
			break
		}
		rep.Cases = append(rep.Cases, res)
		rep.Summary.add(res)
		if r.cfg.OnCase != nil {
			r.cfg.OnCase(res)
		}
	}
	rep.Duration = time.Since(start).Round(10 * time.Millisecond).String()
	return rep, ctx.Err()
}

// runCase runs one case; every problem ends up in the result.
func (r *Runner) runCase(ctx context.Context, c *Case) (res CaseResult) {
	start := time.Now()
	res = CaseResult{ID: c.ID, Name: c.Name, File: c.File}
	defer func() { res.Duration = time.Since(start).Round(time.Millisecond).String() }()
	fail := func(err error) CaseResult {
		res.Status, res.Reason = StatusFail, err.Error()
		r.prev = nil
		return res
	}
	if c.Level == LevelSelector {
		runSelectorCase(c, &res)
		res.Status = StatusPass
		if len(res.Failures) > 0 {
			res.Status = StatusFail
		}
		res.Notes = append(res.Notes, "selector table: no traffic")
		return res
	}
	plan, err := MakePlan(c, PlanOptions{SCTP: r.sctp})
	if err != nil {
		return fail(err)
	}
	res.Notes = append(res.Notes, plan.Notes...)
	if needsDefaultNamespace(c) {
		res.Notes = append(res.Notes, "policies without a namespace applied in "+DefaultNamespace(c)+", as the upstream test applies them")
	}
	if len(c.Policies) > 0 {
		f, err := PolicyFile(c)
		if err != nil {
			return fail(err)
		}
		if _, err := r.client.ValidatePolicy(ctx, []api.PolicyFile{f}); err != nil {
			if what := unsupportedPolicy(c, err); what != "" {
				res.Status, res.Reason = StatusUnsupported, fmt.Sprintf("%s (the agent says: %s)", what, firstLine(err.Error()))
				return res
			}
			return fail(fmt.Errorf("validate policies: %w", err))
		}
	}
	if err := r.ensureTopology(ctx, plan.Topo); err != nil {
		return fail(err)
	}
	fresh := !r.continues(c)
	res.Incremental = !fresh
	if fresh {
		if err := r.deletePolicies(ctx, r.policies); err != nil {
			return fail(err)
		}
		if err := r.relabel(ctx, r.topo, plan.Topo); err != nil {
			return fail(err)
		}
	}
	if err := r.applyPolicies(ctx, c, fresh); err != nil {
		return fail(err)
	}
	if !fresh {
		if err := r.relabel(ctx, r.topo, plan.Topo); err != nil {
			return fail(err)
		}
	}
	r.prev = c
	r.probeCase(ctx, plan, &res)
	switch {
	case len(res.Failures) > 0:
		res.Status = StatusFail
	case res.Probes == 0 && res.Unsupported > 0:
		res.Status, res.Reason = StatusUnsupported, "no probe can be sent here"
	case res.Probes == 0:
		res.Status, res.Reason = StatusSkipped, "every probe was skipped"
	default:
		res.Status = StatusPass
	}
	return res
}

// continues reports whether c is the next step of the test the previous
// case belongs to, so that it is applied as an update on top of it.
func (r *Runner) continues(c *Case) bool {
	p := r.prev
	return p != nil && c.StepIndex() > 1 && p.Group() == c.Group() && p.StepIndex() == c.StepIndex()-1
}

// ensureTopology reuses the current topology when the plan's is the same
// (labels aside), and builds a new one otherwise.
func (r *Runner) ensureTopology(ctx context.Context, tp TopoPlan) error {
	if r.topo != nil && r.topo.key == tp.Key() {
		return nil
	}
	r.prev = nil
	if err := r.deletePolicies(ctx, r.policies); err != nil {
		return err
	}
	if r.topo != nil {
		err := r.teardownTopology(r.topo)
		r.topo = nil
		if err != nil {
			return fmt.Errorf("tear down the previous topology: %w", err)
		}
	}
	t, err := r.buildTopology(ctx, tp)
	if err != nil {
		return err
	}
	r.topo = t
	return nil
}

// Close tears down the topology, deletes the runner's policies, stops the
// private agent and releases the lock. It carries on past errors.
func (r *Runner) Close() error {
	var errs []error
	if r.client != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		errs = append(errs, r.deletePolicies(ctx, r.policies))
		cancel()
	}
	if r.topo != nil {
		errs = append(errs, r.teardownTopology(r.topo))
		r.topo = nil
	}
	if r.agent != nil {
		errs = append(errs, r.agent.stop())
		r.agent.removeTmp(r.keepLog)
		r.agent = nil
	}
	if r.unlock != nil {
		r.unlock()
		r.unlock = nil
	}
	return errors.Join(errs...)
}

// Kept describes the topology for --keep.
func (r *Runner) Kept() []string {
	if r.topo == nil {
		return nil
	}
	var out []string
	for _, name := range sortedKeys(r.topo.pods) {
		lp := r.topo.pods[name]
		out = append(out, fmt.Sprintf("%s: endpoint %d, netns %s", name, lp.id, lp.nsPath))
	}
	if r.topo.world != nil {
		out = append(out, fmt.Sprintf("world: netns %s, host veth %s, addresses %v, node addresses %v",
			r.topo.world.nsPath, r.topo.world.hostIf, r.topo.world.addrs, r.topo.world.hostAddrs))
	}
	return out
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}
