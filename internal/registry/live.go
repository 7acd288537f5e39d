package registry

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/flotilla/flotilla/internal/store"
)

// Live is a Snapshot kept current from a watch: read once at a revision
// (Registry.Live), then brought forward by Apply with every batch of a watch
// of Prefix() from Rev()+1. It holds what Snapshot reads and decodes each
// changed key alone, so that a reader of the whole registry (the engine)
// does not read it again on every change. Its zero value is not usable; it
// is not safe for concurrent use.
type Live struct {
	r *Registry
	s *Snapshot
	// machines holds the presence records as written, metadata the
	// API-set metadata by machine and key: a machine's entry in s.Machines
	// is the two merged.
	machines map[string]store.KV
	metadata map[string]map[string]store.KV
	// plan holds the planned-change kvs by key; planDirty says s.Plan must
	// be decoded from them again.
	plan      map[string]store.KV
	planDirty bool
	planSkip  []error
	// skipped holds the undecodable keys outside the plan, by key.
	skipped map[string]error
}

// Live reads what Snapshot reads, in one consistent read, and returns it as
// a Live snapshot.
func (r *Registry) Live(ctx context.Context) (*Live, error) {
	prefixes := r.snapshotPrefixes()
	m, rev, err := r.c.GetPrefixes(ctx, append(prefixes, r.planPrefixes()...))
	if err != nil {
		return nil, fmt.Errorf("read scheduler state: %w", err)
	}
	s := &Snapshot{Rev: rev, Jobs: map[string]Job{}, Machines: map[string]Machine{}, Schedule: map[string]map[string]Assignment{},
		Unplaced: map[string]string{}, States: map[string]map[string]UnitState{}, ModRevs: map[string]int64{},
		Failed: map[string]map[string]Failure{}}
	l := &Live{r: r, s: s, machines: map[string]store.KV{}, metadata: map[string]map[string]store.KV{},
		plan: map[string]store.KV{}, planDirty: true, skipped: map[string]error{}}
	for _, kvs := range m {
		for _, kv := range kvs {
			l.apply(store.Event{Type: store.EventPut, KV: kv})
		}
	}
	return l, nil
}

// Rev is the revision the snapshot is at: a watch from Rev()+1 misses
// nothing.
func (l *Live) Rev() int64 { return l.s.Rev }

// Snapshot returns the current state. It is valid until the next Apply,
// which changes it in place; callers must not modify it.
func (l *Live) Snapshot() *Snapshot {
	if l.planDirty {
		l.decodePlan()
	}
	var skipped []error
	keys := make([]string, 0, len(l.skipped))
	for k := range l.skipped {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		skipped = append(skipped, l.skipped[k])
	}
	l.s.Skipped = append(skipped, l.planSkip...)
	return l.s
}

// Apply brings the snapshot to b.Rev with b's events (a batch of a watch of
// Prefix() started at Rev()+1). Keys outside what Snapshot reads are
// ignored.
func (l *Live) Apply(b store.WatchBatch) {
	for _, ev := range b.Events {
		l.apply(ev)
	}
	if b.Rev > l.s.Rev {
		l.s.Rev = b.Rev
	}
}

func (l *Live) apply(ev store.Event) {
	r, s, key := l.r, l.s, ev.KV.Key
	put := ev.Type == store.EventPut
	rest, ok := strings.CutPrefix(key, r.prefix)
	if !ok {
		return
	}
	kind, name, _ := strings.Cut(rest, "/")
	delete(l.skipped, key)
	switch kind {
	case "jobs":
		delete(s.Jobs, name)
		if put {
			l.decode(key, func() error {
				j, err := r.DecodeJob(ev.KV)
				if err == nil {
					s.Jobs[j.Name] = j
				}
				return err
			})
		}
	case "machines":
		delete(l.machines, name)
		if put {
			l.machines[name] = ev.KV
		}
		l.mergeMachine(name)
	case "metadata":
		machine, k, ok := strings.Cut(name, "/")
		if !ok || k == "" {
			return
		}
		if l.metadata[machine] == nil {
			l.metadata[machine] = map[string]store.KV{}
		}
		delete(l.metadata[machine], k)
		if put {
			l.metadata[machine][k] = ev.KV
		}
		if len(l.metadata[machine]) == 0 {
			delete(l.metadata, machine)
		}
		l.mergeMachine(machine)
	case "schedule":
		l.applySchedule(ev, put)
	case "unplaced":
		delete(s.Unplaced, name)
		delete(s.ModRevs, key)
		if put {
			s.Unplaced[name] = string(ev.KV.Value)
			s.ModRevs[key] = ev.KV.ModRevision
		}
	case "states":
		l.applyState(ev, put)
	case "failed":
		l.applyFailure(ev, put)
	case "drain", "moves", "pins":
		delete(l.plan, key)
		if put {
			l.plan[key] = ev.KV
		}
		l.planDirty = true
	}
}

