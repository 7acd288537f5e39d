package announce_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/announce"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

func TestCommandCheck(t *testing.T) {
	dir := t.TempDir()
	flag := filepath.Join(dir, "ready")
	tests := map[string]struct {
		argv    []string
		timeout time.Duration
		wantErr string // "" healthy
	}{
		"exit 0":          {argv: []string{"true"}},
		"exit 1":          {argv: []string{"false"}, wantErr: "exit status 1"},
		"output in error": {argv: []string{"/bin/sh", "-c", "echo not ready >&2; exit 3"}, wantErr: `exit status 3; output: "not ready"`},
		"no shell":        {argv: []string{"echo", "$HOME;", "exit", "1"}},
		"file absent":     {argv: []string{"test", "-e", flag}, wantErr: "exit status 1"},
		"timeout":         {argv: []string{"/bin/sh", "-c", "echo slow; sleep 30"}, timeout: 300 * time.Millisecond, wantErr: `timed out after 300ms; output: "slow"`},
		"missing program": {argv: []string{filepath.Join(dir, "nope")}, wantErr: "no such file"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := announce.CommandCheck(tc.argv, tc.timeout, nil)
			if err != nil {
				t.Fatal(err)
			}
			began := time.Now()
			err = c.Check(context.Background())
			if took := time.Since(began); took > 5*time.Second {
				t.Errorf("check took %s", took)
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Check = %v, want healthy", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Check = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
	if _, err := announce.CommandCheck(nil, 0, nil); err == nil {
		t.Error("empty argv accepted")
	}
}

// TestRiseAndFall: the key comes back only after --check-rise passes in a
// row and goes after --check-threshold failures in a row, so a backend that
// alternates pass/fail never flaps the key, present or absent. The check is
// a real command reading a mode file.
func TestRiseAndFall(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	dir := t.TempDir()
	mode := filepath.Join(dir, "mode")
	setMode := func(m string) {
		if err := os.WriteFile(mode, []byte(m), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// pass, fail, or flap (alternate, by a counter file).
	script := `m=$(cat ` + mode + `); case $m in pass) exit 0;; fail) exit 1;; esac; ` +
		`n=$(cat ` + dir + `/n 2>/dev/null || echo 0); echo $((n+1)) > ` + dir + `/n; exit $((n % 2))`
	check, err := announce.CommandCheck([]string{"/bin/sh", "-c", script}, time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	var checks, inRow atomic.Int64 // all checks; passes in a row
	counted := announce.CheckFunc(func(ctx context.Context) error {
		checks.Add(1)
		err := check.Check(ctx)
		if err != nil {
			inRow.Store(0)
		} else {
			inRow.Add(1)
		}
		return err
	})
	var rowAtPut []int64 // passes in a row when each put happened
	var mu sync.Mutex
	setMode("pass")
	const key = "/rf/web1"
	w := c.WatchPrefix(ctxT(t, 60*time.Second), key, 0)
	defer w.Close()
	runBG(t, c, announce.Config{Key: key, Value: "h 10.0.0.1:1", TTL: 5 * time.Second,
		Check: counted, CheckInterval: 200 * time.Millisecond, CheckThreshold: 2, CheckRise: 3,
		OnPut: func(store.LeaseID) { mu.Lock(); rowAtPut = append(rowAtPut, inRow.Load()); mu.Unlock() }})
	waitKey(t, c, key, true, 10*time.Second)
	events := func(d time.Duration) (puts, dels int) {
		end := time.After(d)
		for {
			select {
			case b := <-w.C:
				for _, ev := range b.Events {
					if ev.Type == store.EventDelete {
						dels++
					} else {
						puts++
					}
				}
			case <-end:
				return
			}
		}
	}
	events(300 * time.Millisecond) // the first put
	setMode("flap")
	if puts, dels := events(1500 * time.Millisecond); puts+dels != 0 {
		t.Errorf("a flapping check flapped the present key: %d puts, %d deletes", puts, dels)
	}
	setMode("fail")
	waitKey(t, c, key, false, 10*time.Second)
	events(300 * time.Millisecond)
	setMode("flap")
	if puts, dels := events(1500 * time.Millisecond); puts+dels != 0 {
		t.Errorf("a flapping check flapped the absent key: %d puts, %d deletes", puts, dels)
	}
	setMode("pass")
	waitKey(t, c, key, true, 10*time.Second)
	time.Sleep(100 * time.Millisecond) // OnPut runs after the put
	mu.Lock()
	defer mu.Unlock()
	if len(rowAtPut) != 2 {
		t.Errorf("%d puts, want 2 (first, and back after the failure)", len(rowAtPut))
	}
	for i, n := range rowAtPut {
		if n < 3 {
			t.Errorf("put %d after %d passes in a row, want at least the rise of 3", i+1, n)
		}
	}
	t.Logf("%d checks in all; passes in a row at each put: %v", checks.Load(), rowAtPut)
}

func TestHTTPCheckExpectations(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Ready", r.URL.Query().Get("ready"))
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		w.WriteHeader(code)
	}))
	defer srv.Close()
	tests := map[string]struct {
		query   string
		opts    announce.CheckOptions
		wantErr string
	}{
		"default 2xx":       {query: "code=204"},
		"default 3xx":       {query: "code=302"},
		"default 5xx":       {query: "code=503", wantErr: "status 503"},
		"expected 503":      {query: "code=503", opts: announce.CheckOptions{ExpectStatus: []int{503}}},
		"unexpected 200":    {query: "code=200", opts: announce.CheckOptions{ExpectStatus: []int{204, 418}}, wantErr: "want [204 418]"},
		"header matches":    {query: "code=200&ready=yes", opts: announce.CheckOptions{ExpectHeader: "X-Ready: yes"}},
		"header differs":    {query: "code=200&ready=no", opts: announce.CheckOptions{ExpectHeader: "x-ready:yes"}, wantErr: `header X-Ready "no", want "yes"`},
		"header and status": {query: "code=418&ready=yes", opts: announce.CheckOptions{ExpectStatus: []int{418}, ExpectHeader: "X-Ready: yes"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := announce.ParseCheck(srv.URL+"/?"+tc.query, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			err = c.Check(context.Background())
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Check = %v, want error %q", err, tc.wantErr)
			}
		})
	}
	for _, bad := range []announce.CheckOptions{{ExpectStatus: []int{99}}, {ExpectHeader: "no colon"}, {ExpectHeader: ": v"}} {
		if _, err := announce.ParseCheck(srv.URL, bad); err == nil {
			t.Errorf("ParseCheck accepted %+v", bad)
		}
	}
	if _, err := announce.ParseCheck("tcp://127.0.0.1:1", announce.CheckOptions{ExpectStatus: []int{200}}); err == nil {
		t.Error("a tcp check accepted an expected status")
	}
}
