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
}

type parsed struct {
	hash string
	file *unit.File
	err  error
}

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
	return &Engine{opts: opts, reg: opts.Registry, log: opts.Logger, cache: map[string]parsed{}, waiting: map[string]bool{}}, nil
}

// Run campaigns for leadership and reconciles while leader, until ctx is
// done; it then resigns and returns nil.
func (e *Engine) Run(ctx context.Context) error {
	c := e.reg.Client()
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := e.term(ctx, c)
		if ctx.Err() != nil {
			return nil
		}
		e.log.Warn("engine leadership ended", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
	return nil
}

// term is one candidacy: campaign, then lead until leadership is lost.
func (e *Engine) term(ctx context.Context, c *store.Client) error {
	lease, err := c.GrantLease(ctx, e.opts.TTL)
	if err != nil {
		return err
	}
	defer lease.Close()
	lead, err := c.Campaign(ctx, lease, e.reg.ElectionPrefix(), e.opts.ID)
	if err != nil {
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		lead.Resign(rctx)
	}()
	e.log.Info("engine: became leader", "key", lead.Key(), "rev", lead.Rev())
	return e.lead(ctx, lead)
}

// lead reconciles until ctx is done or leadership is lost.
func (e *Engine) lead(ctx context.Context, lead *store.Leadership) error {
	c := e.reg.Client()
	period := time.NewTicker(e.opts.Period)
	defer period.Stop()
	for {
		st, err := e.pass(ctx, lead.Guard())
		if err != nil {
			return err
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
// jobs and machines always; a unit's reported state only while the unit
// waits to stop somewhere before it may start elsewhere. The engine's own
// writes (schedule/, unplaced/), bodies and the election do not.
func (e *Engine) relevant(key string) bool {
	rest := strings.TrimPrefix(key, e.reg.Prefix())
	switch {
	case strings.HasPrefix(rest, "jobs/"), strings.HasPrefix(rest, "machines/"), plannedChange(rest):
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
	for {
		select {
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
	batches  [][]store.Op // each: the ops of one unit
	unplaced map[string]string
	moved    int
}

// plan computes the writes that bring the registry to the placement.
func (e *Engine) plan(snap *registry.Snapshot) plan {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := plan{unplaced: map[string]string{}}
	e.waiting = map[string]bool{}
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
		u := schedule.Unit{Name: name, Fleet: pu.file.Fleet}
		if !u.Fleet.Global {
			for _, m := range snap.Targets(name) {
				if _, alive := snap.Machines[m]; alive {
					u.Current = m
					break
				}
			}
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
			p.batches = append(p.batches, ops)
		}
	}
	return p
}

// write applies the batches in guarded transactions of at most
// registry.MaxTxnOps operations, never splitting one unit's batch unless it
// alone is larger than that.
func (e *Engine) write(ctx context.Context, guard store.Cmp, batches [][]store.Op) (txns, ops int, err error) {
	c := e.reg.Client()
	var cur []store.Op
	flush := func() error {
		if len(cur) == 0 {
			return nil
		}
		ok, _, err := c.Txn(ctx, []store.Cmp{guard}, cur, nil)
		txns++
		if err != nil {
			return fmt.Errorf("engine: write placement: %w", err)
		}
		if !ok {
			return fmt.Errorf("engine: write placement: %w", ErrNotLeader)
		}
		ops += len(cur)
		cur = cur[:0]
		return nil
	}
	for _, b := range batches {
		if len(cur)+len(b) > registry.MaxTxnOps {
			if err := flush(); err != nil {
				return txns, ops, err
			}
		}
		// A global unit on many machines may need several transactions;
		// each of its keys stands alone.
		for len(b) > registry.MaxTxnOps {
			cur = append(cur, b[:registry.MaxTxnOps]...)
			if err := flush(); err != nil {
				return txns, ops, err
			}
			b = b[registry.MaxTxnOps:]
		}
		cur = append(cur, b...)
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
