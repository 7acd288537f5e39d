package registry

import (
	"context"
	"fmt"
	"strings"

	"github.com/flotilla/flotilla/internal/store"
)

// Metadata set through the fleet API outlives the machine's presence lease:
//
//	<p>metadata/<machine>/<key>  value, written only by the API (one writer
//	                             per key); merged over what the machine's
//	                             agent announces (--metadata) wherever
//	                             machines are read (Snapshot, Machines), so
//	                             placement and list-machines see it, and it
//	                             is still there when the machine comes back.

// MetadataPrefix is the prefix of the API-set metadata of machine ("" for
// every machine).
func (r *Registry) MetadataPrefix(machine string) string {
	if machine == "" {
		return r.sub("metadata")
	}
	return r.sub("metadata") + machine + "/"
}

// MetadataKey holds one API-set metadata key of machine.
func (r *Registry) MetadataKey(machine, key string) string {
	return r.MetadataPrefix(machine) + key
}

// SetMetadata sets key=value on machine, persistently.
func (r *Registry) SetMetadata(ctx context.Context, machine, key, value string) error {
	if _, err := r.c.Put(ctx, r.MetadataKey(machine, key), value, 0); err != nil {
		return fmt.Errorf("set metadata %s of machine %s: %w", key, machine, err)
	}
	return nil
}

// DeleteMetadata removes an API-set metadata key of machine. It reports
// whether the key existed.
func (r *Registry) DeleteMetadata(ctx context.Context, machine, key string) (bool, error) {
	n, err := r.c.Delete(ctx, r.MetadataKey(machine, key))
	if err != nil {
		return false, fmt.Errorf("delete metadata %s of machine %s: %w", key, machine, err)
	}
	return n > 0, nil
}

// mergeMetadata lays the API-set metadata kvs (under MetadataPrefix("")) over
// the machines' own metadata. Keys of absent machines are kept for their
// return and ignored here.
func (r *Registry) mergeMetadata(machines map[string]Machine, kvs []store.KV) {
	base := r.MetadataPrefix("")
	for _, kv := range kvs {
		machine, key, ok := strings.Cut(strings.TrimPrefix(kv.Key, base), "/")
		if !ok || key == "" {
			continue
		}
		m, present := machines[machine]
		if !present {
			continue
		}
		md := make(map[string]string, len(m.Metadata)+1)
		for k, v := range m.Metadata {
			md[k] = v
		}
		md[key] = string(kv.Value)
		m.Metadata = md
		machines[machine] = m
	}
}

// PutUnit stores body under hash and points unit's job at it, creating the
// job or replacing its body, in one transaction (fleet API's create). The
// desired state is desired, or, when desired is "", the job's current one
// (inactive for a new job). It returns the job as written.
func (r *Registry) PutUnit(ctx context.Context, unit, hash string, body []byte, desired Desired) (Job, error) {
	for attempt := 0; attempt < 10; attempt++ {
		kv, found, _, err := r.c.Get(ctx, r.JobKey(unit))
		if err != nil {
			return Job{}, fmt.Errorf("put unit %s: %w", unit, err)
		}
		job := Job{Name: unit, Hash: hash, Desired: desired}
		cmp := store.Missing(r.JobKey(unit))
		if found {
			cmp = store.ModRevisionIs(r.JobKey(unit), kv.ModRevision)
			if old, err := r.DecodeJob(kv); err == nil && desired == "" {
				job.Desired = old.Desired
			}
		}
		if job.Desired == "" {
			job.Desired = Inactive
		}
		ok, _, err := r.c.Txn(ctx, []store.Cmp{cmp}, []store.Op{
			store.OpPut(r.BodyKey(hash), string(body), 0),
			store.OpPut(r.JobKey(unit), Encode(job), 0),
		}, nil)
		if err != nil {
			return Job{}, fmt.Errorf("put unit %s: %w", unit, err)
		}
		if ok {
			return job, nil
		}
	}
	return Job{}, fmt.Errorf("put unit %s: too much contention on %s", unit, r.JobKey(unit))
}
