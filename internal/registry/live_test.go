package registry_test

import (
	"context"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
)

// TestLiveFollowsWatch checks that a Live snapshot brought forward by a
// watch equals a fresh Snapshot at the same revision, for every kind of key
// it holds, including undecodable ones and deletes.
func TestLiveFollowsWatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := etcdtest.New(t).Client()
	r := registry.New(c, "/live")
	put := func(k, v string) {
		t.Helper()
		if _, err := c.Put(ctx, k, v, 0); err != nil {
			t.Fatal(err)
		}
	}
	del := func(k string) {
		t.Helper()
		if _, err := c.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	// Some state before the read.
	put(r.JobKey("a.service"), registry.Encode(registry.Job{Hash: "h1", Desired: registry.Launched}))
	put(r.MachineKey("m1"), registry.Encode(registry.Machine{IP: "10.0.0.1", Metadata: map[string]string{"role": "web"}}))
	put(r.MetadataKey("m1", "disk"), "ssd")
	put(r.ScheduleKey("m1", "a.service"), registry.Encode(registry.Assignment{Hash: "h1", Desired: registry.Launched}))
	put(r.DrainKey("m9"), "by test")

	l, err := r.Live(ctx)
	if err != nil {
		t.Fatal(err)
	}
	compare := func(step string) {
		t.Helper()
		want, err := r.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		w := c.WatchPrefix(ctx, r.Prefix(), l.Rev()+1)
		defer w.Close()
		for l.Rev() < want.Rev {
			b := <-w.C
			if b.Err != nil {
				t.Fatal(b.Err)
			}
			l.Apply(b)
		}
		got := l.Snapshot()
		if got.Rev != want.Rev {
			// Another key's write since: compare again at the next step.
			t.Fatalf("%s: live at revision %d, snapshot at %d", step, got.Rev, want.Rev)
		}
		if !reflect.DeepEqual(got.Jobs, want.Jobs) || !reflect.DeepEqual(got.Machines, want.Machines) ||
			!reflect.DeepEqual(got.Schedule, want.Schedule) || !reflect.DeepEqual(got.Unplaced, want.Unplaced) ||
			!reflect.DeepEqual(got.States, want.States) || !reflect.DeepEqual(got.ModRevs, want.ModRevs) ||
			!reflect.DeepEqual(got.Plan, want.Plan) || !reflect.DeepEqual(got.Failed, want.Failed) || !slices.Equal(errTexts(got.Skipped), errTexts(want.Skipped)) {
			t.Fatalf("%s: live snapshot differs\n got %+v\nwant %+v", step, *got, *want)
		}
	}
	compare("initial read")

	steps := []struct {
		name string
		do   func()
	}{
		{"job, machine, metadata", func() {
			put(r.JobKey("b.service"), registry.Encode(registry.Job{Hash: "h2", Desired: registry.Loaded}))
			put(r.MachineKey("m2"), registry.Encode(registry.Machine{IP: "10.0.0.2"}))
			put(r.MetadataKey("m2", "role"), "db")
			put(r.MetadataKey("m3", "role"), "db") // no machine m3 yet
		}},
		{"schedule, unplaced, states", func() {
			put(r.ScheduleKey("m2", "b.service"), registry.Encode(registry.Assignment{Hash: "h2", Desired: registry.Loaded}))
			put(r.UnplacedKey("c.service"), "no machine matches")
			put(r.StateKey("a.service", "m1"), registry.Encode(registry.UnitState{Hash: "h1", Active: "active"}))
		}},
		{"undecodable keys", func() {
			put(r.JobKey("bad.service"), "{")
			put(r.MachineKey("m4"), "{")
			put(r.StateKey("a.service", "m2"), "{")
			put(r.MoveKey("bad.service"), "{}")
		}},
		{"plan", func() {
			put(r.MoveKey("a.service"), registry.Encode(registry.Move{To: "m2"}))
			put(r.PinKey("a.service", "m1"), "h0")
			del(r.DrainKey("m9"))
		}},
		{"failure records", func() {
			put(r.FailedKey("a.service", "m1"), registry.Encode(registry.Failure{Hash: "h1", Restarts: 3, Move: true}))
			put(r.FailedKey("b.service", "m2"), registry.Encode(registry.Failure{Hash: "h2", Restarts: 1}))
			put(r.FailedKey("b.service", "m3"), "{")
		}},
		{"failure records go", func() {
			del(r.FailedKey("b.service", "m2"))
			del(r.FailedKey("b.service", "m3"))
		}},
		{"machine comes with metadata already set", func() {
			put(r.MachineKey("m3"), registry.Encode(registry.Machine{IP: "10.0.0.3", Metadata: map[string]string{"role": "web", "x": "y"}}))
		}},
		{"deletes", func() {
			del(r.MetadataKey("m1", "disk"))
			del(r.JobKey("bad.service"))
			del(r.MachineKey("m4"))
			del(r.ScheduleKey("m1", "a.service"))
			del(r.UnplacedKey("c.service"))
			del(r.StateKey("a.service", "m2"))
			del(r.MoveKey("bad.service"))
			del(r.MachineKey("m2"))
		}},
		{"keys outside the snapshot", func() {
			put(r.BodyKey("h1"), "[Service]\nExecStart=/bin/true\n")
			put(r.ElectionPrefix()+"/x", "m1")
		}},
	}
	for _, s := range steps {
		s.do()
		compare(s.name)
	}
}

// errTexts returns the errors' texts, sorted: Live and Snapshot may list
// skipped keys in different orders.
func errTexts(errs []error) []string {
	out := make([]string, len(errs))
	for i, err := range errs {
		out[i] = err.Error()
	}
	slices.Sort(out)
	return out
}
