package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/unit"
)

// runEngine runs an engine over reg until the test ends.
func runEngine(t *testing.T, reg *registry.Registry) {
	t.Helper()
	e, err := engine.New(engine.Options{Registry: reg, ID: "e", TTL: 2 * time.Second, Period: time.Second, MoveGrace: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return e.Run(ctx) })
	t.Cleanup(func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Error(err)
		}
	})
}

// starts counts the lines of a unit's start log on one machine.
// launchUntilMoved submits body as crash.service, launched, and waits until
// it runs on m2 (its failures on m1 spent there) and nowhere else.
func launchUntilMoved(ctx context.Context, t *testing.T, reg *registry.Registry, body []byte) (string, *registry.Snapshot) {
	t.Helper()
	const name = "crash.service"
	if _, err := reg.Submit(ctx, name, unit.Hash(body), body, registry.ReplaceBody); err != nil {
		t.Fatal(err)
	}
	if err := reg.SetDesired(ctx, name, registry.Launched); err != nil {
		t.Fatal(err)
	}
	var s *registry.Snapshot
	eventually(t, "the unit running on m2", func() bool {
		var err error
		s, err = reg.Snapshot(ctx)
		return err == nil && s.States[name]["m2"].Sub == "running" && len(s.Schedule[name]) == 1
	})
	return name, s
}

func starts(dir, machine string) int {
	b, _ := os.ReadFile(filepath.Join(dir, "starts-"+machine))
	return strings.Count(string(b), "\n")
}

// A unit that keeps failing on its machine is started again there
// RestartFailed times, then left failed with a failure record, moved by the
// engine to the other machine, where it runs; the record, the restarts and
// the avoided machine are visible in the registry. Both cases: systemd's
// (or the process executor's) start limit ends a crash loop with
// Restart=on-failure, and a plain Restart=no unit.
func TestFailedUnitRestartsInPlaceThenMoves(t *testing.T) {
	tests := map[string]struct {
		service string
		// attempts is how many times one start of the unit runs its
		// ExecStart on m1 before the executor reports it failed.
		attempts int
	}{
		"Restart=no":                      {service: "Restart=no\n", attempts: 1},
		"Restart=on-failure, start limit": {service: "Restart=on-failure\nRestartSec=50ms\n", attempts: 3},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			srv := etcdtest.New(t)
			reg := registry.New(srv.Client(), "/f/")
			dir := t.TempDir()
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()

			for _, m := range []string{"m1", "m2"} {
				mdir := filepath.Join(dir, m)
				if err := os.MkdirAll(mdir, 0o755); err != nil {
					t.Fatal(err)
				}
				runAgent(t, reg, newExecutor(t, mdir), registry.Machine{ID: m, IP: "127.0.0.1"}, mdir)
			}
			runEngine(t, reg)
			eventually(t, "both machines present", func() bool {
				s, err := reg.Snapshot(ctx)
				return err == nil && len(s.Machines) == 2
			})

			// Fails at once on m1 (placed there first: ties go by id), runs on m2.
			body := []byte(fmt.Sprintf("[Unit]\nStartLimitIntervalSec=1h\nStartLimitBurst=%d\n[Service]\n%s"+
				"ExecStart=/bin/sh -c 'echo . >> %s/starts-$${FLOTILLA_MACHINE_ID}; [ \"$${FLOTILLA_MACHINE_ID}\" != m1 ] || exit 3; exec sleep 1000'\n"+
				"[X-Flotilla]\nRestartFailed=2\nAvoidFailedFor=1h\n", tc.attempts, tc.service, dir))
			name, s := launchUntilMoved(ctx, t, reg, body)
			hash := unit.Hash(body)
			// 1 start + 2 restarts in place, each of tc.attempts runs.
			if got, want := starts(dir, "m1"), 3*tc.attempts; got != want {
				t.Errorf("ExecStart ran %d times on m1, want %d (a start and RestartFailed=2 restarts, %d runs each)", got, want, tc.attempts)
			}
			// "running" is reported once the process is started, maybe
			// before its shell has written the start.
			eventually(t, "the start on m2 written", func() bool { return starts(dir, "m2") >= 1 })
			if got := starts(dir, "m2"); got != 1 {
				t.Errorf("ExecStart ran %d times on m2, want 1", got)
			}
			f, ok := s.Failed[name]["m1"]
			if !ok || f.Hash != hash || f.Restarts != 2 || !f.Move {
				t.Errorf("failure record on m1 = %+v (present %v), want restarts 2, move, hash %s", f, ok, hash)
			}
			if got := s.Avoided(name, hash); len(got) != 1 || got[0] != "m1" {
				t.Errorf("avoided machines %v, want [m1]", got)
			}
			if _, ok := s.Schedule[name]["m2"]; !ok {
				t.Errorf("schedule %v, want m2 alone", s.Schedule[name])
			}
			// The record expires with its lease (AvoidFailedFor).
			left, err := reg.Client().LeaseTTL(ctx, leaseOf(ctx, t, reg, reg.FailedKey(name, "m1")))
			if err != nil || left <= 50*time.Minute || left > time.Hour {
				t.Errorf("failure record's lease has %s left (%v), want about AvoidFailedFor=1h", left, err)
			}
		})
	}
}

