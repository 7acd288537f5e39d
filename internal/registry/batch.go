package registry

import (
	"context"
	"fmt"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/store"
)

// Want is one unit for Ensure: submitted with Body (stored under Hash), or,
// when Body is nil, already submitted; and set to Desired ("" leaves its
// desired state as it is, inactive for a new job).
type Want struct {
	Name    string
	Hash    string
	Body    []byte
	Desired Desired
}

// ensureInFlight is how many of Ensure's transactions are in flight at once.
const ensureInFlight = 4

// bulkRead is how many units make Ensure read every job at once rather
// than each one.
const bulkRead = 64

// Ensure submits and sets the desired state of many units at once: what
// Submit and SetDesired do for each, in transactions of at most MaxTxnOps
// operations (a job and, once per transaction, each body it needs, so
// that a body in use is re-written with its job, as Submit does), several
// in flight. Each job's write is conditioned on the job as read; a
// transaction whose condition fails (another client changed one of its
// jobs meanwhile) is redone unit by unit with Submit and SetDesired. It
// returns one error per want (nil: done), ErrConflict for a unit submitted
// with another body under KeepExisting and ErrNotFound for a unit without
// Body that is not submitted; those units are left as they are.
func (r *Registry) Ensure(ctx context.Context, wants []Want, mode SubmitMode) []error {
	errs := make([]error, len(wants))
	current, err := r.readJobs(ctx, wants)
	if err != nil {
		for i := range errs {
			errs[i] = fmt.Errorf("submit %s: %w", wants[i].Name, err)
		}
		return errs
	}
	type entry struct {
		i   int
		job Job
		cmp store.Cmp
		// same says the job stands as wanted: only its body is written
		// again (a lost body repaired, a body in use kept from collection).
		same bool
	}
	var chunks [][]entry
	var cur []entry
	ops, bodies := 0, map[string]bool{}
	for i, w := range wants {
		old, found := current[w.Name]
		job := Job{Name: w.Name, Hash: w.Hash, Desired: Inactive}
		cmp := store.Missing(r.JobKey(w.Name))
		switch {
		case found && old.err != nil:
			errs[i] = fmt.Errorf("submit %s: %w", w.Name, old.err)
			continue
		case !found && w.Body == nil:
			errs[i] = fmt.Errorf("unit %s: %w", w.Name, ErrNotFound)
			continue
		case found:
			if w.Body == nil || w.Hash == "" {
				job.Hash = old.job.Hash
			} else if old.job.Hash != w.Hash && mode != ReplaceBody {
				errs[i] = fmt.Errorf("submit %s: %w (hash %s, new %s; use --replace)", w.Name, ErrConflict, ShortHash(old.job.Hash), ShortHash(w.Hash))
				continue
			}
			job.Desired = old.job.Desired
			cmp = store.ModRevisionIs(r.JobKey(w.Name), old.rev)
		}
		if w.Desired != "" {
			job.Desired = w.Desired
		}
		same := found && job == old.job
		if same && w.Body == nil {
			continue
		}
		need := func() int {
			n := 1
			if same {
				n = 0
			}
			if w.Body != nil && !bodies[w.Hash] {
				n++
			}
			return n
		}
		if ops+need() > MaxTxnOps {
			chunks, cur, ops, bodies = append(chunks, cur), nil, 0, map[string]bool{}
		}
		ops += need()
		if w.Body != nil {
			bodies[w.Hash] = true
		}
		cur = append(cur, entry{i: i, job: job, cmp: cmp, same: same})
	}
	if len(cur) > 0 {
		chunks = append(chunks, cur)
	}
	var g errgroup.Group
	g.SetLimit(ensureInFlight)
	for _, chunk := range chunks {
		g.Go(func() error {
			var cmps []store.Cmp
			var txn []store.Op
			put := map[string]bool{}
			for _, e := range chunk {
				w := wants[e.i]
				if w.Body != nil && !put[w.Hash] {
					put[w.Hash] = true
					txn = append(txn, store.OpPut(r.BodyKey(w.Hash), string(w.Body), 0))
				}
				if !e.same {
					cmps = append(cmps, e.cmp)
					txn = append(txn, store.OpPut(r.JobKey(w.Name), Encode(e.job), 0))
				}
			}
			ok, _, err := r.c.Txn(ctx, cmps, txn, nil)
			if err == nil && ok {
				return nil
			}
			// A job changed since the read, or the transaction failed: each
			// unit alone, as Submit and SetDesired would.
			for _, e := range chunk {
				errs[e.i] = r.ensureOne(ctx, wants[e.i], mode)
			}
			return nil
		})
	}
	g.Wait()
	return errs
}

// ensureOne is Ensure for one unit.
func (r *Registry) ensureOne(ctx context.Context, w Want, mode SubmitMode) error {
	if w.Body != nil {
		if _, err := r.Submit(ctx, w.Name, w.Hash, w.Body, mode); err != nil {
			return err
		}
	}
	if w.Desired == "" {
		return nil
	}
	return r.SetDesired(ctx, w.Name, w.Desired)
}

// readJob is a job as Ensure read it.
type readJob struct {
	job Job
	rev int64
	err error
}

// readJobs reads the jobs of wants: each one, or, for many, every job.
func (r *Registry) readJobs(ctx context.Context, wants []Want) (map[string]readJob, error) {
	out := make(map[string]readJob, len(wants))
	add := func(kv store.KV) {
		j, err := r.DecodeJob(kv)
		out[kv.Key[len(r.sub("jobs")):]] = readJob{job: j, rev: kv.ModRevision, err: err}
	}
	if len(wants) >= bulkRead {
		kvs, _, err := r.c.GetPrefix(ctx, r.sub("jobs"))
		if err != nil {
			return nil, err
		}
		for _, kv := range kvs {
			add(kv)
		}
		return out, nil
	}
	for _, w := range wants {
		kv, found, _, err := r.c.Get(ctx, r.JobKey(w.Name))
		if err != nil {
			return nil, err
		}
		if found {
			add(kv)
		}
	}
	return out, nil
}

// FirstError returns the first non-nil error of errs, as Ensure returns
// them, with how many others failed.
func FirstError(errs []error) error {
	var first error
	n := 0
	for _, err := range errs {
		if err == nil {
			continue
		}
		if first == nil {
			first = err
		}
		n++
	}
	if n > 1 {
		return fmt.Errorf("%w (and %d more units)", first, n-1)
	}
	return first
}
