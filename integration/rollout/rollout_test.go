package rollout_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

const spread = "[X-Fleet]\nConflicts=web@*.service\n"

// TestRollingUpdate rolls web@1..3 from v1 to v2 behind haproxy with requests
// flowing the whole time (0 failed), then tries a body that cannot start:
// the rollout halts at the first instance, the others keep serving v2.
func TestRollingUpdate(t *testing.T) {
	c := newCluster(t)
	tmpl := rollInPlace(t, c)

	// A body whose ExecStart fails halts the rollout at web@1.
	bg := c.hammer.Start(c.ctx)
	bad := strings.Replace(string(c.unitFile("v3", spread)), "[Service]\n", "[Service]\nExecStartPre=/bin/false\n", 1)
	c.writeUnit("web@.service", []byte(bad))
	out, err := c.sched("roll", "--timeout", "30s", tmpl)
	if err == nil {
		t.Fatalf("roll of a failing body succeeded:\n%s", out)
	}
	t.Logf("roll of a failing body: %v\n%s", err, out)
	if !strings.Contains(err.Error(), "web@1.service") || !strings.Contains(err.Error(), "halted") {
		t.Errorf("the error does not name web@1.service and the halt: %v", err)
	}
	v2 := unit.Hash(c.unitFile("v2", spread))
	for _, u := range []string{"web@2.service", "web@3.service"} {
		j, err := c.reg.Job(c.ctx, u)
		if err != nil || j.Hash != v2 {
			t.Errorf("%s: job %+v, %v; want it left on v2 %s", u, j, err, v2[:7])
		}
	}
	c.waitServing("web@2 v2", "web@3 v2")
	res := bg.Stop()
	checkZero(t, c.hp, "failing new body", res)
	if res.By["web@2 v2"] == 0 || res.By["web@3 v2"] == 0 {
		t.Errorf("web@2, web@3 did not keep serving: %s", res)
	}
}

// TestRollingUpdateRenderWait is the in-place roll of TestRollingUpdate with
// render running with -wait quiescence (it applies a change only after
// 200ms without another, at most 1s late).
func TestRollingUpdateRenderWait(t *testing.T) {
	rollInPlace(t, newCluster(t), "-wait", "200ms:1s")
}

// rollInPlace starts web@1..3 (v1) on three machines behind haproxy, with
// render's extra flags, and rolls them to v2 in place under ≥ 5,000
// requests, asserting 0 failed, one line per instance in order, and every
// instance answering with both versions. It returns the template's path.
func rollInPlace(t *testing.T, c *cluster, renderFlags ...string) string {
	t.Helper()
	for i := 1; i <= 3; i++ {
		c.machine(fmt.Sprintf("m%d", i), i+1)
	}
	c.startLB(renderFlags...)
	tmpl := c.writeUnit("web@.service", c.unitFile("v1", spread))
	c.mustSched("start", tmpl[:len(tmpl)-len("web@.service")]+"web@1.service",
		tmpl[:len(tmpl)-len("web@.service")]+"web@2.service", tmpl[:len(tmpl)-len("web@.service")]+"web@3.service")
	c.waitServing("web@1 v1", "web@2 v1", "web@3 v1")
	before := c.where("web@1.service", "web@2.service", "web@3.service")

	bg := c.hammer.Start(c.ctx)
	time.Sleep(500 * time.Millisecond)
	c.writeUnit("web@.service", c.unitFile("v2", spread))
	start := time.Now()
	out := c.mustSched("roll", tmpl)
	took := time.Since(start)
	// Lines come one per instance, in order, each after the previous one was
	// ready: the answers switch old → new instance by instance.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("roll printed %d lines, want one per instance and a summary:\n%s", len(lines), out)
	}
	for i, l := range lines[:3] {
		// render publishes its status: each instance counts only once render
		// has applied its new announcement.
		if !strings.HasPrefix(l, fmt.Sprintf("Unit web@%d.service body ", i+1)) || !strings.Contains(l, "announced "+announcePrefix) ||
			!strings.Contains(l, "applied by 1 render(s)") {
			t.Errorf("line %d: %q", i+1, l)
		}
	}
	c.waitServing("web@1 v2", "web@2 v2", "web@3 v2")
	for bg.Snapshot().Total < 5000 && c.ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	res := bg.Stop()
	checkZero(t, c.hp, fmt.Sprintf("rolling update of 3 instances (render %q)", renderFlags), res)
	t.Logf("roll of 3 instances took %s", took.Round(time.Millisecond))
	for i := 1; i <= 3; i++ {
		for _, v := range []string{"v1", "v2"} {
			if res.By[fmt.Sprintf("web@%d %s", i, v)] == 0 {
				t.Errorf("web@%d never answered with %s during the roll: %s", i, v, res)
			}
		}
	}
	if after := c.where("web@1.service", "web@2.service", "web@3.service"); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("instances moved during an in-place roll: %v → %v", before, after)
	}
	return tmpl
}

