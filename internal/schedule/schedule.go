// Package schedule decides where units run: a pure function from (units,
// machines) to targets, with fleet's [X-Fleet] semantics made
// deterministic. It does no I/O and keeps no state; Place is safe for
// concurrent use.
//
// Place(units, machines) returns, for each non-global unit, the machine it
// should run on (Result.Targets), for each global unit the machines it runs
// on (Result.Global), and for each unit that cannot run anywhere a reason a
// human can act on (Result.Unplaced). The rules, in order:
//
//   - Stability: a unit stays on its Current machine if that machine still
//     exists and still satisfies every constraint below, given the units
//     already kept there (units are considered in name order, MachineOf
//     peers before their followers). Nothing moves without a reason.
//   - Every other non-global unit goes to the least-loaded eligible machine
//     (load = non-global units targeted there; ties broken by machine id).
//     Units pinned by MachineID go first, then those with metadata or
//     conflict constraints, then the rest, each group in name order;
//     MachineOf followers come after the units they follow.
//   - MachineID: the machine whose id equals the value, or else the only
//     machine whose id starts with it (an ambiguous prefix is a reason).
//   - MachineMetadata: every condition must hold (see unit.MetadataMatch).
//   - MachineOf: the unit goes where each named unit goes (all must be on
//     one machine); a missing, global or unplaced peer, or a MachineOf
//     cycle, leaves it unplaced with that reason. The follower's own
//     constraints must hold on that machine too.
//   - Conflicts: two units may not share a machine if either one's globs
//     match the other's name; a unit never conflicts with itself.
//   - Replaces: like Conflicts, and a unit that has no machine yet takes the
//     machine of a unit it replaces (the first by name where it can run once
//     that unit and its MachineOf followers left), which then moves like any
//     other unit — or stays unplaced if it fits nowhere else.
//   - Capacity: a machine with Capacity > 0 takes at most that many
//     non-global units.
//   - Avoid: a unit never goes to (nor stays on) a machine it avoids (one
//     where it failed with its restart budget used, [X-Flotilla]
//     OnFailed=move); a unit that avoids every machine it may run on is
//     unplaced with that reason.
//   - Global units run on every machine that matches their metadata and
//     holds no conflicting unit; they are placed after all non-global units
//     (so they yield to them), in name order. They do not count towards
//     load or Capacity.
//
// The same input always yields the same Result, whatever the order of the
// units and machines slices or of the metadata maps. Unit names and machine
// ids are expected to be unique; for a duplicate, the first occurrence in
// the input wins.
package schedule

import (
	"github.com/flotilla/flotilla/internal/unit"
)

// Machine is a machine that can run units. Capacity is the most non-global
// units it takes; 0 means unlimited, a negative value none (a drained
// machine: its units move, global units stay).
type Machine struct {
	ID, IP   string
	Metadata map[string]string
	Capacity int
}

// Unit is a unit to place: its name, its [X-Fleet] settings (specifiers
// already expanded, as unit.Parse does), the machine it is on now ("" if
// none) and the machines it must avoid (ids; unknown ones are ignored).
type Unit struct {
	Name    string
	Fleet   unit.Fleet
	Current string
	Avoid   []string
}

// Result is the outcome of Place. Every unit given appears in exactly one
// of the maps. Targets maps a non-global unit to its machine id; Global a
// global unit to the ids of its machines, sorted; Unplaced a unit to the
// reason it runs nowhere (for example "no machine matches
// MachineMetadata role=worker" or "conflicts with nginx@1.service on every
// eligible machine").
type Result struct {
	Targets  map[string]string
	Global   map[string][]string
	Unplaced map[string]string
}
