package process_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/process"
)

// The test binary doubles as an "agent" for the kill -9 test.
const helperEnv = "FLOTILLA_PROCESS_TEST_AGENT"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		os.Exit(helperAgent(dir))
	}
	goleak.VerifyTestMain(m)
}

// helperAgent starts the unit in dir/unit.service and blocks until killed.
func helperAgent(dir string) int {
	e, err := process.New(process.Options{Dir: dir})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	body, _ := os.ReadFile(filepath.Join(dir, "unit.service"))
	if err := e.Start(context.Background(), executor.Spec{Name: "orphan.service", Body: body, Hash: "x"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	select {}
}

func newExec(t *testing.T) (*process.Executor, string) {
	t.Helper()
	dir := t.TempDir()
	e, err := process.New(process.Options{Dir: dir, Hostname: "h1", DefaultTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, dir
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitState waits until unit reaches active/sub.
func waitState(t *testing.T, e *process.Executor, unit, active, sub string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last executor.State
	for time.Now().Before(deadline) {
		st, _ := e.States(context.Background())
		last = st[unit]
		if last.Active == active && last.Sub == sub {
			return
		}
		select {
		case <-e.Changes():
		case <-time.After(50 * time.Millisecond):
		}
	}
	lines, _ := e.Journal(context.Background(), unit, 30)
	t.Fatalf("%s: state %s/%s, want %s/%s; journal:\n%s", unit, last.Active, last.Sub, active, sub, strings.Join(lines, "\n"))
}

func waitFile(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && len(b) > 0 && strings.HasSuffix(string(b), "\n") {
			return string(b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s never written", path)
	return ""
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && !strings.HasPrefix(s[i+2:], "Z")
}

func pids(t *testing.T, path string) []int {
	t.Helper()
	var out []int
	for _, f := range strings.Fields(waitFile(t, path)) {
		p, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, p)
	}
	return out
}

func TestSimpleUnitLifecycle(t *testing.T) {
	e, dir := newExec(t)
	ctx := ctxT(t)
	envFile := filepath.Join(dir, "machine.env")
	os.WriteFile(envFile, process.WriteEnvFile([][2]string{{"PUBLIC_IP", "10.1.2.3"}, {"FLOTILLA_MACHINE_ID", "abc"}}), 0o644)
	userEnv := filepath.Join(dir, "user.env")
	os.WriteFile(userEnv, []byte("# comment\nFROM_FILE='file value'\n"), 0o644)
	out := filepath.Join(dir, "out")
	body := fmt.Sprintf(`[Unit]
Description=test
[Service]
Environment=GREETING=hello "SPACED=a b"
EnvironmentFile=%s
EnvironmentFile=-/nonexistent/env
ExecStartPre=-/bin/false
ExecStartPre=/bin/sh -c 'echo pre-ran'
ExecStart=/bin/sh -c 'echo "$GREETING|$SPACED|$FROM_FILE|$PUBLIC_IP|%%n|%%i|%%p|%%H|%%m" > %s; echo $$$$ > %s.main; exec sleep 1000'
ExecStartPost=/bin/sh -c 'sleep 1000 & echo $! > %s.post'
ExecStop=/bin/sh -c 'echo stop-ran MAINPID=$MAINPID'
ExecStopPost=/bin/sh -c 'echo stoppost-ran'
`, userEnv, out, out, out)
	spec := executor.Spec{Name: "web@7.service", Body: []byte(body), Hash: "h1", EnvFile: envFile, Env: map[string]string{"FLOTILLA_MACHINE_ID": "abc"}}
	if err := e.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	waitState(t, e, "web@7.service", "active", "running")
	if got, want := waitFile(t, out), "hello|a b|file value|10.1.2.3|web@7.service|7|web|h1|abc\n"; got != want {
		t.Errorf("environment and specifiers:\n got %q\nwant %q", got, want)
	}
	// The main process and the one ExecStartPost left behind; they run at
	// the same time, so each writes its own file.
	procs := append(pids(t, out+".main"), pids(t, out+".post")...)
	// Same hash again: no restart.
	if err := e.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if !alive(procs[0]) {
		t.Fatal("a Start with the same hash restarted the unit")
	}
	if err := e.Stop(ctx, "web@7.service"); err != nil {
		t.Fatal(err)
	}
	if st, _ := e.States(ctx); st["web@7.service"].Active != "inactive" {
		t.Errorf("after Stop: %+v", st["web@7.service"])
	}
	for _, p := range procs {
		if alive(p) {
			t.Errorf("process %d survived Stop", p)
		}
	}
	lines, err := e.Journal(ctx, "web@7.service", 100)
	if err != nil {
		t.Fatal(err)
	}
	j := strings.Join(lines, "\n")
	for _, want := range []string{"pre-ran", `"-/bin/false" failed (ignored)`, "Started web@7.service", "stop-ran MAINPID=" + strconv.Itoa(procs[0]), "stoppost-ran", "Stopped web@7.service"} {
		if !strings.Contains(j, want) {
			t.Errorf("journal lacks %q:\n%s", want, j)
		}
	}
	if err := e.Remove(ctx, "web@7.service"); err != nil {
		t.Fatal(err)
	}
	if st, _ := e.States(ctx); len(st) != 0 {
		t.Errorf("states after Remove: %v", st)
	}
}

func TestFailuresAndTypes(t *testing.T) {
	tests := map[string]struct {
		body       string
		active     string
		sub        string
		wantInLog  string
		thenStopOK bool
	}{
		"failing pre": {
			body:   "[Service]\nExecStartPre=/bin/false\nExecStart=/bin/sleep 1000\nExecStopPost=/bin/echo cleanup\n",
			active: "failed", sub: "failed", wantInLog: "cleanup",
		},
		"main exits non-zero": {
			body:   "[Service]\nExecStart=/bin/sh -c 'exit 3'\n",
			active: "failed", sub: "failed", wantInLog: "status=3/FAILURE",
		},
		"main exits zero": {
			body:   "[Service]\nExecStart=/bin/true\n",
			active: "inactive", sub: "dead", wantInLog: "status=0/SUCCESS",
		},
		"oneshot": {
			body:   "[Service]\nType=oneshot\nExecStart=/bin/echo one\nExecStart=/bin/echo two\n",
			active: "inactive", sub: "dead", wantInLog: "two",
		},
		"oneshot remain": {
			body:   "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/echo once\n",
			active: "active", sub: "exited", wantInLog: "once", thenStopOK: true,
		},
		"forking": {
			body:   "[Service]\nType=forking\nExecStart=/bin/sh -c 'sleep 1000 &'\n",
			active: "active", sub: "running", thenStopOK: true,
		},
		"missing program": {
			body:   "[Service]\nExecStart=/nonexistent/prog\n",
			active: "failed", sub: "failed", wantInLog: "/nonexistent/prog",
		},
		"start timeout": {
			body:   "[Service]\nExecStartPre=/bin/sleep 100\nTimeoutStartSec=300ms\nExecStart=/bin/sleep 100\n",
			active: "failed", sub: "failed", wantInLog: "timed out",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			e, _ := newExec(t)
			ctx := ctxT(t)
			if err := e.Start(ctx, executor.Spec{Name: "u.service", Body: []byte(tc.body), Hash: "h"}); err != nil {
				t.Fatal(err)
			}
			waitState(t, e, "u.service", tc.active, tc.sub)
			if tc.wantInLog != "" {
				lines, _ := e.Journal(ctx, "u.service", 50)
				if j := strings.Join(lines, "\n"); !strings.Contains(j, tc.wantInLog) {
					t.Errorf("journal lacks %q:\n%s", tc.wantInLog, j)
				}
			}
			if tc.thenStopOK {
				if err := e.Stop(ctx, "u.service"); err != nil {
					t.Fatal(err)
				}
				waitState(t, e, "u.service", "inactive", "dead")
			}
		})
	}
}

func TestBadUnitRejected(t *testing.T) {
	e, _ := newExec(t)
	err := e.Start(ctxT(t), executor.Spec{Name: "bad.service", Body: []byte("[Service]\nType=nope\nExecStart=/bin/true\n")})
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("Start of a bad unit: %v", err)
	}
	err = e.Start(ctxT(t), executor.Spec{Name: "tmpl@.service", Body: []byte("[Service]\nExecStart=/bin/true\n")})
	if err == nil {
		t.Fatal("a template was started")
	}
}

func TestRestartOnFailure(t *testing.T) {
	e, dir := newExec(t)
	ctx := ctxT(t)
	count := filepath.Join(dir, "count")
	body := fmt.Sprintf("[Service]\nRestart=on-failure\nRestartSec=50ms\nExecStart=/bin/sh -c 'echo x >> %s; test $(wc -l < %s) -ge 3 && exec sleep 1000; exit 1'\n", count, count)
	if err := e.Start(ctx, executor.Spec{Name: "r.service", Body: []byte(body), Hash: "h"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for b, _ := os.ReadFile(count); strings.Count(string(b), "x") < 3 && time.Now().Before(deadline); b, _ = os.ReadFile(count) {
		time.Sleep(20 * time.Millisecond)
	}
	waitState(t, e, "r.service", "active", "running")
	b, _ := os.ReadFile(count)
	if n := strings.Count(string(b), "x"); n != 3 {
		t.Errorf("ran %d times, want 3", n)
	}
	// A new hash replaces the running unit.
	if err := e.Start(ctx, executor.Spec{Name: "r.service", Body: []byte("[Service]\nExecStart=/bin/sleep 1000\n"), Hash: "h2"}); err != nil {
		t.Fatal(err)
	}
	waitState(t, e, "r.service", "active", "running")
	lines, _ := e.Journal(ctx, "r.service", 100)
	if j := strings.Join(lines, "\n"); !strings.Contains(j, "Stopped r.service") {
		t.Errorf("old run was not stopped:\n%s", j)
	}
}

func TestRestartAlwaysStopsDuringWait(t *testing.T) {
	e, _ := newExec(t)
	ctx := ctxT(t)
	body := "[Service]\nRestart=always\nRestartSec=1h\nExecStart=/bin/true\n"
	e.Start(ctx, executor.Spec{Name: "a.service", Body: []byte(body), Hash: "h"})
	waitState(t, e, "a.service", "activating", "auto-restart")
	if err := e.Stop(ctx, "a.service"); err != nil {
		t.Fatal(err)
	}
	waitState(t, e, "a.service", "inactive", "dead")
}

func TestStopEscalatesToKill(t *testing.T) {
	e, dir := newExec(t)
	ctx := ctxT(t)
	p := filepath.Join(dir, "pid")
	body := fmt.Sprintf("[Service]\nTimeoutStopSec=300ms\nExecStart=/bin/sh -c 'trap \"\" TERM; echo $$$$ > %s; while :; do sleep 0.1; done'\n", p)
	e.Start(ctx, executor.Spec{Name: "stubborn.service", Body: []byte(body), Hash: "h"})
	waitState(t, e, "stubborn.service", "active", "running")
	pid := pids(t, p)[0]
	if err := e.Stop(ctx, "stubborn.service"); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Error("a process ignoring SIGTERM survived Stop")
	}
}

// TestAgentKilledLeavesNoOrphan kills -9 a process running the executor and
// checks that every process of its unit dies, including one that left its
// parent (as an `announce --detach` keeper does).
func TestAgentKilledLeavesNoOrphan(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pids")
	body := fmt.Sprintf(`[Service]
ExecStart=/bin/sh -c 'echo $$$$ >> %[1]s; exec sleep 1000'
ExecStartPost=/bin/sh -c '(sleep 1000 & echo $! >> %[1]s) &'
ExecStartPost=/bin/sh -c 'echo >> %[1]s'
`, pidFile)
	os.WriteFile(filepath.Join(dir, "unit.service"), []byte(body), 0o644)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var procs []int
	deadline := time.Now().Add(20 * time.Second)
	for len(procs) < 2 && time.Now().Before(deadline) {
		b, _ := os.ReadFile(pidFile)
		procs = nil
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil {
				procs = append(procs, p)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(procs) < 2 {
		cmd.Process.Kill()
		cmd.Wait()
		log, _ := os.ReadFile(filepath.Join(dir, "orphan.service.log"))
		t.Fatalf("unit did not start its processes: %v; log:\n%s", procs, log)
	}
	for _, p := range procs {
		if !alive(p) {
			t.Fatalf("process %d not alive before the kill", p)
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	deadline = time.Now().Add(10 * time.Second)
	for _, p := range procs {
		for alive(p) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(p) {
			t.Errorf("process %d outlived its agent", p)
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
}

// TestExecStopRunsBeforeSignal checks systemd's order, on which the
// acknowledged withdrawal (ExecStop=announce --withdraw) relies: ExecStop=
// runs to its end while the main process and every other process of the
// unit (an announce keeper) are still alive and unsignalled; only then are
// they sent SIGTERM; ExecStopPost= runs after they are gone.
func TestExecStopRunsBeforeSignal(t *testing.T) {
	e, dir := newExec(t)
	ctx := ctxT(t)
	events := filepath.Join(dir, "events")
	body := fmt.Sprintf(`[Service]
ExecStart=/bin/sh -c 'trap "echo main-term >> %[1]s; exit 0" TERM; echo main-up >> %[1]s; while :; do sleep 0.05; done'
ExecStartPost=/bin/sh -c '(trap "echo keeper-term >> %[1]s; exit 0" TERM; while :; do sleep 0.05; done) & echo keeper-up >> %[1]s'
ExecStop=/bin/sh -c 'sleep 0.5; kill -0 $MAINPID && echo stop-saw-main-alive >> %[1]s; echo stop-done >> %[1]s'
ExecStopPost=/bin/sh -c 'kill -0 $MAINPID 2>/dev/null || echo stoppost-main-gone >> %[1]s'
`, events)
	if err := e.Start(ctx, executor.Spec{Name: "order.service", Body: []byte(body), Hash: "h"}); err != nil {
		t.Fatal(err)
	}
	waitState(t, e, "order.service", "active", "running")
	if err := e.Stop(ctx, "order.service"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(events)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Fields(string(b))
	idx := map[string]int{}
	for i, ev := range got {
		idx[ev] = i + 1
	}
	for _, ev := range []string{"main-up", "keeper-up", "stop-saw-main-alive", "stop-done", "main-term", "keeper-term", "stoppost-main-gone"} {
		if idx[ev] == 0 {
			t.Fatalf("event %s missing; events: %v", ev, got)
		}
	}
	for _, term := range []string{"main-term", "keeper-term"} {
		if idx[term] < idx["stop-done"] {
			t.Errorf("%s before ExecStop ended; events: %v", term, got)
		}
		if idx[term] > idx["stoppost-main-gone"] {
			t.Errorf("%s after ExecStopPost; events: %v", term, got)
		}
	}
	t.Logf("events in order: %v", got)
}
