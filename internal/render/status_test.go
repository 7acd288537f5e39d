package render_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/applied"
	"github.com/flotilla/flotilla/internal/render"
)

// statusOf reads the published status of resource (ok false: none).
func (f *fixture) statusOf(resource string) (applied.Status, bool) {
	kv, found, _, err := f.c.Get(f.ctx, applied.Key(applied.DefaultPrefix, "lb1", resource))
	if err != nil || !found {
		return applied.Status{}, false
	}
	s, err := applied.Decode(kv.Value)
	return s, err == nil
}

// TestPublishStatus: the published revision of a resource reaches a change's
// revision only once the file holding it is installed AND its reload_cmd has
// succeeded; a failing reload holds it back; the status goes with render.
func TestPublishStatus(t *testing.T) {
	f := newFixture(t)
	f.put("/lb/a", "1")
	gate := filepath.Join(f.dir, "reload-fails")
	dest := f.resource("lb.conf", `"/lb"`, `a={{getv "/lb/a"}}`+"\n",
		`reload_cmd = "sh -c 'test ! -e `+gate+` && sleep 0.3 && cp {{.dest}} {{.dest}}.reloaded'"`)
	// A second resource elsewhere: its status is its own.
	f.put("/other/x", "1")
	f.resource("other.conf", `"/other"`, `x={{getv "/other/x"}}`+"\n", "")
	cfg := f.config()
	pub := &render.StatusPublisher{Client: f.c, Host: "lb1", TTL: 2 * time.Second, Logger: cfg.Logger}
	cfg.Applied = pub.Update
	ctx, cancel := context.WithCancel(context.Background())
	pubDone := make(chan error, 1)
	go func() { pubDone <- pub.Run(ctx) }()
	defer func() { cancel(); <-pubDone }()
	f.run(cfg)

	rev, err := f.c.Put(f.ctx, "/lb/a", "2", 0)
	if err != nil {
		t.Fatal(err)
	}
	f.eventually("status at the put's revision", func() bool {
		s, ok := f.statusOf("lb.conf.toml")
		if ok && s.Revision >= rev {
			// Reached: the reload of a=2 must be done by now.
			if got := read(dest + ".reloaded"); got != "a=2\n" {
				t.Fatalf("status at rev %d while the reloaded file is %q", s.Revision, got)
			}
			return true
		}
		return false
	})
	s, _ := f.statusOf("lb.conf.toml")
	if s.Host != "lb1" || len(s.Prefixes) != 1 || s.Prefixes[0] != "/lb" {
		t.Errorf("status %+v: want host lb1, prefixes [/lb]", s)
	}
	// Publishing settles: the statuses' own writes (under the "/" the
	// shared watch follows here) do not cause more of them.
	f.eventually("other resource's status", func() bool {
		_, ok := f.statusOf("other.conf.toml")
		return ok
	})
	time.Sleep(300 * time.Millisecond)
	_, _, r1, _ := f.c.Get(f.ctx, "/lb/a")
	time.Sleep(time.Second)
	if _, _, r2, _ := f.c.Get(f.ctx, "/lb/a"); r2 != r1 {
		t.Errorf("etcd's revision moved %d→%d in 1s with nothing changing: the statuses feed themselves", r1, r2)
	}

	// A failing reload: the file is installed, the status stays behind.
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rev3, err := f.c.Put(f.ctx, "/lb/a", "3", 0)
	if err != nil {
		t.Fatal(err)
	}
	f.eventually("a=3 installed", func() bool { return read(dest) == "a=3\n" })
	time.Sleep(time.Second) // reload attempts fail meanwhile
	if s, _ := f.statusOf("lb.conf.toml"); s.Revision >= rev3 {
		t.Fatalf("status at rev %d although the reload of rev %d failed", s.Revision, rev3)
	}
	os.Remove(gate)
	f.eventually("status after the reload succeeds", func() bool {
		s, ok := f.statusOf("lb.conf.toml")
		return ok && s.Revision >= rev3
	})

	// Gone with render's publisher.
	cancel()
	<-pubDone
	pubDone <- nil
	if _, ok := f.statusOf("lb.conf.toml"); ok {
		t.Error("status still there after the publisher stopped")
	}
}
