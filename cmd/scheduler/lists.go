package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

// table prints rows under a legend with fleet's tab alignment.
type table struct {
	fields []string
}

// columns picks the fields to show: --fields, or the defaults.
func (cl *client) columns(all, defaults []string) ([]string, error) {
	if cl.o.fields == "" {
		return defaults, nil
	}
	var out []string
	for _, f := range strings.Split(cl.o.fields, ",") {
		f = strings.TrimSpace(f)
		ok := false
		for _, a := range all {
			ok = ok || a == f
		}
		if !ok {
			return nil, cmdline.Usagef("--fields: unknown field %q (want %s)", f, strings.Join(all, ","))
		}
		out = append(out, f)
	}
	return out, nil
}

func (cl *client) print(t table, values []map[string]string) error {
	w := tabwriter.NewWriter(cl.stdout, 0, 8, 1, '\t', 0)
	if !cl.o.noLegend {
		legend := make([]string, len(t.fields))
		for i, f := range t.fields {
			legend[i] = strings.ToUpper(f)
		}
		fmt.Fprintln(w, strings.Join(legend, "\t"))
	}
	for _, v := range values {
		row := make([]string, len(t.fields))
		for i, f := range t.fields {
			row[i] = v[f]
		}
		fmt.Fprintln(w, strings.Join(row, "\t"))
	}
	return w.Flush()
}

func (cl *client) hash(h string) string {
	if cl.o.full {
		return h
	}
	return registry.ShortHash(h)
}

func (cl *client) listUnitsCmd(ctx context.Context, _ []string) error {
	fields, err := cl.columns([]string{"unit", "machine", "active", "sub", "load", "hash", "restarts", "failed"}, []string{"unit", "machine", "active", "sub"})
	if err != nil {
		return err
	}
	s, err := cl.reg.Snapshot(ctx)
	if err != nil {
		return err
	}
	var rows []map[string]string
	for _, n := range sortedKeys(s.States) {
		for _, m := range sortedKeys(s.States[n]) {
			st := s.States[n][m]
			rows = append(rows, map[string]string{
				"unit": n, "machine": machineLabel(s.Machines[m], m, cl.o.full),
				"active": st.Active, "sub": st.Sub, "load": st.Load, "hash": cl.hash(st.Hash),
				"restarts": strconv.Itoa(st.Restarts), "failed": cl.failedOn(s, n),
			})
		}
	}
	return cl.print(table{fields: fields}, rows)
}

