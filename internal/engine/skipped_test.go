package engine_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/engine"
)

// A corrupt job value does not stop scheduling, and it is reported once, not
// on every pass.
func TestCorruptKeyLoggedOnceAndScheduledAround(t *testing.T) {
	f := newFixture(t)
	f.machine("m1", nil)
	f.start("a.service", "[Service]\nExecStart=/bin/true\n")
	if _, err := f.c.Put(f.ctx, "/e/jobs/bad.service", "\xff not json", 0); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	e, err := engine.New(engine.Options{Registry: f.reg, ID: "x", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	l, err := f.c.GrantLease(f.ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	lead, err := f.c.Campaign(f.ctx, l, f.reg.ElectionPrefix(), "x")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := e.Pass(f.ctx, lead.Guard()); err != nil {
			t.Fatalf("pass %d: %v", i, err)
		}
	}
	if n := strings.Count(logs.String(), "undecodable key"); n != 1 {
		t.Errorf("corrupt key logged %d times over 3 passes, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "/e/jobs/bad.service") {
		t.Errorf("log does not name the key:\n%s", logs.String())
	}
	s, err := f.reg.Snapshot(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Schedule) == 0 {
		t.Error("the good unit was not scheduled next to a corrupt one")
	}
}
