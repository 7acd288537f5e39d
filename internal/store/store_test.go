package store_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The etcd server and client keep a few process-wide goroutines.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
	)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestOpenUnreachableFailsWithinTimeout(t *testing.T) {
	addr := etcdtest.FreeAddr(t) // nothing listens there
	cfg := store.Default()
	cfg.Endpoints = []string{"http://" + addr}
	cfg.DialTimeout = 500 * time.Millisecond
	start := time.Now()
	_, err := store.Open(ctxT(t), cfg)
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("Open of an unreachable endpoint succeeded")
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("error does not name the endpoint %s: %v", addr, err)
	}
	if !strings.Contains(err.Error(), "refused") {
		t.Errorf("error does not say why: %v", err)
	}
	// Not a timing assertion on speed: a hang would be many multiples of this.
	if elapsed > 5*cfg.DialTimeout+2*time.Second {
		t.Errorf("Open hung for %s with a %s dial timeout", elapsed, cfg.DialTimeout)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := map[string]struct {
		cfg     store.Config
		wantErr string
	}{
		"ok":             {cfg: store.Config{Endpoints: []string{"127.0.0.1:2379"}, DialTimeout: time.Second}},
		"no endpoints":   {cfg: store.Config{DialTimeout: time.Second}, wantErr: "no endpoints"},
		"bad scheme":     {cfg: store.Config{Endpoints: []string{"ftp://x:1"}, DialTimeout: time.Second}, wantErr: `scheme "ftp"`},
		"cert alone":     {cfg: store.Config{Endpoints: []string{"x:1"}, DialTimeout: time.Second, Cert: "c"}, wantErr: "--cert and --key"},
		"password alone": {cfg: store.Config{Endpoints: []string{"x:1"}, DialTimeout: time.Second, Password: "p"}, wantErr: "needs a user"},
		"zero timeout":   {cfg: store.Config{Endpoints: []string{"x:1"}}, wantErr: "dial timeout"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate error = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

func TestConfigFromEnv(t *testing.T) {
	env := map[string]string{
		"ANNOUNCE_ENDPOINTS": "http://a:1,http://b:2",
		"ETCDCTL_ENDPOINTS":  "http://ignored:3",
		"ETCDCTL_USER":       "alice:secret",
		"ETCDCTL_CACERT":     "/ca.pem",
	}
	cfg := store.Default()
	if err := cfg.FromEnv(func(k string) string { return env[k] }, "ANNOUNCE_ENDPOINTS"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.Endpoints, ","); got != "http://a:1,http://b:2" {
		t.Errorf("endpoints = %s", got)
	}
	if cfg.Username != "alice" || cfg.Password != "secret" || cfg.CACert != "/ca.pem" {
		t.Errorf("user/password/cacert = %q/%q/%q", cfg.Username, cfg.Password, cfg.CACert)
	}
	empty := store.Default()
	empty.FromEnv(func(string) string { return "" })
	if len(empty.Endpoints) != 1 || empty.Endpoints[0] != store.DefaultEndpoint {
		t.Errorf("default endpoints = %v", empty.Endpoints)
	}
}

func TestEnvEndpoints(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"FLOTILLA_ENDPOINTS": "a:2379, b:2379"}, "a:2379|b:2379"},
		{map[string]string{"FLOTILLA_ENDPOINTS": " a:2379 ,, b:2379 ,"}, "a:2379|b:2379"},
		{map[string]string{"ETCDCTL_ENDPOINTS": "c:2379"}, "c:2379"},
		{map[string]string{"FLOTILLA_ENDPOINTS": "a:1", "ETCDCTL_ENDPOINTS": "c:2"}, "a:1"},
		{map[string]string{}, ""},
	} {
		got := store.EnvEndpoints(func(k string) string { return tc.env[k] }, "FLOTILLA_ENDPOINTS", "ETCDCTL_ENDPOINTS")
		if strings.Join(got, "|") != tc.want {
			t.Errorf("EnvEndpoints(%v) = %q, want %q", tc.env, got, tc.want)
		}
	}
}

