package rollout

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/testmain"
	"github.com/flotilla/flotilla/internal/unit"
)

// runDriver runs a driver until the returned stop, which waits for it.
func runDriver(t *testing.T, reg *registry.Registry, id string) (stop func()) {
	t.Helper()
	d, err := NewDriver(DriverOptions{Registry: reg, ID: id, TTL: 2 * time.Second, Poll: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("driver %s: %v", id, err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func waitLeader(t *testing.T, ctx context.Context, reg *registry.Registry, id string) {
	t.Helper()
	testmain.Eventually(t, 30*time.Second, 10*time.Millisecond, id+" leads the drivers", func() error {
		v, found, err := reg.Client().Leader(ctx, ElectionPrefix(reg))
		if err != nil || !found || v != id {
			return fmt.Errorf("leader %q (found %v): %v", v, found, err)
		}
		return nil
	})
}

// TestDriver: records are carried out by the elected driver alone, their
// progress and outcome written back (Follow prints the lines and returns the
// failure); a record left running by a driver that is gone is resumed; when
// the leader stops, the other candidate takes over.
func TestDriver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg := registry.New(etcdtest.New(t).Client(), "")
	body := func(v string) []byte {
		return []byte("[Unit]\nDescription=" + v + "\n[Service]\nExecStart=/bin/true\n")
	}
	if _, err := reg.Submit(ctx, "a.service", unit.Hash(body("v1")), body("v1"), registry.KeepExisting); err != nil {
		t.Fatal(err)
	}
	if err := reg.SetDesired(ctx, "a.service", registry.Loaded); err != nil {
		t.Fatal(err)
	}
	stop1 := runDriver(t, reg, "d1")
	waitLeader(t, ctx, reg, "d1")
	runDriver(t, reg, "d2")

	// A roll of a unit that does not run: its job takes the body.
	id, err := Submit(ctx, reg, Record{Kind: KindRoll, Targets: []Target{{Unit: "a.service", Body: body("v2")}}, AnnouncePrefix: "-", StatusPrefix: "-"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Follow(ctx, reg, id, &out, nil); err != nil {
		t.Fatalf("follow %s: %v\n%s", id, err, out.String())
	}
	if !strings.Contains(out.String(), "Unit a.service body ") || !strings.Contains(out.String(), "Rolled 1 unit(s)") {
		t.Errorf("progress of the roll:\n%s", out.String())
	}
	if j, err := reg.Job(ctx, "a.service"); err != nil || j.Hash != unit.Hash(body("v2")) {
		t.Errorf("job after the roll: %+v, %v", j, err)
	}
	rec, err := Get(ctx, reg, id)
	if err != nil || rec.State != Done || rec.Driver != "d1" || rec.Finished.IsZero() {
		t.Errorf("record: %+v, %v; want done by d1", rec, err)
	}

	// A move of a unit that is not launched fails, and says why.
	id, err = Submit(ctx, reg, Record{Kind: KindMove, Unit: "a.service"})
	if err != nil {
		t.Fatal(err)
	}
	err = Follow(ctx, reg, id, &out, nil)
	if err == nil || !strings.Contains(err.Error(), "move a.service") || !strings.Contains(err.Error(), "not launched") {
		t.Errorf("follow of a failing move: %v", err)
	}
	if rec, _ = Get(ctx, reg, id); rec.State != Failed || rec.Error == "" {
		t.Errorf("record of a failing move: %+v", rec)
	}

	// A record a gone driver left running is resumed.
	if _, err := reg.Client().Put(ctx, reg.BodyKey(unit.Hash(body("v3"))), string(body("v3")), 0); err != nil {
		t.Fatal(err)
	}
	gone := Record{Kind: KindRoll, Targets: []Target{{Unit: "a.service", Hash: unit.Hash(body("v3"))}}, AnnouncePrefix: "-", StatusPrefix: "-",
		State: Running, Driver: "gone", Created: time.Now().UTC(), Started: time.Now().UTC(), Progress: []string{"earlier line"}}
	if _, err := reg.Client().Put(ctx, RecordPrefix(reg)+"00000000-gone", registry.Encode(gone), 0); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := Follow(ctx, reg, "00000000-gone", &out, nil); err != nil {
		t.Fatalf("follow of a resumed record: %v\n%s", err, out.String())
	}
	if !strings.HasPrefix(out.String(), "earlier line\nResumed by the driver on d1\n") {
		t.Errorf("progress of a resumed record:\n%s", out.String())
	}

	// The leader stops: d2 takes over.
	stop1()
	waitLeader(t, ctx, reg, "d2")
	id, err = Submit(ctx, reg, Record{Kind: KindRoll, Targets: []Target{{Unit: "a.service", Body: body("v4")}}, AnnouncePrefix: "-", StatusPrefix: "-"})
	if err != nil {
		t.Fatal(err)
	}
	if err := Follow(ctx, reg, id, &out, nil); err != nil {
		t.Fatal(err)
	}
	if rec, _ = Get(ctx, reg, id); rec.Driver != "d2" {
		t.Errorf("record carried out by %q after d1 stopped, want d2", rec.Driver)
	}
	recs, err := List(ctx, reg)
	if err != nil || len(recs) != 4 {
		t.Errorf("List: %d records, %v; want 4", len(recs), err)
	}
}

// TestRecorderFenced: a driver that lost the lead cannot write a record.
func TestRecorderFenced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := etcdtest.New(t).Client()
	reg := registry.New(c, "")
	lease, err := c.GrantLease(ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Close()
	lead, err := c.Campaign(ctx, lease, ElectionPrefix(reg), "d1")
	if err != nil {
		t.Fatal(err)
	}
	rctx, rcancel := context.WithCancelCause(ctx)
	defer rcancel(nil)
	rc := &recorder{ctx: rctx, cancel: rcancel, c: c, guards: []store.Cmp{lead.Guard()}, key: RecordPrefix(reg) + "x", rec: Record{ID: "x", Kind: KindDrain, Machine: "m1"}}
	if err := rc.save(func(r *Record) { r.State = Running }); err != nil {
		t.Fatalf("save while leading: %v", err)
	}
	if err := lead.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(rc, "a line")
	if err := rc.save(func(r *Record) { r.State = Done }); !errors.Is(err, errLostLead) {
		t.Errorf("save after the lead was lost: %v, want errLostLead", err)
	}
	if !errors.Is(context.Cause(rctx), errLostLead) {
		t.Errorf("the run was not ended: %v", context.Cause(rctx))
	}
	kv, _, _, err := c.Get(ctx, rc.key)
	if err != nil || strings.Contains(string(kv.Value), "a line") || !strings.Contains(string(kv.Value), `"running"`) {
		t.Errorf("record after the lead was lost: %s, %v", kv.Value, err)
	}
}

// TestRecordKeepsBodies: a record not yet over keeps the bodies it stored
// from the engine's collection of unused bodies.
func TestRecordKeepsBodies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reg := registry.New(etcdtest.New(t).Client(), "")
	body := []byte("[Service]\nExecStart=/bin/true\n")
	id, err := Submit(ctx, reg, Record{Kind: KindRoll, Targets: []Target{{Unit: "a.service", Body: body}}})
	if err != nil {
		t.Fatal(err)
	}
	unused := func() []string {
		kvs, err := reg.UnusedBodies(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, kv := range kvs {
			out = append(out, kv.Key)
		}
		return out
	}
	if u := unused(); len(u) != 0 {
		t.Errorf("unused bodies with the record pending: %v, want none", u)
	}
	// No driver runs here: Follow says so, once, and goes on waiting.
	fctx, fcancel := context.WithCancel(ctx)
	warned := 0
	err = Follow(fctx, reg, id, io.Discard, func() { warned++; fcancel() })
	fcancel()
	if warned != 1 || err == nil || !strings.Contains(err.Error(), "the change goes on") {
		t.Errorf("Follow with no driver: warned %d times, %v", warned, err)
	}
	rec, err := Get(ctx, reg, id)
	if err != nil || len(rec.Targets) != 1 || rec.Targets[0].Hash != unit.Hash(body) {
		t.Fatalf("record: %+v, %v", rec, err)
	}
	rec.State = Done
	if _, err := reg.Client().Put(ctx, RecordPrefix(reg)+id, registry.Encode(rec), 0); err != nil {
		t.Fatal(err)
	}
	if u := unused(); len(u) != 1 || u[0] != reg.BodyKey(unit.Hash(body)) {
		t.Errorf("unused bodies with the record done: %v, want its body", u)
	}
}
