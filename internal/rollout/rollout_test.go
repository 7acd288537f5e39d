package rollout

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/testmain"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testmain.LeakOptions()...) }

// TestCheck walks one instance through what check requires: its state, a new
// announcement, and every covering render's acknowledgement.
func TestCheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := etcdtest.New(t).Client()
	reg := registry.New(c, "")
	r, err := New(Options{Registry: reg, Timeout: time.Second, Poll: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	const u, m, hash = "web@1.service", "m1", "h2"
	put := func(k, v string) int64 {
		t.Helper()
		rev, err := c.Put(ctx, k, v, 0)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	put(reg.MachineKey(m), registry.Encode(registry.Machine{ID: m}))
	put(reg.JobKey(u), registry.Encode(registry.Job{Hash: hash, Desired: registry.Launched}))
	put(reg.ScheduleKey(m, u), registry.Encode(registry.Assignment{Hash: hash, Desired: registry.Launched}))
	state := func(active string) {
		put(reg.StateKey(u, m), registry.Encode(registry.UnitState{Hash: hash, State: "launched", Load: "loaded", Active: active, Sub: "x"}))
	}
	old := put("/clusterstate/x/"+u, "web-1 10.0.0.1:80")
	w := want{unit: u, hash: hash, since: old, announce: true}
	step := func(name string, wantDone bool, wantWhy string) Ready {
		t.Helper()
		rd, done, why, err := r.check(ctx, w)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if done != wantDone || !strings.Contains(why, wantWhy) {
			t.Fatalf("%s: done %v, why %q; want done %v, why containing %q", name, done, why, wantDone, wantWhy)
		}
		return rd
	}
	state("activating")
	step("activating", false, "activating/x")
	state("active")
	step("old announcement", false, "not announced yet")
	rev := put("/clusterstate/x/"+u, "web-1 10.0.0.1:80")
	put(DefaultStatusPrefix+"lb/haproxy.toml", `{"host":"lb","resource":"haproxy.toml","prefixes":["/clusterstate/x"],"revision":1}`)
	put(DefaultStatusPrefix+"lb/other.toml", `{"host":"lb","resource":"other.toml","prefixes":["/elsewhere"],"revision":1}`)
	step("render behind", false, "render lb/haproxy.toml has not applied")
	put(DefaultStatusPrefix+"lb/haproxy.toml", `{"host":"lb","resource":"haproxy.toml","prefixes":["/clusterstate/x"],"revision":`+itoa(rev)+`}`)
	if rd := step("applied", true, ""); rd.Renders != 1 || rd.Announced != "/clusterstate/x/"+u {
		t.Errorf("ready %+v: want 1 render, announced /clusterstate/x/%s", rd, u)
	}

	// A failed state is a Failure at once, naming the unit.
	state("failed")
	_, err = r.wait(ctx, w)
	var f *Failure
	if !errors.As(err, &f) || f.Unit != u || !strings.Contains(err.Error(), "failed") {
		t.Errorf("failed state: %v", err)
	}
	// Not ready in time is a Failure with the last reason.
	state("activating")
	_, err = r.wait(ctx, w)
	if !errors.As(err, &f) || !strings.Contains(err.Error(), "not ready after 1s: activating/x") {
		t.Errorf("timeout: %v", err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
