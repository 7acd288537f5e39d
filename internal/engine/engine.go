// Package engine is the scheduler's reconciler. Every `scheduler serve` runs
// one as a candidate; the one elected leader (etcd concurrency.Election under
// <prefix>engine) reads the registry, asks internal/schedule where every
// loaded or launched unit belongs, and writes the difference to the
// schedule/ and unplaced/ keys. It passes on every relevant change (jobs,
// machines coming and going, unit states), debounced, and on a period.
//
// Fencing: every write is a transaction conditioned on the leader key still
// existing with the revision it was created at, so an engine that lost its
// leadership (its lease expired while it was cut off) cannot move a unit.
// Writes are batched, up to registry.MaxTxnOps per transaction, keeping the
// writes of one unit in one transaction.
//
// No unit is targeted at a new machine while another machine still reports
// it running: a unit leaving a live machine is first untargeted there, and
// placed on its new machine only once that machine's agent reports it
// stopped (or the machine is gone, which removes its state keys with its
// lease). Its unplaced reason says so meanwhile. The one exception is asked
// for explicitly: a surge move (`scheduler roll --surge`, see planned.go)
// keeps a unit on its old machine while it starts on the new one.
//
// A machine that goes silent is not given up at once (docs/design.md, "When
// etcd is unreachable"): its presence key vanishes when its lease expires,
// TTL after its last renewal; its units stay targeted at it for MoveGrace
// more (FenceWait for units with [X-Flotilla] OnDisconnect=stop, whose
// agent has killed them before the lease could expire), counted only while
// the engine has had continuous contact with etcd: becoming leader, etcd
// answering again after a failure, and an etcd leader change (a new Raft
// term) all restart every absence clock. A move from an absent machine is
// written only if its presence key is still absent in the same transaction.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/schedule"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/unit"
)

// Options configures an Engine.
type Options struct {
	// Registry is the scheduler state. Required.
	Registry *registry.Registry
	// ID is this candidate's identity, published while it leads (the
	// machine id). Required.
	ID string
	// TTL is the leadership lease's; default 10s.
	TTL time.Duration
	// Period is the longest time between two passes; default 30s.
	Period time.Duration
	// Debounce is how long changes are collected before a pass; default 50ms.
	Debounce time.Duration
	// MoveGrace is how long a machine's presence must stay absent (after
	// its lease expired, i.e. TTL after its last renewal), counted while
	// etcd is healthy, before its units move elsewhere. Zero means
	// DefaultMoveGrace; a negative value means none.
	MoveGrace time.Duration
	// FenceWait is MoveGrace for fenced units (OnDisconnect=stop): their
	// agent kills them before the lease can expire, so a short margin
	// suffices. Zero means DefaultFenceWait; negative means none.
	FenceWait time.Duration
	// HealthInterval is how often the leader checks its contact with etcd
	// and etcd's Raft term; default 500ms.
	HealthInterval time.Duration
	// Logger receives the engine's logs; nil discards them.
	Logger *slog.Logger
	// OnPass, if set, is called after every pass with its figures.
	OnPass func(PassStats)
}

// PassStats describes one pass.
type PassStats struct {
	Duration  time.Duration
	Units     int // jobs considered
	Machines  int
	Requests  int // etcd requests made (reads and transactions)
	Txns      int
	Ops       int // operations written
	Unplaced  int
	Moved     int // units given a new machine
	Unchanged bool
}

// DefaultMoveGrace is Options.MoveGrace's default: with the default 10s
// TTL a silent machine's units move 30s after its last renewal (Kubernetes
// evicts after 5 min by default, Nomad replaces after the client's
// heartbeat grace; fleet moved them at once, fleet#708).
const DefaultMoveGrace = 20 * time.Second

// DefaultFenceWait is Options.FenceWait's default.
const DefaultFenceWait = time.Second