// decode runs f, recording its error as the key's.
func (l *Live) decode(key string, f func() error) {
	if err := f(); err != nil {
		l.skipped[key] = err
	}
}

func (l *Live) applySchedule(ev store.Event, put bool) {
	s, key := l.s, ev.KV.Key
	machine, unit, err := l.r.ParseScheduleKey(key)
	if err != nil {
		if put {
			l.skipped[key] = err
		}
		return
	}
	delete(s.Schedule[unit], machine)
	if len(s.Schedule[unit]) == 0 {
		delete(s.Schedule, unit)
	}
	delete(s.ModRevs, key)
	if !put {
		return
	}
	l.decode(key, func() error {
		a, err := l.r.DecodeAssignment(ev.KV)
		if err != nil {
			return err
		}
		if s.Schedule[unit] == nil {
			s.Schedule[unit] = map[string]Assignment{}
		}
		s.Schedule[unit][machine] = a
		s.ModRevs[key] = ev.KV.ModRevision
		return nil
	})
}

func (l *Live) applyState(ev store.Event, put bool) {
	s, key := l.s, ev.KV.Key
	rest := strings.TrimPrefix(key, l.r.sub("states"))
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		if put {
			l.skipped[key] = fmt.Errorf("decode %s: not <unit>/<machine>", key)
		}
		return
	}
	unit, machine := rest[:i], rest[i+1:]
	delete(s.States[unit], machine)
	if len(s.States[unit]) == 0 {
		delete(s.States, unit)
	}
	if !put {
		return
	}
	l.decode(key, func() error {
		st, err := l.r.DecodeState(ev.KV)
		if err != nil {
			return err
		}
		if s.States[unit] == nil {
			s.States[unit] = map[string]UnitState{}
		}
		s.States[unit][machine] = st
		return nil
	})
}

// applyFailure keeps s.Failed as Snapshot reads it: a record's unit and
// machine come from its key, so a delete (or an expiry) needs no value.
func (l *Live) applyFailure(ev store.Event, put bool) {
	s, key := l.s, ev.KV.Key
	unit, machine, err := l.r.parseFailureKey(key)
	if err != nil {
		if put {
			l.skipped[key] = err
		}
		return
	}
	delete(s.Failed[unit], machine)
	if len(s.Failed[unit]) == 0 {
		delete(s.Failed, unit)
	}
	if !put {
		return
	}
	l.decode(key, func() error {
		f, err := l.r.decodeFailure(key, ev.KV.Value)
		if err != nil {
			return err
		}
		if s.Failed[unit] == nil {
			s.Failed[unit] = map[string]Failure{}
		}
		s.Failed[unit][machine] = f
		return nil
	})
}

// mergeMachine sets machine's entry in s.Machines from its presence record
// and API-set metadata, as Snapshot does.
func (l *Live) mergeMachine(machine string) {
	delete(l.s.Machines, machine)
	kv, present := l.machines[machine]
	if !present {
		return
	}
	delete(l.skipped, kv.Key)
	m, err := l.r.DecodeMachine(kv)
	if err != nil {
		l.skipped[kv.Key] = err
		return
	}
	ms := map[string]Machine{machine: m}
	md := make([]store.KV, 0, len(l.metadata[machine]))
	for _, kv := range l.metadata[machine] {
		md = append(md, kv)
	}
	l.r.mergeMetadata(ms, md)
	l.s.Machines[machine] = ms[machine]
}

// decodePlan decodes s.Plan again from the planned-change kvs.
func (l *Live) decodePlan() {
	m := map[string][]store.KV{}
	for _, p := range l.r.planPrefixes() {
		m[p] = nil
	}
	for key, kv := range l.plan {
		for _, p := range l.r.planPrefixes() {
			if strings.HasPrefix(key, p) {
				m[p] = append(m[p], kv)
			}
		}
	}
	for _, kvs := range m {
		sort.Slice(kvs, func(i, j int) bool { return kvs[i].Key < kvs[j].Key })
	}
	for k := range l.s.ModRevs {
		if strings.HasPrefix(k, l.r.sub("moves")) {
			delete(l.s.ModRevs, k)
		}
	}
	tmp := &Snapshot{ModRevs: l.s.ModRevs}
	l.r.decodePlan(tmp, m)
	l.s.Plan, l.planSkip, l.planDirty = tmp.Plan, tmp.Skipped, false
}
