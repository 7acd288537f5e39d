package engine_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/unit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

type fixture struct {
	t   *testing.T
	ctx context.Context
	c   *store.Client
	reg *registry.Registry
	// leases of the fake machines, by id
	machines map[string]*store.Lease
}

func newFixture(t *testing.T) *fixture {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	c := etcdtest.New(t).Client()
	f := &fixture{t: t, ctx: ctx, c: c, reg: registry.New(c, "/e/"), machines: map[string]*store.Lease{}}
	t.Cleanup(func() {
		for _, l := range f.machines {
			l.Close()
		}
	})
	return f
}

// machine registers a fake machine's presence under its own lease.
func (f *fixture) machine(id string, meta map[string]string) {
	f.t.Helper()
	l, err := f.c.GrantLease(f.ctx, 5*time.Second)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := l.Put(f.ctx, f.reg.MachineKey(id), registry.Encode(registry.Machine{ID: id, IP: "10.0.0." + id[1:], Metadata: meta})); err != nil {
		f.t.Fatal(err)
	}
	f.machines[id] = l
}

// report writes a unit state as machine's agent would.
func (f *fixture) report(unitName, machine, active string) {
	f.t.Helper()
	if _, err := f.machines[machine].Put(f.ctx, f.reg.StateKey(unitName, machine), registry.Encode(registry.UnitState{Load: "loaded", Active: active, Sub: "x"})); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) start(name, body string) {
	f.t.Helper()
	if _, err := f.reg.Submit(f.ctx, name, unit.Hash([]byte(body)), []byte(body), registry.ReplaceBody); err != nil {
		f.t.Fatal(err)
	}
	if err := f.reg.SetDesired(f.ctx, name, registry.Launched); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) runEngine(id string) (stop func()) {
	return f.runEngineWith(engine.Options{ID: id, MoveGrace: 300 * time.Millisecond})
}

func (f *fixture) runEngineWith(o engine.Options) (stop func()) {
	o.Registry, o.TTL, o.Period = f.reg, 2*time.Second, time.Second
	e, err := engine.New(o)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(f.ctx)
	var g errgroup.Group
	g.Go(func() error { return e.Run(ctx) })
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			if err := g.Wait(); err != nil {
				f.t.Error(err)
			}
		}
	}
	f.t.Cleanup(stop)
	return stop
}

// until waits for cond on a snapshot.
func (f *fixture) until(what string, cond func(s *registry.Snapshot) bool) *registry.Snapshot {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var s *registry.Snapshot
	for time.Now().Before(deadline) {
		var err error
		s, err = f.reg.Snapshot(f.ctx)
		if err != nil {
			f.t.Fatal(err)
		}
		if cond(s) {
			return s
		}
		time.Sleep(30 * time.Millisecond)
	}
	f.t.Fatalf("timed out waiting for %s; schedule %v unplaced %v", what, s.Schedule, s.Unplaced)
	return nil
}

const nginx = `[Unit]
Description=nginx %i
[Service]
ExecStart=/bin/sleep 1000
[X-Fleet]
Conflicts=nginx@*.service
MachineMetadata=role=worker
`

