package agent_test

import (
	"context"
	"net/url"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/netcut"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/unit"
)

// TestBodyReadRetried: a unit whose body the agent cannot read in time
// (etcd slow: here the read is held on its way past the agent's request
// timeout) is started once a read succeeds, at a later poll; it is not
// given up as a unit that failed to start.
func TestBodyReadRetried(t *testing.T) {
	srv := etcdtest.New(t)
	if srv.Mode() == etcdtest.External {
		t.Skip("needs an etcd this test can put a proxy in front of")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	u, err := url.Parse(srv.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	p, err := netcut.New(u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	body := []byte("[Service]\nExecStart=/bin/sleep 1000\n")
	hash := unit.Hash(body)
	held, release := p.Hold([]byte("/t/units/" + hash)) // the agent's read of the body
	defer release()
	cfg := srv.Config()
	cfg.Endpoints = []string{"http://" + p.Addr()}
	c, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	reg := registry.New(c, "/t/")
	direct := registry.New(srv.Client(), "/t/")
	dir := t.TempDir()
	ex := newExecutor(t, dir)
	m := registry.Machine{ID: "m1", IP: "127.0.0.1"}
	runAgent(t, reg, ex, m, dir)
	eventually(t, "m1 registered", func() bool {
		ms, err := direct.Machines(ctx)
		return err == nil && len(ms) == 1
	})
	launch(ctx, t, direct, "m1", "web.service", body)
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("the agent's read of the body never reached the proxy")
	}
	state := func() registry.UnitState {
		snap, err := direct.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return snap.States["web.service"]["m1"]
	}
	// The read times out meanwhile (the agent's request timeout is a third
	// of its 2 s TTL; the hold is shorter than the TTL, so the presence
	// lease outlives it).
	time.Sleep(time.Second)
	release()
	eventually(t, "web.service active once its body is read", func() bool {
		st := state()
		return st.Active == "active" && st.Message == ""
	})
}
