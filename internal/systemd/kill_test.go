package systemd_test

import (
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/systemd"
)

// TestKill: the fencing path ends a unit that ignores SIGTERM at once (no
// TimeoutStopSec wait), and Restart=always does not bring it back.
func TestKill(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	count := en.path("count")
	en.start(en.e, "fenced.service", "[Service]\nRestart=always\nRestartSec=100ms\nTimeoutStopSec=1h\n"+
		"ExecStart=/bin/sh -c 'trap \"\" TERM; echo x >> "+count+"; while :; do sleep 0.1; done'\n")
	en.waitState(en.e, "fenced.service", is("active", "running"))
	en.waitFile(count, "x")
	pid := en.mainPID("fenced.service")
	start := time.Now()
	if err := en.e.Kill(en.ctx, "fenced.service"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if took > 30*time.Second {
		t.Errorf("Kill took %s (waited for TimeoutStopSec?)", took)
	}
	if now := en.mainPID("fenced.service"); now != 0 {
		t.Errorf("after Kill the unit still has main process %d (was %d)", now, pid)
	}
	t.Logf("FIGURE systemd/kill: unit gone %s after Kill", took.Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond)
	en.waitState(en.e, "fenced.service", func(s executor.State) bool { return s.Active == "inactive" || s.Active == "failed" })
	en.waitFile(count, "x") // not restarted
	if err := en.e.Kill(en.ctx, "nothing.service"); err != nil {
		t.Errorf("Kill of an unknown unit: %v", err)
	}
}
