package engine_test

import (
	"testing"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

// TestDrainMovePinSurge checks the engine's side of planned change: a
// drained machine keeps its units but takes no new one; a move is two-phase
// and its request is deleted when done, or dropped when impossible; a surge
// move keeps both machines until rewritten; a pin holds one machine of a
// global unit on its old body.
func TestDrainMovePinSurge(t *testing.T) {
	f := newFixture(t)
	f.machine("m2", nil)
	f.machine("m3", nil)
	f.runEngine("m2")
	const plain = "[Service]\nExecStart=/bin/sleep 1000\n"
	at := func(u string) func(s *registry.Snapshot) bool {
		return func(s *registry.Snapshot) bool { return len(s.Schedule[u]) == 1 }
	}
	f.start("a@1.service", plain)
	s := f.until("a@1 placed", at("a@1.service"))
	home := s.Targets("a@1.service")[0]
	other := map[string]string{"m2": "m3", "m3": "m2"}[home]
	f.report("a@1.service", home, "active")

	// Drained: a@1 stays, new units go elsewhere.
	if err := f.reg.Drain(f.ctx, home, "test"); err != nil {
		t.Fatal(err)
	}
	f.start("a@2.service", plain)
	f.start("a@3.service", plain)
	s = f.until("a@2, a@3 placed", func(s *registry.Snapshot) bool {
		return len(s.Schedule["a@2.service"]) == 1 && len(s.Schedule["a@3.service"]) == 1
	})
	for _, u := range []string{"a@2.service", "a@3.service"} {
		if got := s.Targets(u); got[0] != other {
			t.Errorf("%s placed on %v, want %s (%s is drained)", u, got, other, home)
		}
	}
	if got := s.Targets("a@1.service"); len(got) != 1 || got[0] != home {
		t.Errorf("a@1 moved off the drained machine by itself: %v", got)
	}

	// An impossible move is dropped; the unit stays.
	if err := f.reg.RequestMove(f.ctx, "a@1.service", "m9", false); err != nil {
		t.Fatal(err)
	}
	s = f.until("move to m9 dropped", func(s *registry.Snapshot) bool { _, ok := s.Plan.Moves["a@1.service"]; return !ok })
	if got := s.Targets("a@1.service"); len(got) != 1 || got[0] != home {
		t.Errorf("a@1 after a dropped move: %v", got)
	}

	// A move: stopped on home first, then started on other; request deleted.
	if err := f.reg.RequestMove(f.ctx, "a@1.service", other, false); err != nil {
		t.Fatal(err)
	}
	s = f.until("a@1 untargeted on "+home, func(s *registry.Snapshot) bool { return len(s.Schedule["a@1.service"]) == 0 })
	if _, ok := s.Plan.Moves["a@1.service"]; !ok {
		t.Errorf("move request deleted before the move was done")
	}
	f.report("a@1.service", home, "inactive")
	f.until("a@1 on "+other, func(s *registry.Snapshot) bool {
		_, pending := s.Plan.Moves["a@1.service"]
		return len(s.Schedule["a@1.service"]) == 1 && s.Targets("a@1.service")[0] == other && !pending
	})

	// Surge: both machines until the request is rewritten without surge.
	if _, err := f.reg.Undrain(f.ctx, home); err != nil {
		t.Fatal(err)
	}
	f.report("a@2.service", other, "active")
	if err := f.reg.RequestMove(f.ctx, "a@2.service", home, true); err != nil {
		t.Fatal(err)
	}
	f.until("a@2 on both machines", func(s *registry.Snapshot) bool { return len(s.Schedule["a@2.service"]) == 2 })
	if err := f.reg.RequestMove(f.ctx, "a@2.service", home, false); err != nil {
		t.Fatal(err)
	}
	f.until("a@2 on "+home+" alone, request gone", func(s *registry.Snapshot) bool {
		_, pending := s.Plan.Moves["a@2.service"]
		return len(s.Schedule["a@2.service"]) == 1 && s.Targets("a@2.service")[0] == home && !pending
	})

	// Pins: a global unit's new body reaches one machine at a time.
	g1 := "[Service]\nExecStart=/bin/sleep 1\n[X-Fleet]\nGlobal=true\n"
	g2 := "[Service]\nExecStart=/bin/sleep 2\n[X-Fleet]\nGlobal=true\n"
	h1, h2 := unit.Hash([]byte(g1)), unit.Hash([]byte(g2))
	f.start("g.service", g1)
	f.until("g on both", func(s *registry.Snapshot) bool { return len(s.Schedule["g.service"]) == 2 })
	if err := f.reg.Pin(f.ctx, "g.service", h1, []string{"m2", "m3"}); err != nil {
		t.Fatal(err)
	}
	f.start("g.service", g2)
	f.until("job on g2", func(s *registry.Snapshot) bool { return s.Jobs["g.service"].Hash == h2 })
	if err := f.reg.Unpin(f.ctx, "g.service", "m2"); err != nil {
		t.Fatal(err)
	}
	s = f.until("m2 on g2", func(s *registry.Snapshot) bool { return s.Schedule["g.service"]["m2"].Hash == h2 })
	if got := s.Schedule["g.service"]["m3"].Hash; got != h1 {
		t.Errorf("pinned m3 runs %s, want the old body %s", got[:7], h1[:7])
	}
	// The pinned body is not collected while pinned.
	unused, err := f.reg.UnusedBodies(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range unused {
		if kv.Key == f.reg.BodyKey(h1) {
			t.Errorf("the pinned body %s is listed unused", h1[:7])
		}
	}
}
