package agent_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/process"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

// removals records the names a real executor is asked to remove.
type removals struct {
	executor.Executor
	mu    sync.Mutex
	names []string
}

func (r *removals) Remove(ctx context.Context, name string) error {
	r.mu.Lock()
	r.names = append(r.names, name)
	r.mu.Unlock()
	return r.Executor.Remove(ctx, name)
}

// A malformed schedule key, put then deleted, is logged and ignored: the agent
// never asks its executor to remove a unit with no name.
func TestMalformedScheduleKeyRemovesNothing(t *testing.T) {
	c := etcdtest.New(t).Client()
	reg := registry.New(c, "/t/")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	px, err := process.New(process.Options{Dir: filepath.Join(dir, "logs"), DefaultTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close()
	ex := &removals{Executor: px}
	a, err := agent.New(agent.Options{
		Registry: reg, Executor: ex, TTL: 2 * time.Second, PollInterval: 200 * time.Millisecond,
		Machine: registry.Machine{ID: "m1", IP: "127.0.0.9"},
		EnvFile: filepath.Join(dir, "machine.env"),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	var g errgroup.Group
	g.Go(func() error { return a.Run(runCtx) })
	defer func() {
		stop()
		if err := g.Wait(); err != nil {
			t.Error(err)
		}
	}()
	eventually(t, "m1 registered", func() bool {
		s, err := reg.Snapshot(ctx)
		return err == nil && s.Machines["m1"].IP != ""
	})

	bad := reg.SchedulePrefix("m1") // "<prefix>schedule/m1/": no unit name
	if _, err := c.Put(ctx, bad, "{", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx, bad); err != nil {
		t.Fatal(err)
	}
	// A good unit after them: once it runs, the agent has seen both events.
	body := []byte("[Service]\nExecStart=/bin/sleep 1000\n")
	hash := unit.Hash(body)
	if _, err := reg.Submit(ctx, "web.service", hash, body, registry.KeepExisting); err != nil {
		t.Fatal(err)
	}
	c.Put(ctx, reg.ScheduleKey("m1", "web.service"), registry.Encode(registry.Assignment{Hash: hash, Desired: registry.Launched}), 0)
	eventually(t, "web.service running", func() bool {
		st, _ := ex.States(ctx)
		return st["web.service"].Sub == "running"
	})
	ex.mu.Lock()
	defer ex.mu.Unlock()
	for _, n := range ex.names {
		if n == "" {
			t.Fatalf("the agent asked to remove a unit with no name (removals: %q)", ex.names)
		}
	}
}
