package agent_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// TestLeaseFollowsRegistration checks what the process's elections campaign
// with: Lease waits for a registration, hands out the presence lease, ends
// (Done) with it, hands out the next registration's lease after a loss, and
// fails once Run has returned.
func TestLeaseFollowsRegistration(t *testing.T) {
	srv := etcdtest.New(t)
	reg := registry.New(srv.Client(), "/t/")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	a, err := agent.New(agent.Options{
		Registry: reg, Executor: newExecutor(t, dir), TTL: 2 * time.Second, PollInterval: 200 * time.Millisecond,
		Machine: registry.Machine{ID: "m1", IP: "127.0.0.9"}, EnvFile: filepath.Join(dir, "machine.env"),
	})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 100*time.Millisecond)
	if l, err := a.Lease(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lease before Run = %v, %v; want it to wait until its ctx ends", l, err)
	}
	wcancel()

	runCtx, stop := context.WithCancel(ctx)
	var g errgroup.Group
	g.Go(func() error { return a.Run(runCtx) })
	defer func() { stop(); g.Wait() }()

	presence := func() store.LeaseID {
		kv, found, _, err := reg.Client().Get(ctx, reg.MachineKey("m1"))
		if err != nil || !found {
			return 0
		}
		return kv.Lease
	}
	first, err := a.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := presence(); got != first.ID() {
		t.Errorf("Lease = %x, presence key on %x", int64(first.ID()), int64(got))
	}

	// The lease lost (revoked behind the agent's back): Done closes, and the
	// next registration's lease is handed out.
	if _, err := srv.Admin().Revoke(ctx, clientv3.LeaseID(first.ID())); err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.Done():
	case <-ctx.Done():
		t.Fatal("the revoked presence lease's Done never closed")
	}
	second, err := a.Lease(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if second.ID() == first.ID() {
		t.Fatalf("Lease after the loss = the lost lease %x", int64(first.ID()))
	}
	eventually(t, "the presence key on the new lease", func() bool { return presence() == second.ID() })

	stop()
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	if l, err := a.Lease(ctx); !errors.Is(err, agent.ErrStopped) {
		t.Errorf("Lease after Run = %v, %v; want ErrStopped", l, err)
	}
	select {
	case <-second.Done():
	default:
		t.Error("the last presence lease is still kept alive after Run")
	}
}
