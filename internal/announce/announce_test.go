package announce_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/announce"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// runBG runs announce.Run until the test (or the returned stop) ends it.
func runBG(t *testing.T, c *store.Client, cfg announce.Config) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- announce.Run(ctx, c, cfg) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("Run did not return within 15s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// waitKey polls until the key's presence is want; it fails after limit.
func waitKey(t *testing.T, c *store.Client, key string, want bool, limit time.Duration) (store.KV, time.Duration) {
	t.Helper()
	began := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		kv, found, _, err := c.Get(ctx, key)
		cancel()
		if err == nil && found == want {
			return kv, time.Since(began)
		}
		if time.Since(began) > limit {
			t.Fatalf("key %s present=%v not reached within %s (err %v)", key, want, limit, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := map[string]struct {
		cfg     announce.Config
		wantErr string
	}{
		"ok":           {cfg: announce.Config{Key: "/a/b", Value: "h 1.2.3.4:5", TTL: time.Second}},
		"empty key":    {cfg: announce.Config{Value: "v", TTL: time.Second}, wantErr: "empty key"},
		"relative key": {cfg: announce.Config{Key: "a", Value: "v", TTL: time.Second}, wantErr: "must start with '/'"},
		"dir key":      {cfg: announce.Config{Key: "/a/", Value: "v", TTL: time.Second}, wantErr: "must not end with '/'"},
		"control key":  {cfg: announce.Config{Key: "/a\nb", Value: "v", TTL: time.Second}, wantErr: "control"},
		"empty value":  {cfg: announce.Config{Key: "/a", TTL: time.Second}, wantErr: "empty value"},
		"short ttl":    {cfg: announce.Config{Key: "/a", Value: "v", TTL: 999 * time.Millisecond}, wantErr: "shortest lease"},
		"huge ttl":     {cfg: announce.Config{Key: "/a", Value: "v", TTL: announce.MaxTTL + time.Second}, wantErr: "longest lease"},
		"bad interval": {cfg: announce.Config{Key: "/a", Value: "v", TTL: time.Second, CheckInterval: -1}, wantErr: "check interval"},
		"bad threshold": {cfg: announce.Config{Key: "/a", Value: "v", TTL: time.Second, CheckThreshold: -1},
			wantErr: "check threshold"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cfg := tc.cfg
			err := cfg.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if cfg.CheckInterval != 5*time.Second || cfg.CheckThreshold != 3 || cfg.Logger == nil || cfg.MaxBackoff < cfg.MinBackoff {
					t.Fatalf("defaults not filled: %+v", cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestRunWritesAndRevokesOnCancel(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	var puts atomic.Int32
	stop := runBG(t, c, announce.Config{Key: "/reg/a", Value: "h 10.0.0.1:80", TTL: 5 * time.Second,
		OnPut: func(store.LeaseID) { puts.Add(1) }})
	kv, _ := waitKey(t, c, "/reg/a", true, 10*time.Second)
	if string(kv.Value) != "h 10.0.0.1:80" || kv.Lease == 0 {
		t.Fatalf("got %q lease %x", kv.Value, kv.Lease)
	}
	// OnPut runs once the put has returned to announce, which may be after
	// the key is already visible here.
	testmain.Eventually(t, 10*time.Second, 5*time.Millisecond, "OnPut after the first put", func() error {
		if n := puts.Load(); n != 1 {
			return fmt.Errorf("OnPut called %d times, want 1", n)
		}
		return nil
	})
	stop()
	if _, found, _, _ := c.Get(ctxT(t, 5*time.Second), "/reg/a"); found {
		t.Fatal("key still there after Run returned")
	}
}

func TestRunReRegistersAfterRevoke(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	var puts atomic.Int32
	runBG(t, c, announce.Config{Key: "/reg/b", Value: "v", TTL: 5 * time.Second,
		OnPut: func(store.LeaseID) { puts.Add(1) }})
	kv, _ := waitKey(t, c, "/reg/b", true, 10*time.Second)
	// Someone revokes the lease (etcdctl lease revoke): the key goes, and
	// announce grants a new lease and writes it again.
	if err := c.RevokeLease(ctxT(t, 5*time.Second), kv.Lease); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, found, _, err := c.Get(ctxT(t, 5*time.Second), "/reg/b")
		if err == nil && found && got.Lease != kv.Lease {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not re-registered after revoke: found=%v err=%v", found, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	testmain.Eventually(t, 10*time.Second, 5*time.Millisecond, "OnPut after the re-registration", func() error {
		if n := puts.Load(); n < 2 {
			return fmt.Errorf("OnPut called %d times, want 2", n)
		}
		return nil
	})
}

func TestRunRestoresDeletedKeyAndLeavesOverwrite(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	ctx := ctxT(t, 30*time.Second)
	runBG(t, c, announce.Config{Key: "/reg/d", Value: "mine", TTL: 5 * time.Second})
	kv, _ := waitKey(t, c, "/reg/d", true, 10*time.Second)
	runBG(t, c, announce.Config{Key: "/reg/dd", Value: "a longer key under the same prefix", TTL: 5 * time.Second})
	waitKey(t, c, "/reg/dd", true, 10*time.Second)
	if _, err := c.Delete(ctx, "/reg/d"); err != nil {
		t.Fatal(err)
	}
	back, _ := waitKey(t, c, "/reg/d", true, 10*time.Second)
	if string(back.Value) != "mine" || back.Lease != kv.Lease {
		t.Fatalf("after delete: %q lease %x, want %q with the same lease %x", back.Value, back.Lease, "mine", kv.Lease)
	}
	// Someone else writes the key: announce does not fight over it.
	if _, err := c.Put(ctx, "/reg/d", "theirs", 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if got, _, _, _ := c.Get(ctx, "/reg/d"); string(got.Value) != "theirs" {
		t.Fatalf("overwritten key became %q again", got.Value)
	}
}

// flipServer is a real TCP health target that can be made to refuse.
type flipServer struct {
	t    *testing.T
	addr string
	mu   sync.Mutex
	l    net.Listener
	wg   sync.WaitGroup
}

func newFlipServer(t *testing.T) *flipServer {
	s := &flipServer{t: t, addr: etcdtest.FreeAddr(t)}
	s.up()
	t.Cleanup(s.down)
	return s
}

func (s *flipServer) up() {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	for i := 0; i < 100; i++ {
		if s.l, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatalf("listen %s: %v", s.addr, err)
	}
	l := s.l
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
}

func (s *flipServer) down() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.l != nil {
		s.l.Close()
		s.l = nil
	}
	s.wg.Wait()
}

func TestHealthGating(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	target := newFlipServer(t)
	target.down() // failing from the start: the key is never written
	check, err := announce.ParseCheck("tcp://"+target.addr, announce.CheckOptions{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const interval = 200 * time.Millisecond
	var puts atomic.Int32
	runBG(t, c, announce.Config{Key: "/hc", Value: "v", TTL: 5 * time.Second, Check: check,
		CheckInterval: interval, CheckThreshold: 2, OnPut: func(store.LeaseID) { puts.Add(1) }})
	time.Sleep(5 * interval)
	if _, found, _, _ := c.Get(ctxT(t, 5*time.Second), "/hc"); found || puts.Load() != 0 {
		t.Fatalf("key written (found=%v puts=%d) while the check failed", found, puts.Load())
	}

	target.up()
	_, took := waitKey(t, c, "/hc", true, 10*time.Second)
	t.Logf("check passing: key present after %s (interval %s)", took, interval)
	if took > interval+500*time.Millisecond {
		t.Errorf("key present %s after the check passed; want within one interval (%s) plus a write", took, interval)
	}

	target.down()
	_, took = waitKey(t, c, "/hc", false, 10*time.Second)
	t.Logf("check failing: key gone after %s (threshold 2 × %s)", took, interval)

	target.up()
	_, took = waitKey(t, c, "/hc", true, 10*time.Second)
	if took > interval+500*time.Millisecond {
		t.Errorf("key back %s after the check passed again; want within one interval (%s) plus a write", took, interval)
	}
}

func TestHealthThresholdToleratesBlips(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	var n atomic.Int32
	// Fails every other check: never threshold (2) failures in a row.
	check := announce.CheckFunc(func(context.Context) error {
		if n.Add(1)%2 == 0 {
			return errors.New("blip")
		}
		return nil
	})
	runBG(t, c, announce.Config{Key: "/blip", Value: "v", TTL: 5 * time.Second, Check: check,
		CheckInterval: 50 * time.Millisecond, CheckThreshold: 2})
	kv, _ := waitKey(t, c, "/blip", true, 10*time.Second)
	for n.Load() < 20 {
		time.Sleep(20 * time.Millisecond)
	}
	got, found, _, err := c.Get(ctxT(t, 5*time.Second), "/blip")
	if err != nil || !found || got.Lease != kv.Lease {
		t.Fatalf("after %d alternating checks: found=%v lease %x→%x err=%v", n.Load(), found, kv.Lease, got.Lease, err)
	}
}

func TestHTTPCheck(t *testing.T) {
	var status atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/redir" {
			http.Redirect(w, r, "/elsewhere", http.StatusFound)
			return
		}
		w.WriteHeader(int(status.Load()))
	}))
	defer ts.Close()
	tls := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	tls.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshake is expected
	tls.StartTLS()
	defer tls.Close()
	tests := map[string]struct {
		url     string
		status  int32
		opts    announce.CheckOptions
		wantErr string
	}{
		"200":              {url: ts.URL + "/health", status: 200},
		"204":              {url: ts.URL + "/health", status: 204},
		"302 not followed": {url: ts.URL + "/redir", status: 500},
		"404":              {url: ts.URL + "/health", status: 404, wantErr: "404"},
		"503":              {url: ts.URL + "/health", status: 503, wantErr: "503"},
		"refused":          {url: "http://" + etcdtest.FreeAddr(t) + "/", wantErr: "refused"},
		"https untrusted":  {url: tls.URL, wantErr: "certificate"},
		"https insecure":   {url: tls.URL, opts: announce.CheckOptions{InsecureSkipVerify: true}},
		"tcp":              {url: "tcp://" + strings.TrimPrefix(ts.URL, "http://")},
		"tcp refused":      {url: "tcp://" + etcdtest.FreeAddr(t), wantErr: "refused"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			status.Store(tc.status)
			ch, err := announce.ParseCheck(tc.url, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			err = ch.Check(ctxT(t, 5*time.Second))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Check = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestParseCheckErrors(t *testing.T) {
	for raw, want := range map[string]string{
		"":                  "no host",
		"udp://x:1":         `scheme "udp"`,
		"tcp://x":           "host:port",
		"tcp://x:1/path":    "no path",
		"http://":           "no host",
		"127.0.0.1:80":      "",
		"http://[::1:80/x%": "check",
	} {
		_, err := announce.ParseCheck(raw, announce.CheckOptions{})
		if err == nil || (want != "" && !strings.Contains(err.Error(), want)) {
			t.Errorf("ParseCheck(%q) = %v, want an error containing %q", raw, err, want)
		}
	}
}

func TestUnitFromCgroup(t *testing.T) {
	tests := map[string]struct{ in, want string }{
		"v2 service":         {in: "0::/system.slice/nginx@1.service\n", want: "nginx@1.service"},
		"v2 control group":   {in: "0::/system.slice/app.service/.control\n", want: "app.service"},
		"v1 name=systemd":    {in: "9:name=systemd:/system.slice/web.service\n4:memory:/x\n0::/\n", want: "web.service"},
		"user session scope": {in: "0::/user.slice/user-0.slice/session-1.scope\n", want: ""},
		"user service":       {in: "0::/user.slice/user-1000.slice/user@1000.service/app.slice/a.service\n", want: "a.service"},
		"container root":     {in: "0::/\n", want: ""},
		"memory only":        {in: "4:memory:/system.slice/x.service\n", want: ""},
		"empty":              {in: "", want: ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := announce.UnitFromCgroup(tc.in); got != tc.want {
				t.Fatalf("UnitFromCgroup = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestMachineID(t *testing.T) {
	if got := announce.MachineID(func(k string) string {
		if k == "FLOTILLA_MACHINE_ID" {
			return "abc"
		}
		return ""
	}); got != "abc" {
		t.Fatalf("MachineID with env = %q", got)
	}
}
