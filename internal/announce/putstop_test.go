package announce_test

import (
	"context"
	"log/slog"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/announce"
	"github.com/flotilla/flotilla/internal/applied"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/netcut"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/testmain"
)

// TestStopWhilePutInFlight: a stop (ctx ending, SIGTERM in cmd/announce)
// while the first put is on its way to etcd still ends with the acknowledged
// withdrawal: the put lands, the key is deleted while the lease lives, the
// withdrawal waits for the render covering the key to apply the deletion,
// and only then is the lease revoked.
func TestStopWhilePutInFlight(t *testing.T) {
	srv := etcdtest.New(t)
	if srv.Mode() == etcdtest.External {
		t.Skip("needs an etcd this test can put a proxy in front of")
	}
	direct := srv.Client()
	ctx := ctxT(t, time.Minute)
	const key, value = "/clusterstate/putstop/web@1.service", "web-1 127.0.0.1:9 putstop-value"
	statusKey := applied.Key(applied.DefaultPrefix, "lb", "haproxy.toml")
	status := applied.Status{Host: "lb", Resource: "haproxy.toml", Prefixes: []string{"/clusterstate/putstop"}}
	rev0, err := direct.Put(ctx, statusKey, status.Encode(), 0)
	if err != nil {
		t.Fatal(err)
	}

	u, err := url.Parse(srv.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	g, err := netcut.New(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	held, release := g.Hold([]byte(value))
	cfg := srv.Config()
	cfg.Endpoints = []string{"http://" + g.Addr()}
	c, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	w := direct.WatchPrefix(ctx, key, rev0+1)
	defer w.Close()
	var logs testmain.SyncBuffer
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- announce.Run(rctx, c, announce.Config{Key: key, Value: value, TTL: 5 * time.Second,
			Drain:  announce.Drain{Timeout: 30 * time.Second},
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	}()
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("announce's put never reached the proxy")
	}
	stop() // the stop comes while the put is held on its way
	release()

	// The key appears (the put landed), then is deleted with its lease alive.
	var lease store.LeaseID
	var delRev int64
	for delRev == 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("no put then delete of %s seen; log:\n%s", key, logs.String())
		case b := <-w.C:
			for _, ev := range b.Events {
				switch ev.Type {
				case store.EventPut:
					lease = ev.KV.Lease
				case store.EventDelete:
					if lease == 0 {
						t.Fatalf("%s deleted before any put was seen; log:\n%s", key, logs.String())
					}
					delRev = ev.KV.ModRevision
				}
			}
		}
	}
	if _, alive, err := direct.LeaseRemaining(ctx, lease); err != nil || !alive {
		t.Fatalf("the key went with its lease (alive %v, %v): dropped, not withdrawn with the drain; log:\n%s", alive, err, logs.String())
	}
	select {
	case err := <-done:
		t.Fatalf("announce returned (%v) before the render applied the deletion; log:\n%s", err, logs.String())
	default:
	}
	status.Revision = delRev
	if _, err := direct.Put(ctx, statusKey, status.Encode(), 0); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatalf("announce did not return once the render applied the deletion; log:\n%s", logs.String())
	}
	if _, alive, err := direct.LeaseRemaining(ctx, lease); err != nil || alive {
		t.Errorf("lease %x alive=%v after announce returned (%v)", int64(lease), alive, err)
	}
	for _, want := range []string{"stopped while the key was being written", "renders applied the withdrawal"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log does not say %q:\n%s", want, logs.String())
		}
	}
}
