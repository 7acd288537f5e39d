package registry_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
)

func TestEnsure(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := etcdtest.New(t).Client()
	r := registry.New(c, "/ensure")
	if _, err := r.Submit(ctx, "old.service", "h-old", []byte("old"), registry.KeepExisting); err != nil {
		t.Fatal(err)
	}
	if err := r.SetDesired(ctx, "old.service", registry.Loaded); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mode registry.SubmitMode
		want registry.Want
		err  error
		job  registry.Job // the job afterwards
	}{
		{"new unit", registry.KeepExisting, registry.Want{Name: "a.service", Hash: "h-a", Body: []byte("a"), Desired: registry.Launched}, nil,
			registry.Job{Name: "a.service", Hash: "h-a", Desired: registry.Launched}},
		{"new unit, desired kept", registry.KeepExisting, registry.Want{Name: "b.service", Hash: "h-b", Body: []byte("b")}, nil,
			registry.Job{Name: "b.service", Hash: "h-b", Desired: registry.Inactive}},
		{"same body again", registry.KeepExisting, registry.Want{Name: "old.service", Hash: "h-old", Body: []byte("old")}, nil,
			registry.Job{Name: "old.service", Hash: "h-old", Desired: registry.Loaded}},
		{"another body refused", registry.KeepExisting, registry.Want{Name: "old.service", Hash: "h-new", Body: []byte("new"), Desired: registry.Launched}, registry.ErrConflict,
			registry.Job{Name: "old.service", Hash: "h-old", Desired: registry.Loaded}},
		{"no body, submitted", registry.KeepExisting, registry.Want{Name: "old.service", Desired: registry.Launched}, nil,
			registry.Job{Name: "old.service", Hash: "h-old", Desired: registry.Launched}},
		{"no body, not submitted", registry.KeepExisting, registry.Want{Name: "none.service", Desired: registry.Launched}, registry.ErrNotFound,
			registry.Job{}},
		{"another body replaces", registry.ReplaceBody, registry.Want{Name: "old.service", Hash: "h-new", Body: []byte("new")}, nil,
			registry.Job{Name: "old.service", Hash: "h-new", Desired: registry.Launched}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := r.Ensure(ctx, []registry.Want{tt.want}, tt.mode)
			if len(errs) != 1 || !errors.Is(errs[0], tt.err) || (tt.err == nil) != (errs[0] == nil) {
				t.Fatalf("Ensure = %v, want %v", errs, tt.err)
			}
			j, err := r.Job(ctx, tt.want.Name)
			if tt.job.Name == "" {
				if !errors.Is(err, registry.ErrNotFound) {
					t.Fatalf("job = %+v %v, want none", j, err)
				}
				return
			}
			if err != nil || j != tt.job {
				t.Fatalf("job = %+v %v, want %+v", j, err, tt.job)
			}
			if b, err := r.Body(ctx, j.Hash); err != nil || len(b) == 0 {
				t.Fatalf("body %s = %q %v", j.Hash, b, err)
			}
		})
	}

	// A unit that stands as wanted: its job is not written again, its body is.
	before, _, _, err := c.Get(ctx, r.JobKey("a.service"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx, r.BodyKey("h-a")); err != nil {
		t.Fatal(err)
	}
	if err := registry.FirstError(r.Ensure(ctx, []registry.Want{{Name: "a.service", Hash: "h-a", Body: []byte("a"), Desired: registry.Launched}}, registry.KeepExisting)); err != nil {
		t.Fatal(err)
	}
	if after, _, _, err := c.Get(ctx, r.JobKey("a.service")); err != nil || after.ModRevision != before.ModRevision {
		t.Errorf("unchanged job rewritten: mod revision %d, was %d (%v)", after.ModRevision, before.ModRevision, err)
	}
	if b, err := r.Body(ctx, "h-a"); err != nil || string(b) != "a" {
		t.Errorf("lost body not written again: %q %v", b, err)
	}

	// Many units (several transactions, every job read at once), with a
	// name given twice (etcd refuses the transaction: each unit alone)
	// and one conflict: every other unit is submitted and launched.
	var wants []registry.Want
	for i := range 500 {
		body := fmt.Appendf(nil, "body %d", i%3)
		wants = append(wants, registry.Want{Name: fmt.Sprintf("m%d.service", i), Hash: fmt.Sprintf("h%d", i%3), Body: body, Desired: registry.Launched})
	}
	wants = append(wants, wants[7], registry.Want{Name: "old.service", Hash: "h-other", Body: []byte("other")})
	errs := r.Ensure(ctx, wants, registry.KeepExisting)
	for i, err := range errs {
		if i == len(errs)-1 {
			if !errors.Is(err, registry.ErrConflict) {
				t.Errorf("conflicting unit: %v", err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", wants[i].Name, err)
		}
	}
	if err := registry.FirstError(errs); !errors.Is(err, registry.ErrConflict) {
		t.Errorf("FirstError = %v", err)
	}
	s, err := r.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range wants[:500] {
		if j := s.Jobs[w.Name]; j.Hash != w.Hash || j.Desired != registry.Launched {
			t.Errorf("%s: job %+v", w.Name, j)
		}
	}
}
