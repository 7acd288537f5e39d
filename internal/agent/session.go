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
	// started is the hash each launched unit was last started with.
	started map[string]string
	// failed holds units the executor refused, with the error.
	failed map[string]string
	// reported is the last state written for each unit.
	reported map[string]registry.UnitState
	bodies   map[string][]byte
	// lastContact is when etcd last confirmed the lease alive.
	lastContact time.Time
}

func (a *Agent) session(ctx context.Context) error {
	c := a.reg.Client()
	lease, err := c.GrantLease(ctx, a.opts.TTL)
	if err != nil {
		return fmt.Errorf("register machine %s: %w", a.opts.Machine.ID, err)
	}
	defer lease.Close()
	// Units stop before the presence key goes, so that the engine never
	// sees this machine gone while its units still run.
	defer a.stopAll()
	s := &session{
		a: a, lease: lease,
		started:  map[string]string{},
		failed:   map[string]string{},
		reported: map[string]registry.UnitState{},
		bodies:   map[string][]byte{},
	}
	if _, err := lease.Put(ctx, a.reg.MachineKey(a.opts.Machine.ID), registry.Encode(a.opts.Machine)); err != nil {
		return fmt.Errorf("register machine %s: %w", a.opts.Machine.ID, err)
	}
	a.log.Info("machine registered", "ip", a.opts.Machine.IP, "lease", fmt.Sprintf("%x", int64(lease.ID())), "ttl", lease.TTL())

	poll := time.NewTicker(a.opts.PollInterval)
	defer poll.Stop()
	journal := c.WatchPrefix(ctx, a.reg.JournalRequestPrefix(a.opts.Machine.ID), 0)
	defer journal.Close()
	s.lastContact = time.Now()
	probe := time.NewTicker(lease.TTL() / 4)
	defer probe.Stop()
	for {
		rev, err := s.resync(ctx)
		if err != nil {
			return err
		}
		w := c.WatchPrefix(ctx, a.reg.SchedulePrefix(a.opts.Machine.ID), rev+1)
		err = s.watch(ctx, w, journal, poll.C, probe.C)
		w.Close()
		if !errors.Is(err, store.ErrCompacted) {
			return err
		}
		a.log.Warn("schedule watch compacted; reading afresh", "err", err)
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
			return errLeaseLost
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
			s.report(ctx)
		}
	}
}

// apply brings one unit to what is desired for it here.
func (s *session) apply(ctx context.Context, name string) {
	a := s.a
	as, want := s.desired[name]
	log := a.log.With("unit", name)
	switch {
	case !want:
		delete(s.started, name)
		delete(s.failed, name)
		if err := a.ex.Remove(ctx, name); err != nil {
			log.Error("remove unit", "err", err)
			return
		}
		log.Info("unit removed")
	case as.Desired == registry.Launched:
		if s.started[name] == as.Hash {
			return
		}
		body, err := s.body(ctx, as.Hash)
		if err == nil {
			err = a.ex.Start(ctx, executor.Spec{Name: name, Body: body, Hash: as.Hash, EnvFile: a.opts.EnvFile, Env: a.env})
		}
		if err != nil {
			s.failed[name] = err.Error()
			s.started[name] = as.Hash // do not retry the same body in a loop
			log.Error("start unit", "err", err)
			return
		}
		delete(s.failed, name)
		s.started[name] = as.Hash
		log.Info("unit started", "hash", registry.ShortHash(as.Hash))
	default: // loaded: installed here, not running
		delete(s.failed, name)
		if _, ok := s.started[name]; ok {
			delete(s.started, name)
			if err := a.ex.Stop(ctx, name); err != nil {
				log.Error("stop unit", "err", err)
				return
			}
			log.Info("unit stopped")
		}
	}
}

func (s *session) body(ctx context.Context, hash string) ([]byte, error) {
	if b, ok := s.bodies[hash]; ok {
		return b, nil
	}
	rctx, cancel := s.rpc(ctx)
	defer cancel()
	b, err := s.a.reg.Body(rctx, hash)
	if err != nil {
		return nil, err
	}
	s.bodies[hash] = b
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
	now := map[string]registry.UnitState{}
	for name, as := range s.desired {
		st, ok := states[name]
		us := registry.UnitState{Hash: as.Hash, Load: "loaded", Active: "inactive", Sub: "dead"}
		if ok {
			us.Load, us.Active, us.Sub = st.Load, st.Active, st.Sub
		}
		if h, launched := s.started[name]; launched && h == as.Hash && as.Desired == registry.Launched {
			us.State = string(registry.Launched)
		} else if as.Desired == registry.Loaded {
			us.State = string(registry.Loaded)
		}
		if msg, bad := s.failed[name]; bad {
			us.Load, us.Active, us.Sub, us.Message = "error", "failed", "failed", msg
		}
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
			a.log.Warn("report unit state", "unit", name, "err", err)
			continue
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
			continue
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

// probe asks etcd whether the presence lease is alive. Out of contact for a
// third of the TTL (at least 1.5s), the agent gives the machine up before etcd can expire
// the lease (at the earliest about two thirds of the TTL after the last
// keepalive it received): its units are then stopping, or stopped, before
// the engine may start them elsewhere.
func (s *session) probe(ctx context.Context) error {
	ttl := s.lease.TTL()
	// With very short TTLs (tests) the silence allowed stays long enough to
	// ride out an etcd leader election, which does not expire leases.
	threshold := max(ttl/3, 1500*time.Millisecond)
	pctx, cancel := context.WithTimeout(ctx, min(max(ttl/4, 500*time.Millisecond), threshold))
	defer cancel()
	alive, err := s.lease.Alive(pctx)
	switch {
	case err == nil && alive:
		s.lastContact = time.Now()
		return nil
	case ctx.Err() != nil:
		return ctx.Err()
	case err == nil:
		// Under a second left (etcd counts whole seconds) or expired: an
		// expired lease also closes Done; until then, count it as silence.
		err = errors.New("lease has less than a second left")
	}
	if silent := time.Since(s.lastContact); silent > threshold {
		return fmt.Errorf("no contact with etcd for %s (TTL %s): %w: %v", silent.Round(time.Millisecond), ttl, errLeaseLost, err)
	}
	return nil
}

// rpc bounds one etcd call of the session loop, so that a cut-off etcd never
// holds the loop (and its lease probe) for long.
func (s *session) rpc(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, max(s.lease.TTL()/3, 500*time.Millisecond))
}
