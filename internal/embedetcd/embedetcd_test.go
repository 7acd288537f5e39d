package embedetcd_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/embedetcd"
	"github.com/flotilla/flotilla/internal/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
	)
}

func TestStartServeCloseTwice(t *testing.T) {
	ctx := context.Background()
	srv, err := embedetcd.Start(ctx, embedetcd.Options{Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	dir := srv.DataDir()
	cfg := store.Default()
	cfg.Endpoints = []string{srv.Endpoint()}
	c, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "/k", "v", 0); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil { // embed's own Close panics on a second call
		t.Fatalf("second Close: %v", err)
	}
	select {
	case <-srv.Done():
	default:
		t.Error("Done not closed")
	}
	if _, err := store.Open(ctx, cfg); err == nil {
		t.Error("server still answers after Close")
	}
	if dir == "" {
		t.Error("no data dir")
	}
}

func TestRestartKeepsDataOnGivenDir(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	srv, err := embedetcd.Start(ctx, embedetcd.Options{DataDir: dir, Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	addr, peer := srv.ClientAddr(), srv.PeerAddr()
	cfg := store.Default()
	cfg.Endpoints = []string{srv.Endpoint()}
	cfg.DialTimeout = 2 * time.Second
	c, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.Put(ctx, "/kept", "yes", 0)
	c.Close()
	srv.Close()

	srv, err = embedetcd.Start(ctx, embedetcd.Options{DataDir: dir, ClientAddr: addr, PeerAddr: peer, Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err = store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	kv, found, _, err := c.Get(ctx, "/kept")
	if err != nil || !found || string(kv.Value) != "yes" {
		t.Fatalf("after restart: %q %v %v", kv.Value, found, err)
	}
}

// BenchmarkStart measures how long a fresh embedded server takes to serve.
func BenchmarkStart(b *testing.B) {
	for b.Loop() {
		srv, err := embedetcd.Start(context.Background(), embedetcd.Options{Fast: true})
		if err != nil {
			b.Fatal(err)
		}
		srv.Close()
	}
}