func TestGetPutDeleteAndPrefix(t *testing.T) {
	c := etcdtest.New(t).Client()
	ctx := ctxT(t)
	for i, k := range []string{"/app/b", "/app/a", "/apple/x", "/app/c/d"} {
		if _, err := c.Put(ctx, k, fmt.Sprint(i), 0); err != nil {
			t.Fatal(err)
		}
	}
	kvs, rev, err := c.GetPrefix(ctx, "/app/")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, kv := range kvs {
		keys = append(keys, kv.Key)
	}
	if got := strings.Join(keys, " "); got != "/app/a /app/b /app/c/d" {
		t.Errorf("GetPrefix keys = %s", got)
	}
	if rev < 4 {
		t.Errorf("revision = %d, want >= 4", rev)
	}
	kv, found, _, err := c.Get(ctx, "/app/a")
	if err != nil || !found || string(kv.Value) != "1" {
		t.Errorf("Get = %+v %v %v", kv, found, err)
	}
	if n, err := c.Delete(ctx, "/app/a"); err != nil || n != 1 {
		t.Errorf("Delete = %d %v", n, err)
	}
	if _, found, _, _ := c.Get(ctx, "/app/a"); found {
		t.Error("key still there after Delete")
	}
	multi, _, err := c.GetPrefixes(ctx, []string{"/app/", "/apple/"})
	if err != nil {
		t.Fatal(err)
	}
	if len(multi["/app/"]) != 2 || len(multi["/apple/"]) != 1 {
		t.Errorf("GetPrefixes = %v", multi)
	}
	// ScanPrefixes: the same read as one sequence, prefix after prefix.
	n, pairs, srev, err := c.ScanPrefixes(ctx, []string{"/apple/", "/app/"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for k, v := range pairs {
		got = append(got, k+"="+string(v))
	}
	if want := "/apple/x=2 /app/b=0 /app/c/d=3"; n != 3 || strings.Join(got, " ") != want {
		t.Errorf("ScanPrefixes = %d, %q; want 3, %q", n, got, want)
	}
	if _, _, rev, _ := c.Get(ctx, "/none"); srev != rev {
		t.Errorf("ScanPrefixes revision %d, want the current %d", srev, rev)
	}
	for range pairs { // stopping early is allowed
		break
	}
}

func TestWatchResumesFromRevisionWithoutLoss(t *testing.T) {
	c := etcdtest.New(t).Client()
	ctx := ctxT(t)
	var revs []int64
	for i := 0; i < 10; i++ {
		rev, err := c.Put(ctx, fmt.Sprintf("/w/k%d", i), "v", 0)
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, rev)
	}
	c.Delete(ctx, "/w/k0")
	// Watch from the 4th put: must see puts 3..9 and the delete, in order.
	w := c.WatchPrefix(ctx, "/w/", revs[3])
	defer w.Close()
	var got []string
	for len(got) < 8 {
		b := <-w.C
		if b.Err != nil {
			t.Fatal(b.Err)
		}
		for _, ev := range b.Events {
			got = append(got, ev.Type.String()+" "+ev.KV.Key)
		}
	}
	want := "put /w/k3,put /w/k4,put /w/k5,put /w/k6,put /w/k7,put /w/k8,put /w/k9,delete /w/k0"
	if strings.Join(got, ",") != want {
		t.Errorf("events:\n got %s\nwant %s", strings.Join(got, ","), want)
	}
}

func TestWatchSurvivesServerRestart(t *testing.T) {
	srv := etcdtest.New(t)
	if srv.Mode() == etcdtest.External {
		t.Skip("needs a server the test can restart")
	}
	c := srv.Client()
	ctx := ctxT(t)
	_, rev, err := c.GetPrefix(ctx, "/r/")
	if err != nil {
		t.Fatal(err)
	}
	w := c.WatchPrefix(ctx, "/r/", rev+1)
	defer w.Close()
	c.Put(ctx, "/r/1", "a", 0)
	waitKey(t, w, "/r/1")
	srv.Stop()
	srv.Start()
	// A put made by another client while ours reconnects must still arrive.
	other := srv.Client()
	if _, err := other.Put(ctx, "/r/2", "b", 0); err != nil {
		t.Fatal(err)
	}
	waitKey(t, w, "/r/2")
}

func waitKey(t *testing.T, w *store.Watch, key string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case b, ok := <-w.C:
			if !ok {
				t.Fatalf("watch closed before %s", key)
			}
			if b.Err != nil {
				t.Fatal(b.Err)
			}
			for _, ev := range b.Events {
				if ev.KV.Key == key {
					return
				}
			}
		case <-timeout:
			t.Fatalf("no event for %s", key)
		}
	}
}

