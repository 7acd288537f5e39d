package rollout

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/testmain"
)

// leases is a LeaseSource as the agent is one: the current lease, a new one
// once it ended; the test owns and closes them.
type leases struct {
	c   *store.Client
	mu  sync.Mutex
	cur *store.Lease
}

func (l *leases) Lease(ctx context.Context) (*store.Lease, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cur != nil {
		select {
		case <-l.cur.Done():
		default:
			return l.cur, nil
		}
	}
	lease, err := l.c.GrantLease(ctx, 2*time.Second)
	if err != nil {
		return nil, err
	}
	l.cur = lease
	return lease, nil
}

func (l *leases) current() *store.Lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cur
}

// TestDriverOnGivenLease: a driver given Leases campaigns with the lease it
// hands out, resigns at the end of a term without revoking it, stops
// leading when the lease ends, and leads again on the next one.
func TestDriverOnGivenLease(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg := registry.New(etcdtest.New(t).Client(), "")
	c := reg.Client()
	src := &leases{c: c}
	t.Cleanup(func() {
		if l := src.current(); l != nil {
			l.Close()
		}
	})
	leaderLease := func() (store.LeaseID, error) {
		kvs, _, err := c.GetPrefix(ctx, ElectionPrefix(reg)+"/")
		if err != nil || len(kvs) != 1 {
			return 0, fmt.Errorf("leader keys %v: %v", kvs, err)
		}
		return kvs[0].Lease, nil
	}
	waitOn := func(l *store.Lease) {
		t.Helper()
		testmain.Eventually(t, 30*time.Second, 10*time.Millisecond, "the leader key on the given lease", func() error {
			id, err := leaderLease()
			if err == nil && id != l.ID() {
				err = fmt.Errorf("leader key on lease %x, want %x", int64(id), int64(l.ID()))
			}
			return err
		})
	}
	run := func() (stop func()) {
		d, err := NewDriver(DriverOptions{Registry: reg, ID: "d1", Leases: src, Poll: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		dctx, dcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- d.Run(dctx) }()
		return func() {
			dcancel()
			if err := <-done; err != nil {
				t.Errorf("driver: %v", err)
			}
		}
	}

	stop := run()
	testmain.Eventually(t, 30*time.Second, 10*time.Millisecond, "a lease handed out", func() error {
		if src.current() == nil {
			return fmt.Errorf("none yet")
		}
		return nil
	})
	first := src.current()
	waitOn(first)
	stop()
	// Resigned, the lease left alive.
	if kvs, _, err := c.GetPrefix(ctx, ElectionPrefix(reg)+"/"); err != nil || len(kvs) != 0 {
		t.Errorf("leader keys after the driver stopped: %v, %v; want none", kvs, err)
	}
	if alive, err := first.Alive(ctx); err != nil || !alive {
		t.Errorf("the given lease after the driver stopped: alive %v, %v; want alive", alive, err)
	}

	stop = run()
	defer stop()
	waitOn(first)
	// The lease ends (revoked: its keys go): the driver leads again on the next.
	first.Close()
	testmain.Eventually(t, 30*time.Second, 10*time.Millisecond, "a new lease handed out", func() error {
		if l := src.current(); l == first {
			return fmt.Errorf("still the first lease")
		}
		return nil
	})
	waitOn(src.current())
}