// TestDrainMoveScaleDown drains a machine running 2 instances (they move
// away one at a time; drain --no-block returns at once, `rollouts ID`
// follows the drain), restarts its serve (still drained), undrains it, moves
// an instance back with `move --to`, moves one with --no-block, and destroys
// one, with 0 failed requests throughout.
func TestDrainMoveScaleDown(t *testing.T) {
	c := newCluster(t)
	c.machine("m1", 2)
	c.startLB()
	// Two instances share a machine here: each listens on a port of its own.
	var dir string
	for i := 1; i <= 3; i++ {
		p := c.writeUnit(fmt.Sprintf("app@%d.service", i), c.unitFileAt("v1", "", freePort(t)))
		dir = p[:len(p)-len("app@1.service")]
	}
	c.mustSched("start", dir+"app@1.service", dir+"app@2.service")
	c.machine("m2", 3)
	c.machine("m3", 4)
	c.waitServing("app@1 v1", "app@2 v1")
	if w := c.where("app@1.service", "app@2.service"); w["app@1.service"] != "m1" || w["app@2.service"] != "m1" {
		t.Fatalf("want both instances on m1: %v", w)
	}

	bg := c.hammer.Start(c.ctx)
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	out := c.mustSched("rollouts", c.noBlock("drain", "m1"))
	took := time.Since(start)
	if n := strings.Count(out, "moved m1 → "); n != 2 {
		t.Errorf("drain printed %d moves, want 2:\n%s", n, out)
	}
	w := c.where("app@1.service", "app@2.service")
	if w["app@1.service"] == "m1" || w["app@2.service"] == "m1" || w["app@1.service"] == "" || w["app@2.service"] == "" {
		t.Errorf("after the drain: %v", w)
	}
	t.Logf("drain of 2 instances took %s", took.Round(time.Millisecond))
	if lm := c.mustSched("list-machines", "--no-legend", "--full"); !strings.Contains(lm, "m1") || !strings.Contains(lm, "drained") {
		t.Errorf("list-machines does not show m1 drained:\n%s", lm)
	}
	// The drain survives a restart of m1's serve: a new unit does not land there.
	c.stop("m1")
	c.machine("m1", 2)
	c.mustSched("start", dir+"app@3.service")
	if w := c.where("app@3.service"); w["app@3.service"] == "m1" || w["app@3.service"] == "" {
		t.Errorf("app@3 placed on %q, want a machine not drained", w["app@3.service"])
	}
	c.waitServing("app@1 v1", "app@2 v1", "app@3 v1")

	c.mustSched("undrain", "m1")
	if lm := c.mustSched("list-machines", "--no-legend"); strings.Contains(lm, "drained") {
		t.Errorf("list-machines still shows a drained machine:\n%s", lm)
	}
	out = c.mustSched("move", "app@1.service", "--to", "m1")
	if !strings.Contains(out, "Unit app@1.service moved ") || c.where("app@1.service")["app@1.service"] != "m1" {
		t.Errorf("move --to m1: %q, now on %v", out, c.where("app@1.service"))
	}
	out = c.mustSched("rollouts", c.noBlock("move", "app@2.service"))
	if c.where("app@2.service")["app@2.service"] == w["app@2.service"] {
		t.Errorf("move app@2 without --to left it on %s: %s", w["app@2.service"], out)
	}

	// Scale down: destroy an instance under load.
	c.mustSched("destroy", "app@3.service")
	c.waitServing("app@1 v1", "app@2 v1")
	for bg.Snapshot().Total < 5000 && c.ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	checkZero(t, c.hp, "drain, restart, undrain, move, destroy", bg.Stop())
}

// TestGlobalRollsMachineByMachine rolls a global unit: at every moment at
// most one machine runs anything but an active unit, and each machine ends
// on the new body.
func TestGlobalRollsMachineByMachine(t *testing.T) {
	c := newCluster(t)
	for i := 1; i <= 3; i++ {
		c.machine(fmt.Sprintf("m%d", i), i+1)
	}
	body := func(v string) []byte {
		return []byte("[Unit]\nDescription=global " + v + "\n[Service]\nExecStart=/bin/sleep 600\nExecStop=/bin/sleep 0.5\n[X-Fleet]\nGlobal=true\n")
	}
	p := c.writeUnit("g.service", body("v1"))
	c.mustSched("start", p)
	stop := make(chan struct{})
	worst := make(chan int, 1)
	go func() {
		most := 0
		for {
			select {
			case <-stop:
				worst <- most
				return
			case <-time.After(20 * time.Millisecond):
			}
			s, err := c.reg.Snapshot(c.ctx)
			if err != nil {
				continue
			}
			down := 0
			for _, st := range s.States["g.service"] {
				if st.Active != "active" || st.State != string(registry.Launched) {
					down++
				}
			}
			down += 3 - len(s.States["g.service"])
			most = max(most, down)
		}
	}()
	c.writeUnit("g.service", body("v2"))
	out := c.mustSched("roll", p)
	close(stop)
	if n := strings.Count(out, "Unit g.service body "); n != 3 {
		t.Errorf("roll printed %d machine lines, want 3:\n%s", n, out)
	}
	if most := <-worst; most > 1 {
		t.Errorf("up to %d machines were not running g.service at once, want at most 1", most)
	}
	s, err := c.reg.Snapshot(c.ctx)
	if err != nil {
		t.Fatal(err)
	}
	h := unit.Hash(body("v2"))
	for m, st := range s.States["g.service"] {
		if st.Hash != h {
			t.Errorf("%s runs %s, want %s", m, st.Hash, h)
		}
	}
	if len(s.Plan.Pins["g.service"]) != 0 {
		t.Errorf("pins left: %v", s.Plan.Pins)
	}

	// start --replace of a global unit rolls it the same way.
	c.writeUnit("g.service", body("v3"))
	out = c.mustSched("start", "--replace", p)
	if n := strings.Count(out, "Unit g.service body "); n != 3 {
		t.Errorf("start --replace printed %d machine lines, want 3:\n%s", n, out)
	}
}

