// Package engine is the scheduler's reconciler. Every `scheduler serve` runs
// one as a candidate; the one elected leader (etcd concurrency.Election under
// <prefix>engine) reads the registry once, at a revision, and keeps it
// current from a watch from there (registry.Live; a compacted watch reads
// afresh). On every relevant change (jobs, machines coming and going,
// metadata, planned changes, unit states it waits for), debounced, and on a
// period, it asks internal/schedule where every loaded or launched unit
// belongs and writes the difference to the schedule/ and unplaced/ keys. A
// pass plans only from a state that includes the leader's own last write.
//
// Fencing: every write is a transaction conditioned on the leader key still
// existing with the revision it was created at, so an engine that lost its
// leadership (its lease expired while it was cut off) cannot move a unit.
// Writes are batched, up to registry.MaxTxnOps per transaction, keeping the
// writes of one unit in one transaction; a few transactions are in flight at
// once, and a leader's pass writes a bounded number of them, leaving the
// rest to the passes that follow, which write it without planning again
// unless a relevant change came meanwhile (a pass's planning is the same
// whole-registry work whatever it changes, so the first placement of ten
// thousand units is planned once, not once per bounded write).
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
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/registry"
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
	// TTL is the leadership lease's; default 10s. Ignored with Leases.
	TTL time.Duration
	// Leases, if set, gives the lease each term campaigns with, shared
	// with the rest of the process (serve: the agent's presence lease);
	// the engine resigns at the end of a term but leaves the lease to its
	// owner. Nil: every term grants a lease of TTL of its own and revokes
	// it at its end.
	Leases LeaseSource
	// Period is the longest time between two passes; default 30s.
	Period time.Duration
	// Debounce is the pause in changes a pass waits for (at most ten
	// Debounces after the first change); default 50ms.
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

// LeaseSource hands out the lease a term campaigns with: the current one,
// kept alive by its owner (agent.Agent's Lease: the presence lease).
type LeaseSource interface {
	Lease(ctx context.Context) (*store.Lease, error)
}

// PassStats describes one pass.
type PassStats struct {
	Duration time.Duration
	// Plan is the part of Duration spent planning (the rest: reading the
	// bodies it had not parsed, and writing).
	Plan      time.Duration
	Units     int // jobs considered
	Machines  int
	Requests  int // etcd requests made (reads and transactions)
	Txns      int
	Ops       int // operations written
	Unplaced  int
	Moved     int // units given a new machine
	Unchanged bool
	// Partial says the pass wrote only part of what it planned (a leader's
	// pass writes a bounded number of transactions); another follows.
	Partial bool
	// Continued says the pass planned nothing: it wrote the next part of
	// an earlier partial pass's plan, which no change since had made stale
	// (Units and Machines are that plan's).
	Continued bool
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
	// goneAt is when the leader's watch saw each machine's presence go.
	goneAt map[string]time.Time

	// bodies holds the unit bodies the watch delivered since the last
	// pass, by hash: the pass parses them without reading them.
	bodies map[string][]byte
	// collect says a job or pin changed since unused bodies were last
	// collected.
	collect bool
	// written is the revision of the leader's last write: a pass plans
	// from a state that includes it.
	written int64
	// watched says the passes plan from the leader's watch-kept state,
	// whose every event note sees; loaded then says that no job or body
	// changed since loadUnits last brought the cache up to date, which it
	// then need not check again.
	watched, loaded bool
	// rest is what a partial pass planned and left unwritten, for the
	// passes that follow to write without planning again, until a relevant
	// change (or a reported state of a unit it takes off a machine) makes
	// it stale.
	rest unwritten
}

// unwritten is the unwritten part of a partial pass's plan.
type unwritten struct {
	txns []txn
	// moving holds the units the txns take off a machine, or that are
	// reported where they are not wanted: a state one of them reports may
	// change the plan (see twoPhase); the others' may not.
	moving map[string]bool
	// units and machines the plan considered, for PassStats.
	nUnits, nMachines int
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
		absentSince: map[string]time.Time{}, goneAt: map[string]time.Time{}, bodies: map[string][]byte{},
		healthySince: time.Now()}, nil
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
	lease, err := e.lease(ctx, c)
	if err != nil {
		return false, err
	}
	if e.opts.Leases == nil {
		defer lease.Close()
	}
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
	e.goneAt, e.bodies, e.collect, e.written, e.rest = map[string]time.Time{}, map[string][]byte{}, true, 0, unwritten{}
	e.mu.Unlock()
	return true, e.lead(ctx, lead)
}

