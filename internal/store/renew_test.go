package store_test

import (
	"errors"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

func TestRenewAndLeaseChecks(t *testing.T) {
	ctx := ctxT(t)
	c := etcdtest.New(t).Client()
	l, err := c.GrantLease(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	sent, err := l.Renew(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sent.Before(before) || sent.After(time.Now()) {
		t.Errorf("Renew sent at %s, outside the call", sent)
	}
	left, alive, err := c.LeaseRemaining(ctx, l.ID())
	if err != nil || !alive || left <= 0 || left > 5*time.Second {
		t.Errorf("LeaseRemaining = %s, %v, %v", left, alive, err)
	}
	if _, err := l.Put(ctx, "/r/k", "v"); err != nil {
		t.Fatal(err)
	}
	if term, err := c.Term(ctx, "/r/k"); err != nil || term == 0 {
		t.Errorf("Term = %d, %v", term, err)
	}
	id := l.ID()
	l.Close()
	if _, err := l.Renew(ctx); !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("Renew of a revoked lease: %v, want ErrLeaseLost", err)
	}
	if _, alive, err := c.LeaseRemaining(ctx, id); err != nil || alive {
		t.Errorf("LeaseRemaining of a revoked lease: alive %v, %v", alive, err)
	}
}