// TestSurgeRoll rolls web@1..3 with --surge over four machines: each new
// instance starts on the free machine before the old one stops (its
// announcement, under the same key, replaces the old one), with 0 failed
// requests. render runs with -wait quiescence here.
func TestSurgeRoll(t *testing.T) {
	c := newCluster(t)
	for i := 1; i <= 4; i++ {
		c.machine(fmt.Sprintf("m%d", i), i+1)
	}
	c.startLB("-wait", "200ms:1s")
	tmpl := c.writeUnit("web@.service", c.unitFile("v1", spread))
	dir := tmpl[:len(tmpl)-len("web@.service")]
	c.mustSched("start", dir+"web@1.service", dir+"web@2.service", dir+"web@3.service")
	c.waitServing("web@1 v1", "web@2 v1", "web@3 v1")
	before := c.where("web@1.service", "web@2.service", "web@3.service")

	bg := c.hammer.Start(c.ctx)
	time.Sleep(500 * time.Millisecond)
	c.writeUnit("web@.service", c.unitFile("v2", spread))
	start := time.Now()
	out := c.mustSched("roll", "--surge", tmpl)
	took := time.Since(start)
	if n := strings.Count(out, ": surged "); n != 3 {
		t.Errorf("roll --surge printed %d surges, want 3:\n%s", n, out)
	}
	c.waitServing("web@1 v2", "web@2 v2", "web@3 v2")
	for bg.Snapshot().Total < 5000 && c.ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	res := bg.Stop()
	checkZero(t, c.hp, "surge roll of 3 instances", res)
	t.Logf("surge roll of 3 instances took %s", took.Round(time.Millisecond))
	after := c.where("web@1.service", "web@2.service", "web@3.service")
	for u, m := range before {
		if after[u] == m || after[u] == "" {
			t.Errorf("%s: on %s before, %q after; a surge moves it", u, m, after[u])
		}
	}
	s, err := c.reg.Snapshot(c.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Plan.Pins) != 0 || len(s.Plan.Moves) != 0 {
		t.Errorf("left behind: pins %v, moves %v", s.Plan.Pins, s.Plan.Moves)
	}
	for u := range before {
		if len(s.States[u]) != 1 {
			t.Errorf("%s reported on %d machines after the roll, want 1: %v", u, len(s.States[u]), s.States[u])
		}
	}

	// A failing body halts the surge at web@1, whose old instance keeps
	// serving; a good body rolled next replaces it.
	bg = c.hammer.Start(c.ctx)
	bad := strings.Replace(string(c.unitFile("v3", spread)), "[Service]\n", "[Service]\nExecStartPre=/bin/false\n", 1)
	c.writeUnit("web@.service", []byte(bad))
	out, err = c.sched("roll", "--surge", "--timeout", "30s", tmpl)
	if err == nil || !strings.Contains(err.Error(), "web@1.service") {
		t.Fatalf("surge roll of a failing body: %v\n%s", err, out)
	}
	t.Logf("surge roll of a failing body: %v", err)
	c.waitServing("web@1 v2", "web@2 v2", "web@3 v2")
	c.writeUnit("web@.service", c.unitFile("v4", spread))
	c.mustSched("roll", "--surge", tmpl)
	c.waitServing("web@1 v4", "web@2 v4", "web@3 v4")
	checkZero(t, c.hp, "halted surge, then a good one", bg.Stop())
	if s, err = c.reg.Snapshot(c.ctx); err != nil {
		t.Fatal(err)
	}
	if len(s.Plan.Pins) != 0 || len(s.Plan.Moves) != 0 {
		t.Errorf("left behind: pins %v, moves %v", s.Plan.Pins, s.Plan.Moves)
	}
}
