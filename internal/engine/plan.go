package engine

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/schedule"
	"github.com/flotilla/flotilla/internal/store"
)

// Pass reads the registry once, computes placement and writes the
// difference, every transaction conditioned on guard (a leadership's
// Guard). It returns ErrNotLeader (wrapped) when guard fails. Passes must
// not run concurrently.
func (e *Engine) Pass(ctx context.Context, guard store.Cmp) (PassStats, error) {
	start := time.Now()
	snap, err := e.reg.Snapshot(ctx)
	if err != nil {
		return PassStats{Requests: 1}, err
	}
	return e.pass(ctx, guard, snap, start, 1, 0)
}

// PassOn is Pass on a snapshot the caller keeps current (a registry.Live's,
// as the leader does): it reads only the bodies it has not parsed yet. It
// writes everything it plans (the leader's own passes write at most
// leaderPassTxns transactions each).
func (e *Engine) PassOn(ctx context.Context, guard store.Cmp, snap *registry.Snapshot) (PassStats, error) {
	return e.pass(ctx, guard, snap, time.Now(), 0, 0)
}

// leaderPassTxns is the most transactions one of the leader's passes
// writes: a pass with more to write (the first placement of thousands of
// units) leaves the rest to the next pass, which follows at once, so that a
// change meanwhile (a machine lost) waits for one short pass, not a long one.
const leaderPassTxns = 4

// pass plans from snap and writes the difference, at most limit
// transactions of it (0: all).
func (e *Engine) pass(ctx context.Context, guard store.Cmp, snap *registry.Snapshot, start time.Time, reads, limit int) (PassStats, error) {
	res := PassStats{Requests: reads}
	e.logSkipped(snap.Skipped)
	reqs, err := e.loadUnits(ctx, snap)
	res.Requests += reqs
	if err != nil {
		return res, err
	}
	planStart := time.Now()
	plan := e.plan(snap)
	res.Plan = time.Since(planStart)
	res.Units, res.Machines, res.Unplaced, res.Moved = len(snap.Jobs), len(snap.Machines), len(plan.unplaced), plan.moved
	w, err := e.writeKeepingRest(ctx, unwritten{txns: txns(guard, plan.batches), nUnits: res.Units, nMachines: res.Machines}, limit)
	return e.passDone(res, w, start, err)
}

// passRest is a pass that plans nothing: it writes the next part (at most
// limit transactions) of the last partial pass's plan, which is still
// current (see note). It reports false when there is none.
func (e *Engine) passRest(ctx context.Context, limit int) (PassStats, bool, error) {
	start := time.Now()
	e.mu.Lock()
	r := e.rest
	e.rest = unwritten{}
	e.mu.Unlock()
	if len(r.txns) == 0 {
		return PassStats{}, false, nil
	}
	w, err := e.writeKeepingRest(ctx, r, limit)
	res, err := e.passDone(PassStats{Units: r.nUnits, Machines: r.nMachines, Continued: true}, w, start, err)
	return res, true, err
}

// writeKeepingRest writes at most limit of todo's transactions and keeps
// what it leaves, with the units those take off a machine, as e.rest for
// the passes that follow (none after an error).
func (e *Engine) writeKeepingRest(ctx context.Context, todo unwritten, limit int) (writeResult, error) {
	w, left, err := e.write(ctx, todo.txns, limit)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.written = max(e.written, w.rev)
	e.rest = unwritten{}
	if err == nil && len(left) > 0 {
		todo.txns, todo.moving = left, map[string]bool{}
		for _, t := range left {
			for _, u := range t.moving {
				todo.moving[u] = true
			}
		}
		e.rest = todo
	}
	return w, err
}

// passDone completes a pass's figures with what it wrote, logs and reports
// them.
func (e *Engine) passDone(res PassStats, w writeResult, start time.Time, err error) (PassStats, error) {
	res.Txns, res.Ops, res.Partial = w.txns, w.ops, w.partial
	res.Requests += w.txns
	res.Unchanged = w.ops == 0
	res.Duration = time.Since(start)
	if err == nil && res.Ops > 0 {
		e.log.Info("engine pass", "units", res.Units, "machines", res.Machines, "ops", res.Ops, "txns", res.Txns, "partial", res.Partial,
			"continued", res.Continued, "moved", res.Moved, "unplaced", res.Unplaced, "took", res.Duration.Round(time.Microsecond))
	}
	if e.opts.OnPass != nil {
		e.opts.OnPass(res)
	}
	return res, err
}

type plan struct {
	batches  []batch // each: the writes of one unit
	unplaced map[string]string
	moved    int
	// encoded holds the schedule values written, by body and desired
	// state: thousands of units share a few.
	encoded map[registry.Assignment]string
}

