package render_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/render"
	"github.com/flotilla/flotilla/internal/store"
)

// TestMoreResourcesThanMaxTxnOps renders 200 and 2,000 resources, each on its
// own prefix, against etcd servers with their default --max-txn-ops (128):
// embedded and Debian's binary. Onetime renders them all; a watch starts
// from one snapshot of them all and follows a change of the last one.
func TestMoreResourcesThanMaxTxnOps(t *testing.T) {
	// 2,000 against the binary only: each file is fsynced, which makes the
	// case slow on a busy disk whatever the server.
	for _, tc := range []struct {
		mode etcdtest.Mode
		n    int
	}{{etcdtest.Embedded, 200}, {etcdtest.Binary, 200}, {etcdtest.Binary, 2000}} {
		mode, n := tc.mode, tc.n
		{
			t.Run(fmt.Sprintf("%s/%d", mode, n), func(t *testing.T) {
				f := newFixture(t, etcdtest.WithMode(mode))
				var ops []store.Op
				dests := make([]string, n)
				for i := range n {
					name := fmt.Sprintf("svc%04d", i)
					prefix := "/svc/" + name
					dests[i] = f.resource(name, fmt.Sprintf("%q", prefix), fmt.Sprintf(`server %s {{getv "%s/addr"}}`+"\n", name, prefix), "")
					ops = append(ops, store.OpPut(prefix+"/addr", fmt.Sprintf("10.0.%d.%d:80", i/250, i%250), 0))
					if len(ops) == 100 || i == n-1 {
						if _, _, err := f.c.Txn(f.ctx, nil, ops, nil); err != nil {
							t.Fatal(err)
						}
						ops = nil
					}
				}
				want := func(i int, addr string) string { return fmt.Sprintf("server svc%04d %s\n", i, addr) }
				t0 := time.Now()
				if err := render.Onetime(f.ctx, f.config()); err != nil {
					t.Fatalf("Onetime with %d resources: %v", n, err)
				}
				for i, d := range dests {
					if got, w := read(d), want(i, fmt.Sprintf("10.0.%d.%d:80", i/250, i%250)); got != w {
						t.Fatalf("%s = %q, want %q", filepath.Base(d), got, w)
					}
				}
				t.Logf("onetime: %d resources rendered in %v", n, time.Since(t0))
				t0 = time.Now()
				// The watch: its start reads every prefix at one revision
				// and follows from there.
				f.put(fmt.Sprintf("/svc/svc%04d/addr", 0), "changed-before-start:1")
				f.run(f.config())
				f.eventually("the change made before the watch started", func() bool { return read(dests[0]) == want(0, "changed-before-start:1") })
				t.Logf("watch: started and rendered %d resources in %v", n, time.Since(t0))
				f.put(fmt.Sprintf("/svc/svc%04d/addr", n-1), "changed:2")
				// The watch renders all n once more at its start (files
				// unchanged): on a loaded machine that takes a while.
				deadline := time.Now().Add(2 * time.Minute)
				for read(dests[n-1]) != want(n-1, "changed:2") {
					if time.Now().After(deadline) {
						t.Fatal("timed out waiting for the change of the last resource")
					}
					time.Sleep(20 * time.Millisecond)
				}
			})
		}
	}
}

// failingWatch is a source whose watches fail at once; it counts full reads.
type failingWatch struct {
	render.Source
	lists atomic.Int32
}

func (s *failingWatch) List(ctx context.Context, prefixes []string) ([]render.Change, int64, error) {
	s.lists.Add(1)
	return s.Source.List(ctx, prefixes)
}

func (s *failingWatch) Watch(context.Context, string, int64) render.Watcher {
	ch := make(chan render.Batch, 1)
	ch <- render.Batch{Err: errors.New("watch failed (test)")}
	close(ch)
	return closedWatcher(ch)
}

type closedWatcher chan render.Batch

func (w closedWatcher) C() <-chan render.Batch { return w }
func (w closedWatcher) Close()                 {}

// TestWatchErrorBackoff: after a failed watch the runner reads the keys
// again at once, or after WatchErrorBackoff when set.
func TestWatchErrorBackoff(t *testing.T) {
	for _, backoff := range []time.Duration{0, 400 * time.Millisecond} {
		t.Run(backoff.String(), func(t *testing.T) {
			f := newFixture(t)
			dest := f.resource("w", `"/w"`, `{{getv "/w/v"}}`+"\n", "")
			f.put("/w/v", "1")
			src := &failingWatch{Source: f.source()}
			cfg := f.config()
			cfg.Source, cfg.WatchErrorBackoff = src, backoff
			f.run(cfg)
			f.eventually("first render", func() bool { return read(dest) == "1\n" })
			start, n0 := time.Now(), src.lists.Load()
			time.Sleep(1200 * time.Millisecond)
			n := src.lists.Load() - n0
			per := time.Since(start) / time.Duration(max(n, 1))
			t.Logf("%d reads in %v", n, time.Since(start))
			if backoff > 0 && per < backoff {
				t.Errorf("with a %v backoff: a read every %v", backoff, per)
			}
			if backoff == 0 && n < 4 {
				t.Errorf("without a backoff: only %d reads in 1.2s of failing watches", n)
			}
		})
	}
}
