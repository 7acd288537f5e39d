package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/rollout"
	"github.com/flotilla/flotilla/internal/unit"
)

// Planned change: roll, drain, undrain, move (see internal/rollout).

const rolloutUsage = `
Planned change (one line per instance; each counts done when it is active,
announced and applied by every render that publishes its status). roll,
move and drain store a rollout that the elected driver of the serve
machines carries out; the command follows it to its end, or returns at
once with --no-block (the change goes on; Ctrl-C stops following only):
  roll FILE…               give units the body of FILE, --max-unavailable N
                           at a time (default 1; --surge: start the new one
                           on another machine first where [X-Fleet] allows,
                           the instance then runs there); a template file rolls every
                           submitted instance of it; a global unit rolls
                           machine by machine; halts at the first instance
                           that does not become ready (exit 1)
  drain MACHINE            the machine takes no new units; its units move
                           away one at a time
  undrain MACHINE          the machine takes new units again
  move UNIT                move a unit to another machine (--to MACHINE)
  rollouts [ID]            list the rollouts (ID KIND STATE WHAT LAST); with
                           an ID, follow that one (--no-block: print it)`

// rolloutFlags are the flags of the planned-change verbs.
type rolloutFlags struct {
	maxUnavailable int
	timeout        time.Duration
	announcePrefix string
	statusPrefix   string
	to             string
	surge          bool
}

func (f *rolloutFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&f.maxUnavailable, "max-unavailable", 1, "roll: instances restarted at a time")
	fs.DurationVar(&f.timeout, "timeout", rollout.DefaultTimeout, "roll, move, drain: how long one instance may take to become ready")
	fs.StringVar(&f.announcePrefix, "announce-prefix", rollout.DefaultAnnouncePrefix, `roll, move, drain: where units announce themselves ("-": do not wait for announcements); roles: the prefix announce may write`)
	fs.StringVar(&f.statusPrefix, "status-prefix", rollout.DefaultStatusPrefix, `roll, move, drain: where renders publish what they applied ("-": do not wait for renders)`)
	fs.StringVar(&f.to, "to", "", "move: the machine to move the unit to (default: where the scheduler would place it)")
	fs.BoolVar(&f.surge, "surge", false, "roll: start each instance's new body on another machine before stopping the old one, where [X-Fleet] allows (else in place)")
}

// rolloutFlagVerbs says which verbs a planned-change flag applies to (nil:
// not one of them); any other verb refuses it.
func rolloutFlagVerbs(flag string) []string {
	switch flag {
	case "max-unavailable", "surge":
		return []string{"roll"}
	case "announce-prefix":
		return []string{"roll", "move", "drain", "roles"}
	case "timeout", "status-prefix":
		return []string{"roll", "move", "drain"}
	case "to":
		return []string{"move"}
	}
	return nil
}

// checkRolloutFlags refuses a planned-change flag given to a verb it does
// not apply to.
func checkRolloutFlags(fs *flag.FlagSet, verb string) error {
	var err error
	fs.Visit(func(f *flag.Flag) {
		verbs := rolloutFlagVerbs(f.Name)
		if verbs == nil || err != nil {
			return
		}
		for _, v := range verbs {
			if v == verb {
				return
			}
		}
		err = cmdline.Usagef("--%s applies only to %s", f.Name, strings.Join(verbs, ", "))
	})
	return err
}

// rolloutCommand returns the planned-change verbs (their flags: registerRollout).
func (cl *client) rolloutCommand(verb string) (command, bool) {
	switch verb {
	case "roll":
		return command{minArgs: 1, maxArgs: -1, run: cl.rollCmd}, true
	case "drain":
		return command{minArgs: 1, maxArgs: 1, run: cl.drainCmd}, true
	case "undrain":
		return command{minArgs: 1, maxArgs: 1, run: cl.undrainCmd}, true
	case "move":
		return command{minArgs: 1, maxArgs: 1, run: cl.moveCmd}, true
	case "rollouts":
		return command{minArgs: 0, maxArgs: 1, run: cl.rolloutsCmd}, true
	}
	return command{}, false
}

