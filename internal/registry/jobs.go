package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/flotilla/flotilla/internal/store"
)

// ErrConflict is returned when a unit is already submitted with another body.
var ErrConflict = errors.New("registry: unit already submitted with a different body")

// SubmitMode says what Submit does with a unit that exists with another body.
type SubmitMode int

const (
	// KeepExisting leaves an existing job as it is and reports ErrConflict when
	// its body differs.
	KeepExisting SubmitMode = iota
	// ReplaceBody points an existing job at the new body, keeping its desired
	// state (the engine and agents then restart it with the new body).
	ReplaceBody
)

// Submit stores body under hash and creates the job for unit (desired
// inactive) in one transaction. It returns the job as it now stands; a job
// that already exists with the same hash is left unchanged.
func (r *Registry) Submit(ctx context.Context, unit, hash string, body []byte, mode SubmitMode) (Job, error) {
	for attempt := 0; attempt < 10; attempt++ {
		kv, found, _, err := r.c.Get(ctx, r.JobKey(unit))
		if err != nil {
			return Job{}, fmt.Errorf("submit %s: %w", unit, err)
		}
		job := Job{Name: unit, Hash: hash, Desired: Inactive}
		cmp := store.Missing(r.JobKey(unit))
		if found {
			old, err := r.DecodeJob(kv)
			if err != nil {
				return Job{}, fmt.Errorf("submit %s: %w", unit, err)
			}
			if old.Hash == hash {
				// Re-put the body anyway: harmless, and repairs a lost body.
				if _, err := r.c.Put(ctx, r.BodyKey(hash), string(body), 0); err != nil {
					return Job{}, fmt.Errorf("submit %s: %w", unit, err)
				}
				return old, nil
			}
			if mode != ReplaceBody {
				return old, fmt.Errorf("submit %s: %w (hash %s, new %s; use --replace)", unit, ErrConflict, ShortHash(old.Hash), ShortHash(hash))
			}
			job.Desired = old.Desired
			cmp = store.ModRevisionIs(r.JobKey(unit), kv.ModRevision)
		}
		ok, _, err := r.c.Txn(ctx, []store.Cmp{cmp}, []store.Op{
			store.OpPut(r.BodyKey(hash), string(body), 0),
			store.OpPut(r.JobKey(unit), Encode(job), 0),
		}, nil)
		if err != nil {
			return Job{}, fmt.Errorf("submit %s: %w", unit, err)
		}
		if ok {
			return job, nil
		}
	}
	return Job{}, fmt.Errorf("submit %s: too much contention on %s", unit, r.JobKey(unit))
}

// Job reads one job; ErrNotFound when the unit is not submitted.
func (r *Registry) Job(ctx context.Context, unit string) (Job, error) {
	kv, found, _, err := r.c.Get(ctx, r.JobKey(unit))
	if err != nil {
		return Job{}, err
	}
	if !found {
		return Job{}, fmt.Errorf("unit %s: %w", unit, ErrNotFound)
	}
	return r.DecodeJob(kv)
}

// SetDesired changes a submitted unit's desired state (compare-and-swap on
// the job key, retried on contention).
func (r *Registry) SetDesired(ctx context.Context, unit string, d Desired) error {
	for attempt := 0; attempt < 10; attempt++ {
		kv, found, _, err := r.c.Get(ctx, r.JobKey(unit))
		if err != nil {
			return fmt.Errorf("set %s %s: %w", unit, d, err)
		}
		if !found {
			return fmt.Errorf("set %s %s: %w", unit, d, ErrNotFound)
		}
		job, err := r.DecodeJob(kv)
		if err != nil {
			return err
		}
		if job.Desired == d {
			return nil
		}
		job.Desired = d
		ok, _, err := r.c.Txn(ctx, []store.Cmp{store.ModRevisionIs(kv.Key, kv.ModRevision)},
			[]store.Op{store.OpPut(kv.Key, Encode(job), 0)}, nil)
		if err != nil {
			return fmt.Errorf("set %s %s: %w", unit, d, err)
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("set %s %s: too much contention", unit, d)
}

// Destroy removes a unit's job; the engine then removes its targets, and the
// agents stop and remove it. Destroying an unknown unit reports ErrNotFound.
func (r *Registry) Destroy(ctx context.Context, unit string) error {
	n, err := r.c.Delete(ctx, r.JobKey(unit))
	if err != nil {
		return fmt.Errorf("destroy %s: %w", unit, err)
	}
	if n == 0 {
		return fmt.Errorf("destroy %s: %w", unit, ErrNotFound)
	}
	// A rollout's pins and a move request die with the unit (a unit
	// submitted again under the name must not inherit them).
	if _, err := r.c.DeletePrefix(ctx, r.PinPrefix(unit)); err != nil {
		return fmt.Errorf("destroy %s: %w", unit, err)
	}
	if _, err := r.c.Delete(ctx, r.MoveKey(unit)); err != nil {
		return fmt.Errorf("destroy %s: %w", unit, err)
	}
	return nil
}

// Body reads the body stored under hash.
func (r *Registry) Body(ctx context.Context, hash string) ([]byte, error) {
	kv, found, _, err := r.c.Get(ctx, r.BodyKey(hash))
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("unit body %s: %w", hash, ErrNotFound)
	}
	return kv.Value, nil
}

// Bodies reads every stored body, by hash.
func (r *Registry) Bodies(ctx context.Context) (map[string][]byte, error) {
	kvs, _, err := r.c.GetPrefix(ctx, r.sub("units"))
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(kvs))
	for _, kv := range kvs {
		out[kv.Key[len(r.sub("units")):]] = kv.Value
	}
	return out, nil
}

// Machines reads every present machine, by id.
func (r *Registry) Machines(ctx context.Context) (map[string]Machine, error) {
	mp := []string{r.sub("machines"), r.MetadataPrefix("")}
	all, _, err := r.c.GetPrefixes(ctx, mp)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Machine, len(all[mp[0]]))
	for _, kv := range all[mp[0]] {
		m, err := r.DecodeMachine(kv)
		if err != nil {
			return nil, err
		}
		out[m.ID] = m
	}
	r.mergeMetadata(out, all[mp[1]])
	return out, nil
}

// ShortHash is the first 7 characters of a unit hash, as fleetctl shows it.
func ShortHash(hash string) string {
	if len(hash) > 7 {
		return hash[:7]
	}
	return hash
}

// UnusedBodies returns the stored bodies that no job refers to, read in one
// snapshot with the jobs (their ModRevision guards a delete). While any job's
// value does not decode, no body is known to be unused and none is returned
// (nor an error: a corrupt job must not stop the engine).
func (r *Registry) UnusedBodies(ctx context.Context) ([]store.KV, error) {
	jobs, units, pins := r.sub("jobs"), r.sub("units"), r.sub("pins")
	m, _, err := r.c.GetPrefixes(ctx, []string{jobs, units, pins, r.RolloutPrefix()})
	if err != nil {
		return nil, fmt.Errorf("find unused unit bodies: %w", err)
	}
	used := map[string]bool{}
	for _, kv := range m[jobs] {
		j, err := r.DecodeJob(kv)
		if err != nil {
			return nil, nil
		}
		used[j.Hash] = true
	}
	for _, kv := range m[pins] { // a rollout's old body, still running somewhere
		used[string(kv.Value)] = true
	}
	rolloutHashes(m[r.RolloutPrefix()], used) // a rollout's new body, not given yet
	var out []store.KV
	for _, kv := range m[units] {
		if !used[kv.Key[len(units):]] {
			out = append(out, kv)
		}
	}
	return out, nil
}
