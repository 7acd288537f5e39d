package rollout

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/schedule"
	"github.com/flotilla/flotilla/internal/unit"
)

// RollOptions says how Roll goes.
type RollOptions struct {
	// MaxUnavailable is how many instances are replaced at a time (< 1: 1).
	MaxUnavailable int
	// Surge starts each non-global instance's new body on another machine
	// before its old one stops, where the unit's [X-Fleet] constraints allow
	// a machine for it (the instance then moves there); where none does,
	// the instance is replaced in place.
	Surge bool
	// Resume says the rollout was begun earlier (by a driver that is gone):
	// an instance that already has the new body may be restarting with it,
	// so it is waited for instead of skipped.
	Resume bool
	// Announced, when not nil, says which units were announced before the
	// rollout began; a resumed rollout cannot tell from what it sees now (an
	// instance being replaced has withdrawn its key). Nil: look now.
	Announced map[string]bool
}

// Target is a unit and the body it should run. A rollout record keeps the
// unit and the body's hash (the body itself is stored under the registry's
// units/).
type Target struct {
	Unit string `json:"unit"`
	Hash string `json:"hash,omitempty"`
	Body []byte `json:"-"`
}

// Roll gives every target its new body, at most maxUnavailable instances
// (machines, for a global unit) at a time (values below 1 mean 1). Each
// instance is restarted by its agent with the new body (the unit's ExecStop
// withdraws it first) and counted done when it is ready (see the package
// comment); a progress line is written per instance. The first instance that
// fails halts the rollout: the instances not yet started keep their body, and
// the error (a *Failure) names the unit and the reason.
//
// A global unit rolls machine by machine: every machine it runs on is pinned
// to the body it runs now, the job takes the new body, and the pins are
// lifted maxUnavailable at a time.
func (r *Roller) Roll(ctx context.Context, targets []Target, opts RollOptions) error {
	maxUnavailable := opts.MaxUnavailable
	if maxUnavailable < 1 {
		maxUnavailable = 1
	}
	var plain []Target
	for _, t := range targets {
		f, err := unit.Parse(t.Unit, t.Body)
		if err != nil {
			return fmt.Errorf("roll %s: %w", t.Unit, err)
		}
		if _, err := r.reg.Job(ctx, t.Unit); err != nil {
			return fmt.Errorf("roll %s: %w (submit and start it first)", t.Unit, err)
		}
		if f.Fleet.Global {
			if err := r.rollGlobal(ctx, t, maxUnavailable, opts.Resume); err != nil {
				return err
			}
			continue
		}
		plain = append(plain, t)
	}
	for len(plain) > 0 {
		n := min(len(plain), maxUnavailable)
		g, gctx := errgroup.WithContext(ctx)
		for _, t := range plain[:n] {
			g.Go(func() error { return r.rollOne(gctx, t, opts) })
		}
		if err := g.Wait(); err != nil {
			return fmt.Errorf("rollout halted: %w", err)
		}
		plain = plain[n:]
	}
	return nil
}

// rollOne replaces one non-global unit's body and waits for it.
func (r *Roller) rollOne(ctx context.Context, t Target, opts RollOptions) error {
	hash := unit.Hash(t.Body)
	s, err := r.reg.Snapshot(ctx)
	if err != nil {
		return err
	}
	job, ok := s.Jobs[t.Unit]
	if !ok {
		return fmt.Errorf("roll %s: %w", t.Unit, registry.ErrNotFound)
	}
	// A surge that halted leaves the old machine pinned to its old body:
	// that is what it runs.
	pinned := s.Plan.Pins[t.Unit]
	announced, err := r.announced(ctx, t.Unit, opts.Announced)
	if err != nil {
		return err
	}
	if job.Hash == hash && len(pinned) == 0 {
		if !opts.Resume || job.Desired != registry.Launched {
			fmt.Fprintf(r.o.Out, "Unit %s already has body %s\n", t.Unit, r.short(hash))
			return nil
		}
		return r.resumeOne(ctx, t.Unit, hash, announced)
	}
	for _, h := range pinned {
		job.Hash = h // the body it runs, for the surge's pin and the progress line
	}
	if opts.Surge && job.Desired == registry.Launched {
		done, err := r.surge(ctx, t, job, announced)
		if done || err != nil {
			return err
		}
	}
	if err := r.setBody(ctx, t); err != nil {
		return err
	}
	if len(pinned) > 0 {
		if err := r.reg.UnpinAll(ctx, t.Unit); err != nil {
			return err
		}
	}
	since, err := r.revision(ctx)
	if err != nil {
		return err
	}
	if job.Desired != registry.Launched {
		fmt.Fprintf(r.o.Out, "Unit %s body %s → %s (%s, not running)\n", t.Unit, r.short(job.Hash), r.short(hash), job.Desired)
		return nil
	}
	rd, err := r.wait(ctx, want{unit: t.Unit, hash: hash, since: since, announce: announced})
	if err != nil {
		return err
	}
	fmt.Fprintf(r.o.Out, "Unit %s body %s → %s: %s\n", t.Unit, r.short(job.Hash), r.short(hash), r.describe(rd))
	return nil
}