func TestPlacementRescheduleAndGlobal(t *testing.T) {
	f := newFixture(t)
	f.machine("m1", map[string]string{"role": "lb"})
	f.machine("m2", map[string]string{"role": "worker"})
	f.machine("m3", map[string]string{"role": "worker"})
	f.runEngine("m1")

	f.start("nginx@1.service", nginx)
	f.start("nginx@2.service", nginx)
	f.start("side@1.service", "[Service]\nExecStart=/bin/sleep 1000\n[X-Fleet]\nMachineOf=nginx@%i.service\n")
	f.start("prefetch.service", "[Service]\nType=oneshot\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\nMachineMetadata=role=worker\n")
	f.start("nowhere.service", "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineMetadata=role=gpu\n")

	s := f.until("placement", func(s *registry.Snapshot) bool {
		return len(s.Schedule["nginx@1.service"]) == 1 && len(s.Schedule["nginx@2.service"]) == 1 &&
			len(s.Schedule["side@1.service"]) == 1 && len(s.Schedule["prefetch.service"]) == 2 && s.Unplaced["nowhere.service"] != ""
	})
	n1, n2 := s.Targets("nginx@1.service")[0], s.Targets("nginx@2.service")[0]
	if n1 == n2 || n1 == "m1" || n2 == "m1" {
		t.Errorf("nginx@1 on %s, nginx@2 on %s: want different workers", n1, n2)
	}
	if side := s.Targets("side@1.service")[0]; side != n1 {
		t.Errorf("sidekick on %s, its unit on %s", side, n1)
	}
	if got := strings.Join(s.Targets("prefetch.service"), ","); got != "m2,m3" {
		t.Errorf("global unit on %s, want m2,m3", got)
	}
	if a := s.Schedule["nginx@1.service"][n1]; a.Desired != registry.Launched || a.Hash != unit.Hash([]byte(nginx)) {
		t.Errorf("assignment = %+v", a)
	}
	if !strings.Contains(s.Unplaced["nowhere.service"], "role") {
		t.Errorf("unplaced reason = %q", s.Unplaced["nowhere.service"])
	}

	// A machine that joins later gets the global unit.
	f.machine("m4", map[string]string{"role": "worker"})
	f.until("global on the new machine", func(s *registry.Snapshot) bool { return len(s.Schedule["prefetch.service"]) == 3 })

	// Losing nginx@1's machine moves nginx@1 and its sidekick to m4, the
	// only worker without an nginx.
	f.report("nginx@1.service", n1, "active")
	f.machines[n1].Close()
	s = f.until("reschedule", func(s *registry.Snapshot) bool {
		return strings.Join(s.Targets("nginx@1.service"), ",") == "m4" && strings.Join(s.Targets("side@1.service"), ",") == "m4"
	})
	if got := s.Targets("nginx@2.service"); got[0] != n2 {
		t.Errorf("nginx@2 moved from %s to %s without reason", n2, got[0])
	}
	for u, ms := range s.Schedule {
		if _, ok := ms[n1]; ok {
			t.Errorf("%s still targeted at the lost machine %s", u, n1)
		}
	}

	// stop → loaded is passed on; destroy removes the targets.
	if err := f.reg.SetDesired(f.ctx, "nginx@2.service", registry.Loaded); err != nil {
		t.Fatal(err)
	}
	f.until("loaded passed on", func(s *registry.Snapshot) bool {
		return s.Schedule["nginx@2.service"][n2].Desired == registry.Loaded
	})
	if err := f.reg.Destroy(f.ctx, "prefetch.service"); err != nil {
		t.Fatal(err)
	}
	f.until("destroyed unit untargeted", func(s *registry.Snapshot) bool { return len(s.Schedule["prefetch.service"]) == 0 })
	// Its body, used by no other unit, is collected on a periodic pass;
	// bodies in use stay.
	prefetch := unit.Hash([]byte("[Service]\nType=oneshot\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\nMachineMetadata=role=worker\n"))
	f.until("unused body collected", func(*registry.Snapshot) bool {
		_, err := f.reg.Body(f.ctx, prefetch)
		return errors.Is(err, registry.ErrNotFound)
	})
	if _, err := f.reg.Body(f.ctx, unit.Hash([]byte(nginx))); err != nil {
		t.Errorf("body in use: %v", err)
	}
}

