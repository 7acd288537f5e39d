package rollout

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// DefaultKeep is how many finished records a driver keeps by default.
const DefaultKeep = 50

// DriverOptions configures a Driver.
type DriverOptions struct {
	// Registry is the scheduler state. Required.
	Registry *registry.Registry
	// ID names this candidate (the machine id); records say who drove them.
	ID string
	// TTL is the lease of the candidacy: a driver cut off from etcd loses
	// the lead (and stops) within it, and another takes over after it.
	// Ignored with Leases.
	TTL time.Duration
	// Leases, if set, gives the lease each term campaigns with, shared
	// with the rest of the process (serve: the agent's presence lease);
	// the driver resigns at the end of a term but leaves the lease to its
	// owner. Nil: every term grants a lease of TTL of its own and revokes
	// it at its end.
	Leases LeaseSource
	// Poll is the interval of the readiness checks (Options.Poll).
	Poll time.Duration
	// Keep is how many finished records are kept (< 1: DefaultKeep); older
	// ones are deleted.
	Keep   int
	Logger *slog.Logger
}

// LeaseSource hands out the lease a term campaigns with: the current one,
// kept alive by its owner (agent.Agent's Lease: the presence lease).
type LeaseSource interface {
	Lease(ctx context.Context) (*store.Lease, error)
}

// Driver carries out the records (roll, move, drain) the CLI stores, one
// at a time in the order they were written, with a Roller: the same code a
// blocking command used to run itself. Every `scheduler serve` runs one as
// a candidate; the one elected (an etcd election of its own, beside the
// engine's) drives. It writes each record's progress lines and outcome back
// into it, every write guarded by its leadership. A driver that loses the
// lead stops at once (its lease's Done, which comes before the lease can
// expire on the etcd side, so two drivers never act together, given clocks
// that run at about the same rate); the next one elected resumes the record
// where the cluster stands (Roller's Resume).
type Driver struct {
	o   DriverOptions
	reg *registry.Registry
	log *slog.Logger
}

// NewDriver checks o and returns a Driver.
func NewDriver(o DriverOptions) (*Driver, error) {
	if o.Registry == nil {
		return nil, errors.New("rollout driver: no registry")
	}
	if o.ID == "" {
		return nil, errors.New("rollout driver: no id")
	}
	if o.TTL < store.MinTTL {
		o.TTL = store.MinTTL
	}
	if o.Keep < 1 {
		o.Keep = DefaultKeep
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Driver{o: o, reg: o.Registry, log: o.Logger}, nil
}

// Run stands for the lead and drives while elected, until ctx is done; it
// then resigns and returns nil. It blocks.
func (d *Driver) Run(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		err := d.term(ctx)
		if ctx.Err() != nil {
			return nil
		}
		d.log.Warn("rollout driver: lead ended", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	return nil
}

// errLostLead ends a term whose lease is gone.
var errLostLead = errors.New("rollout driver: lost the lead")

// term is one candidacy: campaign, then drive until the lead is lost.
func (d *Driver) term(ctx context.Context) error {
	c := d.reg.Client()
	var lease *store.Lease
	var err error
	if d.o.Leases != nil {
		lease, err = d.o.Leases.Lease(ctx)
	} else {
		lease, err = c.GrantLease(ctx, d.o.TTL)
		if err == nil {
			defer lease.Close()
		}
	}
	if err != nil {
		return err
	}
	lead, err := c.Campaign(ctx, lease, ElectionPrefix(d.reg), d.o.ID)
	if err != nil {
		return err
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		lead.Resign(rctx)
	}()
	d.log.Info("rollout driver: leading", "key", lead.Key())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		select {
		case <-lead.Done():
			return errLostLead
		case <-gctx.Done():
			return nil
		}
	})
	g.Go(func() error { return d.lead(gctx, lead) })
	return g.Wait()
}

