package rollout

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/schedule"
	"github.com/flotilla/flotilla/internal/unit"
)

// Target is a unit and the body it should run.
type Target struct {
	Unit string
	Body []byte
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
func (r *Roller) Roll(ctx context.Context, targets []Target, maxUnavailable int) error {
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
			if err := r.rollGlobal(ctx, t, maxUnavailable); err != nil {
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
			g.Go(func() error { return r.rollOne(gctx, t) })
		}
		if err := g.Wait(); err != nil {
			return fmt.Errorf("rollout halted: %w", err)
		}
		plain = plain[n:]
	}
	return nil
}

// rollOne replaces one non-global unit's body and waits for it.
func (r *Roller) rollOne(ctx context.Context, t Target) error {
	hash := unit.Hash(t.Body)
	job, err := r.reg.Job(ctx, t.Unit)
	if err != nil {
		return err
	}
	if job.Hash == hash {
		fmt.Fprintf(r.o.Out, "Unit %s already has body %s\n", t.Unit, r.short(hash))
		return nil
	}
	_, announced, err := r.announceKey(ctx, t.Unit)
	if err != nil {
		return err
	}
	if _, err := r.reg.Submit(ctx, t.Unit, hash, t.Body, registry.ReplaceBody); err != nil {
		return err
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

// rollGlobal walks a global unit's machines.
func (r *Roller) rollGlobal(ctx context.Context, t Target, maxUnavailable int) error {
	hash := unit.Hash(t.Body)
	s, err := r.reg.Snapshot(ctx)
	if err != nil {
		return err
	}
	job := s.Jobs[t.Unit]
	// Pin every machine to what it runs now, then change the job.
	byHash := map[string][]string{}
	var todo []string
	for _, m := range s.Targets(t.Unit) {
		if _, alive := s.Machines[m]; !alive {
			continue
		}
		if h := s.Hash(t.Unit, m); h != hash {
			byHash[h] = append(byHash[h], m)
			todo = append(todo, m)
		}
	}
	for h, ms := range byHash {
		if err := r.reg.Pin(ctx, t.Unit, h, ms); err != nil {
			return err
		}
	}
	if job.Hash != hash {
		if _, err := r.reg.Submit(ctx, t.Unit, hash, t.Body, registry.ReplaceBody); err != nil {
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

// Move moves a non-global launched unit from the machine it runs on to
// machine to ("" : where the scheduler would place it if that machine were
// gone), through the engine's two-phase move: its agent stops it (ExecStop
// withdraws it), the new machine starts it. It blocks until the unit is
// ready there.
func (r *Roller) Move(ctx context.Context, name, to string) (Ready, error) {
	s, err := r.reg.Snapshot(ctx)
	if err != nil {
		return Ready{}, err
	}
	job, ok := s.Jobs[name]
	if !ok {
		return Ready{}, fmt.Errorf("move %s: %w", name, registry.ErrNotFound)
	}
	bodies, err := r.reg.Bodies(ctx)
	if err != nil {
		return Ready{}, fmt.Errorf("move %s: %w", name, err)
	}
	f, err := unit.Parse(name, bodies[job.Hash])
	if err != nil {
		return Ready{}, fmt.Errorf("move %s: %w", name, err)
	}
	if f.Fleet.Global {
		return Ready{}, fmt.Errorf("move %s: a global unit runs on every machine; it cannot move", name)
	}
	if job.Desired != registry.Launched {
		return Ready{}, fmt.Errorf("move %s: the unit is %s, not launched", name, job.Desired)
	}
	from := ""
	for _, m := range s.Targets(name) {
		if _, alive := s.Machines[m]; alive {
			from = m
		}
	}
	if from == "" {
		return Ready{}, fmt.Errorf("move %s: the unit is not on any present machine", name)
	}
	if to == "" {
		if to, err = choose(s, bodies, name, from); err != nil {
			return Ready{}, fmt.Errorf("move %s off %s: %w", name, r.label(from), err)
		}
	} else {
		if to, err = ResolveMachine(s, to); err != nil {
			return Ready{}, fmt.Errorf("move %s: %w", name, err)
		}
		if _, drained := s.Plan.Drained[to]; drained {
			return Ready{}, fmt.Errorf("move %s: machine %s is drained", name, r.label(to))
		}
	}
	if to == from {
		return Ready{}, fmt.Errorf("move %s: the unit already runs on %s", name, r.label(to))
	}
	_, announced, err := r.announceKey(ctx, name)
	if err != nil {
		return Ready{}, err
	}
	if err := r.reg.RequestMove(ctx, name, to); err != nil {
		return Ready{}, err
	}
	since, err := r.revision(ctx)
	if err != nil {
		return Ready{}, err
	}
	rd, err := r.wait(ctx, want{unit: name, hash: job.Hash, machine: to, since: since, announce: announced, move: true})
	if err != nil {
		return Ready{}, err
	}
	fmt.Fprintf(r.o.Out, "Unit %s moved %s → %s: %s\n", name, r.label(from), r.label(to), r.describe(rd))
	return rd, nil
}

// Drain moves every non-global unit off machine, one at a time (the machine
// must already be marked drained, so that nothing new lands there). It
// returns how many units it moved; global units stay.
func (r *Roller) Drain(ctx context.Context, machine string) (int, error) {
	moved := 0
	for {
		s, err := r.reg.Snapshot(ctx)
		if err != nil {
			return moved, err
		}
		if _, drained := s.Plan.Drained[machine]; !drained {
			return moved, fmt.Errorf("drain %s: the machine is not marked drained (undrained meanwhile?)", r.label(machine))
		}
		bodies, err := r.reg.Bodies(ctx)
		if err != nil {
			return moved, err
		}
		next := ""
		var names []string
		for name := range s.Schedule {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			if _, there := s.Schedule[name][machine]; !there {
				continue
			}
			f, err := unit.Parse(name, bodies[s.Jobs[name].Hash])
			if err != nil || f.Fleet.Global || s.Jobs[name].Desired != registry.Launched {
				continue
			}
			next = name
			break
		}
		if next == "" {
			return moved, nil
		}
		if _, err := r.Move(ctx, next, ""); err != nil {
			return moved, fmt.Errorf("drain %s halted: %w", r.label(machine), err)
		}
		moved++
	}
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
