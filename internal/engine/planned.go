package engine

import (
	"strings"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/schedule"
	"github.com/flotilla/flotilla/internal/store"
)

// Planned change: drained machines, requested moves and pinned bodies (see
// registry/rollout.go). A drained machine keeps the units it runs but takes
// no new one; a move re-places one unit on the machine it names, withdraw
// first (the two-phase move of plan); a pin keeps one machine of a unit on
// an older body while a rollout walks the machines.

// plannedChange reports whether a key (relative to the prefix) is one of the
// planned-change keys, each of which calls for a pass.
func plannedChange(rest string) bool {
	return strings.HasPrefix(rest, "drain/") || strings.HasPrefix(rest, "moves/") || strings.HasPrefix(rest, "pins/")
}

// applyMoves returns the moves this pass honours (unit → machine): those of
// a submitted, loaded or launched, non-global unit whose body parses, to a
// present machine. The others are recorded in e.dropMoves, so that their keys
// are deleted. e.mu is held.
func (e *Engine) applyMoves(snap *registry.Snapshot) map[string]string {
	e.dropMoves = map[string]string{}
	out := map[string]string{}
	for name, mv := range snap.Plan.Moves {
		j, ok := snap.Jobs[name]
		pu := e.cache[name]
		switch {
		case !ok || (j.Desired != registry.Loaded && j.Desired != registry.Launched):
			e.dropMoves[name] = "the unit is not loaded or launched"
		case pu.file == nil || pu.err != nil:
			e.dropMoves[name] = "the unit's body does not parse"
		case pu.file.Fleet.Global:
			e.dropMoves[name] = "a global unit runs on every machine"
		default:
			if _, alive := snap.Machines[mv.To]; !alive {
				e.dropMoves[name] = "machine " + mv.To + " is not present"
				continue
			}
			out[name] = mv.To
		}
	}
	return out
}

// placeWithPlan is schedule.Place with drains and moves applied: a moved unit
// must go to its machine (MachineID), a drained machine keeps the units it
// has (its capacity is their number) and takes no other. A move that leaves
// its unit unplaced (the machine does not satisfy the unit's constraints) is
// dropped, and the unit placed as if it had not been asked. e.mu is held.
func (e *Engine) placeWithPlan(snap *registry.Snapshot, units []schedule.Unit, machines []schedule.Machine, moves map[string]string) schedule.Result {
	place := func(moves map[string]string) schedule.Result {
		if len(moves) == 0 && len(snap.Plan.Drained) == 0 {
			return schedule.Place(units, machines) // nothing to change: no copies
		}
		us := make([]schedule.Unit, len(units))
		copy(us, units)
		kept := map[string]int{}
		for i := range us {
			u := &us[i]
			if to, ok := moves[u.Name]; ok && u.Current != to {
				u.Fleet.MachineID = to
				u.Current = ""
			}
			if u.Current != "" && !u.Fleet.Global {
				kept[u.Current]++
			}
		}
		ms := make([]schedule.Machine, len(machines))
		copy(ms, machines)
		for i := range ms {
			if _, drained := snap.Plan.Drained[ms[i].ID]; !drained {
				continue
			}
			n := kept[ms[i].ID]
			switch {
			case n == 0:
				ms[i].Capacity = -1
			case ms[i].Capacity == 0 || n < ms[i].Capacity:
				ms[i].Capacity = n
			}
		}
		return schedule.Place(us, ms)
	}
	res := place(moves)
	retry := false
	for name := range moves {
		if why, bad := res.Unplaced[name]; bad {
			e.dropMoves[name] = "cannot run there: " + why
			delete(moves, name)
			retry = true
		}
	}
	if retry {
		res = place(moves)
	}
	return res
}

// moveDone returns the delete of unit's move key when the move is over (this
// pass targets the unit at its machine alone) or cannot be honoured (logged).
// e.mu is held.
func (e *Engine) moveDone(snap *registry.Snapshot, name string, want map[string]bool) []store.Op {
	mv, ok := snap.Plan.Moves[name]
	if !ok {
		return nil
	}
	if why, drop := e.dropMoves[name]; drop {
		e.log.Warn("engine: dropping a move request", "unit", name, "to", mv.To, "reason", why)
		return []store.Op{store.OpDelete(e.reg.MoveKey(name))}
	}
	if mv.Surge {
		return nil // over when rewritten without surge
	}
	if len(want) == 1 && want[mv.To] {
		// This pass targets the unit there alone (in the same transaction).
		return []store.Op{store.OpDelete(e.reg.MoveKey(name))}
	}
	return nil
}

// surges returns, for each honoured surge move whose unit is placed on its
// new machine, the present machine it runs on now (unit → machine): the
// engine keeps it targeted there too, so that the new instance starts before
// the old one stops. e.mu is held.
func (e *Engine) surges(snap *registry.Snapshot, res schedule.Result) map[string]string {
	out := map[string]string{}
	for name, mv := range snap.Plan.Moves {
		if !mv.Surge || res.Targets[name] != mv.To {
			continue
		}
		if _, dropped := e.dropMoves[name]; dropped {
			continue
		}
		for _, m := range snap.Targets(name) {
			if _, alive := snap.Machines[m]; alive && m != mv.To {
				out[name] = m
				break
			}
		}
	}
	return out
}
