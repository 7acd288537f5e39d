package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

func TestRevokeLease(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	ctx := ctxT(t)
	l, err := c.GrantLease(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Abandon()
	if _, err := l.Put(ctx, "/rv/a", "v"); err != nil {
		t.Fatal(err)
	}
	if err := c.RevokeLease(ctx, l.ID()); err != nil {
		t.Fatalf("RevokeLease: %v", err)
	}
	if _, found, _, _ := c.Get(ctx, "/rv/a"); found {
		t.Fatal("key bound to a revoked lease still there")
	}
	// Already gone, or none: not an error.
	if err := c.RevokeLease(ctx, l.ID()); err != nil {
		t.Fatalf("RevokeLease of a revoked lease: %v", err)
	}
	if err := c.RevokeLease(ctx, 0); err != nil {
		t.Fatalf("RevokeLease(0): %v", err)
	}
}

func TestOpenWithAuthError(t *testing.T) {
	var opts []etcdtest.Option
	if etcdtest.ModeFromEnv() == etcdtest.Embedded && etcdtest.BinaryPath() != "" {
		// bcrypt in a race-instrumented embedded server takes seconds.
		opts = append(opts, etcdtest.WithMode(etcdtest.Binary))
	}
	srv := etcdtest.New(t, opts...)
	srv.EnableAuth("rootpw", "u", "pw")
	cfg := srv.Config()
	cfg.Username, cfg.Password = "u", "wrong"
	_, err := store.OpenWith(ctxT(t), cfg, store.OpenOptions{MaxReconnectDelay: 500 * time.Millisecond})
	if err == nil || !store.IsAuthError(err) {
		t.Fatalf("OpenWith with a wrong password: %v; want an auth error", err)
	}
	cfg.Password = "pw"
	c, err := store.OpenWith(ctxT(t), cfg, store.OpenOptions{MaxReconnectDelay: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

func TestOpenWithReconnect(t *testing.T) {
	srv := etcdtest.New(t)
	c, err := store.OpenWith(ctxT(t), srv.Config(), store.OpenOptions{MaxReconnectDelay: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// After a restart, the client is back (reconnect delay capped): a
	// request made during the outage completes once etcd serves again.
	srv.Stop()
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := c.Put(ctx, "/rc/a", "v", 0)
		done <- err
	}()
	time.Sleep(2 * time.Second)
	srv.Start()
	if err := <-done; err != nil {
		t.Fatalf("put across a restart: %v", err)
	}
}