// Engine is a leader candidate and, while leader, the reconciler. Run it
// once; Pass may be called directly by tools and benchmarks.
type Engine struct {
	opts Options
	reg  *registry.Registry
	log  *slog.Logger

	mu    sync.Mutex
	cache map[string]parsed // by unit name
	// waiting holds the units the last pass held back until another
	// machine reports them stopped.
	waiting map[string]bool
	// skipped holds the undecodable keys already logged, so that each is
	// reported once, not on every pass.
	skipped map[string]bool
	// dropMoves holds the move requests the last pass could not honour.
	dropMoves map[string]string

	// absentSince is when this leader first saw each targeted machine
	// without presence; healthySince is since when it has had unbroken
	// contact with etcd in one Raft term. A machine counts as absent from
	// the later of the two.
	absentSince  map[string]time.Time
	healthySince time.Time
	etcdTerm     uint64
	unhealthy    bool
	// wake is when a unit held on an absent machine may move: a pass is due.
	wake time.Time
	// released holds the absent machines whose grace has been logged as over.
	released map[string]bool
}

type parsed struct {
	hash string
	file *unit.File
	err  error
}

// errMachineBack is a write refused because a machine whose units it moved
// registered again meanwhile (or leadership was lost: the next pass tells).
var errMachineBack = errors.New("a machine came back (or leadership was lost) since the read")

// ErrNotLeader is returned by Pass when its guard no longer holds.
var ErrNotLeader = errors.New("engine: not the leader any more")

