// Package agent runs one machine of the scheduler: it announces the machine's
// presence under a lease, watches what the engine targets at the machine,
// runs those units through an executor.Executor, and reports their states
// bound to the same lease.
//
// Availability first (docs/design.md, "When etcd is unreachable"): a machine
// that loses etcd keeps its units running and supervised (an executor
// still restarts them per Restart=), keeps trying, and when etcd answers
// again registers with a new lease (taking over its own old presence key)
// and reconciles: what is still targeted here is left running, untouched;
// what the engine moved away meanwhile is stopped then. Units that ask for
// fencing ([X-Flotilla] OnDisconnect=stop) are killed instead by a local
// deadline, FenceMargin before the earliest moment etcd can expire the
// presence lease, measured from the last renewal etcd confirmed.
//
// Registration is exclusive: the presence key is written only when it is
// absent or bound to a lease of this machine (this process's, or the one its
// previous run recorded in Options.LeaseFile). A key kept alive by another
// process is a second machine with the same id: Run refuses to start with
// ErrDuplicateMachine, naming the other machine's IP.
//
// Run stops every unit when its ctx ends (a deliberate shutdown), then
// revokes the presence lease — unless Options.Handover says the agent is
// being restarted (an upgrade under systemd): then only fenced units stop,
// and the units and the presence lease are left to the next run, which
// takes both over without restarting anything. On start, and after every re-registration,
// units the executor runs that are not targeted at this machine are stopped
// and removed.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/flotilla/flotilla/internal/atomicfile"
	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/process"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/unit"
)

// Options configures an Agent.
type Options struct {
	// Registry is where the machine registers and finds its units. Required.
	Registry *registry.Registry
	// Executor runs the units. Required.
	Executor executor.Executor
	// Machine is this machine's identity: ID (required), IP, Metadata, Version.
	Machine registry.Machine
	// TTL of the presence lease; default 10s.
	TTL time.Duration
	// EnvFile is where the machine facts are written; required.
	EnvFile string
	// PollInterval is how often unit states are polled when the executor has
	// no change feed, and at most how stale a report gets; default 1s.
	PollInterval time.Duration
	// StopTimeout bounds stopping all units when the agent ends (a lost
	// lease stops nothing); default 2 minutes.
	StopTimeout time.Duration
	// LeaseFile, if set, is where the agent records its presence lease, so
	// that its next run (a restart, an upgrade) takes over its own presence
	// key at once instead of waiting for the old lease to expire.
	LeaseFile string
	// Handover, if set, is asked once when Run's ctx ends: true means this
	// agent is being restarted (an upgrade: the systemd executor's
	// AgentRestarting) and its units stay for the next run. Run then stops
	// only its fenced units, and leaves the presence lease to the next run
	// (LeaseFile) instead of revoking it, so that nothing moves. False (or
	// nil) is a shutdown: every unit stops and the lease is revoked.
	Handover func(ctx context.Context) bool
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
}

// ErrDuplicateMachine is returned by Run when another live process holds
// this machine id's presence key.
var ErrDuplicateMachine = errors.New("machine id already in use by another machine")

// FenceMargin is how long before the earliest expiry of a presence lease of
// ttl the agent kills its fenced units: a fifth of the TTL, at least 500ms,
// at most half the TTL.
func FenceMargin(ttl time.Duration) time.Duration {
	return min(max(ttl/5, 500*time.Millisecond), ttl/2)
}

// killer is an executor that can end a unit at once (SIGKILL to every
// process), skipping ExecStop, for fencing.
type killer interface {
	Kill(ctx context.Context, name string) error
}

