package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

// client runs the client verbs against one registry.
type client struct {
	o      *options
	reg    *registry.Registry
	stdout io.Writer
	stderr io.Writer
	getenv func(string) string
}

// submitFirst says whether a verb submits unit files it is given.
type submitFirst bool

const (
	submitFiles submitFirst = true
	namesOnly   submitFirst = false
)

// source is a unit named on the command line, with its body when it came
// from a file.
type source struct {
	name string
	path string // the file the body came from, "" if none
	body []byte
}

// resolve turns a FILE-or-UNIT argument into a unit name and, when a file
// provides it, a body. An instance path whose file does not exist takes the
// body of the template file beside it, as fleetctl does.
func resolve(arg string) (source, error) {
	name := filepath.Base(arg)
	if _, err := unit.ParseName(name); err != nil {
		return source{}, fmt.Errorf("%s: %w", arg, err)
	}
	b, err := os.ReadFile(arg)
	if err == nil {
		return source{name: name, path: arg, body: b}, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return source{}, fmt.Errorf("read unit file: %w", err)
	}
	n, _ := unit.ParseName(name)
	if n.IsInstance() {
		tpath := filepath.Join(filepath.Dir(arg), n.TemplateName())
		if b, err := os.ReadFile(tpath); err == nil {
			return source{name: name, path: tpath, body: b}, nil
		}
	}
	return source{name: name}, nil
}

// validate parses a unit's body, naming its file and line in the error.
func validate(src source) error {
	if _, err := unit.Parse(src.name, src.body); err != nil {
		var ue *unit.Error
		if errors.As(err, &ue) && ue.Line > 0 {
			return fmt.Errorf("%s:%d: %w", src.path, ue.Line, ue.Err)
		}
		return fmt.Errorf("%s: %w", src.path, err)
	}
	return nil
}

// submit validates and stores one unit.
func (cl *client) submit(ctx context.Context, src source) (registry.Job, error) {
	if err := validate(src); err != nil {
		return registry.Job{}, err
	}
	mode := registry.KeepExisting
	if cl.o.replace {
		mode = registry.ReplaceBody
		if j, rolled, err := cl.replaceGlobal(ctx, src); rolled || err != nil {
			return j, err
		}
	}
	return cl.reg.Submit(ctx, src.name, unit.Hash(src.body), src.body, mode)
}

// ensureSubmitted submits src if it has a body, or, for an instance of an
// already submitted template, with the template's body.
func (cl *client) ensureSubmitted(ctx context.Context, src source) (registry.Job, error) {
	if src.body != nil {
		return cl.submit(ctx, src)
	}
	j, err := cl.reg.Job(ctx, src.name)
	if err == nil || !errors.Is(err, registry.ErrNotFound) {
		return j, err
	}
	n, _ := unit.ParseName(src.name)
	if n.IsInstance() {
		tj, terr := cl.reg.Job(ctx, n.TemplateName())
		if terr == nil {
			body, err := cl.reg.Body(ctx, tj.Hash)
			if err != nil {
				return registry.Job{}, err
			}
			return cl.submit(ctx, source{name: src.name, path: n.TemplateName(), body: body})
		}
	}
	return registry.Job{}, fmt.Errorf("unit %s: no such file, and not submitted", src.name)
}

func (cl *client) submitCmd(ctx context.Context, args []string) error {
	if !cl.o.replace {
		_, err := cl.ensure(ctx, args, "", submitFiles)
		return err
	}
	for _, a := range args {
		src, err := resolve(a)
		if err != nil {
			return err
		}
		if src.body == nil {
			return fmt.Errorf("submit %s: no such file", a)
		}
		if _, err := cl.submit(ctx, src); err != nil {
			return err
		}
	}
	return nil
}

// ensure validates every unit named, then (sub) submits those given by a
// file and sets all to d ("": as they are), many per transaction
// (registry.Ensure). Nothing is written when a unit file does not parse.
// It returns the units' names.
func (cl *client) ensure(ctx context.Context, args []string, d registry.Desired, sub submitFirst) ([]string, error) {
	wants := make([]registry.Want, 0, len(args))
	names := make([]string, 0, len(args))
	for _, a := range args {
		if d != registry.Inactive && d != "" {
			if n, err := unit.ParseName(filepath.Base(a)); err == nil && n.IsTemplate() {
				return nil, fmt.Errorf("unit %s: %w", n.Full, unit.ErrTemplate)
			}
		}
		w := registry.Want{Name: filepath.Base(a), Desired: d}
		if sub {
			src, err := resolve(a)
			if err != nil {
				return nil, err
			}
			switch {
			case src.body != nil:
				if err := validate(src); err != nil {
					return nil, err
				}
				w.Hash, w.Body = unit.Hash(src.body), src.body
			case d == "":
				return nil, fmt.Errorf("submit %s: no such file", a)
			default:
				// A submitted unit, or an instance of a submitted template.
				if _, err := cl.ensureSubmitted(ctx, src); err != nil {
					return nil, err
				}
			}
			w.Name = src.name
		}
		wants = append(wants, w)
		names = append(names, w.Name)
	}
	if err := registry.FirstError(cl.reg.Ensure(ctx, wants, registry.KeepExisting)); err != nil {
		return nil, err
	}
	return names, nil
}

