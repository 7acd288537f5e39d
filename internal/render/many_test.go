package render_test

import (
	"fmt"
	"path/filepath"
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
				f.eventually("the change of the last resource", func() bool { return read(dests[n-1]) == want(n-1, "changed:2") })
			})
		}
	}
}
