package engine_test

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

// TestFailureRecordsSteerPlacement: a failure record of a unit's current
// body with OnFailed=move takes its machine out of the unit's placement; a
// record of another body, or with move off (OnFailed=stay), does not; when
// the records go (they run out, or are deleted), the machines are eligible
// again.
func TestFailureRecordsSteerPlacement(t *testing.T) {
	f := newFixture(t)
	f.machine("m1", nil)
	f.machine("m2", nil)
	var passes atomic.Int64
	f.runEngineWith(engine.Options{ID: "e", MoveGrace: 300 * time.Millisecond, OnPass: func(engine.PassStats) { passes.Add(1) }})
	body := "[Service]\nExecStart=/bin/sleep 1000\n"
	hash := unit.Hash([]byte(body))
	f.start("a.service", body)
	s := f.until("a placed", func(s *registry.Snapshot) bool { return len(s.Schedule["a.service"]) == 1 })
	first := s.Targets("a.service")[0]
	other := map[string]string{"m1": "m2", "m2": "m1"}[first]
	record := func(machine, hash string, move bool) {
		t.Helper()
		if err := f.reg.PutFailure(f.ctx, registry.Failure{Unit: "a.service", Machine: machine, Hash: hash, Restarts: 3, Move: move}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	on := func(m string) func(*registry.Snapshot) bool {
		return func(s *registry.Snapshot) bool {
			_, ok := s.Schedule["a.service"][m]
			return ok && len(s.Schedule["a.service"]) == 1
		}
	}

	// Records that do not ask to avoid the machine change nothing: after a
	// pass that read them (the next one: the writes call for one, and the
	// engine passes every Period anyway), it is still there.
	record(first, "another-body", true)
	record(first, hash, false)
	n := passes.Load()
	f.until("a pass after the records", func(*registry.Snapshot) bool { return passes.Load() > n+1 }) // one may have been under way
	if s, _ := f.reg.Snapshot(f.ctx); !on(first)(s) {
		t.Fatalf("a left %s for a record of another body or with OnFailed=stay: %v", first, s.Schedule["a.service"])
	}

	// The current body failed there for good, with OnFailed=move: it moves.
	record(first, hash, true)
	f.until("a moved to "+other, on(other))

	// It fails on the other machine too: unplaced, with the reason.
	record(other, hash, true)
	s = f.until("a unplaced", func(s *registry.Snapshot) bool { return len(s.Schedule["a.service"]) == 0 })
	if why := s.Unplaced["a.service"]; !strings.Contains(why, "failed on every machine") {
		t.Errorf("unplaced reason %q", why)
	}

	// A record runs out (here: deleted): that machine takes it again.
	if err := f.reg.ClearFailure(f.ctx, "a.service", first); err != nil {
		t.Fatal(err)
	}
	f.until("a back on "+first, on(first))
}
