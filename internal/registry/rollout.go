package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/flotilla/flotilla/internal/store"
)

// Keys of planned change (drain, move, rolling updates). They are not bound to
// any lease: a drain outlives a restart of the drained machine's serve.
//
//	<p>drain/<machine>          the machine takes no new units; value: when and
//	                            by whom (text). Written by `scheduler drain`.
//	<p>moves/<unit>             JSON {"to":…,"surge":bool}: the engine places the unit on that
//	                            machine (withdraw first: stopped where it was,
//	                            then started there), and deletes the key once
//	                            the unit is targeted only there, or when the
//	                            move cannot be honoured. Written by `scheduler
//	                            move` and `drain`.
//	<p>pins/<unit>/<machine>    a hash: the engine targets the unit at that
//	                            machine with this body instead of the job's,
//	                            so a global unit's new body reaches its
//	                            machines one at a time. Written by `scheduler
//	                            roll`, removed one machine at a time.
//	<p>rollouts/<id>            a rollout record (internal/rollout): JSON
//	                            whose "state" and "hashes" (the bodies it
//	                            gives units) this package reads, so that
//	                            UnusedBodies keeps the bodies of a record not
//	                            yet over. Written by `scheduler roll|move|drain`
//	                            and by the rollout driver of `serve`.

// DrainKey marks machine drained.
func (r *Registry) DrainKey(machine string) string { return r.prefix + "drain/" + machine }

// MoveKey asks the engine to move unit.
func (r *Registry) MoveKey(unit string) string { return r.prefix + "moves/" + unit }

// PinKey pins unit's body on machine.
func (r *Registry) PinKey(unit, machine string) string {
	return r.prefix + "pins/" + unit + "/" + machine
}

// PinPrefix is the prefix of every pin of unit.
func (r *Registry) PinPrefix(unit string) string { return r.prefix + "pins/" + unit + "/" }

// Move is a requested move of a unit.
type Move struct {
	Unit string `json:"-"`
	// To is the machine the unit goes to.
	To string `json:"to"`
	// Surge keeps the unit where it is as well until the request is
	// rewritten without it: the new instance starts before the old one
	// stops (the engine keeps both targets).
	Surge bool `json:"surge,omitempty"`
}

// Plan holds the planned-change keys, read with a Snapshot.
type Plan struct {
	// Drained maps a drained machine to the reason recorded.
	Drained map[string]string
	// Moves maps a unit to its requested move.
	Moves map[string]Move
	// Pins maps unit → machine → pinned hash.
	Pins map[string]map[string]string
}

// planPrefixes are the prefixes a Snapshot reads for its Plan.
func (r *Registry) planPrefixes() []string {
	return []string{r.sub("drain"), r.sub("moves"), r.sub("pins")}
}

// decodePlan fills s.Plan from the planned-change keys read; undecodable keys
// go to s.Skipped, and their mod revisions to s.ModRevs.
func (r *Registry) decodePlan(s *Snapshot, m map[string][]store.KV) {
	p := r.planPrefixes()
	s.Plan = Plan{Drained: map[string]string{}, Moves: map[string]Move{}, Pins: map[string]map[string]string{}}
	for _, kv := range m[p[0]] {
		s.Plan.Drained[strings.TrimPrefix(kv.Key, p[0])] = string(kv.Value)
	}
	for _, kv := range m[p[1]] {
		var mv Move
		if err := json.Unmarshal(kv.Value, &mv); err != nil || mv.To == "" {
			s.Skipped = append(s.Skipped, fmt.Errorf("decode %s: %v (want {\"to\":MACHINE})", kv.Key, err))
			continue
		}
		mv.Unit = strings.TrimPrefix(kv.Key, p[1])
		s.Plan.Moves[mv.Unit] = mv
		s.ModRevs[kv.Key] = kv.ModRevision
	}
	for _, kv := range m[p[2]] {
		rest := strings.TrimPrefix(kv.Key, p[2])
		i := strings.LastIndexByte(rest, '/')
		if i < 0 || len(kv.Value) == 0 {
			s.Skipped = append(s.Skipped, fmt.Errorf("decode %s: want <unit>/<machine> = hash", kv.Key))
			continue
		}
		u, mach := rest[:i], rest[i+1:]
		if s.Plan.Pins[u] == nil {
			s.Plan.Pins[u] = map[string]string{}
		}
		s.Plan.Pins[u][mach] = string(kv.Value)
	}
}

// Drain marks machine drained (the engine gives it no new unit); why is kept
// as the key's value.
func (r *Registry) Drain(ctx context.Context, machine, why string) error {
	if _, err := r.c.Put(ctx, r.DrainKey(machine), why, 0); err != nil {
		return fmt.Errorf("drain %s: %w", machine, err)
	}
	return nil
}

// Undrain lets machine take new units again. It reports whether the machine
// was drained.
func (r *Registry) Undrain(ctx context.Context, machine string) (bool, error) {
	n, err := r.c.Delete(ctx, r.DrainKey(machine))
	if err != nil {
		return false, fmt.Errorf("undrain %s: %w", machine, err)
	}
	return n > 0, nil
}