func TestWatchCompactedIsTypedError(t *testing.T) {
	c := etcdtest.New(t).Client()
	ctx := ctxT(t)
	first, _ := c.Put(ctx, "/c/a", "1", 0)
	c.Put(ctx, "/c/a", "2", 0)
	last, _ := c.Put(ctx, "/c/a", "3", 0)
	if err := c.Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	w := c.WatchPrefix(ctx, "/c/", first)
	defer w.Close()
	select {
	case b := <-w.C:
		var ce *store.CompactedError
		if !errors.Is(b.Err, store.ErrCompacted) || !errors.As(b.Err, &ce) {
			t.Fatalf("got %+v, want a compaction error", b)
		}
		if ce.Compacted != last || ce.Requested != first {
			t.Errorf("compaction error = %+v, want compacted %d requested %d", ce, last, first)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no compaction error")
	}
}

func TestLeaseCloseRemovesKeysAndIsIdempotent(t *testing.T) {
	c := etcdtest.New(t).Client()
	ctx := ctxT(t)
	if _, err := c.GrantLease(ctx, 500*time.Millisecond); err == nil {
		t.Error("a lease below etcd's minimum TTL was granted")
	}
	l, err := c.GrantLease(ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Put(ctx, "/l/k", "v"); err != nil {
		t.Fatal(err)
	}
	// Kept alive past its TTL.
	time.Sleep(3 * time.Second)
	if _, found, _, _ := c.Get(ctx, "/l/k"); !found {
		t.Fatal("key expired although the lease was kept alive")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, found, _, _ := c.Get(ctx, "/l/k"); found {
		t.Error("key survived lease revocation")
	}
	select {
	case <-l.Done():
	default:
		t.Error("Done not closed after Close")
	}
}

func TestLeaseAbandonedExpires(t *testing.T) {
	c := etcdtest.New(t).Client()
	ctx := ctxT(t)
	l, err := c.GrantLease(ctx, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l.Put(ctx, "/l/gone", "v")
	l.Abandon()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, found, _, _ := c.Get(ctx, "/l/gone"); !found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("key of an abandoned lease never expired")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if alive, err := l.Alive(ctx); err != nil || alive {
		t.Errorf("Alive = %v %v after expiry", alive, err)
	}
	if _, err := l.Put(ctx, "/l/again", "v"); !errors.Is(err, store.ErrLeaseLost) {
		t.Errorf("Put on an expired lease: %v, want ErrLeaseLost", err)
	}
}

func TestTxnAndElectionFencing(t *testing.T) {
	c := etcdtest.New(t).Client()
	ctx := ctxT(t)
	l1, _ := c.GrantLease(ctx, 5*time.Second)
	l2, _ := c.GrantLease(ctx, 5*time.Second)
	defer l2.Close()
	lead1, err := c.Campaign(ctx, l1, "/elect", "one")
	if err != nil {
		t.Fatal(err)
	}
	if v, found, err := c.Leader(ctx, "/elect"); err != nil || !found || v != "one" {
		t.Fatalf("Leader = %q %v %v", v, found, err)
	}
	ok, _, err := c.Txn(ctx, []store.Cmp{lead1.Guard()}, []store.Op{store.OpPut("/fenced", "1", 0)}, nil)
	if err != nil || !ok {
		t.Fatalf("guarded write by the leader: %v %v", ok, err)
	}
	// l2 campaigns in the background; it wins once l1 is gone.
	won := make(chan *store.Leadership, 1)
	go func() {
		lead2, err := c.Campaign(ctx, l2, "/elect", "two")
		if err == nil {
			won <- lead2
		}
	}()
	l1.Close()
	var lead2 *store.Leadership
	select {
	case lead2 = <-won:
	case <-time.After(10 * time.Second):
		t.Fatal("second candidate never became leader")
	}
	// The deposed leader's guard must now fail.
	ok, _, err = c.Txn(ctx, []store.Cmp{lead1.Guard()}, []store.Op{store.OpPut("/fenced", "stale", 0)}, nil)
	if err != nil || ok {
		t.Fatalf("deposed leader's write went through: %v %v", ok, err)
	}
	ok, _, _ = c.Txn(ctx, []store.Cmp{lead2.Guard()}, []store.Op{store.OpPut("/fenced", "2", 0)}, nil)
	kv, _, _, _ := c.Get(ctx, "/fenced")
	if !ok || string(kv.Value) != "2" {
		t.Errorf("fenced value = %q (ok=%v), want 2", kv.Value, ok)
	}
}

// silentListener accepts connections and never answers on them: an endpoint
// whose TLS handshake hangs.
func silentListener(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return ln.Addr().String()
}

// Open explains a failure by dialling every endpoint at once, bounded: four
// endpoints whose TLS handshakes hang cost one explanation, not four.
func TestOpenExplainsSilentEndpointsAtOnce(t *testing.T) {
	certs := etcdtest.NewCerts(t)
	cfg := etcdtest.New(t, etcdtest.WithTLS(certs)).Config()
	cfg.Endpoints = nil
	for range 4 {
		cfg.Endpoints = append(cfg.Endpoints, "https://"+silentListener(t))
	}
	cfg.DialTimeout = 300 * time.Millisecond
	start := time.Now()
	_, err := store.Open(ctxT(t), cfg)
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("Open of silent endpoints succeeded")
	}
	for _, ep := range cfg.Endpoints {
		if !strings.Contains(err.Error(), strings.TrimPrefix(ep, "https://")+": TLS handshake") {
			t.Errorf("error does not say %s's handshake failed: %v", ep, err)
		}
	}
	// One at a time, the four handshakes took over 4 s; together they fit in one.
	if limit := cfg.DialTimeout + 3*time.Second; elapsed > limit {
		t.Errorf("Open took %s, more than %s", elapsed, limit)
	}
}

func TestCloseTwice(t *testing.T) {
	c, err := store.Open(ctxT(t), etcdtest.New(t).Config())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("first Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// Copies of one Config opened at once share nothing they write (run with -race).
func TestOpenConcurrentCopiesOfOneConfig(t *testing.T) {
	cfg := etcdtest.New(t).Config()
	cfg.Endpoints = append(cfg.Endpoints, cfg.Endpoints[0]) // two, to normalise
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			c, err := store.Open(ctxT(t), cfg)
			if err == nil {
				c.Close()
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
