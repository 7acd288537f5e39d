package engine_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// TestMoveGrace checks each boundary of a machine's absence: its units stay
// targeted at it while it has been absent for less than MoveGrace (fenced
// units: FenceWait), move after, and do not move when it comes back in
// time.
func TestMoveGrace(t *testing.T) {
	f := newFixture(t)
	f.machine("m1", nil)
	f.machine("m2", nil)
	f.machine("m3", nil)
	const grace = 3 * time.Second
	f.runEngineWith(engine.Options{ID: "e", MoveGrace: grace, FenceWait: 200 * time.Millisecond})
	// Pinned by Conflicts to different machines: one plain, one fenced,
	// both on m2 and m3 (m1 takes the "other" unit first).
	f.start("other.service", "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=m1\n")
	f.start("plain.service", "[Service]\nExecStart=/bin/true\n[X-Fleet]\nConflicts=*.service\n")
	f.start("fenced.service", "[Service]\nExecStart=/bin/true\n[X-Fleet]\nConflicts=*.service\n[X-Flotilla]\nOnDisconnect=stop\n")
	s := f.until("placed", func(s *registry.Snapshot) bool {
		return len(s.Schedule["plain.service"]) == 1 && len(s.Schedule["fenced.service"]) == 1 && len(s.Schedule["other.service"]) == 1
	})
	plainOn, fencedOn := s.Targets("plain.service")[0], s.Targets("fenced.service")[0]
	if plainOn == "m1" || fencedOn == "m1" {
		t.Fatalf("plain on %s, fenced on %s: the test needs m1 free of both", plainOn, fencedOn)
	}
	// Free m1 so that either can move there.
	if err := f.reg.SetDesired(f.ctx, "other.service", registry.Inactive); err != nil {
		t.Fatal(err)
	}
	f.until("m1 free", func(s *registry.Snapshot) bool { return len(s.Schedule["other.service"]) == 0 })

	// 1. The fenced unit's machine goes: it moves after FenceWait, well
	// before the grace.
	gone := time.Now()
	f.machines[fencedOn].Close()
	f.until("fenced unit moved", func(s *registry.Snapshot) bool {
		return len(s.Schedule["fenced.service"]) == 1 && s.Targets("fenced.service")[0] == "m1"
	})
	if d := time.Since(gone); d > grace {
		t.Errorf("fenced unit moved %s after its machine went, not before the grace %s", d, grace)
	} else {
		t.Logf("FIGURE engine/fenced-move: %s after the presence key went (FenceWait 200ms)", d.Round(time.Millisecond))
	}

	f.machine(fencedOn, nil) // back, empty: somewhere for the plain unit to go

	// 2. The plain unit's machine goes and comes back within the grace:
	// nothing moves.
	f.machines[plainOn].Close()
	time.Sleep(grace / 2)
	if s, _ := f.reg.Snapshot(f.ctx); strings.Join(s.Targets("plain.service"), ",") != plainOn {
		t.Fatalf("plain unit moved within the grace: %v", s.Targets("plain.service"))
	}
	f.machine(plainOn, nil)
	time.Sleep(grace)
	if s, _ := f.reg.Snapshot(f.ctx); strings.Join(s.Targets("plain.service"), ",") != plainOn {
		t.Fatalf("plain unit moved although its machine came back within the grace: %v", s.Targets("plain.service"))
	}

	// 3. Gone for good: it stays for the grace, then moves.
	gone = time.Now()
	f.machines[plainOn].Close()
	time.Sleep(grace - 500*time.Millisecond)
	if s, _ := f.reg.Snapshot(f.ctx); strings.Join(s.Targets("plain.service"), ",") != plainOn {
		t.Fatalf("plain unit moved %s after its machine went, before the grace %s", time.Since(gone), grace)
	}
	f.until("plain unit moved", func(s *registry.Snapshot) bool {
		return len(s.Schedule["plain.service"]) == 1 && s.Targets("plain.service")[0] == fencedOn
	})
	t.Logf("FIGURE engine/move: plain unit moved %s after its presence key went (grace %s)", time.Since(gone).Round(time.Millisecond), grace)
}