// lease is the lease a term campaigns with: Options.Leases's, or a new
// one of its own.
func (e *Engine) lease(ctx context.Context, c *store.Client) (*store.Lease, error) {
	if e.opts.Leases != nil {
		return e.opts.Leases.Lease(ctx)
	}
	return c.GrantLease(ctx, e.opts.TTL)
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

// loadUnits parses the body of every job whose hash is not cached.
func (e *Engine) loadUnits(ctx context.Context, snap *registry.Snapshot) (requests int, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.watched && e.loaded {
		return 0, nil
	}
	requests, complete, err := e.loadMissing(ctx, snap)
	e.loaded = err == nil && complete
	return requests, err
}

// loadMissing is loadUnits's work; complete says every job's body was
// found. e.mu is held.
func (e *Engine) loadMissing(ctx context.Context, snap *registry.Snapshot) (requests int, complete bool, err error) {
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
	// Bodies the watch delivered need no read.
	bodies := e.bodies
	e.bodies = map[string][]byte{}
	var unread []registry.Job
	for _, j := range missing {
		if _, ok := bodies[j.Hash]; !ok {
			unread = append(unread, j)
		}
	}
	if len(unread) > 20 {
		all, err := e.reg.Bodies(ctx)
		if err != nil {
			return 1, false, err
		}
		bodies, requests = all, 1
	} else {
		for _, j := range unread {
			if _, ok := bodies[j.Hash]; ok {
				continue
			}
			b, err := e.reg.Body(ctx, j.Hash)
			requests++
			if errors.Is(err, registry.ErrNotFound) {
				continue
			}
			if err != nil {
				return requests, false, err
			}
			bodies[j.Hash] = b
		}
	}
	complete = true
	shared := map[string]*unit.File{}
	for _, j := range missing {
		b, ok := bodies[j.Hash]
		if !ok {
			e.cache[j.Name] = parsed{hash: j.Hash, err: fmt.Errorf("body %s is missing", registry.ShortHash(j.Hash))}
			complete = false
			continue
		}
		e.cache[j.Name] = parseShared(j.Name, j.Hash, b, shared)
	}
	return requests, complete, nil
}

// parseShared parses body (of hash) as unit name, and checks it can be
// started. A body without a specifier ('%') parses the same under every
// name of one type, but for the name itself: shared keeps the first such
// parse of each body and type, and later names get a copy of it with their
// own name. Anything else (a specifier, an error, a bad or template name)
// is parsed in full, so that every error names its own unit.
func parseShared(name, hash string, body []byte, shared map[string]*unit.File) parsed {
	key := hash + " " + path.Ext(name)
	if f, ok := shared[key]; ok {
		if n, err := unit.ParseName(name); err == nil && !n.IsTemplate() {
			g := *f
			g.Name = n
			return parsed{hash: hash, file: &g}
		}
	}
	f, err := unit.Parse(name, body)
	if err == nil {
		err = f.CheckStartable()
	}
	if err == nil && !bytes.ContainsRune(body, '%') {
		shared[key] = f
	}
	return parsed{hash: hash, file: f, err: err}
}

// txn is one guarded transaction of a pass.
type txn struct {
	cmps   []store.Cmp
	ops    []store.Op
	moving []string // the units whose writes it holds that take one off a machine
}

// txns packs the batches into transactions of at most registry.MaxTxnOps
// operations and as many conditions (the guard first), never splitting one
// unit's batch unless it alone is larger than that.
func txns(guard store.Cmp, batches []batch) []txn {
	var out []txn
	cur := txn{cmps: []store.Cmp{guard}}
	flush := func() {
		if len(cur.ops) > 0 {
			out = append(out, cur)
		}
		cur = txn{cmps: []store.Cmp{guard}}
	}
	for _, b := range batches {
		if len(cur.ops)+len(b.ops) > registry.MaxTxnOps || len(cur.cmps)+len(b.cmps) > registry.MaxTxnOps {
			flush()
		}
		cur.cmps = append(cur.cmps, b.cmps...)
		if b.moving {
			cur.moving = append(cur.moving, b.unit)
		}
		o := b.ops
		// A global unit on many machines may need several transactions;
		// each of its keys stands alone.
		for len(o) > registry.MaxTxnOps {
			cur.ops = append(cur.ops, o[:registry.MaxTxnOps]...)
			flush()
			if b.moving {
				cur.moving = append(cur.moving, b.unit)
			}
			o = o[registry.MaxTxnOps:]
		}
		cur.ops = append(cur.ops, o...)
	}
	flush()
	return out
}

// writeInFlight is how many of a pass's transactions are in flight at once:
// each holds whole units, so their order does not matter.
const writeInFlight = 4

// write applies the transactions, at most limit of them (0: all; partial
// reports that some were left, returned as rest), writeInFlight at a time.
// It returns the revision of its last transaction.
func (e *Engine) write(ctx context.Context, all []txn, limit int) (res writeResult, rest []txn, err error) {
	if limit > 0 && len(all) > limit {
		all, rest, res.partial = all[:limit], all[limit:], true
	}
	c := e.reg.Client()
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(writeInFlight)
	for _, t := range all {
		g.Go(func() error {
			ok, r, err := c.Txn(ctx, t.cmps, t.ops, nil)
			mu.Lock()
			defer mu.Unlock()
			res.txns++
			res.rev = max(res.rev, r)
			switch {
			case err != nil:
				return fmt.Errorf("engine: write placement: %w", err)
			case !ok && len(t.cmps) > 1:
				// A machine came back, or leadership was lost: the next
				// pass (soon, on the presence change) sorts out which.
				return fmt.Errorf("engine: write placement: %w", errMachineBack)
			case !ok:
				return fmt.Errorf("engine: write placement: %w", ErrNotLeader)
			}
			res.ops += len(t.ops)
			return nil
		})
	}
	err = g.Wait()
	return res, rest, err
}

// writeResult is what write did.
type writeResult struct {
	txns, ops int
	rev       int64
	partial   bool
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
