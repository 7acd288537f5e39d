package announce_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/announce"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

// BenchmarkHold10k registers 10,000 keys from one process (one etcd client,
// one lease each) against one etcd — Debian's server binary when installed —
// and holds them for longer than their TTL. It reports how many were written,
// how many were still alive after the TTL (goal: all), the time to register
// them all, and the Go heap per registration.
func BenchmarkHold10k(b *testing.B) {
	n := 10_000
	if v, err := strconv.Atoi(os.Getenv("ANNOUNCE_BENCH_N")); err == nil && v > 0 {
		n = v // a smaller run for a loaded machine
	}
	const ttl = 10 * time.Second
	var opts []etcdtest.Option
	if etcdtest.ModeFromEnv() == etcdtest.Embedded && etcdtest.BinaryPath() != "" {
		opts = append(opts, etcdtest.WithMode(etcdtest.Binary))
	}
	srv := etcdtest.New(b, opts...)
	c := srv.Client()
	for i := 0; i < b.N; i++ {
		prefix := fmt.Sprintf("/bench/hold/%d/", i)
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		ctx, cancel := context.WithCancel(context.Background())
		var written sync.WaitGroup
		written.Add(n)
		var wg sync.WaitGroup
		// At most 256 first registrations in flight, as a process starting
		// many would pace them; re-registrations are not paced.
		inflight := make(chan struct{}, 256)
		began := time.Now()
		for k := 0; k < n; k++ {
			var once sync.Once
			inflight <- struct{}{}
			cfg := announce.Config{Key: fmt.Sprintf("%s%05d", prefix, k), Value: "h 10.0.0.1:80", TTL: ttl,
				OnPut: func(store.LeaseID) { once.Do(func() { written.Done(); <-inflight }) }}
			wg.Add(1)
			go func() { defer wg.Done(); announce.Run(ctx, c, cfg) }()
		}
		written.Wait()
		took := time.Since(began)
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		count := func() int {
			kvs, _, err := c.GetPrefix(context.Background(), prefix)
			if err != nil {
				b.Fatal(err)
			}
			return len(kvs)
		}
		registered := count()
		time.Sleep(ttl + 2*time.Second) // any key not kept alive has expired by now
		alive := count()
		cancel()
		wg.Wait()
		b.ReportMetric(float64(n), "registrations")
		b.ReportMetric(float64(registered), "registered")
		b.ReportMetric(float64(alive), "alive-after-ttl")
		b.ReportMetric(took.Seconds(), "register-all-s")
		b.ReportMetric(float64(after.HeapInuse-min(after.HeapInuse, before.HeapInuse))/float64(n), "heap-B/registration")
		if alive != n {
			b.Errorf("%d of %d registrations alive after the TTL", alive, n)
		}
	}
}