// leaseOf returns the lease key is bound to.
func leaseOf(ctx context.Context, t *testing.T, reg *registry.Registry, key string) store.LeaseID {
	t.Helper()
	kv, found, _, err := reg.Client().Get(ctx, key)
	if err != nil || !found {
		t.Fatalf("get %s: found %v, %v", key, found, err)
	}
	return kv.Lease
}

// An agent told at shutdown that it is being restarted (Handover, the
// systemd executor's AgentRestarting) leaves its units running and its
// presence in place for the next run, which takes them over without a
// restart; fenced units stop with it.
func TestHandoverKeepsUnits(t *testing.T) {
	srv := etcdtest.New(t)
	reg := registry.New(srv.Client(), "/h/")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ex := newExecutor(t, dir)
	pids := filepath.Join(dir, "pids")
	free := []byte(fmt.Sprintf("[Service]\nExecStart=/bin/sh -c 'echo $$$$ >> %s; exec sleep 1000'\n", pids))
	fenced := []byte("[Service]\nExecStart=/bin/sleep 1000\n[X-Flotilla]\nOnDisconnect=stop\n")
	launch(ctx, t, reg, "m1", "free.service", free)
	launch(ctx, t, reg, "m1", "fenced.service", fenced)
	m := registry.Machine{ID: "m1", IP: "127.0.0.1"}
	run := func(handover bool) func() error {
		a, err := agent.New(agent.Options{
			Registry: reg, Executor: ex, TTL: 5 * time.Second, PollInterval: 200 * time.Millisecond, Machine: m,
			EnvFile: filepath.Join(dir, "machine.env"), LeaseFile: filepath.Join(dir, "presence.lease"),
			Handover: func(context.Context) bool { return handover },
		})
		if err != nil {
			t.Fatal(err)
		}
		actx, stop := context.WithCancel(ctx)
		var g errgroup.Group
		g.Go(func() error { return a.Run(actx) })
		return func() error { stop(); return g.Wait() }
	}
	running := func(name string) bool {
		st, _ := ex.States(ctx)
		return st[name].Active == "active"
	}
	stop := run(true)
	eventually(t, "both units running", func() bool { return running("free.service") && running("fenced.service") })
	first := readPID(pids)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !running("free.service") || !alive(first) {
		t.Fatal("the unfenced unit stopped with an agent that hands over")
	}
	if st, _ := ex.States(ctx); st["fenced.service"].Active == "active" {
		t.Error("the fenced unit kept running past its agent")
	}
	if s, err := reg.Snapshot(ctx); err != nil || s.Machines["m1"].ID != "m1" {
		t.Errorf("presence after a handover: %v, %v; want kept for the next run", s.Machines, err)
	}
	// The next run (no handover this time) takes over at once: the same
	// process, the fenced unit started again.
	stop = run(false)
	eventually(t, "the fenced unit started again", func() bool { return running("fenced.service") })
	if p := readPID(pids); p != first || !alive(first) {
		t.Errorf("the unfenced unit was restarted by the next run: pid %d, then %d", first, p)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if running("free.service") || alive(first) {
		t.Error("a plain shutdown left the unit running")
	}
	if s, _ := reg.Snapshot(ctx); len(s.Machines) != 0 {
		t.Errorf("presence after a shutdown: %v", s.Machines)
	}
}
