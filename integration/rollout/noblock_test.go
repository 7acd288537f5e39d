package rollout_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/rollout"
	"github.com/flotilla/flotilla/internal/testmain"
)

// webOnly keeps the web instances apart and on the machines with role=web,
// off the machines that only stand for the rollout driver.
const webOnly = spread + "MachineMetadata=role=web\n"

// TestNoBlockRollFailover: `roll --no-block` returns at once (no instance
// line: the change is stored, not carried out by the command); the driver
// elected among the serves carries it out, and when the serve running the
// driver is killed mid-rollout, the next one elected resumes it to the
// end, with 0 failed requests through haproxy throughout.
func TestNoBlockRollFailover(t *testing.T) {
	c := newCluster(t)
	// d1 and d2 run no unit (no role=web); d1 comes first and drives.
	c.machine("d1", 5)
	c.waitDriver(t, "d1")
	c.machine("d2", 6)
	for i := 1; i <= 3; i++ {
		c.machine(fmt.Sprintf("m%d", i), i+1, "--metadata", "role=web")
	}
	c.startLB()
	tmpl := c.writeUnit("web@.service", c.unitFile("v1", webOnly))
	dir := tmpl[:len(tmpl)-len("web@.service")]
	c.mustSched("start", dir+"web@1.service", dir+"web@2.service", dir+"web@3.service")
	c.waitServing("web@1 v1", "web@2 v1", "web@3 v1")

	bg := c.hammer.Start(c.ctx)
	time.Sleep(500 * time.Millisecond)
	c.writeUnit("web@.service", c.unitFile("v2", webOnly))
	start := time.Now()
	id := c.noBlock("roll", tmpl)
	t.Logf("roll --no-block returned after %s", time.Since(start).Round(time.Millisecond))

	// Kill the driver's serve once the first instance is done.
	var rec rollout.Record
	testmain.Eventually(t, 2*time.Minute, 100*time.Millisecond, "the first instance rolled", func() error {
		var err error
		if rec, err = rollout.Get(c.ctx, c.reg, id); err != nil {
			return err
		}
		if rec.State == rollout.Failed || len(rec.Progress) == 0 {
			return fmt.Errorf("state %s, progress %q, error %q", rec.State, rec.Progress, rec.Error)
		}
		return nil
	})
	if rec.Driver != "d1" {
		t.Fatalf("rollout driven by %q, want d1", rec.Driver)
	}
	c.kill("d1")
	rec, err := rollout.Get(c.ctx, c.reg, id)
	if err != nil {
		t.Fatal(err)
	}
	resumed := !rec.Over()
	t.Logf("d1 killed with the rollout %s after %d line(s)", rec.State, len(rec.Progress))

	out := c.mustSched("rollouts", id) // follows it to its end
	if resumed && !strings.Contains(out, "Resumed by the driver on d2") {
		t.Errorf("the rollout was %s when d1 was killed, but d2 did not resume it:\n%s", rec.State, out)
	}
	for i := 1; i <= 3; i++ {
		if !strings.Contains(out, fmt.Sprintf("Unit web@%d.service body ", i)) {
			t.Errorf("no line for web@%d:\n%s", i, out)
		}
	}
	if rec, err = rollout.Get(c.ctx, c.reg, id); err != nil || rec.State != rollout.Done || rec.Driver != "d2" && resumed {
		t.Errorf("rollout after the failover: %+v, %v; want done by d2", rec, err)
	}
	c.waitServing("web@1 v2", "web@2 v2", "web@3 v2")
	for bg.Snapshot().Total < 5000 && c.ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	checkZero(t, c.hp, "roll --no-block with the driver's serve killed mid-rollout", bg.Stop())
	if l := c.mustSched("rollouts", "--no-legend"); !strings.Contains(l, id) || !strings.Contains(l, "done") {
		t.Errorf("rollouts does not list %s done:\n%s", id, l)
	}
}

// noBlock runs a planned-change verb with --no-block, checks that it
// printed no progress line, and returns the rollout's id.
func (c *cluster) noBlock(args ...string) string {
	c.t.Helper()
	out := c.mustSched(append([]string{args[0], "--no-block"}, args[1:]...)...)
	if strings.Contains(out, "Unit ") {
		c.t.Errorf("%s --no-block printed progress lines: it carried the change out itself:\n%s", args[0], out)
	}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] == "Rollout" && f[2] == "stored" {
			return f[1]
		}
	}
	c.t.Fatalf("%s --no-block: %q, want \"Rollout ID stored …\"", args[0], out)
	return ""
}