// setBody gives t.Unit's job the body t.Body, keeping its desired state: it
// points the job at the stored body when there is one (a rollout record
// stores its bodies, so the driver need not be allowed to write any), else
// stores the body too.
func (r *Roller) setBody(ctx context.Context, t Target) error {
	hash := unit.Hash(t.Body)
	_, err := r.reg.SetHash(ctx, t.Unit, hash)
	if errors.Is(err, registry.ErrNotFound) {
		_, err = r.reg.Submit(ctx, t.Unit, hash, t.Body, registry.ReplaceBody)
	}
	return err
}

// announced says whether unit was announced before the rollout began: as
// recorded in known, else as seen now.
func (r *Roller) announced(ctx context.Context, unit string, known map[string]bool) (bool, error) {
	if known != nil {
		return known[unit], nil
	}
	_, found, err := r.announceKey(ctx, unit)
	return found, err
}

// Announced returns the units of names announced now, to be kept as
// RollOptions.Announced of a rollout that may have to be resumed.
func (r *Roller) Announced(ctx context.Context, names []string) (map[string]bool, error) {
	out := make(map[string]bool, len(names))
	for _, n := range names {
		_, found, err := r.announceKey(ctx, n)
		if err != nil {
			return nil, err
		}
		out[n] = found
	}
	return out, nil
}

// resumeOne waits for an instance that a rollout begun earlier gave its new
// body: an announcement counts if written after the body was.
func (r *Roller) resumeOne(ctx context.Context, name, hash string, announced bool) error {
	kv, _, _, err := r.reg.Client().Get(ctx, r.reg.JobKey(name))
	if err != nil {
		return fmt.Errorf("resume %s: %w", name, err)
	}
	rd, err := r.wait(ctx, want{unit: name, hash: hash, since: kv.ModRevision, announce: announced})
	if err != nil {
		return err
	}
	fmt.Fprintf(r.o.Out, "Unit %s body → %s (resumed): %s\n", name, r.short(hash), r.describe(rd))
	return nil
}

