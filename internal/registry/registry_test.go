package registry_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

func TestSubmitDesiredSnapshot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := etcdtest.New(t).Client()
	r := registry.New(c, "/t")

	if _, err := r.Submit(ctx, "a.service", "h1", []byte("body1"), registry.KeepExisting); err != nil {
		t.Fatal(err)
	}
	// Same body again: no-op.
	if j, err := r.Submit(ctx, "a.service", "h1", []byte("body1"), registry.KeepExisting); err != nil || j.Desired != registry.Inactive {
		t.Fatalf("resubmit = %+v %v", j, err)
	}
	if err := r.SetDesired(ctx, "a.service", registry.Launched); err != nil {
		t.Fatal(err)
	}
	// Another body is refused without ReplaceBody …
	if _, err := r.Submit(ctx, "a.service", "h2", []byte("body2"), registry.KeepExisting); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("conflicting submit: %v", err)
	}
	// … and replaces it, keeping the desired state, with it.
	j, err := r.Submit(ctx, "a.service", "h2", []byte("body2"), registry.ReplaceBody)
	if err != nil || j.Hash != "h2" || j.Desired != registry.Launched {
		t.Fatalf("replace = %+v %v", j, err)
	}
	if b, err := r.Body(ctx, "h2"); err != nil || string(b) != "body2" {
		t.Fatalf("body = %q %v", b, err)
	}
	if err := r.SetDesired(ctx, "nope.service", registry.Loaded); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("SetDesired of unknown unit: %v", err)
	}

	lease, err := c.GrantLease(ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Close()
	lease.Put(ctx, r.MachineKey("m1"), registry.Encode(registry.Machine{IP: "10.0.0.1", Metadata: map[string]string{"role": "web"}}))
	c.Put(ctx, r.ScheduleKey("m1", "a.service"), registry.Encode(registry.Assignment{Hash: "h2", Desired: registry.Launched}), 0)
	c.Put(ctx, r.UnplacedKey("b@1.service"), "no machine", 0)
	lease.Put(ctx, r.StateKey("a.service", "m1"), registry.Encode(registry.UnitState{Hash: "h2", Load: "loaded", Active: "active", Sub: "running"}))

	s, err := r.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Jobs["a.service"]; got.Hash != "h2" || got.Desired != registry.Launched {
		t.Errorf("job = %+v", got)
	}
	if m := s.Machines["m1"]; m.ID != "m1" || m.IP != "10.0.0.1" || m.Metadata["role"] != "web" {
		t.Errorf("machine = %+v", m)
	}
	if a := s.Schedule["a.service"]["m1"]; a.Hash != "h2" || a.Machine != "m1" || a.Unit != "a.service" {
		t.Errorf("assignment = %+v", a)
	}
	if s.Unplaced["b@1.service"] != "no machine" {
		t.Errorf("unplaced = %v", s.Unplaced)
	}
	if st := s.States["a.service"]["m1"]; !st.Running() || st.Sub != "running" {
		t.Errorf("state = %+v", st)
	}
	if err := r.Destroy(ctx, "a.service"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Job(ctx, "a.service"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("job after destroy: %v", err)
	}
	// A corrupt value is skipped, with an error naming the key.
	c.Put(ctx, r.JobKey("bad.service"), "{", 0)
	snap, err := r.Snapshot(ctx)
	if err != nil {
		t.Fatalf("snapshot with a corrupt job: %v", err)
	}
	if len(snap.Skipped) != 1 || !strings.Contains(snap.Skipped[0].Error(), "/t/jobs/bad.service") {
		t.Errorf("corrupt job: skipped %v", snap.Skipped)
	}
}