// TestManyMovesStayWithinTxnLimits moves more units off an absent machine
// than one transaction may hold (each move carries a presence condition):
// the engine splits the writes, and every unit moves.
func TestManyMovesStayWithinTxnLimits(t *testing.T) {
	f := newFixture(t)
	f.machine("m1", nil)
	f.machine("m2", nil)
	const n = registry.MaxTxnOps + 15
	var names []string
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("u%03d.service", i)
		names = append(names, name)
		f.start(name, "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineMetadata=slot!=none\n")
	}
	f.runEngineWith(engine.Options{ID: "e", MoveGrace: 200 * time.Millisecond})
	s := f.until("all placed", func(s *registry.Snapshot) bool { return len(s.Schedule) == n })
	// Pin nothing: close whichever machine holds the most.
	count := map[string]int{}
	for _, name := range names {
		count[s.Targets(name)[0]]++
	}
	gone := "m1"
	if count["m2"] > count["m1"] {
		gone = "m2"
	}
	other := map[string]string{"m1": "m2", "m2": "m1"}[gone]
	// Put every unit on the machine that goes, so that all n move at once.
	if count[gone] < n {
		f.machines[other].Close()
		f.until("all on "+gone, func(s *registry.Snapshot) bool {
			for _, name := range names {
				if ts := s.Targets(name); len(ts) != 1 || ts[0] != gone {
					return false
				}
			}
			return true
		})
		f.machine(other, nil)
	}
	f.machines[gone].Close()
	f.until("all moved off the absent machine", func(s *registry.Snapshot) bool {
		for _, name := range names {
			if ts := s.Targets(name); len(ts) != 1 || ts[0] != other {
				return false
			}
		}
		return true
	})
}

// TestAbsenceClockRestartsAfterEtcdOutage: a machine gone shortly before an
// etcd outage is given a whole grace again, counted from etcd's return.
func TestAbsenceClockRestartsAfterEtcdOutage(t *testing.T) {
	srv := etcdtest.New(t)
	if srv.Mode() == etcdtest.External {
		t.Skip("needs an etcd the test can stop")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := srv.Client()
	f := &fixture{t: t, ctx: ctx, c: c, reg: registry.New(c, "/e/"), machines: map[string]*store.Lease{}}
	t.Cleanup(func() {
		for _, l := range f.machines {
			l.Close()
		}
	})
	f.machine("m1", nil)
	f.machine("m2", nil)
	const grace = 8 * time.Second
	f.runEngineWith(engine.Options{ID: "e", MoveGrace: grace, HealthInterval: 100 * time.Millisecond})
	f.start("a.service", "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=m2\n")
	f.until("placed on m2", func(s *registry.Snapshot) bool { return len(s.Schedule["a.service"]) == 1 })
	// Unpin it (same body apart from a comment: it may go anywhere now).
	f.start("a.service", "[Service]\nExecStart=/bin/true\n# anywhere\n")
	time.Sleep(500 * time.Millisecond)
	f.machines["m2"].Close()
	gone := time.Now()
	time.Sleep(500 * time.Millisecond) // the engine sees it gone
	srv.Stop()                         // (a graceful stop takes a few seconds)
	time.Sleep(time.Second)
	srv.Start()
	back := time.Now()
	f.until("moved to m1", func(s *registry.Snapshot) bool {
		return strings.Join(s.Targets("a.service"), ",") == "m1"
	})
	// Had the clock not restarted, it would have moved grace after the
	// machine went, i.e. about grace - (back - gone) after etcd's return.
	t.Logf("etcd back %s after the machine went", back.Sub(gone).Round(time.Millisecond))
	if d := time.Since(back); d < grace-500*time.Millisecond {
		t.Errorf("moved %s after etcd came back, before a whole grace (%s)", d, grace)
	} else {
		t.Logf("FIGURE engine/outage-clock: moved %s after etcd came back (grace %s, machine gone %s before etcd came back)", d.Round(time.Millisecond), grace, back.Sub(gone).Round(time.Millisecond))
	}
}
