package agent_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
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
	ex := newExecutor(t, dir)
	pids := map[string]string{}
	for _, name := range []string{"fenced.service", "plain.service"} {
		pids[name] = filepath.Join(dir, name+".pid")
		extra := ""
		if name == "fenced.service" {
			extra = "[X-Flotilla]\nOnDisconnect=stop\n"
		}
		body := []byte(fmt.Sprintf("[Service]\nExecStart=/bin/sh -c 'echo $$$$ >> %s; exec sleep 1000'\n%s", pids[name], extra))
		launch(ctx, t, reg, "m1", name, body)
	}
	const ttl = 2 * time.Second // runAgent's
	runAgent(t, reg, ex, registry.Machine{ID: "m1", IP: "127.0.0.9"}, dir)
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