// Agent is one machine's agent. Run it once.
type Agent struct {
	opts Options
	reg  *registry.Registry
	ex   executor.Executor
	log  *slog.Logger
	env  map[string]string

	// Owned by Run's goroutine, kept across registrations.
	started    map[string]string // hash each launched unit was last started with
	failed     map[string]string // units the executor refused, with the error
	bodies     map[string][]byte
	fencedBody map[string]bool               // by hash: the body asks OnDisconnect=stop
	policies   map[string]unit.FailurePolicy // by hash
	fails      map[string]*failState         // by unit: the failure policy's bookkeeping
	leases     map[store.LeaseID]bool        // presence leases of this machine (this run's, the previous run's)

	// fenceMu is held across starting a fenced unit and across a fencing
	// pass, so that no fenced unit starts past its deadline unseen.
	fenceMu sync.Mutex
	mu      sync.Mutex
	// renewed is when the last confirmed renewal of the current presence
	// lease was sent: etcd keeps the lease at least TTL past it.
	renewed time.Time
	// fenced holds the fenced units started here and not stopped since.
	fenced map[string]bool
	// held holds fenced units killed (or not started) for want of a
	// confirmed renewal: started again once one comes, if still targeted.
	held map[string]bool
	// handover is Options.Handover's answer, asked once at shutdown.
	handover     bool
	handoverOnce sync.Once
	// presence is the lease of the current registration, nil between
	// registrations; presenceChanged is closed, and replaced, whenever it
	// changes; stopped is set when Run returns.
	presence        *store.Lease
	presenceChanged chan struct{}
	stopped         bool
}

// ErrStopped is returned by Lease once Run has returned.
var ErrStopped = errors.New("agent: stopped")

