package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/unit"
)

// adopter is an executor that finds units an earlier agent installed (the
// systemd executor); Adopt removes those keep rejects.
type adopter interface {
	Adopt(ctx context.Context, keep func(name string) bool) ([]string, error)
}

// session is one registration: one lease, from grant to loss or ctx end.
type session struct {
	a     *Agent
	lease *store.Lease
	// desired is what the engine targets here, by unit.
	desired map[string]registry.Assignment
	// reported is the last state written for each unit.
	reported map[string]registry.UnitState
	// cutOff is when renewals started failing; zero while they succeed.
	cutOff time.Time
	// unread holds the units whose body could not be read (etcd slow or
	// unreachable, not a missing body): the next poll tries again.
	unread map[string]bool
}

// session registers the machine and serves it until the presence lease is
// lost or ctx ends. registered reports whether it got as far as holding the
// presence key.
func (a *Agent) session(ctx context.Context) (registered bool, err error) {
	c := a.reg.Client()
	gctx, cancel := context.WithTimeout(ctx, max(a.opts.TTL, 2*time.Second))
	asked := time.Now()
	lease, err := c.GrantLease(gctx, a.opts.TTL)
	cancel()
	if err != nil {
		return false, fmt.Errorf("register machine %s: %w", a.opts.Machine.ID, err)
	}
	a.leases[lease.ID()] = true
	if err := a.register(ctx, lease); err != nil {
		lease.Close()
		return false, err
	}
	a.writeLeaseFile(lease.ID())
	a.setPresence(lease, false)
	// The new lease cannot expire before asked+TTL: fenced units may run on.
	a.mu.Lock()
	a.renewed = asked
	a.mu.Unlock()
	defer func() {
		a.setPresence(nil, false)
		if ctx.Err() != nil {
			// A shutdown: units stop before the presence key goes, so that
			// the engine never sees this machine gone while they run. A
			// restart (handover) keeps both for the next run.
			a.shutdown()
			if a.handingOver() {
				lease.Abandon()
				return
			}
			if err := lease.Close(); err != nil {
				a.log.Warn("revoke presence lease; the machine leaves when it runs out", "err", err)
			}
			return
		}
		// Cut off: the lease is gone or unreachable; units keep running.
		lease.Abandon()
	}()
	s := &session{
		a: a, lease: lease,
		reported: map[string]registry.UnitState{}, unread: map[string]bool{},
	}
	a.log.Info("machine registered", "ip", a.opts.Machine.IP, "lease", fmt.Sprintf("%x", int64(lease.ID())), "ttl", lease.TTL())

	poll := time.NewTicker(a.opts.PollInterval)
	defer poll.Stop()
	journal := c.WatchPrefix(ctx, a.reg.JournalRequestPrefix(a.opts.Machine.ID), 0)
	defer journal.Close()
	probe := time.NewTicker(max(lease.TTL()/4, 250*time.Millisecond))
	defer probe.Stop()
	for {
		rev, err := s.resync(ctx)
		if err != nil {
			return true, err
		}
		w := c.WatchPrefix(ctx, a.reg.SchedulePrefix(a.opts.Machine.ID), rev+1)
		err = s.watch(ctx, w, journal, poll.C, probe.C)
		w.Close()
		if !errors.Is(err, store.ErrCompacted) {
			return true, err
		}
		a.log.Warn("schedule watch compacted; reading afresh", "err", err)
	}
}