// batch is the writes of one unit and the conditions they need besides the
// leadership guard (a move off an absent machine: its presence still absent).
type batch struct {
	unit string
	ops  []store.Op
	cmps []store.Cmp
	// moving says the batch takes the unit off a machine, or the unit is
	// reported on a machine it is not wanted on.
	moving bool
}

// placement is the input of one schedule.Place: the units to place (every
// loaded or launched unit whose body parses, but for those held on an
// absent machine), the present machines, and the targets on absent machines
// that stay for now (unit → machines). A filter of the machines a unit may
// use belongs here, applied to units or machines before Place.
type placement struct {
	units    []schedule.Unit
	machines []schedule.Machine
	keep     map[string]map[string]bool
	// exact says, for each of units, that the registry targets it at its
	// Current machine alone, with its body and desired state.
	exact []bool
}

// plan computes the writes that bring the registry to the placement.
func (e *Engine) plan(snap *registry.Snapshot) plan {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := plan{unplaced: map[string]string{}, encoded: map[registry.Assignment]string{}}
	e.waiting = map[string]bool{}
	now := time.Now()
	absent := e.absences(snap, now)
	moves := e.applyMoves(snap)
	in := e.placementInput(snap, &p, now)
	res := e.placeWithPlan(snap, in.units, in.machines, moves)
	for name, why := range res.Unplaced {
		p.unplaced[name] = why
	}
	same := settled(snap, res, in)
	want := wanted(res, in.keep, same)
	e.twoPhase(snap, res, want, same, &p)
	e.diff(snap, want, same, absent, &p)
	return p
}

// settled returns the non-global units the placement leaves where the
// registry has them, as the registry has them (body, desired state), with
// no unplaced reason or move request: nothing to write, and nothing the
// rest of the plan needs to look at. In a steady state that is nearly
// every unit.
func settled(snap *registry.Snapshot, res schedule.Result, in placement) map[string]bool {
	out := make(map[string]bool, len(in.units))
	for i := range in.units {
		u := &in.units[i]
		if !in.exact[i] || u.Fleet.Global || res.Targets[u.Name] != u.Current {
			continue
		}
		if _, ok := snap.Unplaced[u.Name]; ok {
			continue
		}
		if _, ok := snap.Plan.Moves[u.Name]; ok {
			continue
		}
		out[u.Name] = true
	}
	return out
}

// absences updates the absence clocks and returns the machines targeted by
// some unit and without presence. A machine is absent since this leader
// saw its presence go (or, when it never saw it, first saw it gone), or
// since etcd was last unhealthy, whichever is later (see held). e.mu is
// held.
func (e *Engine) absences(snap *registry.Snapshot, now time.Time) map[string]bool {
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
			since := now
			if t, ok := e.goneAt[m]; ok && t.Before(now) {
				since = t
			}
			e.absentSince[m] = since
		}
	}
	for m := range e.goneAt {
		if _, alive := snap.Machines[m]; alive || !absent[m] {
			delete(e.goneAt, m)
		}
	}
	e.wake = time.Time{}
	return absent
}

