package store_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

// TestManyPrefixesOneSnapshot reads more prefixes than etcd's default
// --max-txn-ops (128) allows in one transaction, against the embedded server
// and Debian's etcd binary (both with their defaults): every prefix is read,
// at one revision, while a writer changes the first and the last prefix
// together in one transaction; every snapshot sees both at the same value.
func TestManyPrefixesOneSnapshot(t *testing.T) {
	for _, mode := range []etcdtest.Mode{etcdtest.Embedded, etcdtest.Binary} {
		for _, n := range []int{200, 2000} {
			t.Run(fmt.Sprintf("%s/%d", mode, n), func(t *testing.T) {
				c := etcdtest.New(t, etcdtest.WithMode(mode)).Client()
				ctx := ctxT(t)
				prefixes := make([]string, n)
				key := func(i int) string { return prefixes[i] + "k" }
				var ops []store.Op
				for i := range prefixes {
					prefixes[i] = fmt.Sprintf("/many/p%05d/", i)
					ops = append(ops, store.OpPut(prefixes[i]+"k", "0", 0))
					if len(ops) == 100 || i == n-1 {
						if _, _, err := c.Txn(ctx, nil, ops, nil); err != nil {
							t.Fatal(err)
						}
						ops = nil
					}
				}
				m, rev, err := c.GetPrefixes(ctx, prefixes)
				if err != nil {
					t.Fatalf("GetPrefixes(%d prefixes): %v", n, err)
				}
				if len(m) != n {
					t.Fatalf("GetPrefixes: %d prefixes in the result, want %d", len(m), n)
				}
				for i, p := range prefixes {
					if kvs := m[p]; len(kvs) != 1 || kvs[0].Key != key(i) || kvs[0].ModRevision > rev {
						t.Fatalf("GetPrefixes[%s] = %+v at revision %d", p, kvs, rev)
					}
				}

				// A writer moves the first and the last prefix together.
				wctx, stop := context.WithCancel(ctx)
				g, gctx := errgroup.WithContext(wctx)
				g.Go(func() error {
					for v := 1; gctx.Err() == nil; v++ {
						s := strconv.Itoa(v)
						_, _, err := c.Txn(gctx, nil, []store.Op{store.OpPut(key(0), s, 0), store.OpPut(key(n-1), s, 0)}, nil)
						if err != nil && gctx.Err() == nil {
							return err
						}
					}
					return nil
				})
				for range 10 {
					cnt, pairs, rev, err := c.ScanPrefixes(ctx, prefixes)
					if err != nil {
						stop()
						t.Fatalf("ScanPrefixes(%d prefixes): %v", n, err)
					}
					var got []string
					var first, last string
					for k, v := range pairs {
						got = append(got, k)
						switch k {
						case key(0):
							first = string(v)
						case key(n - 1):
							last = string(v)
						}
					}
					if cnt != n || len(got) != n || got[0] != key(0) || got[n-1] != key(n-1) {
						t.Errorf("ScanPrefixes: %d pairs (said %d), want %d in prefix order", len(got), cnt, n)
					}
					if first != last {
						t.Errorf("ScanPrefixes at revision %d: first prefix has %q, last %q: not one snapshot", rev, first, last)
					}
				}
				stop()
				if err := g.Wait(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}