func TestMoveWaitsForStop(t *testing.T) {
	f := newFixture(t)
	f.machine("m1", nil)
	f.machine("m2", nil)
	f.runEngine("m1")
	f.start("pin.service", "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=m1\n")
	f.until("pinned", func(s *registry.Snapshot) bool { return len(s.Schedule["pin.service"]["m1"].Hash) > 0 })
	f.report("pin.service", "m1", "active")
	// The user re-pins it: it must leave m1 first, and only start on m2 once
	// m1 reports it stopped.
	f.start("pin.service", "[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=m2\n")
	s := f.until("untargeted on m1", func(s *registry.Snapshot) bool { return len(s.Schedule["pin.service"]) == 0 })
	if !strings.Contains(s.Unplaced["pin.service"], "waiting for it to stop on m1") {
		t.Errorf("unplaced reason = %q", s.Unplaced["pin.service"])
	}
	// Still running on m1: stays held across passes.
	time.Sleep(1500 * time.Millisecond)
	if s, _ := f.reg.Snapshot(f.ctx); len(s.Schedule["pin.service"]) != 0 {
		t.Fatalf("targeted at %v while m1 still reports it running", s.Targets("pin.service"))
	}
	f.report("pin.service", "m1", "inactive")
	f.until("placed on m2", func(s *registry.Snapshot) bool {
		_, ok := s.Schedule["pin.service"]["m2"]
		return ok && s.Unplaced["pin.service"] == ""
	})
}

func TestDeposedEngineCannotWrite(t *testing.T) {
	f := newFixture(t)
	f.machine("m1", nil)
	f.start("a.service", "[Service]\nExecStart=/bin/true\n")
	e, err := engine.New(engine.Options{Registry: f.reg, ID: "x"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := f.c.GrantLease(f.ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	lead, err := f.c.Campaign(f.ctx, l, f.reg.ElectionPrefix(), "x")
	if err != nil {
		t.Fatal(err)
	}
	l.Close() // leadership lost
	if _, err := e.Pass(f.ctx, lead.Guard()); !errors.Is(err, engine.ErrNotLeader) {
		t.Fatalf("Pass of a deposed engine: %v, want ErrNotLeader", err)
	}
	if s, _ := f.reg.Snapshot(f.ctx); len(s.Schedule) != 0 {
		t.Errorf("a deposed engine wrote %v", s.Schedule)
	}
}

func TestLeaderFailover(t *testing.T) {
	f := newFixture(t)
	f.machine("m1", nil)
	stop1 := f.runEngine("e1")
	f.start("a.service", "[Service]\nExecStart=/bin/true\n")
	f.until("placed by e1", func(s *registry.Snapshot) bool { return len(s.Schedule["a.service"]) == 1 })
	f.runEngine("e2")
	stop1()
	v, _, _ := f.c.Leader(f.ctx, f.reg.ElectionPrefix())
	deadline := time.Now().Add(20 * time.Second)
	for v != "e2" && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		v, _, _ = f.c.Leader(f.ctx, f.reg.ElectionPrefix())
	}
	if v != "e2" {
		t.Fatalf("leader = %q, want e2", v)
	}
	f.start("b.service", "[Service]\nExecStart=/bin/true\n")
	f.until("placed by e2", func(s *registry.Snapshot) bool { return len(s.Schedule["b.service"]) == 1 })
}

func TestMachineCapacity(t *testing.T) {
	f := newFixture(t)
	l, err := f.c.GrantLease(f.ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f.machines["m1"] = l
	l.Put(f.ctx, f.reg.MachineKey("m1"), registry.Encode(registry.Machine{ID: "m1", Capacity: 1}))
	f.runEngine("m1")
	f.start("a.service", "[Service]\nExecStart=/bin/true\n")
	f.start("b.service", "[Service]\nExecStart=/bin/true\n")
	s := f.until("one placed, one unplaced", func(s *registry.Snapshot) bool {
		return len(s.Schedule["a.service"])+len(s.Schedule["b.service"]) == 1 && len(s.Unplaced) == 1
	})
	for u, why := range s.Unplaced {
		if why == "" {
			t.Errorf("%s unplaced without a reason", u)
		}
		t.Logf("%s: %s", u, why)
	}
}
