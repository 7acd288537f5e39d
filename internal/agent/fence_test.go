package agent_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/process"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

// TestFencedUnitKilledBeforeLeaseExpiry stops etcd under an agent running a
// fenced unit and a plain one: the fenced unit is killed before the TTL has
// passed since etcd went, the plain one keeps running; when etcd is back the
// fenced unit starts again.
func TestFencedUnitKilledBeforeLeaseExpiry(t *testing.T) {
	srv := etcdtest.New(t)
	if srv.Mode() == etcdtest.External {
		t.Skip("needs an etcd the test can stop")
	}
	c := srv.Client()
	reg := registry.New(c, "/f/")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ex, err := process.New(process.Options{Dir: filepath.Join(dir, "logs"), DefaultTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	pids := map[string]string{}
	for _, name := range []string{"fenced.service", "plain.service"} {
		pids[name] = filepath.Join(dir, name+".pid")
		extra := ""
		if name == "fenced.service" {
			extra = "[X-Flotilla]\nOnDisconnect=stop\n"
		}
		body := []byte(fmt.Sprintf("[Service]\nExecStart=/bin/sh -c 'echo $$$$ >> %s; exec sleep 1000'\n%s", pids[name], extra))
		if _, err := reg.Submit(ctx, name, unit.Hash(body), body, registry.KeepExisting); err != nil {
			t.Fatal(err)
		}
		c.Put(ctx, reg.ScheduleKey("m1", name), registry.Encode(registry.Assignment{Hash: unit.Hash(body), Desired: registry.Launched}), 0)
	}
	const ttl = 2 * time.Second
	a, err := agent.New(agent.Options{
		Registry: reg, Executor: ex, TTL: ttl, PollInterval: 200 * time.Millisecond,
		Machine: registry.Machine{ID: "m1", IP: "127.0.0.9"}, EnvFile: filepath.Join(dir, "machine.env"),
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
	eventually(t, "both units running", func() bool {
		return alive(readPID(pids["fenced.service"])) && alive(readPID(pids["plain.service"]))
	})
	fenced, plain := readPID(pids["fenced.service"]), readPID(pids["plain.service"])
	down := time.Now() // the last renewal was sent before this
	died := make(chan time.Duration, 1)
	go func() {
		for alive(fenced) && time.Since(down) < 20*time.Second {
			time.Sleep(10 * time.Millisecond)
		}
		died <- time.Since(down)
	}()
	srv.Stop()
	t.Logf("etcd stopped in %s", time.Since(down).Round(time.Millisecond))
	killedAfter := <-died
	if killedAfter >= ttl {
		t.Errorf("fenced unit killed %s after etcd went, not before the TTL %s", killedAfter, ttl)
	}
	t.Logf("FIGURE agent/fence: fenced unit killed %s after etcd stopped (TTL %s, margin %s)", killedAfter.Round(time.Millisecond), ttl, agent.FenceMargin(ttl))
	time.Sleep(ttl)
	if !alive(plain) {
		t.Errorf("plain unit stopped while etcd was down")
	}
	srv.Start()
	eventually(t, "fenced unit started again", func() bool {
		p := readPID(pids["fenced.service"])
		return p != fenced && alive(p)
	})
	if !alive(plain) || readPID(pids["plain.service"]) != plain {
		t.Errorf("plain unit restarted across the outage")
	}
}