// register writes the presence key bound to lease, in a transaction that
// succeeds only if the key is absent or bound to a lease of this machine. A
// key bound to another lease is waited out while that lease runs down (a
// previous run of this machine killed without a trace): a lease that is
// renewed meanwhile, or outlives its TTL, belongs to a live process
// elsewhere, and registration is refused with ErrDuplicateMachine.
func (a *Agent) register(ctx context.Context, lease *store.Lease) error {
	c := a.reg.Client()
	key := a.reg.MachineKey(a.opts.Machine.ID)
	val := registry.Encode(a.opts.Machine)
	id := a.opts.Machine.ID
	waitUntil := time.Now().Add(lease.TTL() + 2*time.Second)
	var holder store.LeaseID
	var last time.Duration
	for {
		rctx, cancel := context.WithTimeout(ctx, max(a.opts.TTL/2, time.Second))
		kv, found, _, err := c.Get(rctx, key)
		cancel()
		if err != nil {
			return fmt.Errorf("register machine %s: %w", id, err)
		}
		var cond store.Cmp
		switch {
		case !found:
			cond = store.Missing(key)
		case a.leases[kv.Lease]:
			cond = store.ModRevisionIs(key, kv.ModRevision)
		}
		if !found || a.leases[kv.Lease] {
			rctx, cancel := context.WithTimeout(ctx, max(a.opts.TTL/2, time.Second))
			ok, _, err := c.Txn(rctx, []store.Cmp{cond}, []store.Op{store.OpPut(key, val, lease.ID())}, nil)
			cancel()
			if err != nil {
				return fmt.Errorf("register machine %s: %w", id, err)
			}
			if ok {
				return nil
			}
			continue // changed under us: look again
		}
		other, _ := a.reg.DecodeMachine(kv)
		rctx, cancel = context.WithTimeout(ctx, max(a.opts.TTL/2, time.Second))
		left, alive, err := c.LeaseRemaining(rctx, kv.Lease)
		cancel()
		if err != nil {
			return fmt.Errorf("register machine %s: %w", id, err)
		}
		renewedMeanwhile := alive && holder == kv.Lease && left > last
		if renewedMeanwhile || time.Now().After(waitUntil) {
			return fmt.Errorf("register machine %s: %w: the machine at %s holds it (lease %x, kept alive); "+
				"two machines share this id (a cloned /etc/machine-id?): give this one its own --machine-id",
				id, ErrDuplicateMachine, other.IP, int64(kv.Lease))
		}
		if holder != kv.Lease {
			a.log.Warn("machine id held by another lease; waiting to see whether it runs out (a previous run of this machine) or is kept alive (a second machine with this id)",
				"holder-ip", other.IP, "lease", fmt.Sprintf("%x", int64(kv.Lease)), "left", left)
		}
		holder, last = kv.Lease, left
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// resync reads everything targeted here, stops what is not, starts what is.
func (s *session) resync(ctx context.Context) (int64, error) {
	a := s.a
	rctx, cancel := s.rpc(ctx)
	kvs, rev, err := a.reg.Client().GetPrefix(rctx, a.reg.SchedulePrefix(a.opts.Machine.ID))
	cancel()
	if err != nil {
		return 0, err
	}
	s.desired = map[string]registry.Assignment{}
	for _, name := range a.takeHeld() {
		delete(a.started, name)
	}
	for _, kv := range kvs {
		as, err := a.reg.DecodeAssignment(kv)
		if err != nil {
			a.log.Error("bad schedule key", "err", err)
			continue
		}
		s.desired[as.Unit] = as
	}
	if ad, ok := a.ex.(adopter); ok {
		// Units installed by an earlier run (systemd keeps them across an
		// agent restart): keep what is targeted here, remove the rest.
		removed, err := ad.Adopt(ctx, func(name string) bool { _, ok := s.desired[name]; return ok })
		for _, name := range removed {
			a.log.Info("removed unit not targeted here", "unit", name)
		}
		if err != nil {
			a.log.Error("adopt units", "err", err)
		}
	}
	states, err := a.ex.States(ctx)
	if err != nil {
		return 0, fmt.Errorf("list units: %w", err)
	}
	for name := range states {
		if _, ok := s.desired[name]; !ok {
			s.apply(ctx, name)
		}
	}
	for name := range s.desired {
		s.apply(ctx, name)
	}
	s.report(ctx)
	return rev, nil
}

func (s *session) watch(ctx context.Context, w, journal *store.Watch, poll, probe <-chan time.Time) error {
	a := s.a
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.lease.Done():
			return fmt.Errorf("%w: no renewal confirmed for a whole TTL (%s)", errLeaseLost, s.lease.TTL())
		case <-probe:
			if err := s.probe(ctx); err != nil {
				return err
			}
		case b, ok := <-w.C:
			if !ok {
				return ctx.Err()
			}
			if b.Err != nil {
				return b.Err
			}
			changed := map[string]bool{}
			for _, ev := range b.Events {
				if ev.Type == store.EventDelete {
					_, name, err := a.reg.ParseScheduleKey(ev.KV.Key)
					if err != nil {
						a.log.Error("bad schedule key", "err", err)
						continue
					}
					delete(s.desired, name)
					changed[name] = true
					continue
				}
				as, err := a.reg.DecodeAssignment(ev.KV)
				if err != nil {
					a.log.Error("bad schedule key", "err", err)
					continue
				}
				s.desired[as.Unit] = as
				changed[as.Unit] = true
			}
			for name := range changed {
				s.apply(ctx, name)
			}
			s.report(ctx)
		case b, ok := <-journal.C:
			if !ok {
				return ctx.Err()
			}
			if b.Err != nil {
				return b.Err
			}
			for _, ev := range b.Events {
				if ev.Type == store.EventPut {
					s.answerJournal(ctx, ev.KV)
				}
			}
		case <-a.ex.Changes():
			s.report(ctx)
		case <-poll:
			for name := range s.unread {
				s.apply(ctx, name)
			}
			s.report(ctx)
		}
	}
}