// rollCmd: roll FILE… (a template file rolls its submitted instances).
func (cl *client) rollCmd(ctx context.Context, args []string) error {
	if cl.o.rollout.maxUnavailable < 1 {
		return cmdline.Usagef("--max-unavailable %d: want 1 or more", cl.o.rollout.maxUnavailable)
	}
	var targets []rollout.Target
	seen := map[string]bool{}
	add := func(name string, body []byte) {
		if !seen[name] {
			seen[name] = true
			targets = append(targets, rollout.Target{Unit: name, Body: body})
		}
	}
	for _, a := range args {
		src, err := resolve(a)
		if err != nil {
			return err
		}
		if src.body == nil {
			return fmt.Errorf("roll %s: no such file (roll takes the new body from a unit file)", a)
		}
		if _, err := unit.Parse(src.name, src.body); err != nil {
			return fmt.Errorf("roll %s: %w", src.path, err)
		}
		n, _ := unit.ParseName(src.name)
		if !n.IsTemplate() {
			add(src.name, src.body)
			continue
		}
		// The template itself, when submitted, takes the body at once (it
		// never runs); then every submitted instance, in name order.
		if _, err := cl.reg.Job(ctx, src.name); err == nil {
			if _, err := cl.reg.Submit(ctx, src.name, unit.Hash(src.body), src.body, registry.ReplaceBody); err != nil {
				return err
			}
		} else if !errors.Is(err, registry.ErrNotFound) {
			return err
		}
		s, err := cl.reg.Snapshot(ctx)
		if err != nil {
			return err
		}
		var inst []string
		for name := range s.Jobs {
			if in, err := unit.ParseName(name); err == nil && in.IsInstance() && in.TemplateName() == src.name {
				inst = append(inst, name)
			}
		}
		if len(inst) == 0 {
			return fmt.Errorf("roll %s: no instance of the template is submitted", src.name)
		}
		sort.Strings(inst)
		for _, name := range inst {
			add(name, src.body)
		}
	}
	return cl.carry(ctx, rollout.Record{Kind: rollout.KindRoll, Targets: targets,
		MaxUnavailable: cl.o.rollout.maxUnavailable, Surge: cl.o.rollout.surge})
}

func (cl *client) machineArg(ctx context.Context, id string) (string, error) {
	s, err := cl.reg.Snapshot(ctx)
	if err != nil {
		return "", err
	}
	if _, drained := s.Plan.Drained[id]; drained {
		return id, nil
	}
	return rollout.ResolveMachine(s, id)
}

func (cl *client) drainCmd(ctx context.Context, args []string) error {
	m, err := cl.machineArg(ctx, args[0])
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	if err := cl.reg.Drain(ctx, m, "drained at "+time.Now().UTC().Format(time.RFC3339)); err != nil {
		return err
	}
	fmt.Fprintf(cl.stdout, "Machine %s drained: it takes no new units\n", m)
	return cl.carry(ctx, rollout.Record{Kind: rollout.KindDrain, Machine: m})
}

func (cl *client) undrainCmd(ctx context.Context, args []string) error {
	m, err := cl.machineArg(ctx, args[0])
	if err != nil {
		return fmt.Errorf("undrain: %w", err)
	}
	was, err := cl.reg.Undrain(ctx, m)
	if err != nil {
		return err
	}
	if !was {
		fmt.Fprintf(cl.stdout, "Machine %s was not drained\n", m)
		return nil
	}
	fmt.Fprintf(cl.stdout, "Machine %s undrained: it takes new units again\n", m)
	return nil
}

func (cl *client) moveCmd(ctx context.Context, args []string) error {
	name := filepath.Base(args[0])
	if _, err := cl.reg.Job(ctx, name); err != nil {
		return fmt.Errorf("move %s: %w", name, err)
	}
	return cl.carry(ctx, rollout.Record{Kind: rollout.KindMove, Unit: name, To: cl.o.rollout.to})
}

// replaceGlobal gives a launched global unit its new body machine by machine
// (a rollout, as roll stores; with --no-block it returns once the rollout
// is stored) when --replace changes it. It reports whether it did.
func (cl *client) replaceGlobal(ctx context.Context, src source) (registry.Job, bool, error) {
	f, err := unit.Parse(src.name, src.body)
	if err != nil || !f.Fleet.Global {
		return registry.Job{}, false, nil
	}
	j, err := cl.reg.Job(ctx, src.name)
	if err != nil || j.Desired != registry.Launched || j.Hash == unit.Hash(src.body) {
		return registry.Job{}, false, nil
	}
	if err := cl.carry(ctx, rollout.Record{Kind: rollout.KindRoll, Targets: []rollout.Target{{Unit: src.name, Body: src.body}}, MaxUnavailable: 1}); err != nil {
		return registry.Job{}, true, err
	}
	j, err = cl.reg.Job(ctx, src.name)
	return j, true, err
}