// setCmd moves units to a desired state (load, start, stop, unload).
func (cl *client) setCmd(ctx context.Context, args []string, d registry.Desired, sub submitFirst) error {
	if !cl.o.replace {
		names, err := cl.ensure(ctx, args, d, sub)
		if err != nil || cl.o.noBlock || len(names) == 0 {
			return err
		}
		return cl.wait(ctx, names, d)
	}
	var names []string
	for _, a := range args {
		if d != registry.Inactive {
			if n, err := unit.ParseName(filepath.Base(a)); err == nil && n.IsTemplate() {
				return fmt.Errorf("unit %s: %w", n.Full, unit.ErrTemplate)
			}
		}
		var src source
		var err error
		if sub {
			if src, err = resolve(a); err != nil {
				return err
			}
			if _, err := cl.ensureSubmitted(ctx, src); err != nil {
				return err
			}
		} else {
			src.name = filepath.Base(a)
		}
		if err := cl.reg.SetDesired(ctx, src.name, d); err != nil {
			return err
		}
		if cl.o.replace && !cl.o.noBlock {
			// --replace: one unit at a time, each running its new body
			// before the next is touched.
			if err := cl.wait(ctx, []string{src.name}, d); err != nil {
				return err
			}
			continue
		}
		names = append(names, src.name)
	}
	if cl.o.noBlock || len(names) == 0 {
		return nil
	}
	return cl.wait(ctx, names, d)
}

func (cl *client) restartCmd(ctx context.Context, args []string) error {
	for _, a := range args {
		name := filepath.Base(a)
		if err := cl.reg.SetDesired(ctx, name, registry.Loaded); err != nil {
			return err
		}
		if err := cl.wait(ctx, []string{name}, registry.Loaded); err != nil {
			return err
		}
		if err := cl.reg.SetDesired(ctx, name, registry.Launched); err != nil {
			return err
		}
		if !cl.o.noBlock {
			if err := cl.wait(ctx, []string{name}, registry.Launched); err != nil {
				return err
			}
		}
	}
	return nil
}

func (cl *client) destroyCmd(ctx context.Context, args []string) error {
	var names []string
	for _, a := range args {
		name := filepath.Base(a)
		if err := cl.reg.Destroy(ctx, name); err != nil {
			return err
		}
		fmt.Fprintf(cl.stdout, "Destroyed %s\n", name)
		names = append(names, name)
	}
	if cl.o.noBlock {
		return nil
	}
	return cl.wait(ctx, names, "")
}

func (cl *client) catCmd(ctx context.Context, args []string) error {
	j, err := cl.reg.Job(ctx, filepath.Base(args[0]))
	if err != nil {
		return err
	}
	b, err := cl.reg.Body(ctx, j.Hash)
	if err != nil {
		return err
	}
	_, err = cl.stdout.Write(b)
	return err
}

// wait polls until every unit reached d ("" : destroyed) on every machine
// it is targeted at, printing a line per unit as it gets there.
func (cl *client) wait(ctx context.Context, names []string, d registry.Desired) error {
	pending := map[string]bool{}
	for _, n := range names {
		pending[n] = true
	}
	var last *registry.Snapshot
	for attempt := 1; ; attempt++ {
		s, err := cl.reg.Snapshot(ctx)
		if err != nil {
			return err
		}
		last = s
		for _, n := range names {
			if !pending[n] {
				continue
			}
			if where, ok := reached(s, n, d, cl.o.full); ok {
				delete(pending, n)
				switch d {
				case registry.Launched, registry.Loaded:
					fmt.Fprintf(cl.stdout, "Unit %s %s on %s\n", n, d, where)
				case registry.Inactive:
					fmt.Fprintf(cl.stdout, "Unit %s inactive\n", n)
				}
			}
		}
		if len(pending) == 0 {
			return nil
		}
		if cl.o.blockAttempts > 0 && attempt >= cl.o.blockAttempts {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	var msgs []string
	for _, n := range names {
		if !pending[n] {
			continue
		}
		m := fmt.Sprintf("unit %s did not reach %s", n, orDestroyed(d))
		if why := last.Unplaced[n]; why != "" {
			m += " (unplaced: " + why + ")"
		}
		msgs = append(msgs, m)
	}
	return fmt.Errorf("%s after %d attempts", strings.Join(msgs, "; "), cl.o.blockAttempts)
}

func orDestroyed(d registry.Desired) string {
	if d == "" {
		return "destroyed"
	}
	return string(d)
}

// reached reports whether unit n is in state d everywhere it is targeted, and
// where that is.
func reached(s *registry.Snapshot, n string, d registry.Desired, full bool) (string, bool) {
	switch d {
	case "", registry.Inactive:
		return "", len(s.Schedule[n]) == 0 && len(s.States[n]) == 0
	}
	j, ok := s.Jobs[n]
	if !ok {
		return "", false
	}
	targets := s.Targets(n)
	if len(targets) == 0 {
		return "", false
	}
	var where []string
	for _, m := range targets {
		st, ok := s.States[n][m]
		if !ok || st.State != string(d) || st.Hash != j.Hash {
			return "", false
		}
		where = append(where, machineLabel(s.Machines[m], m, full))
	}
	return strings.Join(where, ", "), true
}

// machineLabel is fleet's "<id8>.../<ip>".
func machineLabel(m registry.Machine, id string, full bool) string {
	if !full && len(id) > 8 {
		id = id[:8] + "..."
	}
	if m.IP == "" {
		return id
	}
	return id + "/" + m.IP
}