// New checks opts and returns an agent.
func New(opts Options) (*Agent, error) {
	switch {
	case opts.Registry == nil:
		return nil, errors.New("agent: no registry")
	case opts.Executor == nil:
		return nil, errors.New("agent: no executor")
	case opts.Machine.ID == "" || strings.ContainsAny(opts.Machine.ID, "/ \t\n"):
		return nil, fmt.Errorf("agent: machine id %q: must be non-empty, without / or spaces", opts.Machine.ID)
	case opts.EnvFile == "":
		return nil, errors.New("agent: no machine facts file")
	}
	if opts.TTL == 0 {
		opts.TTL = 10 * time.Second
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = time.Second
	}
	if opts.StopTimeout == 0 {
		opts.StopTimeout = 2 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Agent{
		opts:       opts,
		reg:        opts.Registry,
		ex:         opts.Executor,
		log:        opts.Logger.With("machine", opts.Machine.ID),
		env:        Facts(opts.Machine),
		started:    map[string]string{},
		failed:     map[string]string{},
		bodies:     map[string][]byte{},
		fencedBody: map[string]bool{},
		policies:   map[string]unit.FailurePolicy{},
		fails:      map[string]*failState{},
		leases:     map[store.LeaseID]bool{},
		fenced:     map[string]bool{},
		held:       map[string]bool{},

		presenceChanged: make(chan struct{}),
	}, nil
}

// Facts returns the environment a machine gives its units:
// FLOTILLA_MACHINE_ID, FLOTILLA_PUBLIC_IP and PUBLIC_IP, and
// FLOTILLA_METADATA_<KEY> for each metadata key (upper-cased, characters
// other than letters and digits replaced by "_").
func Facts(m registry.Machine) map[string]string {
	env := map[string]string{
		"FLOTILLA_MACHINE_ID": m.ID,
		"FLOTILLA_PUBLIC_IP":  m.IP,
		"PUBLIC_IP":           m.IP,
	}
	for k, v := range m.Metadata {
		env["FLOTILLA_METADATA_"+envKey(k)] = v
	}
	return env
}

func envKey(k string) string {
	b := []byte(strings.ToUpper(k))
	for i, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

// writeFacts writes the machine facts file atomically.
func (a *Agent) writeFacts() error {
	keys := make([]string, 0, len(a.env))
	for k := range a.env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	vars := make([][2]string, len(keys))
	for i, k := range keys {
		vars[i] = [2]string{k, a.env[k]}
	}
	if err := atomicfile.Write(a.opts.EnvFile, process.WriteEnvFile(vars), 0o644); err != nil {
		return fmt.Errorf("machine facts: %w", err)
	}
	return nil
}

// errLeaseLost ends a session whose presence lease is gone.
var errLeaseLost = errors.New("presence lease lost")

// Run registers the machine and runs what is targeted at it until ctx is
// done. It then stops every unit, revokes the presence lease, and returns
// nil. Losing etcd is survived: units keep running (fenced ones are killed
// by their deadline), and the machine registers again once etcd answers.
// Run returns an error only for what retrying cannot fix: a first
// registration refused because another machine holds the id
// (ErrDuplicateMachine).
func (a *Agent) Run(ctx context.Context) error {
	if err := a.writeFacts(); err != nil {
		return err
	}
	a.readLeaseFile()
	defer a.setPresence(nil, stopping(true))
	fctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.fence(fctx) }()
	defer func() { cancel(); wg.Wait() }()

	backoff := 200 * time.Millisecond
	registered := false
	var lostAt time.Time
	for {
		ok, err := a.session(ctx)
		if ok {
			registered = true
			backoff = 200 * time.Millisecond
		}
		if ctx.Err() != nil {
			a.shutdown()
			return nil
		}
		if !registered && errors.Is(err, ErrDuplicateMachine) {
			return err
		}
		if ok || lostAt.IsZero() {
			lostAt = time.Now()
		}
		a.log.Warn("agent: no registration with etcd; units keep running, registering again",
			"err", err, "units", a.running(), "fenced", a.fencedCount(), "since", lostAt.Format(time.RFC3339Nano))
		select {
		case <-ctx.Done():
			a.shutdown()
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// Lease returns the presence lease of the current registration, waiting
// for one while the machine is not registered (starting, or registering
// again after losing etcd); it fails with ErrStopped once Run has returned.
// The other elections of the process campaign with it (docs/design.md,
// "One lease per machine"): its Done closes when the registration ends
// (the lease lost, given up, revoked at shutdown, or left to the next run
// at a handover), and a caller then stops acting and asks again. A caller
// must not close it. It blocks; it is safe for concurrent use.
func (a *Agent) Lease(ctx context.Context) (*store.Lease, error) {
	for {
		a.mu.Lock()
		l, changed, stopped := a.presence, a.presenceChanged, a.stopped
		a.mu.Unlock()
		if stopped {
			return nil, ErrStopped
		}
		if l != nil {
			select {
			case <-l.Done():
			default:
				return l, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-changed:
		}
	}
}

// setPresence makes l the lease Lease hands out (nil: none), and marks the
// agent stopped if stop is set.
func (a *Agent) setPresence(l *store.Lease, stop stopping) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.presence = l
	a.stopped = a.stopped || bool(stop)
	close(a.presenceChanged)
	a.presenceChanged = make(chan struct{})
}

// stopping says whether setPresence marks the agent stopped.
type stopping bool

// running counts the units the executor has.
func (a *Agent) running() int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, _ := a.ex.States(ctx)
	return len(st)
}

func (a *Agent) fencedCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.fenced)
}

// readLeaseFile adds the lease a previous run recorded to this machine's.
func (a *Agent) readLeaseFile() {
	if a.opts.LeaseFile == "" {
		return
	}
	b, err := os.ReadFile(a.opts.LeaseFile)
	if err != nil {
		return
	}
	id, err := strconv.ParseInt(strings.TrimSpace(string(b)), 16, 64)
	if err == nil && id != 0 {
		a.leases[store.LeaseID(id)] = true
	}
}

func (a *Agent) writeLeaseFile(id store.LeaseID) {
	if a.opts.LeaseFile == "" {
		return
	}
	if err := os.WriteFile(a.opts.LeaseFile, []byte(fmt.Sprintf("%x\n", int64(id))), 0o644); err != nil {
		a.log.Warn("record presence lease", "file", a.opts.LeaseFile, "err", err)
	}
}

// noteRenewal records a confirmed renewal of the current presence lease,
// sent at sent.
func (a *Agent) noteRenewal(sent time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if sent.After(a.renewed) {
		a.renewed = sent
	}
}

// fenceDeadline is when fenced units must be gone without a further
// confirmed renewal; zero before any registration.
func (a *Agent) fenceDeadline() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.renewed.IsZero() {
		return time.Time{}
	}
	return a.renewed.Add(a.opts.TTL - FenceMargin(a.opts.TTL))
}

