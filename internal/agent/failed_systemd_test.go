package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/systemd"
	"github.com/flotilla/flotilla/internal/systemdtest"
	"github.com/flotilla/flotilla/internal/unit"
)

// The systemd executor's path of the failure policy: two machines, each
// with its own real (user-mode) systemd. A unit crash-looping on m1 hits
// systemd's start limit (failed, start-limit-hit); the agent resets and
// starts it again RestartFailed times, then gives up, and the engine moves it
// to m2, where systemd runs it.
func TestFailedUnitMovesUnderSystemd(t *testing.T) {
	srv := etcdtest.New(t)
	reg := registry.New(srv.Client(), "/fs/")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	for _, id := range []string{"m1", "m2"} {
		m := systemdtest.New(t)
		ex, err := systemd.New(ctx, systemd.Options{
			User: true, BusAddress: m.BusAddress, UnitDir: m.UnitDir, JournalDir: m.JournalDir,
			Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ex.Close() })
		runAgent(t, reg, ex, registry.Machine{ID: id, IP: "127.0.0.1"}, m.Dir)
	}
	runEngine(t, reg)
	eventually(t, "both machines present", func() bool {
		s, err := reg.Snapshot(ctx)
		return err == nil && len(s.Machines) == 2
	})

	body := []byte(fmt.Sprintf("[Unit]\nStartLimitIntervalSec=1h\nStartLimitBurst=2\n[Service]\nRestart=on-failure\nRestartSec=100ms\n"+
		"ExecStart=/bin/sh -c 'echo . >> %s/starts-$${FLOTILLA_MACHINE_ID}; [ \"$${FLOTILLA_MACHINE_ID}\" != m1 ] || exit 3; exec sleep 1000'\n"+
		"[X-Flotilla]\nRestartFailed=1\n", dir))
	name, s := launchUntilMoved(ctx, t, reg, body)
	// Two starts per StartLimitBurst=2, a restart in place, two more.
	if got := starts(dir, "m1"); got != 4 {
		t.Errorf("ExecStart ran %d times on m1, want 4", got)
	}
	if f, ok := s.Failed[name]["m1"]; !ok || f.Restarts != 1 || !f.Move || f.Hash != unit.Hash(body) {
		t.Errorf("failure record on m1 = %+v (present %v)", f, ok)
	}
	if _, ok := s.Schedule[name]["m2"]; !ok {
		t.Errorf("schedule %v, want m2", s.Schedule[name])
	}
}
