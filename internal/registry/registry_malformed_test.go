package registry_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// TestSnapshotSkipsUndecodableKeys: hostile values under every kind of key
// are left out of the snapshot and reported by key; the good keys are read.
func TestSnapshotSkipsUndecodableKeys(t *testing.T) {
	c := etcdtest.New(t).Client()
	reg := registry.New(c, "/m/")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	good := registry.Encode(registry.Job{Hash: "abc", Desired: registry.Launched})
	puts := map[string]string{
		reg.JobKey("good.service"):             good,
		reg.JobKey("binary.service"):           "\x00\x01",
		reg.MachineKey("evil"):                 "{",
		reg.ScheduleKey("m1", "ghost.service"): "\xff",
		"/m/schedule/nounit":                   "{}",
		reg.StateKey("good.service", "m1"):     strings.Repeat("x", 1<<20),
		reg.StateKey("good.service", "m2"):     registry.Encode(registry.UnitState{Hash: "abc", Active: "active", Sub: "running"}),
		reg.ScheduleKey("m2", "good.service"):  registry.Encode(registry.Assignment{Hash: "abc", Desired: registry.Launched}),
		reg.FailedKey("good.service", "m1"):    "[",
		"/m/failed/nomachine":                  "{}",
		reg.FailedKey("good.service", "m2"):    registry.Encode(registry.Failure{Hash: "abc", Restarts: 3, Move: true}),
	}
	for k, v := range puts {
		if _, err := c.Put(ctx, k, v, 0); err != nil {
			t.Fatal(err)
		}
	}
	s, err := reg.Snapshot(ctx)
	if err != nil {
		t.Fatalf("Snapshot failed on hostile keys: %v", err)
	}
	if len(s.Jobs) != 1 || s.Jobs["good.service"].Hash != "abc" {
		t.Errorf("jobs = %+v", s.Jobs)
	}
	if len(s.Machines) != 0 {
		t.Errorf("machines = %+v", s.Machines)
	}
	if got := s.Targets("good.service"); len(got) != 1 || got[0] != "m2" {
		t.Errorf("targets = %v", got)
	}
	if st := s.States["good.service"]; len(st) != 1 || st["m2"].Sub != "running" {
		t.Errorf("states = %+v", st)
	}
	var all []string
	for _, e := range s.Skipped {
		all = append(all, e.Error())
	}
	joined := strings.Join(all, "\n")
	if got := s.Avoided("good.service", "abc"); len(got) != 1 || got[0] != "m2" {
		t.Errorf("avoided = %v, want [m2]", got)
	}
	for _, key := range []string{reg.JobKey("binary.service"), reg.MachineKey("evil"), reg.ScheduleKey("m1", "ghost.service"), "/m/schedule/nounit", reg.StateKey("good.service", "m1"),
		reg.FailedKey("good.service", "m1"), "/m/failed/nomachine"} {
		if !strings.Contains(joined, key) {
			t.Errorf("Skipped does not name %s:\n%s", key, joined)
		}
	}
}

// TestUnusedBodiesWithCorruptJob: a corrupt job stops body collection (its
// body is unknown) without an error that would end the engine's leadership.
func TestUnusedBodiesWithCorruptJob(t *testing.T) {
	c := etcdtest.New(t).Client()
	reg := registry.New(c, "/m/")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c.Put(ctx, reg.BodyKey("orphan"), "[Service]\n", 0)
	got, err := reg.UnusedBodies(ctx)
	if err != nil || len(got) != 1 {
		t.Fatalf("UnusedBodies = %v, %v; want the orphan", got, err)
	}
	c.Put(ctx, reg.JobKey("bad.service"), "\x00", 0)
	got, err = reg.UnusedBodies(ctx)
	if err != nil || len(got) != 0 {
		t.Errorf("UnusedBodies with a corrupt job = %v, %v; want nothing, no error", got, err)
	}
}

// A schedule key is read apart from its value: a delete (no value) names its
// unit; a malformed key or value yields the zero Assignment, never half of one.
func TestScheduleKeyAndValue(t *testing.T) {
	reg := registry.New(nil, "/m/")
	for key, want := range map[string]string{
		"/m/schedule/m1/web.service": "m1 web.service",
		"/m/schedule/m1/":            "error",
		"/m/schedule//web.service":   "error",
		"/m/schedule/nounit":         "error",
		"/other/m1/web.service":      "error",
	} {
		m, u, err := reg.ParseScheduleKey(key)
		got := m + " " + u
		if err != nil {
			got = "error"
			if !strings.Contains(err.Error(), key) {
				t.Errorf("ParseScheduleKey(%q) error does not name the key: %v", key, err)
			}
		}
		if got != want {
			t.Errorf("ParseScheduleKey(%q) = %q, want %q", key, got, want)
		}
	}
	a, err := reg.DecodeAssignment(store.KV{Key: "/m/schedule/m1/web.service", Value: []byte("{")})
	if err == nil || a != (registry.Assignment{}) {
		t.Errorf("DecodeAssignment of a bad value = %+v, %v; want the zero Assignment and an error", a, err)
	}
}
