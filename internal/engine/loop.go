package engine

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// lead reconciles until ctx is done or leadership is lost. It reads the
// registry once, at a revision, and keeps that state current from a watch
// of the prefix from the next revision on; every pass plans from it. A
// watch whose revision was compacted away (the engine fell too far behind)
// reads afresh.
func (e *Engine) lead(ctx context.Context, lead *store.Leadership) error {
	c := e.reg.Client()
	period := time.NewTicker(e.opts.Period)
	defer period.Stop()
	for {
		live, err := e.reg.Live(ctx)
		if err != nil {
			return err
		}
		w := c.WatchPrefix(ctx, e.reg.Prefix(), live.Rev()+1)
		err = e.watchLoop(ctx, lead, live, w, period.C)
		w.Close()
		if !errors.Is(err, store.ErrCompacted) {
			return err
		}
		e.log.Warn("engine: watch compacted; reading the registry afresh", "err", err)
	}
}

// relevant reports whether a change under the prefix calls for a pass:
// jobs, machines, planned change and failure records always; a unit's
// reported state only while the unit
// waits to stop somewhere before it may start elsewhere. The engine's own
// writes (schedule/, unplaced/), bodies and the election do not. e.mu is
// held.
func (e *Engine) relevant(rest string) bool {
	switch {
	case strings.HasPrefix(rest, "jobs/"), strings.HasPrefix(rest, "machines/"), strings.HasPrefix(rest, "metadata/"),
		plannedChange(rest), failureChange(rest):
		return true
	case strings.HasPrefix(rest, "states/"):
		return e.waiting[stateUnit(rest)]
	}
	return false
}

// dropRest forgets what the last partial pass left unwritten: the next
// pass plans again.
func (e *Engine) dropRest() {
	e.mu.Lock()
	e.rest = unwritten{}
	e.mu.Unlock()
}

// stateUnit is the unit of a states/<unit>/<machine> key (relative to the
// prefix); "" for another key.
func stateUnit(rest string) string {
	rest, ok := strings.CutPrefix(rest, "states/")
	i := strings.LastIndexByte(rest, '/')
	if !ok || i < 0 {
		return ""
	}
	return rest[:i]
}

// note records what the engine keeps from a watch event besides the
// registry state: when a machine's presence went (its absence clock may
// start then, not at the next pass) and the bodies written, which the next
// pass parses without reading them. It reports whether the event calls
// for a pass. Such an event, or a reported state of a unit that what the
// last partial pass left unwritten takes off a machine, makes that rest
// stale: the next pass plans again.
func (e *Engine) note(ev store.Event, now time.Time) bool {
	rest := strings.TrimPrefix(ev.KV.Key, e.reg.Prefix())
	e.mu.Lock()
	defer e.mu.Unlock()
	switch {
	case strings.HasPrefix(rest, "machines/"):
		id := strings.TrimPrefix(rest, "machines/")
		if ev.Type == store.EventDelete {
			e.goneAt[id] = now
		} else {
			delete(e.goneAt, id)
		}
	case strings.HasPrefix(rest, "units/"):
		if ev.Type == store.EventPut {
			e.bodies[strings.TrimPrefix(rest, "units/")] = ev.KV.Value
		}
		e.loaded = false
	case strings.HasPrefix(rest, "jobs/") || strings.HasPrefix(rest, "pins/"):
		e.collect = true // a body may have lost its last user
		e.loaded = e.loaded && strings.HasPrefix(rest, "pins/")
	}
	relevant := e.relevant(rest)
	if relevant || (len(e.rest.txns) > 0 && e.rest.moving[stateUnit(rest)]) {
		e.rest = unwritten{}
	}
	return relevant
}

// burstLimit bounds, in Debounces, how long a stream of changes defers a
// pass.
const burstLimit = 10

// watchLoop passes on live's state: at once, then on every relevant change
// (debounced: once they pause, or at most burstLimit Debounces after the
// first), when a unit held on an absent machine may move, and on the
// period. A pass waits until the watch has brought live up to the engine's
// own last write, so that it never plans from a state without it. After a
// partial pass the passes that follow write the rest of its plan without
// planning again, for as long as no relevant change, wake or period comes
// (see note): each waits for the watch too, so a change made before the
// last write is always seen before the next.
func (e *Engine) watchLoop(ctx context.Context, lead *store.Leadership, live *registry.Live, w *store.Watch, period <-chan time.Time) error {
	e.mu.Lock()
	e.watched, e.loaded = true, false
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		e.watched = false
		e.mu.Unlock()
	}()
	debounce := time.After(0)
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
	pending := false    // a pass is due once live has caught up with our writes
	var burst time.Time // when the changes the armed debounce waits for began
	pass := func(collect bool) error {
		if live.Rev() < e.written {
			pending = true
			return nil
		}
		again, wait, err := e.leaderPass(ctx, lead, live, collect)
		pending = wait
		if again > 0 {
			debounce = time.After(again)
		}
		return err
	}
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
		var err error
		select {
		case <-health.C:
			e.checkHealth(ctx, lead)
		case <-wakeC:
			wakeC, wakeAt = nil, time.Time{}
			e.dropRest() // a unit held on an absent machine may move: plan again
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
			now := time.Now()
			for _, ev := range b.Events {
				if !e.note(ev, now) {
					continue
				}
				// Debounce: a pass once the changes pause for Debounce, or
				// burstLimit after the first (a submission of thousands of
				// units is planned once or twice, not at every pause).
				switch {
				case debounce == nil:
					burst, debounce = now, time.After(e.opts.Debounce)
				case !burst.IsZero() && now.Sub(burst) < burstLimit*e.opts.Debounce:
					debounce = time.After(e.opts.Debounce)
				}
			}
			live.Apply(b)
			if pending && live.Rev() >= e.written && debounce == nil {
				pending = false
				debounce = time.After(0)
			}
		case <-debounce:
			debounce, burst = nil, time.Time{}
			err = pass(false)
		case <-period:
			e.dropRest()
			err = pass(true)
		}
		if err != nil {
			return err
		}
	}
}

// leaderPass is one pass of the leader on live's state, then, when collect
// is set and a job or pin changed since, the collection of unused bodies.
// It returns how soon to pass again after a failure (0: on the next
// change), whether the next pass must wait for the watch to bring this
// one's writes back (a partial pass), and an error only when leadership or
// ctx ended.
func (e *Engine) leaderPass(ctx context.Context, lead *store.Leadership, live *registry.Live, collect bool) (again time.Duration, wait bool, err error) {
	st, continued, err := e.passRest(ctx, leaderPassTxns)
	if !continued {
		st, err = e.pass(ctx, lead.Guard(), live.Snapshot(), time.Now(), 0, leaderPassTxns)
	}
	switch {
	case err == nil:
	case fatal(ctx, err):
		return 0, false, err
	case errors.Is(err, errMachineBack):
		e.log.Info("engine pass: a machine came back meanwhile; passing again", "err", err)
		return 100 * time.Millisecond, false, nil
	default:
		e.log.Warn("engine pass failed; retrying", "err", err)
		return time.Second, false, nil
	}
	e.mu.Lock()
	collect = collect && e.collect
	if collect {
		e.collect = false
	}
	e.mu.Unlock()
	if !collect {
		return 0, st.Partial, nil
	}
	if err := e.collectBodies(ctx, lead.Guard()); err != nil {
		if fatal(ctx, err) {
			return 0, false, err
		}
		e.log.Warn("collect unused bodies", "err", err)
		e.mu.Lock()
		e.collect = true
		e.mu.Unlock()
	}
	return 0, st.Partial, nil
}
