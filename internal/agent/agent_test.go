package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/process"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && !strings.HasPrefix(s[i+2:], "Z")
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readPID(path string) int {
	b, _ := os.ReadFile(path)
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	p, _ := strconv.Atoi(f[len(f)-1])
	return p
}

// newExecutor returns a process executor keeping its logs under dir, closed
// when the test ends (after the agent that uses it).
func newExecutor(t *testing.T, dir string) *process.Executor {
	t.Helper()
	ex, err := process.New(process.Options{Dir: filepath.Join(dir, "logs"), DefaultTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ex.Close() })
	return ex
}

// runAgent runs an agent for m (TTL 2 s, states polled every 200 ms, its
// facts file in dir) until the test ends or stop is called; stop returns
// what Run returned, and an error from it fails the test at its end.
func runAgent(t *testing.T, reg *registry.Registry, ex executor.Executor, m registry.Machine, dir string) (stop func() error) {
	t.Helper()
	a, err := agent.New(agent.Options{
		Registry: reg, Executor: ex, TTL: 2 * time.Second, PollInterval: 200 * time.Millisecond,
		Machine: m, EnvFile: filepath.Join(dir, "machine.env"),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var g errgroup.Group
	g.Go(func() error { return a.Run(ctx) })
	stop = sync.OnceValue(func() error {
		cancel()
		return g.Wait()
	})
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	})
	return stop
}

// launch submits body as name and targets it, launched, at machine.
func launch(ctx context.Context, t *testing.T, reg *registry.Registry, machine, name string, body []byte) {
	t.Helper()
	hash := unit.Hash(body)
	if _, err := reg.Submit(ctx, name, hash, body, registry.KeepExisting); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Client().Put(ctx, reg.ScheduleKey(machine, name), registry.Encode(registry.Assignment{Hash: hash, Desired: registry.Launched}), 0); err != nil {
		t.Fatal(err)
	}
}

func TestAgentRunsTargetedUnitsAndKeepsThemThroughAnOutage(t *testing.T) {
	srv := etcdtest.New(t)
	if srv.Mode() == etcdtest.External {
		t.Skip("needs an etcd the test can stop")
	}
	c := srv.Client()
	reg := registry.New(c, "/t/")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	ex := newExecutor(t, dir)
	// A unit left over from before, not targeted here: the agent must stop it.
	leftover := []byte("[Service]\nExecStart=/bin/sleep 1000\n")
	if err := ex.Start(ctx, executor.Spec{Name: "leftover.service", Body: leftover}); err != nil {
		t.Fatal(err)
	}

	pidFile := filepath.Join(dir, "pid")
	body := []byte(fmt.Sprintf("[Service]\nExecStart=/bin/sh -c 'echo \"$PUBLIC_IP $FLOTILLA_METADATA_ROLE $$$$\" >> %s; exec sleep 1000'\n", pidFile))
	launch(ctx, t, reg, "m1", "web.service", body)
	stop := runAgent(t, reg, ex, registry.Machine{ID: "m1", IP: "127.0.0.9", Metadata: map[string]string{"role": "web"}}, dir)

	eventually(t, "web.service to run", func() bool { return readPID(pidFile) != 0 })
	first := readPID(pidFile)
	if b, _ := os.ReadFile(pidFile); !strings.HasPrefix(string(b), "127.0.0.9 web ") {
		t.Errorf("machine facts in the unit's environment: %q", b)
	}
	eventually(t, "leftover.service removed", func() bool {
		st, _ := ex.States(ctx)
		_, ok := st["leftover.service"]
		return !ok
	})
	state := func() registry.UnitState {
		s, err := reg.Snapshot(ctx)
		if err != nil {
			return registry.UnitState{}
		}
		return s.States["web.service"]["m1"]
	}
	eventually(t, "running state reported", func() bool { return state().Sub == "running" })
	if s, _ := reg.Snapshot(ctx); s.Machines["m1"].IP != "127.0.0.9" {
		t.Errorf("presence = %+v", s.Machines)
	}

	// The agent answers journal requests through etcd.
	lines, err := reg.Journal(ctx, "m1", "web.service", 5, 10*time.Second)
	if err != nil || !strings.Contains(strings.Join(lines, "\n"), "Started web.service") {
		t.Errorf("journal through the agent = %q, %v", lines, err)
	}

	// etcd unreachable for longer than the TTL: the unit keeps running,
	// the same process, and is not restarted when etcd is back.
	srv.Stop()
	time.Sleep(3 * time.Second) // > TTL: the lease is lost on this side
	if !alive(first) {
		t.Fatalf("unit stopped while etcd was unreachable")
	}
	srv.Start()
	eventually(t, "registered again with a new lease", func() bool {
		s, err := reg.Snapshot(ctx)
		return err == nil && s.Machines["m1"].IP == "127.0.0.9"
	})
	eventually(t, "running state reported again", func() bool { return state().Sub == "running" })
	time.Sleep(time.Second)
	if p := readPID(pidFile); p != first || !alive(first) {
		t.Fatalf("unit restarted across the etcd outage: pid %d, then %d", first, p)
	}
	second := first

	// loaded: stops, state stays reported as inactive.
	c.Put(ctx, reg.ScheduleKey("m1", "web.service"), registry.Encode(registry.Assignment{Hash: unit.Hash(body), Desired: registry.Loaded}), 0)
	eventually(t, "unit stopped when loaded", func() bool { return !alive(second) && state().Active == "inactive" })

	// A body the executor refuses is reported as failed with the reason.
	bad := []byte("[Service]\nType=bogus\nExecStart=/bin/true\n")
	c.Put(ctx, reg.BodyKey("bad"), string(bad), 0)
	c.Put(ctx, reg.ScheduleKey("m1", "bad.service"), registry.Encode(registry.Assignment{Hash: "bad", Desired: registry.Launched}), 0)
	eventually(t, "bad unit reported failed", func() bool {
		s, _ := reg.Snapshot(ctx)
		st := s.States["bad.service"]["m1"]
		return st.Active == "failed" && strings.Contains(st.Message, "line 2")
	})

	// Untargeted: removed, state key gone.
	c.Delete(ctx, reg.ScheduleKey("m1", "web.service"))
	eventually(t, "state cleared", func() bool {
		s, _ := reg.Snapshot(ctx)
		_, ok := s.States["web.service"]
		return !ok
	})

	// Shutdown: presence revoked.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if s, _ := reg.Snapshot(ctx); len(s.Machines) != 0 || len(s.States) != 0 {
		t.Errorf("after shutdown: machines %v states %v", s.Machines, s.States)
	}
}
