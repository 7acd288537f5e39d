package render

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/flotilla/flotilla/resources"
)

// The runner's timing decisions, against a clock the test sets (the
// real-etcd tests in render_test.go cover the same paths end to end).

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

const ms = time.Millisecond

// testRunner is a runner whose clock reads *now.
func testRunner(now *time.Time, cfg Config) *runner {
	r := newRunner(cfg)
	r.now = func() time.Time { return *now }
	return r
}

func testEntry(name string, mod func(e *entry)) *entry {
	e := &entry{res: &resources.Resource{Name: name, Dest: "/dev/null/" + name, ReloadCmd: "true"}, reloadKey: "k"}
	if mod != nil {
		mod(e)
	}
	return e
}

func TestDue(t *testing.T) {
	tests := map[string]struct {
		e    func(e *entry)
		want time.Time
	}{
		"nothing pending": {want: time.Time{}},
		"dirty: window after the last change": {e: func(e *entry) {
			e.dirty, e.first, e.last = true, at(0), at(300*ms)
			e.res.Wait = resources.Wait{Min: 100 * ms, Max: time.Second}
		}, want: at(400 * ms)},
		"dirty: max from the first change caps it": {e: func(e *entry) {
			e.dirty, e.first, e.last = true, at(0), at(950*ms)
			e.res.Wait = resources.Wait{Min: 100 * ms, Max: time.Second}
		}, want: at(time.Second)},
		"failed: its retry": {e: func(e *entry) {
			e.failures, e.retryAt = 2, at(4*time.Second)
		}, want: at(4 * time.Second)},
		"gave up: nothing until a change": {e: func(e *entry) {
			e.failures, e.retryAt, e.gaveUp = 3, at(4*time.Second), true
		}, want: time.Time{}},
		"reload wanted: at reloadAt": {e: func(e *entry) {
			e.reloadWanted, e.reloadSince, e.reloadAt = true, at(0), at(2*time.Second)
		}, want: at(2 * time.Second)},
		"reload sooner than the retry": {e: func(e *entry) {
			e.failures, e.retryAt = 1, at(5*time.Second)
			e.reloadWanted, e.reloadSince, e.reloadAt = true, at(0), at(time.Second)
		}, want: at(time.Second)},
		"dirty with a reload wanted: the render first": {e: func(e *entry) {
			e.dirty, e.first, e.last = true, at(0), at(0)
			e.reloadWanted, e.reloadSince, e.reloadAt = true, at(0), at(0)
		}, want: at(0)},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			now := t0
			r := testRunner(&now, Config{})
			e := testEntry("a.toml", tc.e)
			r.entries = map[string]*entry{"a": e}
			if got := r.due(e); !got.Equal(tc.want) {
				t.Errorf("due = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestReloadDue(t *testing.T) {
	tests := map[string]struct {
		e      func(e *entry)
		others []func(m *entry) // resources beside e
		want   time.Time
	}{
		"at reloadAt": {e: func(e *entry) { e.reloadAt = at(3 * time.Second) }, want: at(3 * time.Second)},
		"dirty: held until rendered, at most maxReloadHold": {e: func(e *entry) {
			e.dirty, e.reloadSince, e.reloadAt = true, at(0), at(100*ms)
		}, want: at(maxReloadHold)},
		"dirty but deferred past the hold": {e: func(e *entry) {
			e.dirty, e.reloadSince, e.reloadAt = true, at(0), at(5*time.Second)
		}, want: at(5 * time.Second)},
		"a resource sharing the reload renders: held to the limit": {
			e:      func(e *entry) { e.reloadSince, e.reloadAt = at(0), at(0) },
			others: []func(m *entry){func(m *entry) { m.rendering = true }},
			want:   at(maxReloadHold),
		},
		"the limit is the resource's own window when longer": {
			e: func(e *entry) {
				e.reloadSince, e.reloadAt = at(0), at(0)
				e.res.Wait = resources.Wait{Min: time.Second, Max: 3 * time.Second}
			},
			others: []func(m *entry){func(m *entry) { m.rendering = true }},
			want:   at(3 * time.Second),
		},
		"a sharing resource dirty: until its window closes, and a slack": {
			e: func(e *entry) { e.reloadSince, e.reloadAt = at(0), at(0) },
			others: []func(m *entry){func(m *entry) {
				m.dirty, m.first, m.last = true, at(0), at(200*ms)
				m.res.Wait = resources.Wait{Min: 100 * ms}
			}},
			want: at(300*ms + groupSlack),
		},
		"a dirty resource of another reload does not hold it": {
			e: func(e *entry) { e.reloadSince, e.reloadAt = at(0), at(50*ms) },
			others: []func(m *entry){func(m *entry) {
				m.reloadKey = "other"
				m.dirty, m.first, m.last, m.rendering = true, at(0), at(200*ms), true
			}},
			want: at(50 * ms),
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			now := t0
			r := testRunner(&now, Config{})
			e := testEntry("a.toml", tc.e)
			e.reloadWanted = true
			r.entries = map[string]*entry{"a": e}
			for i, mod := range tc.others {
				m := testEntry("b.toml", mod)
				r.entries[string(rune('b'+i))] = m
			}
			if got := r.reloadDue(e); !got.Equal(tc.want) {
				t.Errorf("reloadDue = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestFinishEntry(t *testing.T) {
	failed := errors.New("check_cmd exited 1")
	type want struct {
		reloadWanted                   bool
		reloadSince, reloadAt, retryAt time.Time
		failures, reloadFails, seq     int
		dirty, gaveUp, rendering       bool
	}
	tests := map[string]struct {
		cfg       Config
		e         func(e *entry)
		res       result // e is set by the test
		cancelled bool
		want      want
	}{
		"changed: reload at once": {
			res:  result{changed: true},
			want: want{reloadWanted: true, reloadSince: at(0), reloadAt: at(0), seq: 1},
		},
		"unchanged: no reload": {
			res:  result{changed: false},
			want: want{},
		},
		"changed in noop: no reload": {
			cfg:  Config{Noop: true},
			res:  result{changed: true},
			want: want{},
		},
		"changed soon after a reload: deferred by min_reload_interval": {
			e: func(e *entry) {
				e.res.MinReloadInterval = 10 * time.Second
				e.lastReload = at(-4 * time.Second)
			},
			res:  result{changed: true},
			want: want{reloadWanted: true, reloadSince: at(0), reloadAt: at(6 * time.Second), seq: 1},
		},
		"changed again while a reload is wanted: first wanted time kept": {
			e: func(e *entry) {
				e.reloadWanted, e.reloadSince, e.reloadAt, e.reloadSeq, e.reloadFails = true, at(-time.Second), at(-time.Second), 1, 2
			},
			res:  result{changed: true},
			want: want{reloadWanted: true, reloadSince: at(-time.Second), reloadAt: at(0), seq: 2},
		},
		"render failed: retry after RetryMin": {
			cfg:  Config{RetryMin: 2 * time.Second, RetryMax: time.Minute},
			res:  result{err: failed},
			want: want{failures: 1, retryAt: at(2 * time.Second)},
		},
		"render failed again: backoff doubles": {
			cfg:  Config{RetryMin: 2 * time.Second, RetryMax: time.Minute},
			e:    func(e *entry) { e.failures = 2 },
			res:  result{err: failed},
			want: want{failures: 3, retryAt: at(8 * time.Second)},
		},
		"render failed MaxAttempts times: gives up": {
			cfg:  Config{MaxAttempts: 3},
			e:    func(e *entry) { e.failures = 2 },
			res:  result{err: failed},
			want: want{failures: 3, gaveUp: true},
		},
		"render stopped by shutdown: dirty, not a failure": {
			res:       result{err: context.Canceled},
			cancelled: true,
			want:      want{dirty: true},
		},
		"reload done: no longer wanted": {
			e:    func(e *entry) { e.reloadWanted, e.reloadSeq, e.rendering = true, 4, true },
			res:  result{job: job{reload: true}},
			want: want{seq: 4, rendering: true},
		},
		"reload done, rendered again since: still wanted": {
			e:    func(e *entry) { e.reloadWanted, e.reloadSeq = true, 5 },
			res:  result{job: job{reload: true, group: map[*entry]int{}}}, // e at seq 4: set below
			want: want{reloadWanted: true, seq: 5},
		},
		"reload failed: retried after backoff": {
			cfg:  Config{RetryMin: time.Second, RetryMax: time.Minute},
			e:    func(e *entry) { e.reloadWanted, e.reloadFails = true, 1 },
			res:  result{job: job{reload: true}, err: failed},
			want: want{reloadWanted: true, reloadFails: 2, reloadAt: at(2 * time.Second)},
		},
		"reload failed MaxAttempts times: gives up until the next change": {
			cfg:  Config{MaxAttempts: 2},
			e:    func(e *entry) { e.reloadWanted, e.reloadFails = true, 1 },
			res:  result{job: job{reload: true}, err: failed},
			want: want{},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			now := t0
			r := testRunner(&now, tc.cfg)
			e := testEntry("a.toml", tc.e)
			r.entries = map[string]*entry{"a": e}
			res := tc.res
			res.e = e
			if res.group != nil {
				res.group[e] = e.reloadSeq - 1
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancelled {
				cancel()
			}
			r.finishEntry(ctx, res)
			got := want{
				reloadWanted: e.reloadWanted, reloadSince: e.reloadSince, reloadAt: e.reloadAt, retryAt: e.retryAt,
				failures: e.failures, reloadFails: e.reloadFails, seq: e.reloadSeq,
				dirty: e.dirty, gaveUp: e.gaveUp, rendering: e.rendering,
			}
			if got != tc.want {
				t.Errorf("after finishEntry:\n got %+v\nwant %+v", got, tc.want)
			}
			if res.reload && !e.lastReload.Equal(now) {
				t.Errorf("lastReload = %v, want the clock's %v", e.lastReload, now)
			}
		})
	}
}

func TestTakeReload(t *testing.T) {
	type state struct {
		wanted      bool
		since, at   time.Time
		reloadFails int
	}
	tests := map[string]struct {
		e, old, want state
	}{
		"old wants none": {
			e:    state{},
			old:  state{since: at(0), at: at(time.Second)},
			want: state{},
		},
		"e wants none: takes old's": {
			e:    state{since: at(9 * time.Second), at: at(9 * time.Second)},
			old:  state{wanted: true, since: at(0), at: at(5 * time.Second), reloadFails: 2},
			want: state{wanted: true, since: at(0), at: at(5 * time.Second), reloadFails: 2},
		},
		"both want one: the earlier times, the more failures": {
			e:    state{wanted: true, since: at(time.Second), at: at(2 * time.Second), reloadFails: 1},
			old:  state{wanted: true, since: at(0), at: at(5 * time.Second)},
			want: state{wanted: true, since: at(0), at: at(2 * time.Second), reloadFails: 1},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e := testEntry("a.toml", func(e *entry) {
				e.reloadWanted, e.reloadSince, e.reloadAt, e.reloadFails = tc.e.wanted, tc.e.since, tc.e.at, tc.e.reloadFails
			})
			old := testEntry("a.toml", func(e *entry) {
				e.reloadWanted, e.reloadSince, e.reloadAt, e.reloadFails = tc.old.wanted, tc.old.since, tc.old.at, tc.old.reloadFails
			})
			e.takeReload(old)
			got := state{e.reloadWanted, e.reloadSince, e.reloadAt, e.reloadFails}
			if got != tc.want {
				t.Errorf("after takeReload:\n got %+v\nwant %+v", got, tc.want)
			}
			if old.reloadWanted {
				t.Error("old still wants its reload: it would run twice")
			}
		})
	}
}

// TestFinishHandsReloadToSuccessor: a render of an entry that was replaced
// while it ran (its resource file changed) asks for a reload: the entry
// that replaced it runs that reload, no sooner than min_reload_interval
// after the last one.
func TestFinishHandsReloadToSuccessor(t *testing.T) {
	now := at(time.Minute)
	r := testRunner(&now, Config{})
	old := testEntry("a.toml", func(e *entry) {
		e.res.MinReloadInterval = 10 * time.Second
		e.lastReload = at(55 * time.Second)
		e.rendering = true
	})
	cur := testEntry("a.toml", nil)
	cur.inherit(old)
	r.entries = map[string]*entry{"a": cur}
	r.finish(context.Background(), result{job: job{e: old}, changed: true})
	if old.reloadWanted || !cur.reloadWanted {
		t.Fatalf("reload wanted: old %v, successor %v; want it on the successor only", old.reloadWanted, cur.reloadWanted)
	}
	if want := at(65 * time.Second); !cur.reloadAt.Equal(want) || !cur.lastReload.Equal(at(55*time.Second)) {
		t.Errorf("successor reloads at %v (last reload %v), want %v", cur.reloadAt, cur.lastReload, want)
	}
	if got := r.due(cur); !got.Equal(at(65 * time.Second)) {
		t.Errorf("due(successor) = %v, want %v", got, at(65*time.Second))
	}
}
