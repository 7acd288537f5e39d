package fleetapi_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/testmain"
)

// TestMetricsWatches: leader changes and unit restarts are counted from
// the election and the agents' state reports; engine passes from the hook.
func TestMetricsWatches(t *testing.T) {
	f := newFixture(t)
	hs := f.url
	ctx, cancel := context.WithCancel(f.ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = f.srv.Run(ctx) }()
	defer func() { cancel(); wg.Wait() }()

	f.srv.Metrics().ObservePass(3 * time.Millisecond)
	f.srv.Metrics().ObservePass(5 * time.Millisecond)
	if got := scrape(t, hs, "flotilla_engine_passes_total"); got != 2 {
		t.Errorf("passes = %v, want 2", got)
	}
	if got := scrape(t, hs, "flotilla_engine_pass_duration_seconds_count"); got != 2 {
		t.Errorf("pass duration count = %v, want 2", got)
	}

	// Two engine candidates: a leads, resigns, b takes over.
	la, err := f.c.GrantLease(f.ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer la.Close()
	lb, err := f.c.GrantLease(f.ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	a, err := f.c.Campaign(f.ctx, la, f.reg.ElectionPrefix(), "ma")
	if err != nil {
		t.Fatal(err)
	}
	wait := func(metric string, want float64) {
		t.Helper()
		testmain.Eventually(t, 60*time.Second, 100*time.Millisecond, metric, func() error {
			if got := scrape(t, hs, metric); got != want {
				return fmt.Errorf("%s = %v, want %v", metric, got, want)
			}
			return nil
		})
	}
	wait(`flotilla_engine_leader{machine="ma"}`, 1)
	won := make(chan error, 1)
	go func() {
		_, err := f.c.Campaign(f.ctx, lb, f.reg.ElectionPrefix(), "mb")
		won <- err
	}()
	if err := a.Resign(f.ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-won; err != nil {
		t.Fatal(err)
	}
	wait(`flotilla_engine_leader{machine="mb"}`, 1)
	wait("flotilla_engine_leader_changes_total", 1)

	// An agent reports a unit going through two restarts.
	for _, sub := range []string{"running", "auto-restart", "auto-restart", "running", "auto-restart", "running"} {
		st := registry.UnitState{Hash: "h", Load: "loaded", Active: "active", Sub: sub}
		if _, err := f.c.Put(f.ctx, f.reg.StateKey("r.service", "m1"), registry.Encode(st), 0); err != nil {
			t.Fatal(err)
		}
	}
	wait(`flotilla_unit_restarts_total{machine="m1",unit="r.service"}`, 2)
}

// TestMetricsFailedUnits: failure records of a unit's current body and the
// restarts in place its agent reports are gauges; a record of an older body
// is not.
func TestMetricsFailedUnits(t *testing.T) {
	f := newFixture(t)
	if _, err := f.reg.Submit(f.ctx, "c.service", "h2", []byte("[Service]\nExecStart=/bin/true\n"), registry.ReplaceBody); err != nil {
		t.Fatal(err)
	}
	j, err := f.reg.Job(f.ctx, "c.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range []registry.Failure{
		{Unit: "c.service", Machine: "m1", Hash: j.Hash, Restarts: 2, Move: true},
		{Unit: "c.service", Machine: "m3", Hash: j.Hash, Restarts: 2, Move: false},
		{Unit: "c.service", Machine: "m4", Hash: "older", Restarts: 2, Move: true},
	} {
		if err := f.reg.PutFailure(f.ctx, rec, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	st := registry.UnitState{Hash: j.Hash, Load: "loaded", Active: "activating", Sub: "start-pre", Restarts: 1}
	if _, err := f.c.Put(f.ctx, f.reg.StateKey("c.service", "m2"), registry.Encode(st), 0); err != nil {
		t.Fatal(err)
	}
	for metric, want := range map[string]float64{
		`flotilla_unit_failed{machine="m1",move="true",unit="c.service"}`:  1,
		`flotilla_unit_failed{machine="m3",move="false",unit="c.service"}`: 1,
		`flotilla_unit_failed{machine="m4",move="true",unit="c.service"}`:  -1, // absent
		`flotilla_unit_failed_restarts{machine="m2",unit="c.service"}`:     1,
	} {
		if got := scrape(t, f.url, metric); got != want {
			t.Errorf("%s = %v, want %v", metric, got, want)
		}
	}
}