// rollGlobal walks a global unit's machines.
func (r *Roller) rollGlobal(ctx context.Context, t Target, maxUnavailable int, resume bool) error {
	hash := unit.Hash(t.Body)
	s, err := r.reg.Snapshot(ctx)
	if err != nil {
		return err
	}
	job := s.Jobs[t.Unit]
	// Pin every machine to what it runs now, then change the job.
	byHash := map[string][]string{}
	var todo, rolled []string
	for _, m := range s.Targets(t.Unit) {
		if _, alive := s.Machines[m]; !alive {
			continue
		}
		if h := s.Hash(t.Unit, m); h != hash {
			byHash[h] = append(byHash[h], m)
			todo = append(todo, m)
		} else {
			rolled = append(rolled, m)
		}
	}
	if resume && job.Desired == registry.Launched {
		// A machine unpinned by the driver that began the rollout may be
		// restarting with the new body.
		for _, m := range rolled {
			if _, err := r.wait(ctx, want{unit: t.Unit, hash: hash, machine: m}); err != nil {
				return fmt.Errorf("rollout halted: %w", err)
			}
		}
	}
	for h, ms := range byHash {
		if err := r.reg.Pin(ctx, t.Unit, h, ms); err != nil {
			return err
		}
	}
	if job.Hash != hash {
		if err := r.setBody(ctx, t); err != nil {
			return err
		}
	}
	if len(todo) == 0 {
		fmt.Fprintf(r.o.Out, "Unit %s already has body %s on every machine\n", t.Unit, r.short(hash))
		return nil
	}
	if job.Desired != registry.Launched {
		// Nothing runs: no reason to go one by one.
		if err := r.reg.UnpinAll(ctx, t.Unit); err != nil {
			return err
		}
		fmt.Fprintf(r.o.Out, "Unit %s body → %s (%s, not running)\n", t.Unit, r.short(hash), job.Desired)
		return nil
	}
	sort.Strings(todo)
	for len(todo) > 0 {
		n := min(len(todo), maxUnavailable)
		g, gctx := errgroup.WithContext(ctx)
		for _, m := range todo[:n] {
			g.Go(func() error {
				if err := r.reg.Unpin(gctx, t.Unit, m); err != nil {
					return err
				}
				rd, err := r.wait(gctx, want{unit: t.Unit, hash: hash, machine: m})
				if err != nil {
					return err
				}
				fmt.Fprintf(r.o.Out, "Unit %s body %s → %s: %s\n", t.Unit, r.short(s.Hash(t.Unit, m)), r.short(hash), r.describe(rd))
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return fmt.Errorf("rollout halted (the machines not reached keep their body): %w", err)
		}
		todo = todo[n:]
	}
	return nil
}

// ErrNoMachine is returned when a unit has nowhere to move to.
var ErrNoMachine = errors.New("rollout: no machine to move the unit to")

// MovePlan is a move resolved against the cluster: which unit, with which
// body, from where to where, and whether it was announced before the move.
type MovePlan struct {
	Unit      string `json:"unit"`
	Hash      string `json:"hash"`
	From      string `json:"from"`
	To        string `json:"to"`
	Announced bool   `json:"announced,omitempty"`
}

// Move moves a non-global launched unit from the machine it runs on to
// machine to ("" : where the scheduler would place it if that machine were
// gone), through the engine's two-phase move: its agent stops it (ExecStop
// withdraws it), the new machine starts it. It blocks until the unit is
// ready there.
func (r *Roller) Move(ctx context.Context, name, to string) (Ready, error) {
	p, err := r.PlanMove(ctx, name, to)
	if err != nil {
		return Ready{}, err
	}
	return r.Carry(ctx, p)
}

// PlanMove resolves a move (see Move) without changing anything. A move of
// the unit already requested (by a drain or a move begun earlier) is
// continued: the plan goes where that one goes.
func (r *Roller) PlanMove(ctx context.Context, name, to string) (MovePlan, error) {
	s, err := r.reg.Snapshot(ctx)
	if err != nil {
		return MovePlan{}, err
	}
	job, ok := s.Jobs[name]
	if !ok {
		return MovePlan{}, fmt.Errorf("move %s: %w", name, registry.ErrNotFound)
	}
	bodies, err := r.reg.Bodies(ctx)
	if err != nil {
		return MovePlan{}, fmt.Errorf("move %s: %w", name, err)
	}
	f, err := unit.Parse(name, bodies[job.Hash])
	if err != nil {
		return MovePlan{}, fmt.Errorf("move %s: %w", name, err)
	}
	if f.Fleet.Global {
		return MovePlan{}, fmt.Errorf("move %s: a global unit runs on every machine; it cannot move", name)
	}
	if job.Desired != registry.Launched {
		return MovePlan{}, fmt.Errorf("move %s: the unit is %s, not launched", name, job.Desired)
	}
	mv, pending := s.Plan.Moves[name]
	pending = pending && !mv.Surge && (to == "" || to == mv.To)
	from := ""
	for _, m := range s.Targets(name) {
		if _, alive := s.Machines[m]; alive && (!pending || m != mv.To) {
			from = m
		}
	}
	if from == "" {
		return MovePlan{}, fmt.Errorf("move %s: the unit is not on any present machine", name)
	}
	switch {
	case pending:
		to = mv.To
	case to == "":
		if to, err = choose(s, bodies, name, from); err != nil {
			return MovePlan{}, fmt.Errorf("move %s off %s: %w", name, r.label(from), err)
		}
	default:
		if to, err = ResolveMachine(s, to); err != nil {
			return MovePlan{}, fmt.Errorf("move %s: %w", name, err)
		}
		if _, drained := s.Plan.Drained[to]; drained {
			return MovePlan{}, fmt.Errorf("move %s: machine %s is drained", name, r.label(to))
		}
	}
	if to == from {
		return MovePlan{}, fmt.Errorf("move %s: the unit already runs on %s", name, r.label(to))
	}
	_, announced, err := r.announceKey(ctx, name)
	if err != nil {
		return MovePlan{}, err
	}
	return MovePlan{Unit: name, Hash: job.Hash, From: from, To: to, Announced: announced}, nil
}

// Carry carries out a planned move and blocks until the unit is ready on
// p.To. It may be called again for the same plan (by a driver resuming
// what another began): a move already requested is waited for, not asked
// again, and a move already made is only waited for.
func (r *Roller) Carry(ctx context.Context, p MovePlan) (Ready, error) {
	s, err := r.reg.Snapshot(ctx)
	if err != nil {
		return Ready{}, err
	}
	var since int64
	mv, pending := s.Plan.Moves[p.Unit]
	targets := s.Targets(p.Unit)
	switch {
	case pending && mv.To == p.To && !mv.Surge:
		since = s.ModRevs[r.reg.MoveKey(p.Unit)]
	case len(targets) == 1 && targets[0] == p.To:
		// Moved already; what is left is the wait.
	default:
		if err := r.reg.RequestMove(ctx, p.Unit, p.To, false); err != nil {
			return Ready{}, err
		}
		if since, err = r.revision(ctx); err != nil {
			return Ready{}, err
		}
	}
	rd, err := r.wait(ctx, want{unit: p.Unit, hash: p.Hash, machine: p.To, since: since, announce: p.Announced, move: true})
	if err != nil {
		return Ready{}, err
	}
	fmt.Fprintf(r.o.Out, "Unit %s moved %s → %s: %s\n", p.Unit, r.label(p.From), r.label(p.To), r.describe(rd))
	return rd, nil
}

// Drain moves every non-global unit off machine, one at a time (the machine
// must already be marked drained, so that nothing new lands there). It
// returns how many units it moved; global units stay. A move under way (one
// a driver that is gone requested) is waited for first, not asked again.
// known, when not nil, says which units were announced before the drain
// began (see RollOptions.Announced).
func (r *Roller) Drain(ctx context.Context, machine string, known map[string]bool) (int, error) {
	moved := 0
	for {
		s, err := r.reg.Snapshot(ctx)
		if err != nil {
			return moved, err
		}
		if _, drained := s.Plan.Drained[machine]; !drained {
			return moved, fmt.Errorf("drain %s: the machine is not marked drained (undrained meanwhile?)", r.label(machine))
		}
		names, err := r.drainable(ctx, s, machine)
		if err != nil {
			return moved, err
		}
		var p MovePlan
		if name, mv, ok := underway(s); ok {
			a, aerr := r.announced(ctx, name, known)
			p, err = MovePlan{Unit: name, Hash: s.Jobs[name].Hash, From: machine, To: mv.To, Announced: a}, aerr
		} else if len(names) == 0 {
			return moved, nil
		} else if p, err = r.PlanMove(ctx, names[0], ""); err == nil && known != nil {
			p.Announced = known[names[0]]
		}
		if err == nil {
			_, err = r.Carry(ctx, p)
		}
		if err != nil {
			return moved, fmt.Errorf("drain %s halted: %w", r.label(machine), err)
		}
		moved++
	}
}

// underway returns a requested move (not a surge) of a launched unit, the
// first by name, if any.
func underway(s *registry.Snapshot) (string, registry.Move, bool) {
	var names []string
	for n, mv := range s.Plan.Moves {
		if !mv.Surge && s.Jobs[n].Desired == registry.Launched {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "", registry.Move{}, false
	}
	sort.Strings(names)
	return names[0], s.Plan.Moves[names[0]], true
}

// drainable returns the launched non-global units targeted at machine, by
// name.
func (r *Roller) drainable(ctx context.Context, s *registry.Snapshot, machine string) ([]string, error) {
	bodies, err := r.reg.Bodies(ctx)
	if err != nil {
		return nil, err
	}
	var names []string
	for name := range s.Schedule {
		if _, there := s.Schedule[name][machine]; !there || s.Jobs[name].Desired != registry.Launched {
			continue
		}
		if f, err := unit.Parse(name, bodies[s.Jobs[name].Hash]); err == nil && !f.Fleet.Global {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names, nil
}

// ResolveMachine finds a present or drained machine by id or unique id
// prefix, as fleetctl does.
func ResolveMachine(s *registry.Snapshot, id string) (string, error) {
	if _, ok := s.Machines[id]; ok {
		return id, nil
	}
	var found []string
	for m := range s.Machines {
		if len(id) > 0 && len(m) >= len(id) && m[:len(id)] == id {
			found = append(found, m)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", fmt.Errorf("machine %s: not present", id)
	}
	sort.Strings(found)
	return "", fmt.Errorf("machine %s: ambiguous (matches %v)", id, found)
}

// choose picks where name goes if machine from were gone: the scheduler's own
// placement over the present machines but from and the drained ones.
func choose(s *registry.Snapshot, bodies map[string][]byte, name, from string) (string, error) {
	var machines []schedule.Machine
	for id, m := range s.Machines {
		if id == from {
			continue
		}
		c := m.Capacity
		if _, drained := s.Plan.Drained[id]; drained {
			c = -1
		}
		machines = append(machines, schedule.Machine{ID: id, IP: m.IP, Metadata: m.Metadata, Capacity: c})
	}
	var units []schedule.Unit
	for n, j := range s.Jobs {
		if j.Desired != registry.Loaded && j.Desired != registry.Launched {
			continue
		}
		f, err := unit.Parse(n, bodies[j.Hash])
		if err != nil {
			continue
		}
		u := schedule.Unit{Name: n, Fleet: f.Fleet}
		if !f.Fleet.Global && n != name {
			for _, m := range s.Targets(n) {
				if _, alive := s.Machines[m]; alive && m != from {
					u.Current = m
				}
			}
		}
		units = append(units, u)
	}
	sort.Slice(units, func(i, j int) bool { return units[i].Name < units[j].Name })
	res := schedule.Place(units, machines)
	if m, ok := res.Targets[name]; ok {
		return m, nil
	}
	if why := res.Unplaced[name]; why != "" {
		return "", fmt.Errorf("%w: %s", ErrNoMachine, why)
	}
	return "", ErrNoMachine
}

// surge rolls one instance by starting its new body on another machine
// before the old one stops: the old machine is pinned to the old body, the
// job takes the new one, and a surge move keeps the unit on both machines
// until the new instance is ready (its announcement, under the same key,
// replaces the old one in the load balancer); then the old one is stopped.
// It returns false (and no error) when no machine can take the instance
// beside the old one; the caller then replaces it in place.
func (r *Roller) surge(ctx context.Context, t Target, job registry.Job, announced bool) (bool, error) {
	hash := unit.Hash(t.Body)
	s, err := r.reg.Snapshot(ctx)
	if err != nil {
		return false, err
	}
	bodies, err := r.reg.Bodies(ctx)
	if err != nil {
		return false, err
	}
	from := ""
	for _, m := range s.Targets(t.Unit) {
		if _, alive := s.Machines[m]; alive {
			from = m
		}
	}
	if from == "" {
		return false, nil
	}
	bodies[hash] = t.Body
	s.Jobs[t.Unit] = registry.Job{Name: t.Unit, Hash: hash, Desired: job.Desired}
	to, err := choose(s, bodies, t.Unit, from)
	if err != nil {
		fmt.Fprintf(r.o.Out, "Unit %s: no machine beside %s for a surge (%v); replacing it in place\n", t.Unit, r.label(from), err)
		return false, nil
	}
	if err := r.reg.Pin(ctx, t.Unit, job.Hash, []string{from}); err != nil {
		return false, err
	}
	if err := r.setBody(ctx, t); err != nil {
		return false, err
	}
	if err := r.reg.RequestMove(ctx, t.Unit, to, true); err != nil {
		return false, err
	}
	since, err := r.revision(ctx)
	if err != nil {
		return false, err
	}
	rd, err := r.wait(ctx, want{unit: t.Unit, hash: hash, machine: to, since: since, announce: announced, move: true})
	if err != nil {
		// Back to the old instance alone (still pinned to its old body).
		if merr := r.reg.RequestMove(context.WithoutCancel(ctx), t.Unit, from, false); merr != nil {
			err = fmt.Errorf("%w; and going back to %s: %v", err, r.label(from), merr)
		}
		return false, fmt.Errorf("%w (the old instance keeps running on %s)", err, r.label(from))
	}
	// The new instance serves: stop the old one.
	if err := r.reg.RequestMove(ctx, t.Unit, to, false); err != nil {
		return false, err
	}
	if err := r.waitGone(ctx, t.Unit, from); err != nil {
		return false, err
	}
	if err := r.reg.Unpin(ctx, t.Unit, from); err != nil {
		return false, err
	}
	fmt.Fprintf(r.o.Out, "Unit %s body %s → %s: surged %s → %s: %s\n", t.Unit, r.short(job.Hash), r.short(hash), r.label(from), r.label(to), r.describe(rd))
	return true, nil
}

// waitGone waits until unit is neither targeted at machine nor reported there.
func (r *Roller) waitGone(ctx context.Context, name, machine string) error {
	deadline := time.Now().Add(r.o.Timeout)
	for {
		s, err := r.reg.Snapshot(ctx)
		if err == nil {
			_, targeted := s.Schedule[name][machine]
			_, reported := s.States[name][machine]
			if !targeted && !reported {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return &Failure{Unit: name, Machine: r.label(machine), Reason: fmt.Sprintf("old instance not stopped after %s", r.o.Timeout)}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(r.o.Poll):
		}
	}
}