// held reports whether unit name, fenced or not, stays on absent machine m
// for now, and notes in e.wake when it may move. e.mu is held.
func (e *Engine) held(m string, fenced bool, now time.Time) bool {
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

// placementInput builds the input of this pass's placement; units whose
// body does not parse go to p.unplaced. e.mu is held.
func (e *Engine) placementInput(snap *registry.Snapshot, p *plan, now time.Time) placement {
	in := placement{keep: map[string]map[string]bool{}, machines: make([]schedule.Machine, 0, len(snap.Machines))}
	for _, m := range snap.Machines {
		in.machines = append(in.machines, schedule.Machine{ID: m.ID, IP: m.IP, Metadata: m.Metadata, Capacity: m.Capacity})
	}
	jobs := make([]registry.Job, 0, len(snap.Jobs))
	for _, j := range snap.Jobs {
		if j.Desired == registry.Loaded || j.Desired == registry.Launched {
			jobs = append(jobs, j)
		}
	}
	// In name order, which schedule.Place sorts them in: it then finds
	// them sorted.
	slices.SortFunc(jobs, func(a, b registry.Job) int { return strings.Compare(a.Name, b.Name) })
	in.units = make([]schedule.Unit, 0, len(jobs))
	in.exact = make([]bool, 0, len(jobs))
	for _, j := range jobs {
		name := j.Name
		pu := e.cache[name]
		if pu.err != nil || pu.file == nil {
			p.unplaced[name] = fmt.Sprintf("unit file: %v", pu.err)
			continue
		}
		u := schedule.Unit{Name: name, Fleet: pu.file.Fleet, Avoid: snap.Avoided(name, j.Hash)}
		fenced := pu.file.Flotilla.Fenced()
		stay := false
		sched := snap.Schedule[name]
		for m := range sched {
			if _, alive := snap.Machines[m]; alive {
				if !u.Fleet.Global && (u.Current == "" || m < u.Current) {
					u.Current = m // the first by id, whatever the map's order
				}
			} else if e.held(m, fenced, now) {
				if in.keep[name] == nil {
					in.keep[name] = map[string]bool{}
				}
				in.keep[name][m] = true
				stay = !u.Fleet.Global
			}
		}
		if stay && u.Current == "" {
			// Its machine is absent, not yet for long enough: the unit stays
			// targeted there, out of this placement.
			continue
		}
		exact := false
		if a, ok := sched[u.Current]; ok && len(sched) == 1 {
			h := j.Hash // snap.Hash, without looking the job up again
			if pin, ok := snap.Plan.Pins[name][u.Current]; ok {
				h = pin
			}
			exact = a.Hash == h && a.Desired == j.Desired
		}
		in.units = append(in.units, u)
		in.exact = append(in.exact, exact)
	}
	return in
}

// wanted is the targets a placement asks for (unit → machines), with the
// targets kept on absent machines, but for the settled units.
func wanted(res schedule.Result, keep map[string]map[string]bool, same map[string]bool) map[string]map[string]bool {
	want := make(map[string]map[string]bool, len(res.Targets)-len(same)+len(res.Global))
	for name, m := range res.Targets {
		if !same[name] {
			want[name] = map[string]bool{m: true}
		}
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
	return want
}

// twoPhase holds a unit's new target while another live machine still
// reports the unit running (it waits, unplaced, for that machine to stop
// it), but for surge moves, which keep both; it counts the moves. e.mu is
// held.
func (e *Engine) twoPhase(snap *registry.Snapshot, res schedule.Result, want map[string]map[string]bool, same map[string]bool, p *plan) {
	surge := e.surges(snap, res)
	for name, target := range res.Targets {
		if same[name] {
			continue
		}
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
}

// diff turns the difference between the registry and want (and the
// unplaced reasons) into batches, one per unit but the settled ones, in name
// order. e.mu is held.
func (e *Engine) diff(snap *registry.Snapshot, want map[string]map[string]bool, same, absent map[string]bool, p *plan) {
	names := make(map[string]bool, len(want)+len(p.unplaced))
	for n := range snap.Schedule {
		if !same[n] {
			names[n] = true
		}
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
		if b := e.unitDiff(snap, name, want[name], absent, p); len(b.ops) > 0 {
			p.batches = append(p.batches, b)
		}
	}
}

// unitDiff is the batch of one unit: its targets to remove, add or
// rewrite, its unplaced reason, and the end of its move. e.mu is held.
func (e *Engine) unitDiff(snap *registry.Snapshot, name string, want map[string]bool, absent map[string]bool, p *plan) batch {
	b := batch{unit: name}
	job := snap.Jobs[name]
	val := func(m string) string {
		// By machine: a pin (a rollout in progress) keeps one on its body.
		a := registry.Assignment{Hash: snap.Hash(name, m), Desired: job.Desired}
		enc, ok := p.encoded[a]
		if !ok {
			enc = registry.Encode(a)
			p.encoded[a] = enc
		}
		return enc
	}
	for m, a := range snap.Schedule[name] {
		if !want[m] {
			b.ops = append(b.ops, store.OpDelete(e.reg.ScheduleKey(m, name)))
			b.moving = true
			if absent[m] {
				// Moving off an absent machine: only while it is still
				// absent (it may have registered again since the read).
				b.cmps = append(b.cmps, store.Missing(e.reg.MachineKey(m)))
			}
		} else if a.Hash != snap.Hash(name, m) || a.Desired != job.Desired {
			b.ops = append(b.ops, store.OpPut(e.reg.ScheduleKey(m, name), val(m), 0))
		}
	}
	for m := range want {
		if _, ok := snap.Schedule[name][m]; !ok {
			b.ops = append(b.ops, store.OpPut(e.reg.ScheduleKey(m, name), val(m), 0))
		}
	}
	for m := range snap.States[name] {
		// Reported somewhere it is not wanted: still leaving that machine.
		b.moving = b.moving || !want[m]
	}
	why, unplaced := p.unplaced[name]
	old, had := snap.Unplaced[name]
	switch {
	case unplaced && (!had || old != why):
		b.ops = append(b.ops, store.OpPut(e.reg.UnplacedKey(name), why, 0))
	case !unplaced && had:
		b.ops = append(b.ops, store.OpDelete(e.reg.UnplacedKey(name)))
	}
	b.ops = append(b.ops, e.moveDone(snap, name, want)...)
	return b
}