// apply brings one unit to what is desired for it here.
func (s *session) apply(ctx context.Context, name string) {
	a := s.a
	as, want := s.desired[name]
	delete(s.unread, name)
	log := a.log.With("unit", name)
	switch {
	case !want:
		delete(a.started, name)
		delete(a.failed, name)
		delete(a.fails, name)
		if err := a.ex.Remove(ctx, name); err != nil {
			log.Error("remove unit", "err", err)
			return
		}
		a.unfence(name)
		log.Info("unit removed")
	case as.Desired == registry.Launched:
		if a.started[name] == as.Hash {
			return
		}
		body, err := s.body(ctx, as.Hash)
		if err != nil && !errors.Is(err, registry.ErrNotFound) && ctx.Err() == nil {
			// Not the unit's fault: start it once the body can be read.
			a.failed[name] = fmt.Sprintf("read the unit's body (trying again): %v", err)
			s.unread[name] = true
			log.Warn("read unit body; trying again at the next poll", "hash", registry.ShortHash(as.Hash), "err", err)
			return
		}
		if err == nil {
			spec := executor.Spec{Name: name, Body: body, Hash: as.Hash, EnvFile: a.opts.EnvFile, Env: a.env}
			spec.Fenced = a.isFenced(name, as.Hash, body)
			if spec.Fenced {
				a.fenceMu.Lock()
				if a.fenceExpired() {
					a.fenceMu.Unlock()
					a.mu.Lock()
					a.held[name] = true
					a.mu.Unlock()
					log.Warn("fenced unit (OnDisconnect=stop) not started: no renewal of the presence lease confirmed recently; starting it once one is")
					return
				}
				a.mu.Lock()
				a.fenced[name] = true
				a.mu.Unlock()
				err = a.ex.Start(ctx, spec)
				a.fenceMu.Unlock()
			} else {
				a.unfence(name)
				err = a.ex.Start(ctx, spec)
			}
		}
		if err != nil {
			a.failed[name] = err.Error()
			a.started[name] = as.Hash // do not retry the same body in a loop
			log.Error("start unit", "err", err)
			return
		}
		delete(a.failed, name)
		a.started[name] = as.Hash
		log.Info("unit started", "hash", registry.ShortHash(as.Hash))
	default: // loaded: installed here, not running
		delete(a.failed, name)
		a.resetFailures(name)
		if _, ok := a.started[name]; ok {
			delete(a.started, name)
			if err := a.ex.Stop(ctx, name); err != nil {
				log.Error("stop unit", "err", err)
				return
			}
			a.unfence(name)
			log.Info("unit stopped")
		}
	}
}

// unfence forgets a unit that is not (or no longer) fenced here.
func (a *Agent) unfence(name string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.fenced, name)
	delete(a.held, name)
}

// isFenced reports whether body (of hash) asks OnDisconnect=stop. A body
// that does not parse is not fenced here: the executor refuses it anyway.
func (a *Agent) isFenced(name, hash string, body []byte) bool {
	if f, ok := a.fencedBody[hash]; ok {
		return f
	}
	f, err := unit.Parse(name, body)
	fenced := err == nil && f.Flotilla.Fenced()
	a.fencedBody[hash] = fenced
	return fenced
}

func (s *session) body(ctx context.Context, hash string) ([]byte, error) {
	if b, ok := s.a.bodies[hash]; ok {
		return b, nil
	}
	rctx, cancel := s.rpc(ctx)
	defer cancel()
	b, err := s.a.reg.Body(rctx, hash)
	if err != nil {
		return nil, err
	}
	s.a.bodies[hash] = b
	return b, nil
}