// failedOn lists the machines where unit's current body failed for good
// (failure records of [X-Flotilla] RestartFailed=), "-" if none.
func (cl *client) failedOn(s *registry.Snapshot, unit string) string {
	var out []string
	for _, m := range sortedKeys(s.Failed[unit]) {
		if f := s.Failed[unit][m]; f.Hash == s.Jobs[unit].Hash {
			out = append(out, machineLabel(s.Machines[m], m, cl.o.full))
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, ",")
}

func (cl *client) listUnitFilesCmd(ctx context.Context, _ []string) error {
	fields, err := cl.columns([]string{"unit", "hash", "dstate", "state", "target", "desc", "global", "reason"},
		[]string{"unit", "hash", "dstate", "state", "target"})
	if err != nil {
		return err
	}
	s, err := cl.reg.Snapshot(ctx)
	if err != nil {
		return err
	}
	bodies, err := cl.reg.Bodies(ctx)
	if err != nil {
		return err
	}
	var rows []map[string]string
	var unplaced []string
	for _, n := range sortedKeys(s.Jobs) {
		j := s.Jobs[n]
		row := map[string]string{"unit": n, "hash": cl.hash(j.Hash), "dstate": string(j.Desired), "state": "inactive", "target": "-", "desc": "-", "global": "false", "reason": "-"}
		var f *unit.File
		if b, ok := bodies[j.Hash]; ok {
			f, _ = unit.Parse(n, b)
		}
		if f != nil {
			if f.Description != "" {
				row["desc"] = describe(f)
			}
			if f.Fleet.Global {
				row["global"] = "true"
			}
		}
		targets := s.Targets(n)
		if row["global"] == "true" {
			row["state"] = commonState(s, n, targets)
		} else if len(targets) > 0 {
			m := targets[0]
			row["target"] = machineLabel(s.Machines[m], m, cl.o.full)
			if st, ok := s.States[n][m]; ok && st.State != "" && st.Hash == j.Hash {
				row["state"] = st.State
			}
		}
		if why := s.Unplaced[n]; why != "" {
			row["reason"] = why
			unplaced = append(unplaced, fmt.Sprintf("%s: unplaced: %s", n, why))
		}
		rows = append(rows, row)
	}
	if err := cl.print(table{fields: fields}, rows); err != nil {
		return err
	}
	if strings.Contains(","+cl.o.fields+",", ",reason,") {
		return nil
	}
	for _, u := range unplaced {
		fmt.Fprintln(cl.stderr, u)
	}
	return nil
}

// commonState is the state a global unit has on all its machines, or "-".
func commonState(s *registry.Snapshot, n string, targets []string) string {
	if len(targets) == 0 {
		return "inactive"
	}
	state := ""
	for _, m := range targets {
		st := s.States[n][m].State
		if st == "" {
			st = "inactive"
		}
		if state != "" && st != state {
			return "-"
		}
		state = st
	}
	return state
}

func (cl *client) listMachinesCmd(ctx context.Context, _ []string) error {
	ms, err := cl.reg.Machines(ctx)
	if err != nil {
		return err
	}
	drained, err := cl.reg.Drained(ctx)
	if err != nil {
		return err
	}
	defaults := []string{"machine", "ip", "metadata"}
	if len(drained) > 0 {
		defaults = append(defaults, "state") // shown when it says something
	}
	fields, err := cl.columns([]string{"machine", "ip", "metadata", "state"}, defaults)
	if err != nil {
		return err
	}
	var rows []map[string]string
	for _, id := range sortedKeys(ms) {
		m := ms[id]
		short := id
		if !cl.o.full && len(id) > 8 {
			short = id[:8] + "..."
		}
		state := "active"
		if _, ok := drained[id]; ok {
			state = "drained"
		}
		rows = append(rows, map[string]string{"machine": short, "ip": orDash(m.IP), "metadata": metadataString(m.Metadata), "state": state})
	}
	return cl.print(table{fields: fields}, rows)
}

func metadataString(md map[string]string) string {
	if len(md) == 0 {
		return "-"
	}
	var kv []string
	for _, k := range sortedKeys(md) {
		kv = append(kv, k+"="+md[k])
	}
	return strings.Join(kv, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func (cl *client) statusCmd(ctx context.Context, args []string) error {
	s, err := cl.reg.Snapshot(ctx)
	if err != nil {
		return err
	}
	var missing []string
	for i, a := range args {
		n := filepath.Base(a)
		j, ok := s.Jobs[n]
		if !ok {
			missing = append(missing, n)
			continue
		}
		if i > 0 {
			fmt.Fprintln(cl.stdout)
		}
		desc := ""
		if b, err := cl.reg.Body(ctx, j.Hash); err == nil {
			if f, err := unit.Parse(n, b); err == nil && f.Description != "" {
				desc = " - " + describe(f)
			}
		}
		fmt.Fprintf(cl.stdout, "● %s%s\n", n, desc)
		fmt.Fprintf(cl.stdout, "   Desired: %s (hash %s)\n", j.Desired, cl.hash(j.Hash))
		if why := s.Unplaced[n]; why != "" {
			fmt.Fprintf(cl.stdout, "  Unplaced: %s\n", why)
		}
		machines := map[string]bool{}
		for _, m := range s.Targets(n) {
			machines[m] = true
		}
		for m := range s.States[n] {
			machines[m] = true
		}
		if machines, err = cl.onMachine(s, n, machines); err != nil {
			return err
		}
		if len(machines) == 0 {
			fmt.Fprintf(cl.stdout, "    Active: inactive (not on any machine)\n")
		}
		for _, m := range sortedKeys(machines) {
			label := machineLabel(s.Machines[m], m, cl.o.full)
			st, ok := s.States[n][m]
			if !ok {
				fmt.Fprintf(cl.stdout, "    Active: (no report yet) on %s\n", label)
				continue
			}
			fmt.Fprintf(cl.stdout, "    Loaded: %s on %s\n", st.Load, label)
			fmt.Fprintf(cl.stdout, "    Active: %s (%s) on %s\n", st.Active, st.Sub, label)
			if st.Message != "" {
				fmt.Fprintf(cl.stdout, "     Error: %s\n", st.Message)
			}
			if lines, err := cl.journal(ctx, s.Machines[m], m, n); err == nil && len(lines) > 0 {
				fmt.Fprintln(cl.stdout)
				for _, l := range lines {
					fmt.Fprintf(cl.stdout, "  %s\n", l)
				}
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("status: %w: %s", registry.ErrNotFound, strings.Join(missing, ", "))
	}
	return nil
}

func (cl *client) journalCmd(ctx context.Context, args []string) error {
	n := filepath.Base(args[0])
	s, err := cl.reg.Snapshot(ctx)
	if err != nil {
		return err
	}
	if _, ok := s.Jobs[n]; !ok {
		return fmt.Errorf("journal %s: %w", n, registry.ErrNotFound)
	}
	machines := map[string]bool{}
	for _, m := range s.Targets(n) {
		machines[m] = true
	}
	for m := range s.States[n] {
		machines[m] = true
	}
	if machines, err = cl.onMachine(s, n, machines); err != nil {
		return err
	}
	if len(machines) == 0 {
		return fmt.Errorf("journal %s: the unit is not on any machine", n)
	}
	if cl.o.follow {
		return cl.follow(ctx, s, n, sortedKeys(machines)[0])
	}
	var errs []error
	for _, m := range sortedKeys(machines) {
		lines, err := cl.journal(ctx, s.Machines[m], m, n)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, l := range lines {
			fmt.Fprintln(cl.stdout, l)
		}
		return nil
	}
	return errors.Join(errs...)
}

// journal asks the machine's agent for a unit's last log lines (through
// etcd, so it works from anywhere), falling back to reading the log file when
// the agent does not answer and the file is reachable from here.
func (cl *client) journal(ctx context.Context, m registry.Machine, id, unit string) ([]string, error) {
	lines, err := cl.reg.Journal(ctx, id, unit, cl.o.lines, cl.o.reqTimeout)
	if err == nil || !errors.Is(err, registry.ErrNoAnswer) {
		return lines, err
	}
	if local, lerr := localJournal(m, unit, cl.o.lines); lerr == nil {
		return local, nil
	}
	return nil, err
}

// localJournal reads a unit's log as the machine's process executor keeps it,
// when that machine's log directory is reachable from here.
func localJournal(m registry.Machine, name string, lines int) ([]string, error) {
	if m.LogDir == "" {
		return nil, errors.New("the machine keeps no log files (systemd executor: use journalctl there)")
	}
	b, err := os.ReadFile(filepath.Join(m.LogDir, name+".log"))
	if err != nil {
		return nil, fmt.Errorf("%w (the log is on that machine)", err)
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if lines > 0 && len(all) > lines {
		all = all[len(all)-lines:]
	}
	return all, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// describe is a unit's Description with its name specifiers expanded.
func describe(f *unit.File) string {
	return unit.ExpandSpecifiers(f.Description, unit.Specifiers{Name: f.Name})
}
