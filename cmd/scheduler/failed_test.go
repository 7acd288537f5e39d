package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
)

// TestFailedUnitMovesAndShows runs two machines (process executor) and a
// unit that crash-loops on the first: the process executor's start limit
// fails it, its agent starts it again once (RestartFailed=1), then gives it
// up; the engine moves it to the second machine, where it runs. list-units
// shows the restarts and the machine it failed on (extra --fields; the
// default columns stay fleetctl's), and /metrics the failure.
func TestFailedUnitMovesAndShows(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	addr := etcdtest.FreeAddr(t)
	api := etcdtest.FreeAddr(t)
	log1 := serveInBackground(ctx, t, "--data-dir", t.TempDir(), "--etcd-listen", addr, "--public-ip", "127.0.0.7",
		"--machine-id", "m1", "--executor", "process", "--ttl", "2s", "--api", "http://"+api)
	log2 := serveInBackground(ctx, t, "--data-dir", t.TempDir(), "--endpoints", "http://"+addr, "--public-ip", "127.0.0.8",
		"--machine-id", "m2", "--executor", "process", "--ttl", "2s")
	client := func(args ...string) (string, error) { return cli(ctx, addr, args...) }
	poll := func(what string, cond func() (string, bool)) string {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			out, ok := cond()
			if ok {
				return out
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; last: %q\nm1 log:\n%s\nm2 log:\n%s", what, out, log1.String(), log2.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	poll("two machines", func() (string, bool) {
		out, _ := client("list-machines", "--no-legend")
		return out, strings.Count(out, "\n") == 2
	})

	dir := t.TempDir()
	unitFile := filepath.Join(dir, "crash.service")
	body := "[Unit]\nStartLimitIntervalSec=1h\nStartLimitBurst=2\n" +
		"[Service]\nRestart=on-failure\nRestartSec=50ms\n" +
		"ExecStart=/bin/sh -c 'echo . >> " + dir + "/starts-$${FLOTILLA_MACHINE_ID}; [ \"$${FLOTILLA_MACHINE_ID}\" != m1 ] || exit 3; exec sleep 1000'\n" +
		"[X-Flotilla]\nRestartFailed=1\n"
	if err := os.WriteFile(unitFile, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := client("start", "--no-block", unitFile); err != nil {
		t.Fatalf("start = %q, %v", out, err)
	}
	out := poll("crash.service running on m2", func() (string, bool) {
		out, _ := client("list-units", "--no-legend", "--fields", "unit,machine,active,sub,restarts,failed")
		return out, out == "crash.service\tm2/127.0.0.8\tactive\trunning\t0\tm1/127.0.0.7\n"
	})
	t.Logf("list-units: %q", out)
	b, _ := os.ReadFile(filepath.Join(dir, "starts-m1"))
	if n := strings.Count(string(b), "\n"); n != 4 {
		t.Errorf("ExecStart ran %d times on m1, want 4 (StartLimitBurst=2 runs, a restart in place, 2 runs)", n)
	}
	if out, _ := client("list-units", "--no-legend"); out != "crash.service\tm2/127.0.0.8\tactive\trunning\n" {
		t.Errorf("default list-units = %q, want fleetctl's four columns", out)
	}
	poll("the failure in /metrics", func() (string, bool) {
		resp, err := http.Get("http://" + api + "/metrics")
		if err != nil {
			return err.Error(), false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		want := `flotilla_unit_failed{machine="m1",move="true",unit="crash.service"} 1`
		return fmt.Sprintf("status %d, no %s", resp.StatusCode, want), strings.Contains(string(b), want)
	})
}

// TestSubmitRefusesBadFailurePolicy: [X-Flotilla] failure policy values
// are checked at submit, the error naming file and line.
func TestSubmitRefusesBadFailurePolicy(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	for name, line := range map[string]string{
		"count.service":  "RestartFailed=lots",
		"window.service": "RestartFailedWindow=100ms",
		"move.service":   "OnFailed=retry",
		"avoid.service":  "AvoidFailedFor=forever",
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("[Service]\nExecStart=/bin/true\n[X-Flotilla]\n"+line+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, _, err := e.run("submit", p)
		key, _, _ := strings.Cut(line, "=")
		if err == nil || !strings.Contains(err.Error(), p+":4:") || !strings.Contains(err.Error(), key) {
			t.Errorf("submit %s: %v, want %s:4: naming %s", line, err, p, key)
		}
	}
}