// report writes the state of every unit targeted here (and of units still
// being stopped), bound to the presence lease, and deletes the keys of units
// that are gone. Only changes are written.
func (s *session) report(ctx context.Context) {
	a := s.a
	states, err := a.ex.States(ctx)
	if err != nil {
		a.log.Error("read unit states", "err", err)
		return
	}
	s.handleFailed(ctx, states)
	now := map[string]registry.UnitState{}
	for name, as := range s.desired {
		st, ok := states[name]
		us := registry.UnitState{Hash: as.Hash, Load: "loaded", Active: "inactive", Sub: "dead"}
		if ok {
			us.Load, us.Active, us.Sub = st.Load, st.Active, st.Sub
		}
		if h, launched := a.started[name]; launched && h == as.Hash && as.Desired == registry.Launched {
			us.State = string(registry.Launched)
		} else if as.Desired == registry.Loaded {
			us.State = string(registry.Loaded)
		}
		if msg, bad := a.failed[name]; bad {
			us.Load, us.Active, us.Sub, us.Message = "error", "failed", "failed", msg
		}
		a.failureReport(name, &us)
		now[name] = us
	}
	for name, st := range states {
		if _, ok := now[name]; !ok {
			now[name] = registry.UnitState{Load: st.Load, Active: st.Active, Sub: st.Sub}
		}
	}
	for name, us := range now {
		if old, ok := s.reported[name]; ok && old == us {
			continue
		}
		rctx, cancel := s.rpc(ctx)
		_, err := s.lease.Put(rctx, a.reg.StateKey(name, a.opts.Machine.ID), registry.Encode(us))
		cancel()
		if err != nil {
			// Cut off: the rest would time out too; the next report retries.
			a.log.Warn("report unit state", "unit", name, "err", err)
			return
		}
		s.reported[name] = us
	}
	for name := range s.reported {
		if _, ok := now[name]; ok {
			continue
		}
		rctx, cancel := s.rpc(ctx)
		_, err := a.reg.Client().Delete(rctx, a.reg.StateKey(name, a.opts.Machine.ID))
		cancel()
		if err != nil {
			a.log.Warn("clear unit state", "unit", name, "err", err)
			return
		}
		delete(s.reported, name)
	}
}

// answerJournal answers a request for a unit's last log lines.
func (s *session) answerJournal(ctx context.Context, kv store.KV) {
	a := s.a
	rest := strings.TrimPrefix(kv.Key, a.reg.JournalRequestPrefix(a.opts.Machine.ID))
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		return
	}
	name, nonce := rest[:i], rest[i+1:]
	n, err := strconv.Atoi(string(kv.Value))
	if err != nil || n <= 0 || n > 10000 {
		n = 10
	}
	var resp registry.JournalResponse
	lines, err := a.ex.Journal(ctx, name, n)
	resp.Lines = lines
	if err != nil {
		resp.Error = err.Error()
	}
	rctx, cancel := s.rpc(ctx)
	defer cancel()
	if _, err := s.lease.Put(rctx, a.reg.JournalResponseKey(nonce), registry.Encode(resp)); err != nil {
		a.log.Warn("answer journal request", "unit", name, "err", err)
	}
}

// probe renews the presence lease once and notes when the renewal was
// sent: fenced units live on that. Out of contact, the agent keeps its units
// running and says so once; the session ends when the lease is gone (etcd
// says so, or no renewal was confirmed for a whole TTL: lease.Done).
func (s *session) probe(ctx context.Context) error {
	a := s.a
	ttl := s.lease.TTL()
	pctx, cancel := context.WithTimeout(ctx, max(ttl/4, 500*time.Millisecond))
	sent, err := s.lease.Renew(pctx)
	cancel()
	switch {
	case err == nil:
		a.noteRenewal(sent)
		if !s.cutOff.IsZero() {
			a.log.Info("contact with etcd restored; units kept running", "after", time.Since(s.cutOff).Round(time.Millisecond))
			s.cutOff = time.Time{}
		}
		for _, name := range a.takeHeld() {
			delete(a.started, name)
			s.apply(ctx, name)
		}
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, store.ErrLeaseLost):
		return fmt.Errorf("%w: %v", errLeaseLost, err)
	}
	if s.cutOff.IsZero() {
		s.cutOff = time.Now()
		args := []any{"err", err, "ttl", ttl}
		if n := a.fencedCount(); n > 0 {
			args = append(args, "fenced", n, "fenced-deadline", a.fenceDeadline().Format(time.RFC3339Nano))
		}
		a.log.Warn("lost contact with etcd; units keep running (fenced units stop at their deadline)", args...)
	}
	return nil
}

// rpc bounds one etcd call of the session loop, so that a cut-off etcd never
// holds the loop (and its lease probe) for long.
func (s *session) rpc(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, max(s.lease.TTL()/3, 500*time.Millisecond))
}