// TestRollRenderStopped rolls web@1..3 while render is stopped (killed
// before the roll: its status stays until its lease expires, so the first
// withdrawal waits for it): the drain timeout bounds that wait and
// announce's log says so; haproxy keeps every backend (its configuration no
// longer changes) and its health checks, retries and redispatch carry the
// requests over each restart: 0 failed.
func TestRollRenderStopped(t *testing.T) {
	c := newCluster(t)
	for i := 1; i <= 3; i++ {
		c.machine(fmt.Sprintf("m%d", i), i+1)
	}
	c.startLB()
	body := func(v string) []byte {
		return []byte(strings.Replace(string(c.unitFile(v, spread)), "--withdraw ", "--withdraw --drain-timeout 2s ", 1))
	}
	tmpl := c.writeUnit("web@.service", body("v1"))
	dir := tmpl[:len(tmpl)-len("web@.service")]
	c.mustSched("start", dir+"web@1.service", dir+"web@2.service", dir+"web@3.service")
	c.waitServing("web@1 v1", "web@2 v1", "web@3 v1")

	c.render.Process.Kill()
	c.render.Wait()
	bg := c.hammer.Start(c.ctx)
	time.Sleep(500 * time.Millisecond)
	c.writeUnit("web@.service", body("v2"))
	start := time.Now()
	c.mustSched("roll", tmpl)
	t.Logf("roll of 3 instances with render stopped took %s", time.Since(start).Round(time.Millisecond))
	c.waitServing("web@1 v2", "web@2 v2", "web@3 v2")
	for bg.Snapshot().Total < 5000 && c.ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	checkZero(t, c.hp, "rolling update with render stopped", bg.Stop())

	logs, _ := filepath.Glob(filepath.Join(c.dir, "m*", "logs", "web@*.log"))
	cut := 0
	for _, p := range logs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "drain timeout cut the wait short") {
				t.Logf("%s: %s", filepath.Base(p), l)
				cut++
			}
		}
	}
	if cut == 0 {
		t.Errorf("no announce log says the drain timeout cut the wait short (logs %v)", logs)
	}
}

// TestDrainFailover: `drain --no-block` of a machine running 2 instances; the
// serve running the driver is killed while the first move is under way, and
// the next driver elected resumes the drain (waiting for the move already
// requested, not asking again): both instances end elsewhere, 0 failed
// requests.
func TestDrainFailover(t *testing.T) {
	c := newCluster(t)
	c.machine("d1", 5)
	c.waitDriver(t, "d1")
	c.machine("d2", 6)
	c.machine("m1", 2, "--metadata", "role=web")
	c.startLB()
	var dir string
	for i := 1; i <= 2; i++ {
		p := c.writeUnit(fmt.Sprintf("app@%d.service", i), c.unitFileAt("v1", "[X-Fleet]\nMachineMetadata=role=web\n", freePort(t)))
		dir = p[:len(p)-len("app@1.service")]
	}
	c.mustSched("start", dir+"app@1.service", dir+"app@2.service")
	c.machine("m2", 3, "--metadata", "role=web")
	c.machine("m3", 4, "--metadata", "role=web")
	c.waitServing("app@1 v1", "app@2 v1")

	bg := c.hammer.Start(c.ctx)
	time.Sleep(500 * time.Millisecond)
	id := c.noBlock("drain", "m1")
	testmain.Eventually(t, 2*time.Minute, 20*time.Millisecond, "a move requested by the drain", func() error {
		s, err := c.reg.Snapshot(c.ctx)
		if err != nil {
			return err
		}
		if len(s.Plan.Moves) == 0 {
			return fmt.Errorf("no move yet")
		}
		return nil
	})
	c.kill("d1")
	rec, err := rollout.Get(c.ctx, c.reg, id)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("d1 killed with the drain %s after %d line(s), driven by %s", rec.State, len(rec.Progress), rec.Driver)
	out := c.mustSched("rollouts", id)
	if !strings.Contains(out, "Resumed by the driver on d2") || !strings.Contains(out, "Machine m1: ") {
		t.Errorf("the drain was not resumed by d2 to its end:\n%s", out)
	}
	w := c.where("app@1.service", "app@2.service")
	if w["app@1.service"] == "m1" || w["app@2.service"] == "m1" || w["app@1.service"] == "" || w["app@2.service"] == "" {
		t.Errorf("after the drain: %v", w)
	}
	c.waitServing("app@1 v1", "app@2 v1")
	for bg.Snapshot().Total < 5000 && c.ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	checkZero(t, c.hp, "drain --no-block with the driver's serve killed mid-move", bg.Stop())
}

// waitDriver waits until machine id leads the rollout driver election.
func (c *cluster) waitDriver(t *testing.T, id string) {
	t.Helper()
	testmain.Eventually(t, 30*time.Second, 50*time.Millisecond, id+" leads the rollout driver election", func() error {
		v, found, err := c.c.Leader(c.ctx, rollout.ElectionPrefix(c.reg))
		if err != nil || !found || v != id {
			return fmt.Errorf("leader %q (found %v): %v", v, found, err)
		}
		return nil
	})
}