// Drained reads the drained machines (id → recorded reason).
func (r *Registry) Drained(ctx context.Context) (map[string]string, error) {
	kvs, _, err := r.c.GetPrefix(ctx, r.sub("drain"))
	if err != nil {
		return nil, fmt.Errorf("read drained machines: %w", err)
	}
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		out[strings.TrimPrefix(kv.Key, r.sub("drain"))] = string(kv.Value)
	}
	return out, nil
}

// RequestMove asks the engine to move unit to machine to (see Move.Surge).
func (r *Registry) RequestMove(ctx context.Context, unit, to string, surge bool) error {
	if _, err := r.c.Put(ctx, r.MoveKey(unit), Encode(Move{To: to, Surge: surge}), 0); err != nil {
		return fmt.Errorf("move %s to %s: %w", unit, to, err)
	}
	return nil
}

// CancelMove withdraws a move request of unit, if any.
func (r *Registry) CancelMove(ctx context.Context, unit string) error {
	if _, err := r.c.Delete(ctx, r.MoveKey(unit)); err != nil {
		return fmt.Errorf("cancel move of %s: %w", unit, err)
	}
	return nil
}

// Pin keeps unit on hash on each of machines (one transaction).
func (r *Registry) Pin(ctx context.Context, unit, hash string, machines []string) error {
	sort.Strings(machines)
	for len(machines) > 0 {
		n := min(len(machines), MaxTxnOps)
		ops := make([]store.Op, 0, n)
		for _, m := range machines[:n] {
			ops = append(ops, store.OpPut(r.PinKey(unit, m), hash, 0))
		}
		if _, _, err := r.c.Txn(ctx, nil, ops, nil); err != nil {
			return fmt.Errorf("pin %s: %w", unit, err)
		}
		machines = machines[n:]
	}
	return nil
}

// Unpin lets unit on machine take its job's body.
func (r *Registry) Unpin(ctx context.Context, unit, machine string) error {
	if _, err := r.c.Delete(ctx, r.PinKey(unit, machine)); err != nil {
		return fmt.Errorf("unpin %s on %s: %w", unit, machine, err)
	}
	return nil
}

// UnpinAll removes every pin of unit.
func (r *Registry) UnpinAll(ctx context.Context, unit string) error {
	if _, err := r.c.DeletePrefix(ctx, r.PinPrefix(unit)); err != nil {
		return fmt.Errorf("unpin %s: %w", unit, err)
	}
	return nil
}

// Hash returns the body hash unit should run on machine: the pinned one if
// any, else the job's.
func (s *Snapshot) Hash(unit, machine string) string {
	if h, ok := s.Plan.Pins[unit][machine]; ok {
		return h
	}
	return s.Jobs[unit].Hash
}

// RolloutPrefix is where rollout records are kept.
func (r *Registry) RolloutPrefix() string { return r.sub("rollouts") }

// rolloutBodies is what UnusedBodies reads of a rollout record.
type rolloutBodies struct {
	State  string   `json:"state"`
	Hashes []string `json:"hashes"`
}

// rolloutHashes adds to used the bodies of the rollout records not over.
func rolloutHashes(kvs []store.KV, used map[string]bool) {
	for _, kv := range kvs {
		var rb rolloutBodies
		if json.Unmarshal(kv.Value, &rb) != nil || rb.State == "done" || rb.State == "failed" {
			continue
		}
		for _, h := range rb.Hashes {
			used[h] = true
		}
	}
}

// SetHash points unit's job at the body already stored under hash, keeping
// its desired state: what Submit with ReplaceBody does, without writing the
// body (the rollout driver may not). ErrNotFound when the job or the body
// is missing.
func (r *Registry) SetHash(ctx context.Context, unit, hash string) (Job, error) {
	if _, found, _, err := r.c.Get(ctx, r.BodyKey(hash)); err != nil || !found {
		if err == nil {
			err = fmt.Errorf("unit body %s: %w", ShortHash(hash), ErrNotFound)
		}
		return Job{}, fmt.Errorf("set body of %s: %w", unit, err)
	}
	for attempt := 0; attempt < 10; attempt++ {
		kv, found, _, err := r.c.Get(ctx, r.JobKey(unit))
		if err != nil {
			return Job{}, fmt.Errorf("set body of %s: %w", unit, err)
		}
		if !found {
			return Job{}, fmt.Errorf("set body of %s: %w", unit, ErrNotFound)
		}
		job, err := r.DecodeJob(kv)
		if err != nil || job.Hash == hash {
			return job, err
		}
		job.Hash = hash
		ok, _, err := r.c.Txn(ctx, []store.Cmp{store.ModRevisionIs(kv.Key, kv.ModRevision)}, []store.Op{store.OpPut(kv.Key, Encode(job), 0)}, nil)
		if err != nil {
			return Job{}, fmt.Errorf("set body of %s: %w", unit, err)
		}
		if ok {
			return job, nil
		}
	}
	return Job{}, fmt.Errorf("set body of %s: too much contention on %s", unit, r.JobKey(unit))
}