// New checks opts and returns an engine.
func New(opts Options) (*Engine, error) {
	if opts.Registry == nil {
		return nil, errors.New("engine: no registry")
	}
	if opts.ID == "" {
		return nil, errors.New("engine: no candidate id")
	}
	if opts.TTL == 0 {
		opts.TTL = 10 * time.Second
	}
	if opts.Period == 0 {
		opts.Period = 30 * time.Second
	}
	if opts.Debounce == 0 {
		opts.Debounce = 50 * time.Millisecond
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	switch {
	case opts.MoveGrace == 0:
		opts.MoveGrace = DefaultMoveGrace
	case opts.MoveGrace < 0:
		opts.MoveGrace = 0
	}
	switch {
	case opts.FenceWait == 0:
		opts.FenceWait = DefaultFenceWait
	case opts.FenceWait < 0:
		opts.FenceWait = 0
	}
	if opts.HealthInterval <= 0 {
		opts.HealthInterval = 500 * time.Millisecond
	}
	return &Engine{opts: opts, reg: opts.Registry, log: opts.Logger, cache: map[string]parsed{}, waiting: map[string]bool{},
		absentSince: map[string]time.Time{}, healthySince: time.Now()}, nil
}

// Run campaigns for leadership and reconciles while leader, until ctx is
// done; it then resigns and returns nil.
func (e *Engine) Run(ctx context.Context) error {
	c := e.reg.Client()
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		led, err := e.term(ctx, c)
		if ctx.Err() != nil {
			return nil
		}
		if led {
			// A leadership that ended (its machine cut off, say) is no
			// reason to wait long before standing again.
			backoff = 200 * time.Millisecond
		}
		e.log.Warn("engine leadership ended", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		// At most a second: a candidate that sleeps longer delays the
		// take-over when the leader's machine is cut off next.
		backoff = min(2*backoff, time.Second)
	}
	return nil
}

// term is one candidacy: campaign, then lead until leadership is lost.
func (e *Engine) term(ctx context.Context, c *store.Client) (led bool, err error) {
	lease, err := c.GrantLease(ctx, e.opts.TTL)
	if err != nil {
		return false, err
	}
	defer lease.Close()
	lead, err := c.Campaign(ctx, lease, e.reg.ElectionPrefix(), e.opts.ID)
	if err != nil {
		return false, err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		lead.Resign(rctx)
	}()
	e.log.Info("engine: became leader", "key", lead.Key(), "rev", lead.Rev())
	// A new leader knows nothing of how long machines have been gone: every
	// absence clock starts now.
	e.mu.Lock()
	e.absentSince, e.released = map[string]time.Time{}, nil
	e.healthySince, e.etcdTerm, e.unhealthy, e.wake = time.Now(), 0, false, time.Time{}
	e.mu.Unlock()
	return true, e.lead(ctx, lead)
}

// lead reconciles until ctx is done or leadership is lost.
func (e *Engine) lead(ctx context.Context, lead *store.Leadership) error {
	c := e.reg.Client()
	period := time.NewTicker(e.opts.Period)
	defer period.Stop()
	for {
		st, err := e.pass(ctx, lead.Guard())
		if err != nil {
			if fatal(ctx, err) || !errors.Is(err, errMachineBack) {
				return err
			}
			e.log.Info("engine pass: a machine came back meanwhile; passing again", "err", err)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-lead.Done():
				return ErrNotLeader
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		w := c.WatchPrefix(ctx, e.reg.Prefix(), st.rev+1)
		err = e.watchLoop(ctx, lead, w, period.C)
		w.Close()
		if !errors.Is(err, store.ErrCompacted) {
			return err
		}
	}
}

// relevant reports whether a change under the prefix calls for a pass:
// jobs, machines, planned change and failure records always; a unit's
// reported state only while the unit
// waits to stop somewhere before it may start elsewhere. The engine's own
// writes (schedule/, unplaced/), bodies and the election do not.
func (e *Engine) relevant(key string) bool {
	rest := strings.TrimPrefix(key, e.reg.Prefix())
	switch {
	case strings.HasPrefix(rest, "jobs/"), strings.HasPrefix(rest, "machines/"), plannedChange(rest), failureChange(rest):
		return true
	case strings.HasPrefix(rest, "states/"):
		rest = strings.TrimPrefix(rest, "states/")
		i := strings.LastIndexByte(rest, '/')
		if i < 0 {
			return false
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.waiting[rest[:i]]
	}
	return false
}

func (e *Engine) watchLoop(ctx context.Context, lead *store.Leadership, w *store.Watch, period <-chan time.Time) error {
	var debounce <-chan time.Time
	health := time.NewTicker(e.opts.HealthInterval)
	defer health.Stop()
	var wake *time.Timer
	var wakeC <-chan time.Time
	var wakeAt time.Time
	defer func() {
		if wake != nil {
			wake.Stop()
		}
	}()
	for {
		// A unit held on an absent machine may move at e.wake: pass then.
		e.mu.Lock()
		next := e.wake
		e.mu.Unlock()
		if !next.IsZero() && !next.Equal(wakeAt) {
			if wake != nil {
				wake.Stop()
			}
			wakeAt = next
			wake = time.NewTimer(max(time.Until(next), 0) + 10*time.Millisecond)
			wakeC = wake.C
		}
		select {
		case <-health.C:
			e.checkHealth(ctx, lead)
		case <-wakeC:
			wakeC, wakeAt = nil, time.Time{}
			if debounce == nil {
				debounce = time.After(0)
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-lead.Done():
			return ErrNotLeader
		case b, ok := <-w.C:
			if !ok {
				return ctx.Err()
			}
			if b.Err != nil {
				return b.Err
			}
			for _, ev := range b.Events {
				if debounce == nil && e.relevant(ev.KV.Key) {
					debounce = time.After(e.opts.Debounce)
				}
			}
		case <-debounce:
			debounce = nil
			if _, err := e.Pass(ctx, lead.Guard()); err != nil {
				if fatal(ctx, err) {
					return err
				}
				e.log.Warn("engine pass failed; retrying", "err", err)
				debounce = time.After(time.Second)
			}
		case <-period:
			if _, err := e.Pass(ctx, lead.Guard()); err != nil {
				if fatal(ctx, err) {
					return err
				}
				e.log.Warn("engine pass failed; retrying", "err", err)
				debounce = time.After(time.Second)
				continue
			}
			if err := e.collectBodies(ctx, lead.Guard()); err != nil {
				if fatal(ctx, err) {
					return err
				}
				e.log.Warn("collect unused bodies", "err", err)
			}
		}
	}
}

// checkHealth asks etcd for its Raft term. A failed request, or a term
// other than the last one seen (an etcd leader election), restarts every
// machine absence clock once etcd answers: leases looked stale only
// because etcd could not renew them.
func (e *Engine) checkHealth(ctx context.Context, lead *store.Leadership) {
	hctx, cancel := context.WithTimeout(ctx, max(e.opts.HealthInterval, time.Second))
	term, err := e.reg.Client().Term(hctx, lead.Key())
	cancel()
	e.mu.Lock()
	defer e.mu.Unlock()
	if err != nil {
		if !e.unhealthy && ctx.Err() == nil {
			e.log.Warn("engine: no contact with etcd; machine absence clocks stop until it answers", "err", err)
		}
		e.unhealthy = true
		return
	}
	switch {
	case e.unhealthy:
		e.log.Info("engine: etcd answers again; machine absence clocks restart", "term", term)
		e.healthySince = time.Now()
	case e.etcdTerm != 0 && term != e.etcdTerm:
		e.log.Info("engine: etcd changed leader; machine absence clocks restart", "term", term, "was", e.etcdTerm)
		e.healthySince = time.Now()
	}
	e.unhealthy, e.etcdTerm = false, term
}

// fatal reports whether a pass error ends the leadership: lost leadership
// or the engine stopping. Anything else (etcd briefly unreachable) is retried
// while still leader.
func fatal(ctx context.Context, err error) bool {
	return ctx.Err() != nil || errors.Is(err, ErrNotLeader)
}

// logSkipped warns once about each key the registry could not decode: the
// engine schedules around it, and an operator should hear of it.
func (e *Engine) logSkipped(skipped []error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	seen := make(map[string]bool, len(skipped))
	for _, err := range skipped {
		msg := err.Error()
		seen[msg] = true
		if !e.skipped[msg] {
			e.log.Warn("engine: ignoring an undecodable key", "err", msg)
		}
	}
	e.skipped = seen
}

// passResult is PassStats plus the revision the pass read at.
type passResult struct {
	PassStats
	rev int64
}

// Pass reads the registry once, computes placement and writes the
// difference, every transaction conditioned on guard (a leadership's
// Guard). It returns ErrNotLeader (wrapped) when guard fails. Passes must
// not run concurrently.
func (e *Engine) Pass(ctx context.Context, guard store.Cmp) (PassStats, error) {
	r, err := e.pass(ctx, guard)
	return r.PassStats, err
}

func (e *Engine) pass(ctx context.Context, guard store.Cmp) (passResult, error) {
	start := time.Now()
	var res passResult
	snap, err := e.reg.Snapshot(ctx)
	if err != nil {
		return res, err
	}
	res.rev = snap.Rev
	res.Requests++
	e.logSkipped(snap.Skipped)
	reqs, err := e.loadUnits(ctx, snap)
	res.Requests += reqs
	if err != nil {
		return res, err
	}
	plan := e.plan(snap)
	res.Units, res.Machines, res.Unplaced, res.Moved = len(snap.Jobs), len(snap.Machines), len(plan.unplaced), plan.moved
	txns, ops, err := e.write(ctx, guard, plan.batches)
	res.Txns, res.Ops = txns, ops
	res.Requests += txns
	res.Unchanged = ops == 0
	res.Duration = time.Since(start)
	if err == nil && ops > 0 {
		e.log.Info("engine pass", "units", res.Units, "machines", res.Machines, "ops", ops, "txns", txns,
			"moved", res.Moved, "unplaced", res.Unplaced, "took", res.Duration.Round(time.Microsecond))
	}
	if e.opts.OnPass != nil {
		e.opts.OnPass(res.PassStats)
	}
	return res, err
}

// loadUnits parses the body of every job whose hash is not cached.
func (e *Engine) loadUnits(ctx context.Context, snap *registry.Snapshot) (requests int, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var missing []registry.Job
	for name, j := range snap.Jobs {
		if p, ok := e.cache[name]; !ok || p.hash != j.Hash {
			missing = append(missing, j)
		}
	}
	for name := range e.cache {
		if _, ok := snap.Jobs[name]; !ok {
			delete(e.cache, name)
		}
	}
	if len(missing) == 0 {
		return 0, nil
	}
	bodies := map[string][]byte{}
	if len(missing) > 20 {
		all, err := e.reg.Bodies(ctx)
		if err != nil {
			return 1, err
		}
		bodies, requests = all, 1
	} else {
		for _, j := range missing {
			if _, ok := bodies[j.Hash]; ok {
				continue
			}
			b, err := e.reg.Body(ctx, j.Hash)
			requests++
			if errors.Is(err, registry.ErrNotFound) {
				continue
			}
			if err != nil {
				return requests, err
			}
			bodies[j.Hash] = b
		}
	}
	for _, j := range missing {
		b, ok := bodies[j.Hash]
		if !ok {
			e.cache[j.Name] = parsed{hash: j.Hash, err: fmt.Errorf("body %s is missing", registry.ShortHash(j.Hash))}
			continue
		}
		f, err := unit.Parse(j.Name, b)
		if err == nil {
			err = f.CheckStartable()
		}
		e.cache[j.Name] = parsed{hash: j.Hash, file: f, err: err}
	}
	return requests, nil
}

type plan struct {
	batches  []batch // each: the writes of one unit
	unplaced map[string]string
	moved    int
}

// batch is the writes of one unit and the conditions they need besides the
// leadership guard (a move off an absent machine: its presence still absent).
type batch struct {
	ops  []store.Op
	cmps []store.Cmp
}

// plan computes the writes that bring the registry to the placement.
func (e *Engine) plan(snap *registry.Snapshot) plan {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := plan{unplaced: map[string]string{}}
	e.waiting = map[string]bool{}
	now := time.Now()
	// Absence clocks: a machine targeted by some unit and without presence
	// is absent since this leader first saw it so, or since etcd was last
	// unhealthy, whichever is later.
	absent := map[string]bool{}
	for _, ms := range snap.Schedule {
		for m := range ms {
			if _, alive := snap.Machines[m]; !alive {
				absent[m] = true
			}
		}
	}
	for m := range e.absentSince {
		if !absent[m] {
			delete(e.absentSince, m)
			delete(e.released, m)
			delete(e.released, m+" fenced")
		}
	}
	for m := range absent {
		if _, ok := e.absentSince[m]; !ok {
			e.absentSince[m] = now
		}
	}
	e.wake = time.Time{}
	// held reports whether unit name, fenced or not, stays on absent
	// machine m for now, and notes when it may move.
	held := func(name, m string, fenced bool) bool {
		since := e.absentSince[m]
		if since.Before(e.healthySince) {
			since = e.healthySince
		}
		wait := e.opts.MoveGrace
		if fenced {
			wait = e.opts.FenceWait
		}
		until := since.Add(wait)
		if now.Before(until) {
			if e.wake.IsZero() || until.Before(e.wake) {
				e.wake = until
			}
			return true
		}
		key := m
		if fenced {
			key += " fenced"
		}
		if e.released == nil {
			e.released = map[string]bool{}
		}
		if !e.released[key] {
			e.released[key] = true
			e.log.Info("engine: machine gone for longer than its grace (counted while etcd was healthy); its units move",
				"machine", m, "absent-for", now.Sub(since).Round(time.Millisecond), "grace", wait, "fenced-units", fenced)
		}
		return false
	}
	// keep holds the targets on absent machines that stay for now.
	keep := map[string]map[string]bool{}
	machines := make([]schedule.Machine, 0, len(snap.Machines))
	for _, m := range snap.Machines {
		machines = append(machines, schedule.Machine{ID: m.ID, IP: m.IP, Metadata: m.Metadata, Capacity: m.Capacity})
	}
	moves := e.applyMoves(snap)
	var units []schedule.Unit
	for name, j := range snap.Jobs {
		if j.Desired != registry.Loaded && j.Desired != registry.Launched {
			continue
		}
		pu := e.cache[name]
		if pu.err != nil || pu.file == nil {
			p.unplaced[name] = fmt.Sprintf("unit file: %v", pu.err)
			continue
		}
		u := schedule.Unit{Name: name, Fleet: pu.file.Fleet, Avoid: avoided(snap, name)}
		fenced := pu.file.Flotilla.Fenced()
		stay := false
		for _, m := range snap.Targets(name) {
			if _, alive := snap.Machines[m]; alive {
				if !u.Fleet.Global && u.Current == "" {
					u.Current = m
				}
			} else if held(name, m, fenced) {
				if keep[name] == nil {
					keep[name] = map[string]bool{}
				}
				keep[name][m] = true
				stay = !u.Fleet.Global
			}
		}
		if stay && u.Current == "" {
			// Its machine is absent, not yet for long enough: the unit stays
			// targeted there, out of this placement.
			continue
		}
		units = append(units, u)
	}
	sort.Slice(units, func(i, j int) bool { return units[i].Name < units[j].Name })
	res := e.placeWithPlan(snap, units, machines, moves)
	for name, why := range res.Unplaced {
		p.unplaced[name] = why
	}
	want := map[string]map[string]bool{}
	for name, m := range res.Targets {
		want[name] = map[string]bool{m: true}
	}
	for name, ms := range res.Global {
		set := make(map[string]bool, len(ms))
		for _, m := range ms {
			set[m] = true
		}
		want[name] = set
	}
	for name, ms := range keep {
		if want[name] == nil {
			want[name] = map[string]bool{}
		}
		for m := range ms {
			want[name][m] = true
		}
	}
	// Two-phase moves: hold a new target while another live machine still
	// reports the unit running.
	surge := e.surges(snap, res)
	for name := range res.Targets {
		target := res.Targets[name]
		if from, ok := surge[name]; ok {
			want[name][from] = true // started on target before stopped on from
			if _, ok := snap.Schedule[name][target]; !ok {
				p.moved++
			}
			continue
		}
		if _, ok := snap.Schedule[name][target]; ok {
			continue
		}
		for m, st := range snap.States[name] {
			if m != target && st.Running() {
				delete(want, name)
				p.unplaced[name] = fmt.Sprintf("waiting for it to stop on %s before starting it on %s", m, target)
				e.waiting[name] = true
				break
			}
		}
		if want[name] != nil {
			p.moved++
		}
	}

	names := map[string]bool{}
	for n := range snap.Schedule {
		names[n] = true
	}
	for n := range want {
		names[n] = true
	}
	for n := range snap.Unplaced {
		names[n] = true
	}
	for n := range p.unplaced {
		names[n] = true
	}
	for n := range snap.Plan.Moves {
		names[n] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, name := range sorted {
		var ops []store.Op
		var cmps []store.Cmp
		job := snap.Jobs[name]
		encs := map[string]string{} // by hash: a pin (a rollout in progress) keeps a machine on its body
		val := func(m string) string {
			h := snap.Hash(name, m)
			if _, ok := encs[h]; !ok {
				encs[h] = registry.Encode(registry.Assignment{Hash: h, Desired: job.Desired})
			}
			return encs[h]
		}
		for m, a := range snap.Schedule[name] {
			if !want[name][m] {
				ops = append(ops, store.OpDelete(e.reg.ScheduleKey(m, name)))
				if absent[m] {
					// Moving off an absent machine: only while it is still
					// absent (it may have registered again since the read).
					cmps = append(cmps, store.Missing(e.reg.MachineKey(m)))
				}
			} else if a.Hash != snap.Hash(name, m) || a.Desired != job.Desired {
				ops = append(ops, store.OpPut(e.reg.ScheduleKey(m, name), val(m), 0))
			}
		}
		for m := range want[name] {
			if _, ok := snap.Schedule[name][m]; !ok {
				ops = append(ops, store.OpPut(e.reg.ScheduleKey(m, name), val(m), 0))
			}
		}
		why, unplaced := p.unplaced[name]
		old, had := snap.Unplaced[name]
		switch {
		case unplaced && (!had || old != why):
			ops = append(ops, store.OpPut(e.reg.UnplacedKey(name), why, 0))
		case !unplaced && had:
			ops = append(ops, store.OpDelete(e.reg.UnplacedKey(name)))
		}
		ops = append(ops, e.moveDone(snap, name, want[name])...)
		if len(ops) > 0 {
			p.batches = append(p.batches, batch{ops: ops, cmps: cmps})
		}
	}
	return p
}

// write applies the batches in guarded transactions of at most
// registry.MaxTxnOps operations and as many conditions, never splitting one
// unit's batch unless it alone is larger than that.
func (e *Engine) write(ctx context.Context, guard store.Cmp, batches []batch) (txns, ops int, err error) {
	c := e.reg.Client()
	var cur []store.Op
	cmps := []store.Cmp{guard}
	flush := func() error {
		if len(cur) == 0 {
			return nil
		}
		ok, _, err := c.Txn(ctx, cmps, cur, nil)
		txns++
		if err != nil {
			return fmt.Errorf("engine: write placement: %w", err)
		}
		if !ok {
			if len(cmps) > 1 {
				// A machine came back, or leadership was lost: the next
				// pass (soon, on the presence change) sorts out which.
				return fmt.Errorf("engine: write placement: %w", errMachineBack)
			}
			return fmt.Errorf("engine: write placement: %w", ErrNotLeader)
		}
		ops += len(cur)
		cur = cur[:0]
		cmps = cmps[:1]
		return nil
	}
	for _, b := range batches {
		if len(cur)+len(b.ops) > registry.MaxTxnOps || len(cmps)+len(b.cmps) > registry.MaxTxnOps {
			if err := flush(); err != nil {
				return txns, ops, err
			}
		}
		cmps = append(cmps, b.cmps...)
		o := b.ops
		// A global unit on many machines may need several transactions;
		// each of its keys stands alone.
		for len(o) > registry.MaxTxnOps {
			cur = append(cur, o[:registry.MaxTxnOps]...)
			if err := flush(); err != nil {
				return txns, ops, err
			}
			o = o[registry.MaxTxnOps:]
		}
		cur = append(cur, o...)
	}
	return txns, ops, flush()
}

// collectBodies deletes stored bodies no job refers to any more. Jobs and
// bodies are read in one snapshot, and each delete is conditioned on the
// body not having been written since (a submit re-writes its body in the
// same transaction as its job), so a body in use is never removed.
func (e *Engine) collectBodies(ctx context.Context, guard store.Cmp) error {
	garbage, err := e.reg.UnusedBodies(ctx)
	if err != nil {
		return err
	}
	c := e.reg.Client()
	for _, kv := range garbage {
		ok, _, err := c.Txn(ctx, []store.Cmp{guard, store.ModRevisionIs(kv.Key, kv.ModRevision)}, []store.Op{store.OpDelete(kv.Key)}, nil)
		if err != nil {
			return fmt.Errorf("engine: collect unused body %s: %w", kv.Key, err)
		}
		if ok {
			e.log.Debug("removed unused unit body", "key", kv.Key)
		}
	}
	return nil
}