// lead carries out records until ctx is done.
func (d *Driver) lead(ctx context.Context, lead *store.Leadership) error {
	for {
		recs, rev, err := list(ctx, d.reg)
		if err != nil {
			return err
		}
		if err := d.prune(ctx, lead, recs); err != nil {
			return err
		}
		var next *stored
		for i := range recs {
			if !recs[i].Over() {
				next = &recs[i]
				break
			}
		}
		if next != nil {
			if err := d.carry(ctx, lead, *next); err != nil {
				return err
			}
			continue
		}
		w := d.reg.Client().WatchPrefix(ctx, RecordPrefix(d.reg), rev+1)
		select {
		case <-ctx.Done():
		case <-w.C:
		}
		w.Close()
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// prune deletes the finished records beyond the newest Keep.
func (d *Driver) prune(ctx context.Context, lead *store.Leadership, recs []stored) error {
	var over []stored
	for _, r := range recs {
		if r.Over() {
			over = append(over, r)
		}
	}
	for _, r := range over[:max(0, len(over)-d.o.Keep)] {
		key := RecordPrefix(d.reg) + r.ID
		if _, _, err := d.reg.Client().Txn(ctx, []store.Cmp{lead.Guard(), store.ModRevisionIs(key, r.mod)}, []store.Op{store.OpDelete(key)}, nil); err != nil {
			return fmt.Errorf("delete rollout %s: %w", r.ID, err)
		}
	}
	return nil
}

// recorder writes a record back as the driver goes, guarded by its lead. Its
// Write takes progress lines (it is the Roller's Out).
type recorder struct {
	mu     sync.Mutex
	ctx    context.Context
	cancel context.CancelCauseFunc
	c      *store.Client
	guards []store.Cmp
	key    string
	rec    Record
	err    error
	buf    []byte
}

// save changes the record and writes it. A write refused (the lead lost) or
// failed ends the run.
func (rc *recorder) save(change func(*Record)) error {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.saveLocked(change)
}

func (rc *recorder) saveLocked(change func(*Record)) error {
	if rc.err != nil {
		return rc.err
	}
	change(&rc.rec)
	ok, _, err := rc.c.Txn(rc.ctx, rc.guards, []store.Op{store.OpPut(rc.key, registry.Encode(rc.rec), 0)}, nil)
	switch {
	case err != nil:
		rc.err = fmt.Errorf("write rollout %s: %w", rc.rec.ID, err)
	case !ok:
		rc.err = fmt.Errorf("write rollout %s: %w", rc.rec.ID, errLostLead)
	}
	if rc.err != nil {
		rc.cancel(rc.err)
	}
	return rc.err
}

func (rc *recorder) Write(p []byte) (int, error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.buf = append(rc.buf, p...)
	var lines []string
	for {
		i := strings.IndexByte(string(rc.buf), '\n')
		if i < 0 {
			break
		}
		lines = append(lines, string(rc.buf[:i]))
		rc.buf = rc.buf[i+1:]
	}
	if len(lines) == 0 {
		return len(p), nil
	}
	if err := rc.saveLocked(func(r *Record) { r.Progress = append(r.Progress, lines...) }); err != nil {
		return 0, err
	}
	return len(p), nil
}

// carry runs one record to its end. It returns an error only when the
// driver must stop (ctx done, lead lost): the record then stays running,
// for the next driver to resume.
func (d *Driver) carry(ctx context.Context, lead *store.Leadership, st stored) error {
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resume := st.State == Running
	rc := &recorder{ctx: rctx, cancel: cancel, c: d.reg.Client(), key: RecordPrefix(d.reg) + st.ID, rec: st.Record}
	// The first write also checks that nobody changed the record meanwhile.
	rc.guards = []store.Cmp{lead.Guard(), store.ModRevisionIs(rc.key, st.mod)}
	err := rc.save(func(r *Record) {
		r.State, r.Driver = Running, d.o.ID
		if r.Started.IsZero() {
			r.Started = time.Now().UTC()
		}
		if resume {
			r.Progress = append(r.Progress, "Resumed by the driver on "+d.o.ID)
		}
	})
	rc.guards = []store.Cmp{lead.Guard()}
	if err != nil {
		if errors.Is(err, errLostLead) {
			return nil // changed meanwhile: read again
		}
		return err
	}
	log := d.log.With("rollout", st.ID, "what", st.What())
	log.Info("rollout driver: carrying out", "resume", resume)
	r, err := New(Options{
		Registry: d.reg, AnnouncePrefix: st.AnnouncePrefix, StatusPrefix: st.StatusPrefix,
		Timeout: st.Timeout, Poll: d.o.Poll, Out: rc,
	})
	if err == nil {
		err = d.execute(rctx, r, rc, resume)
	}
	if ctx.Err() != nil || rc.err != nil {
		log.Warn("rollout driver: stopped before the end; the next driver resumes it", "err", context.Cause(rctx))
		return errors.Join(ctx.Err(), rc.err)
	}
	var f *Failure
	serr := rc.save(func(r *Record) {
		r.Finished = time.Now().UTC()
		r.State = Done
		if err != nil {
			r.State, r.Error = Failed, err.Error()
			if errors.As(err, &f) {
				r.FailedUnit, r.FailedMachine = f.Unit, f.Machine
			}
		}
	})
	if err != nil {
		log.Warn("rollout driver: failed", "err", err)
	} else {
		log.Info("rollout driver: done")
	}
	return serr
}

// recordAnnounced reads which of names are announced now and keeps it in
// the record (saved, so that a resumed rollout waits for the same ones) and
// in rec.
func (rc *recorder) recordAnnounced(ctx context.Context, r *Roller, rec *Record, names []string) error {
	a, err := r.Announced(ctx, names)
	if err != nil {
		return err
	}
	if err := rc.save(func(r *Record) { r.Announced = a }); err != nil {
		return err
	}
	rec.Announced = a
	return nil
}

// execute carries out rc's record with r.
func (d *Driver) execute(ctx context.Context, r *Roller, rc *recorder, resume bool) error {
	rec := rc.rec // the fields read here are the CLI's, not changed by saves
	rec.Targets = slices.Clone(rec.Targets)
	switch rec.Kind {
	case KindRoll:
		for i, t := range rec.Targets {
			b, err := d.reg.Body(ctx, t.Hash)
			if err != nil {
				return fmt.Errorf("roll %s: %w", t.Unit, err)
			}
			rec.Targets[i].Body = b
		}
		if rec.Announced == nil {
			names := make([]string, len(rec.Targets))
			for i, t := range rec.Targets {
				names[i] = t.Unit
			}
			if err := rc.recordAnnounced(ctx, r, &rec, names); err != nil {
				return err
			}
		}
		if err := r.Roll(ctx, rec.Targets, RollOptions{MaxUnavailable: rec.MaxUnavailable, Surge: rec.Surge, Resume: resume, Announced: rec.Announced}); err != nil {
			return err
		}
		fmt.Fprintf(rc, "Rolled %d unit(s) in %s\n", len(rec.Targets), time.Since(rc.rec.Started).Round(10*time.Millisecond))
	case KindMove:
		if rec.Plan == nil {
			p, err := r.PlanMove(ctx, rec.Unit, rec.To)
			if err != nil {
				return err
			}
			if err := rc.save(func(r *Record) { r.Plan = &p }); err != nil {
				return err
			}
			rec.Plan = &p
		}
		if _, err := r.Carry(ctx, *rec.Plan); err != nil {
			return err
		}
	case KindDrain:
		if rec.Announced == nil {
			s, err := d.reg.Snapshot(ctx)
			if err != nil {
				return err
			}
			names, err := r.drainable(ctx, s, rec.Machine)
			if err != nil {
				return err
			}
			if err := rc.recordAnnounced(ctx, r, &rec, names); err != nil {
				return err
			}
		}
		n, err := r.Drain(ctx, rec.Machine, rec.Announced)
		if err != nil {
			return err
		}
		fmt.Fprintf(rc, "Machine %s: %d unit(s) moved away\n", rec.Machine, n)
	default:
		return fmt.Errorf("rollout %s: unknown kind %q", rec.ID, rec.Kind)
	}
	return rc.err
}
