package engine_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

// TestLeaderPlacesManyInBoundedPasses: the leader plans from the state its
// watch keeps and writes a bounded number of transactions per pass; units
// submitted at once, more than one pass may write, all end up placed, each
// on one machine, with passes marked partial until then; a metadata change
// made later (a key the leader only learns from its watch) moves the units
// it concerns.
func TestLeaderPlacesManyInBoundedPasses(t *testing.T) {
	f := newFixture(t)
	const n = 2000 // a put and an unplaced delete or none each: more than one bounded pass
	wants := f.workers(n)
	var mu sync.Mutex
	var passes []engine.PassStats
	f.runEngineWith(engine.Options{ID: "e1", OnPass: func(ps engine.PassStats) {
		mu.Lock()
		passes = append(passes, ps)
		mu.Unlock()
	}})
	f.until("every unit placed", func(s *registry.Snapshot) bool {
		for _, w := range wants {
			if len(s.Schedule[w.Name]) != 1 {
				return false
			}
		}
		return len(s.Unplaced) == 0
	})
	mu.Lock()
	partial, continued := 0, 0
	for _, ps := range passes {
		if ps.Partial {
			partial++
		}
		if ps.Continued {
			continued++
			if ps.Plan != 0 {
				t.Errorf("a continued pass planned for %s", ps.Plan)
			}
		}
	}
	mu.Unlock()
	if partial == 0 {
		t.Errorf("no partial pass among %d: %d units should take more than one bounded pass", len(passes), n)
	}
	if continued == 0 {
		t.Errorf("no continued pass among %d: nothing changed while the first plan was written, so the passes after it should write its rest without planning", len(passes))
	}

	// m1 stops being a worker: its units go to m2 and m3.
	if err := f.reg.SetMetadata(f.ctx, "m1", "role", "db"); err != nil {
		t.Fatal(err)
	}
	f.until("units off m1", func(s *registry.Snapshot) bool {
		for _, w := range wants {
			ms := s.Schedule[w.Name]
			if _, on := ms["m1"]; on || len(ms) != 1 {
				return false
			}
		}
		return true
	})
}

// TestLeaderReplansWhenAChangeComesMidPlan: a change that arrives while a
// partial pass's plan is still being written makes its rest stale. Here
// machine m1 stops being a worker right after the first partial pass: at
// most one continued pass may still follow (the engine's watch may not
// have brought the change yet), then a pass plans again, and every unit
// ends up off m1. Writing the stale rest to the end would take several
// continued passes, each putting units on m1.
func TestLeaderReplansWhenAChangeComesMidPlan(t *testing.T) {
	f := newFixture(t)
	const n = 6000 // about twelve bounded passes
	wants := f.workers(n)
	var mu sync.Mutex
	var after []engine.PassStats // the passes after the change
	changed := false
	f.runEngineWith(engine.Options{ID: "e1", OnPass: func(ps engine.PassStats) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case changed:
			after = append(after, ps)
		case ps.Partial:
			// Called by the leader between its passes: the change lands
			// while the rest of this plan waits to be written.
			if err := f.reg.SetMetadata(f.ctx, "m1", "role", "db"); err != nil {
				t.Error(err)
			}
			changed = true
		}
	}})
	f.until("every unit placed off m1", func(s *registry.Snapshot) bool {
		for _, w := range wants {
			ms := s.Schedule[w.Name]
			if _, on := ms["m1"]; on || len(ms) != 1 {
				return false
			}
		}
		return len(s.Unplaced) == 0
	})
	mu.Lock()
	defer mu.Unlock()
	if !changed {
		t.Fatal("no partial pass: the change never came mid-plan")
	}
	replannedSoon(t, "the change", after)
}

// workers registers machines m1, m2 and m3 with role=worker and submits n
// launched units that run on workers only.
func (f *fixture) workers(n int) []registry.Want {
	f.t.Helper()
	for _, id := range []string{"m1", "m2", "m3"} {
		f.machine(id, map[string]string{"role": "worker"})
	}
	body := "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nMachineMetadata=role=worker\n"
	wants := make([]registry.Want, 0, n)
	for i := range n {
		wants = append(wants, registry.Want{Name: fmt.Sprintf("u%04d.service", i), Hash: unit.Hash([]byte(body)), Body: []byte(body), Desired: registry.Launched})
	}
	if err := registry.FirstError(f.reg.Ensure(f.ctx, wants, registry.KeepExisting)); err != nil {
		f.t.Fatal(err)
	}
	return wants
}

// TestLeaderReplansWhenAMovingUnitReports: a state reported by a unit that
// the rest of a partial pass takes off a machine makes that rest stale (the
// unit may have to wait to stop there first). m3 stops being a worker, so
// its 2,000 units move, more than one bounded pass; after the first, one
// of the units still to move reports running on m3: at most one continued
// pass may follow (the watch may not have brought the report yet), then a
// pass plans again and holds that unit until it stops on m3.
func TestLeaderReplansWhenAMovingUnitReports(t *testing.T) {
	f := newFixture(t)
	wants := f.workers(6000)
	var mu sync.Mutex
	var after []engine.PassStats // the passes after the report
	armed, reported := false, ""
	f.runEngineWith(engine.Options{ID: "e1", OnPass: func(ps engine.PassStats) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case reported != "":
			after = append(after, ps)
		case armed && ps.Partial:
			// The last unit by name still on m3 is in the rest.
			snap, err := f.reg.Snapshot(f.ctx)
			if err != nil {
				t.Error(err)
				return
			}
			for _, w := range wants {
				if _, on := snap.Schedule[w.Name]["m3"]; on {
					reported = w.Name
				}
			}
			f.report(reported, "m3", "active")
		}
	}})
	f.until("every unit placed", func(s *registry.Snapshot) bool {
		for _, w := range wants {
			if len(s.Schedule[w.Name]) != 1 {
				return false
			}
		}
		return true
	})
	mu.Lock()
	armed = true
	mu.Unlock()
	if err := f.reg.SetMetadata(f.ctx, "m3", "role", "db"); err != nil {
		t.Fatal(err)
	}
	f.until("the reporting unit held on m3, every other unit off it", func(s *registry.Snapshot) bool {
		mu.Lock()
		name := reported
		mu.Unlock()
		if name == "" || !strings.HasPrefix(s.Unplaced[name], "waiting for it to stop on m3") {
			return false
		}
		for _, w := range wants {
			if _, on := s.Schedule[w.Name]["m3"]; on && w.Name != name {
				return false
			}
		}
		return true
	})
	mu.Lock()
	defer mu.Unlock()
	replannedSoon(t, "the report", after)
}

// replannedSoon fails t unless a pass among after (the passes that
// followed what) planned again, with at most one continued pass before it:
// the watch may not have brought what yet when the first ran.
func replannedSoon(t *testing.T, what string, after []engine.PassStats) {
	t.Helper()
	continued := 0
	for _, ps := range after {
		if !ps.Continued {
			break
		}
		continued++
	}
	if continued > 1 || continued == len(after) {
		t.Errorf("after %s: %d continued passes before one planned again (of %d passes); want at most 1", what, continued, len(after))
	}
}