func (a *Agent) fenceExpired() bool {
	d := a.fenceDeadline()
	return d.IsZero() || !time.Now().Before(d)
}

// takeHeld returns and forgets the fenced units waiting for contact.
func (a *Agent) takeHeld() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]string, 0, len(a.held))
	for n := range a.held {
		out = append(out, n)
	}
	clear(a.held)
	return out
}

// fence kills the fenced units once the deadline passes without a confirmed
// renewal, until ctx is done.
func (a *Agent) fence(ctx context.Context) {
	tick := time.NewTicker(min(a.opts.TTL/20, 50*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		a.fenceMu.Lock()
		var kill []string
		deadline := a.fenceDeadline()
		if deadline.IsZero() || !time.Now().Before(deadline) {
			a.mu.Lock()
			for n := range a.fenced {
				kill = append(kill, n)
				a.held[n] = true
			}
			clear(a.fenced)
			a.mu.Unlock()
		}
		for _, n := range kill {
			a.kill(n, deadline)
		}
		a.fenceMu.Unlock()
	}
}

// kill ends a fenced unit at once.
func (a *Agent) kill(name string, deadline time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	var err error
	if k, ok := a.ex.(killer); ok {
		err = k.Kill(ctx, name)
	} else {
		err = a.ex.Stop(ctx, name)
	}
	if err != nil {
		a.log.Error("fencing: kill unit", "unit", name, "err", err)
		return
	}
	a.log.Warn("fencing: unit killed (OnDisconnect=stop): no renewal of the presence lease confirmed in time",
		"unit", name, "deadline", deadline.Format(time.RFC3339Nano), "late", time.Since(deadline).Round(time.Millisecond),
		"took", time.Since(start).Round(time.Millisecond))
}

// handingOver reports, asking Options.Handover once, whether this shutdown
// is a restart whose next run takes the units over.
func (a *Agent) handingOver() bool {
	a.handoverOnce.Do(func() {
		if a.opts.Handover == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		a.handover = a.opts.Handover(ctx)
		if a.handover {
			a.log.Info("agent restarting: units keep running for the next run, which takes over the presence lease; fenced units stop")
		}
	})
	return a.handover
}

// shutdown ends the units as Run's end requires: all of them, or only the
// fenced ones when handing over.
func (a *Agent) shutdown() {
	if !a.handingOver() {
		a.stopAll()
		return
	}
	a.fenceMu.Lock()
	defer a.fenceMu.Unlock()
	a.mu.Lock()
	var fenced []string
	for n := range a.fenced {
		fenced = append(fenced, n)
	}
	clear(a.fenced)
	a.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), a.opts.StopTimeout)
	defer cancel()
	for _, name := range fenced {
		if err := a.ex.Remove(ctx, name); err != nil {
			a.log.Error("stop fenced unit", "unit", name, "err", err)
		} else {
			a.log.Info("stopped fenced unit (it stops with its agent)", "unit", name)
		}
		delete(a.started, name)
	}
}

// stopAll stops and removes every unit the executor has.
func (a *Agent) stopAll() {
	a.fenceMu.Lock()
	defer a.fenceMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), a.opts.StopTimeout)
	defer cancel()
	states, err := a.ex.States(ctx)
	if err != nil {
		a.log.Error("list units to stop", "err", err)
		return
	}
	for name := range states {
		if err := a.ex.Remove(ctx, name); err != nil {
			a.log.Error("stop unit", "unit", name, "err", err)
		} else {
			a.log.Info("stopped unit", "unit", name)
		}
		delete(a.started, name)
		a.mu.Lock()
		delete(a.fenced, name)
		a.mu.Unlock()
	}
}
