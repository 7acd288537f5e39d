package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/testmain"
)

// renderProcess starts render (this test binary as render's main) as a
// process of its own, so that signals can be sent to it.
func renderProcess(t *testing.T, args ...string) (*exec.Cmd, *testmain.SyncBuffer) {
	t.Helper()
	js, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envRunAsRender+"="+string(js))
	var logs testmain.SyncBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() {
			t.Logf("render log:\n%s", logs.String())
		}
	})
	return cmd, &logs
}

func waitExit(t *testing.T, cmd *exec.Cmd, limit time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(limit):
		cmd.Process.Kill()
		<-done
		t.Fatalf("render did not exit within %v", limit)
	}
	return cmd.ProcessState.ExitCode()
}

// TestExecExitStatus: the child starts after the first render, and render
// exits with the child's status.
func TestExecExitStatus(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Client().Put(context.Background(), "/clusterstate/ns/a", walkValue, 0)
	dir, dest := confdir(t)
	cmd, _ := renderProcess(t, "-node", srv.Endpoint(), "-confdir", dir, "-watch",
		"-exec", fmt.Sprintf(`sh -c 'grep -q "%s" %s && exit 7; exit 3'`, walkValue, dest))
	if code := waitExit(t, cmd, 30*time.Second); code != 7 {
		t.Fatalf("render exited %d, want the child's 7 (3: the child started before the file was rendered)", code)
	}
}

const haproxyTmpl = `global
    master-worker
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend f
    bind %s
    http-request return status 200 content-type text/plain string "{{getv "/hx/v"}}"
`

// TestExecHaproxy: render -exec runs a real haproxy (master-worker, -db) on
// the file it renders, makes it reload (SIGUSR2) after a change without
// restarting it, forwards SIGHUP and SIGTERM, and ends with it.
func TestExecHaproxy(t *testing.T) {
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("no haproxy")
	}
	srv := etcdtest.New(t)
	c := srv.Client()
	c.Put(context.Background(), "/hx/v", "one", 0)
	dir := t.TempDir()
	for _, d := range []string{"conf.d", "templates", "out"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	addr := etcdtest.FreeAddr(t)
	dest := filepath.Join(dir, "out", "haproxy.cfg")
	os.WriteFile(filepath.Join(dir, "templates", "haproxy.tmpl"), []byte(fmt.Sprintf(haproxyTmpl, addr)), 0o644)
	os.WriteFile(filepath.Join(dir, "conf.d", "haproxy.toml"), []byte(fmt.Sprintf(
		"[template]\nsrc = \"haproxy.tmpl\"\ndest = %q\nkeys = [\"/hx\"]\ncheck_cmd = \"%s -c -q -f {{.src}}\"\n", dest, bin)), 0o644)
	cmd, logs := renderProcess(t, "-node", srv.Endpoint(), "-confdir", dir, "-watch",
		"-exec", bin+" -W -db -f "+dest, "-exec-reload-signal", "USR2", "-exec-kill-timeout", "10s")
	get := func() string {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			return ""
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	eventually(t, "haproxy serving the first render", func() bool { return get() == "one" })
	c.Put(context.Background(), "/hx/v", "two", 0)
	eventually(t, "haproxy serving the change", func() bool { return get() == "two" })
	if n := strings.Count(logs.String(), "exec: child started"); n != 1 {
		t.Errorf("haproxy started %d times, want once (reloaded by signal, not restarted)", n)
	}
	if !strings.Contains(logs.String(), "signalling the child") {
		t.Error("no reload signal logged")
	}
	cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "SIGHUP forwarded", func() bool { return strings.Contains(logs.String(), "signal=hangup") })
	cmd.Process.Signal(syscall.SIGTERM)
	code := waitExit(t, cmd, 30*time.Second)
	if !strings.Contains(logs.String(), "signal=terminated") {
		t.Error("SIGTERM was not forwarded to haproxy")
	}
	if get() != "" {
		t.Error("haproxy still answers after render exited")
	}
	t.Logf("render exited %d with haproxy", code)
}

// TestExecRestartAndKillTimeout: without -exec-reload-signal a change
// restarts the child; a child that ignores SIGTERM is killed after
// -exec-kill-timeout, and render exits 128+9.
func TestExecRestartAndKillTimeout(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	c.Put(context.Background(), "/clusterstate/ns/a", walkValue, 0)
	dir, dest := confdir(t)
	starts := filepath.Join(t.TempDir(), "starts") // a line once SIGTERM is ignored
	cmd, logs := renderProcess(t, "-node", srv.Endpoint(), "-confdir", dir, "-watch",
		"-exec", `sh -c 'trap "" TERM; echo x >> `+starts+`; while :; do sleep 0.1; done'`, "-exec-kill-timeout", "300ms")
	eventually(t, "the child", func() bool { return strings.Contains(logs.String(), "exec: child started") })
	time.Sleep(1100 * time.Millisecond) // past the grace of a new child
	c.Put(context.Background(), "/clusterstate/ns/b", "h2 10.0.0.2:80", 0)
	eventually(t, "the restart", func() bool { return strings.Count(logs.String(), "exec: child started") == 2 })
	eventually(t, "the new child ignoring SIGTERM", func() bool { b, _ := os.ReadFile(starts); return strings.Count(string(b), "x") == 2 })
	if b, _ := os.ReadFile(dest); !strings.Contains(string(b), "h2 10.0.0.2:80") {
		t.Errorf("restarted before the file changed: %q", b)
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	if code := waitExit(t, cmd, 20*time.Second); code != 128+9 {
		t.Errorf("render exited %d, want 137 (the child killed)", code)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("stopping took %v with -exec-kill-timeout 300ms", d)
	}
}
