package process_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/executor"
)

// TestKill checks the fencing path: every process of the unit (a child that
// left its parent too) is gone when Kill returns, even one that ignores
// SIGTERM with a long TimeoutStopSec; ExecStop does not run; Restart=always
// does not bring the unit back.
func TestKill(t *testing.T) {
	e, dir := newExec(t)
	ctx := ctxT(t)
	p, child, stopped := filepath.Join(dir, "pid"), filepath.Join(dir, "child"), filepath.Join(dir, "execstop")
	body := fmt.Sprintf("[Service]\nRestart=always\nRestartSec=100ms\nTimeoutStopSec=1h\n"+
		"ExecStart=/bin/sh -c 'trap \"\" TERM; (trap \"\" TERM; echo $$$$ > %s; exec sleep 1000) & echo $$$$ > %s; while :; do sleep 0.1; done'\n"+
		"ExecStop=/bin/sh -c 'echo ran > %s'\n", child, p, stopped)
	if err := e.Start(ctx, executor.Spec{Name: "fenced.service", Body: []byte(body), Hash: "h"}); err != nil {
		t.Fatal(err)
	}
	waitState(t, e, "fenced.service", "active", "running")
	main, kid := pids(t, p)[0], pids(t, child)[0]
	start := time.Now()
	if err := e.Kill(ctx, "fenced.service"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if alive(main) || alive(kid) {
		t.Fatalf("after Kill: main alive %v, child alive %v", alive(main), alive(kid))
	}
	t.Logf("FIGURE process/kill: every process gone %s after Kill was called", took.Round(time.Microsecond))
	if _, err := os.Stat(stopped); err == nil {
		t.Errorf("ExecStop ran on a kill")
	}
	time.Sleep(500 * time.Millisecond)
	if st, _ := e.States(ctx); st["fenced.service"].Active != "inactive" {
		t.Errorf("after Kill the unit is %+v, want inactive (no restart)", st["fenced.service"])
	}
	// Kill of an unknown or stopped unit is a no-op; the unit starts again.
	if err := e.Kill(ctx, "nothing.service"); err != nil {
		t.Error(err)
	}
	if err := e.Kill(ctx, "fenced.service"); err != nil {
		t.Error(err)
	}
	os.Remove(p)
	if err := e.Start(ctx, executor.Spec{Name: "fenced.service", Body: []byte(body), Hash: "h"}); err != nil {
		t.Fatal(err)
	}
	waitState(t, e, "fenced.service", "active", "running")
	if err := e.Kill(ctx, "fenced.service"); err != nil {
		t.Fatal(err)
	}
	if err := e.Remove(ctx, "fenced.service"); err != nil {
		t.Fatal(err)
	}
}
