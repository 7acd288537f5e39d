package agent_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/registry"
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
	ex := &removals{Executor: newExecutor(t, dir)}
	runAgent(t, reg, ex, registry.Machine{ID: "m1", IP: "127.0.0.9"}, dir)
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
	launch(ctx, t, reg, "m1", "web.service", []byte("[Service]\nExecStart=/bin/sleep 1000\n"))
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
