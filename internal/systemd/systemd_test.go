package systemd_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"go.uber.org/goleak"
	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/systemd"
	"github.com/flotilla/flotilla/internal/systemdtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// The etcd server and client keep a few process-wide goroutines.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
	)
}

// hang is how long a test waits for something that should happen at once:
// only a hang takes this long.
const hang = 30 * time.Second

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// env is one test's systemd and executor.
type env struct {
	t   *testing.T
	m   *systemdtest.Manager
	e   *systemd.Executor
	ctx context.Context
}

func newEnv(t *testing.T, opts systemd.Options) *env {
	m := systemdtest.New(t)
	en := &env{t: t, m: m, ctx: ctxT(t)}
	en.e = en.executor(opts)
	return en
}

// executor opens another Executor on the same manager (an agent restart).
// It waits for start jobs (WaitStart), so that a test can look at what
// ExecStartPost did as soon as Start returns; TestStartDoesNotWait covers the
// default.
func (en *env) executor(opts systemd.Options) *systemd.Executor {
	en.t.Helper()
	opts.WaitStart = true
	return en.executorNoWait(opts)
}

func (en *env) executorNoWait(opts systemd.Options) *systemd.Executor {
	en.t.Helper()
	opts.User = true
	opts.BusAddress = en.m.BusAddress
	opts.UnitDir = en.m.UnitDir
	opts.JournalDir = en.m.JournalDir
	opts.Logger = slog.New(slog.NewTextHandler(en.t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	e, err := systemd.New(en.ctx, opts)
	if err != nil {
		en.t.Fatal(err)
	}
	en.t.Cleanup(func() { _ = e.Close() })
	return e
}

// conn is a separate D-Bus connection to the manager, for what a test does
// behind the executor's back (killing a process).
func (en *env) conn() *sddbus.Conn {
	en.t.Helper()
	c, err := systemdtest.Dial(en.ctx, en.m.BusAddress)
	if err != nil {
		en.t.Fatal(err)
	}
	en.t.Cleanup(c.Close)
	return c
}

func (en *env) start(e *systemd.Executor, name, body string) {
	en.t.Helper()
	if err := e.Start(en.ctx, executor.Spec{Name: name, Body: []byte(body), EnvFile: en.envFile()}); err != nil {
		en.t.Fatal(err)
	}
}

// envFile is the machine-facts file the agent would maintain.
func (en *env) envFile() string {
	p := filepath.Join(en.m.Dir, "machine.env")
	if _, err := os.Stat(p); err != nil {
		if err := os.WriteFile(p, []byte("PUBLIC_IP=127.0.0.7\nFLOTILLA_MACHINE_ID=m1\n"), 0o644); err != nil {
			en.t.Fatal(err)
		}
	}
	return p
}

func (en *env) path(name string) string { return filepath.Join(en.m.Dir, name) }

// waitState waits until pred holds for name's state (absent: zero State),
// woken by Changes and, as a safety net, a short poll.
func (en *env) waitState(e *systemd.Executor, name string, pred func(executor.State) bool) executor.State {
	en.t.Helper()
	deadline := time.Now().Add(hang)
	for {
		st, err := e.States(en.ctx)
		if err != nil {
			en.t.Fatal(err)
		}
		if pred(st[name]) {
			return st[name]
		}
		if time.Now().After(deadline) {
			en.t.Fatalf("%s: state %+v never matched\n%s", name, st[name], en.m.Log())
		}
		select {
		case <-e.Changes():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func is(active, sub string) func(executor.State) bool {
	return func(s executor.State) bool { return s.Active == active && s.Sub == sub }
}

// waitFile waits until path holds want (trimmed).
func (en *env) waitFile(path, want string) {
	en.t.Helper()
	deadline := time.Now().Add(hang)
	for {
		b, _ := os.ReadFile(path)
		if strings.TrimSpace(string(b)) == want {
			return
		}
		if time.Now().After(deadline) {
			en.t.Fatalf("%s holds %q, want %q", path, b, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (en *env) mainPID(name string) uint32 {
	en.t.Helper()
	p, err := en.conn().GetServicePropertyContext(en.ctx, name, "MainPID")
	if err != nil {
		en.t.Fatal(err)
	}
	return p.Value.Value().(uint32)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func TestStartStopRemove(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	out := en.path("web.out")
	// %n and %H are expanded by systemd; PUBLIC_IP comes from the machine
	// facts environment file given through the drop-in.
	body := "[Unit]\nDescription=web\n[Service]\nExecStart=/bin/sh -c 'echo \"%n $PUBLIC_IP\" > " + out + "; exec sleep 1000'\n"
	en.start(en.e, "web.service", body)

	st := en.waitState(en.e, "web.service", is("active", "running"))
	if st.Load != "loaded" {
		t.Errorf("load state %q, want loaded", st.Load)
	}
	en.waitFile(out, "web.service 127.0.0.7")

	unitFile := filepath.Join(en.m.UnitDir, "web.service")
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "# flotilla: owned") || !strings.HasSuffix(string(b), body) {
		t.Errorf("unit file is not the marker line + the body as submitted:\n%s", b)
	}
	dropIn := filepath.Join(en.m.UnitDir, "web.service.d", "50-flotilla.conf")
	if b, err := os.ReadFile(dropIn); err != nil || !strings.Contains(string(b), "EnvironmentFile=-"+en.envFile()) {
		t.Errorf("drop-in %s: %v\n%s", dropIn, err, b)
	}

	// The same spec again is a no-op: the process is not restarted.
	pid := en.mainPID("web.service")
	en.start(en.e, "web.service", body)
	if got := en.mainPID("web.service"); got != pid {
		t.Errorf("Start with the same body restarted the unit: main pid %d → %d", pid, got)
	}

	if err := en.e.Stop(en.ctx, "web.service"); err != nil {
		t.Fatal(err)
	}
	en.waitState(en.e, "web.service", is("inactive", "dead"))
	if !exists(unitFile) {
		t.Error("Stop removed the unit file")
	}

	// Start again, then Remove: stopped, files gone, no longer reported.
	en.start(en.e, "web.service", body)
	en.waitState(en.e, "web.service", is("active", "running"))
	if err := en.e.Remove(en.ctx, "web.service"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{unitFile, dropIn, filepath.Dir(dropIn)} {
		if exists(p) {
			t.Errorf("%s still exists after Remove", p)
		}
	}
	st2, err := en.e.States(en.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st2) != 0 {
		t.Errorf("States after Remove: %v, want none", st2)
	}
	us, err := en.conn().ListUnitsByNamesContext(en.ctx, []string{"web.service"})
	if err != nil || len(us) != 1 || us[0].LoadState != "not-found" || us[0].ActiveState != "inactive" {
		t.Errorf("systemd still knows web.service after Remove: %+v %v", us, err)
	}
	// Removing again, or an unknown unit, is a no-op.
	if err := en.e.Remove(en.ctx, "web.service"); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if err := en.e.Stop(en.ctx, "nothing.service"); err != nil {
		t.Errorf("Stop of an unknown unit: %v", err)
	}
}

func TestBodyChangeRestarts(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	out := en.path("v.out")
	v := func(n string) string {
		return "[Service]\nExecStart=/bin/sh -c 'echo " + n + " > " + out + "; exec sleep 1000'\n"
	}
	en.start(en.e, "v.service", v("one"))
	en.waitFile(out, "one")
	if err := en.e.Start(en.ctx, executor.Spec{Name: "v.service", Body: []byte(v("two")), Hash: "h2"}); err != nil {
		t.Fatal(err)
	}
	en.waitFile(out, "two")
	en.waitState(en.e, "v.service", is("active", "running"))
}

func TestFailingUnit(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	// A simple service whose process fails after the start job is done.
	// It stays alive until the test has found its line in the journal:
	// journald attributes a stream to a unit by the sender's cgroup, looked
	// up by pid, so a writer that is already gone (a loaded machine can
	// delay journald by seconds) would leave its line unattributed.
	release := en.path("release")
	en.start(en.e, "crash.service", "[Service]\nExecStart=/bin/sh -c 'echo dying; i=0; while [ ! -e "+release+" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; exit 3'\n")
	// Its output is in the journal (the test manager's own journald).
	deadline := time.Now().Add(hang)
	for {
		lines, err := en.e.Journal(en.ctx, "crash.service", 10)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Join(lines, "\n") == "dying" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal of crash.service: %q, want [dying]", lines)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	st := en.waitState(en.e, "crash.service", is("failed", "failed"))
	if st.Load != "loaded" {
		t.Errorf("load %q", st.Load)
	}

	// A unit that wrote nothing: Journal says the journal has nothing and
	// shows what systemd knows instead.
	en.start(en.e, "mute.service", "[Service]\nExecStart=/bin/sh -c 'exit 3'\n")
	en.waitState(en.e, "mute.service", is("failed", "failed"))
	lines, err := en.e.Journal(en.ctx, "mute.service", 10)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(lines, "\n")
	t.Logf("journal:\n%s", text)
	for _, want := range []string{"no journal for mute.service", "failed/failed", "result: exit-code", "ExecStart=/bin/sh -c exit 3: exited with status 3"} {
		if !strings.Contains(text, want) {
			t.Errorf("journal lacks %q", want)
		}
	}

	// A oneshot whose start job fails: Start reports it.
	err = en.e.Start(en.ctx, executor.Spec{Name: "bad.service", Body: []byte("[Service]\nType=oneshot\nExecStart=/bin/false\n")})
	if err == nil || !strings.Contains(err.Error(), "bad.service") || !strings.Contains(err.Error(), "failed") {
		t.Errorf("Start of a failing oneshot: %v", err)
	}
	en.waitState(en.e, "bad.service", is("failed", "failed"))

	// A body systemd cannot load is reported with systemd's reason.
	err = en.e.Start(en.ctx, executor.Spec{Name: "noexec.service", Body: []byte("[Service]\nType=simple\n")})
	if err == nil || !strings.Contains(err.Error(), "noexec.service") || !strings.Contains(err.Error(), "bad-setting") {
		t.Errorf("Start of a unit without ExecStart: %v", err)
	}
	t.Logf("unloadable unit: %v", err)

	// A failed unit starts again (the failure is reset first).
	en.start(en.e, "crash.service", "[Service]\nExecStart=/bin/sleep 1000\n")
	en.waitState(en.e, "crash.service", is("active", "running"))
}

func TestTemplateInstances(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	tpl := func(tag string) string {
		return "[Service]\nExecStart=/bin/sh -c 'echo " + tag + " %i > " + en.path("%i") + "; exec sleep 1000'\n"
	}
	en.start(en.e, "web@1.service", tpl("v1"))
	en.start(en.e, "web@2.service", tpl("v1"))
	en.waitFile(en.path("1"), "v1 1")
	en.waitFile(en.path("2"), "v1 2")
	en.waitState(en.e, "web@1.service", is("active", "running"))
	en.waitState(en.e, "web@2.service", is("active", "running"))
	tplFile := filepath.Join(en.m.UnitDir, "web@.service")
	if !exists(tplFile) {
		t.Fatal("no template file web@.service")
	}
	for _, f := range []string{"web@1.service", "web@2.service"} {
		if exists(filepath.Join(en.m.UnitDir, f)) {
			t.Errorf("%s written as a file: instances must run from the template", f)
		}
	}
	if err := en.e.Start(en.ctx, executor.Spec{Name: "web@.service", Body: []byte(tpl("v1"))}); err == nil {
		t.Error("a template was started")
	}

	// A new body for one instance while the other still runs the old one:
	// web@2 gets an instance file, web@1 keeps running untouched.
	pid1 := en.mainPID("web@1.service")
	en.start(en.e, "web@2.service", tpl("v2"))
	en.waitFile(en.path("2"), "v2 2")
	if !exists(filepath.Join(en.m.UnitDir, "web@2.service")) {
		t.Error("web@2.service has no instance file for its new body")
	}
	if got := en.mainPID("web@1.service"); got != pid1 {
		t.Errorf("web@1 restarted (pid %d → %d) by an update of web@2", pid1, got)
	}

	// Removing one instance keeps the template for the other; removing the
	// last removes every file.
	if err := en.e.Remove(en.ctx, "web@1.service"); err != nil {
		t.Fatal(err)
	}
	if !exists(tplFile) {
		t.Error("template removed while web@2 is installed")
	}
	en.waitState(en.e, "web@2.service", is("active", "running"))
	if err := en.e.Remove(en.ctx, "web@2.service"); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(en.m.UnitDir)
	for _, e := range ents {
		t.Errorf("left in the unit directory after removing every unit: %s", e.Name())
	}
}

func TestForeignUnitsUntouched(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	foreign := "[Service]\nExecStart=/bin/sleep 1000\n"

	// A file of the same name in the executor's own directory.
	path := filepath.Join(en.m.UnitDir, "theirs.service")
	if err := os.WriteFile(path, []byte(foreign), 0o644); err != nil {
		t.Fatal(err)
	}
	// A unit systemd loads from a directory of higher priority.
	cfgDir := filepath.Join(en.m.Dir, "config", "systemd", "user")
	if err := os.MkdirAll(cfgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfgDir, "shadow.service"), []byte(foreign), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := en.m.Systemctl(en.ctx, "daemon-reload"); err != nil {
		t.Fatal(err)
	}
	if _, err := en.m.Systemctl(en.ctx, "start", "theirs.service"); err != nil {
		t.Fatal(err)
	}

	for _, name := range []string{"theirs.service", "shadow.service"} {
		err := en.e.Start(en.ctx, executor.Spec{Name: name, Body: []byte("[Service]\nExecStart=/bin/true\n")})
		if !errors.Is(err, systemd.ErrNotOwned) {
			t.Errorf("Start of foreign %s: %v, want ErrNotOwned", name, err)
		}
	}
	if b, _ := os.ReadFile(path); string(b) != foreign {
		t.Errorf("foreign file overwritten:\n%s", b)
	}
	if exists(filepath.Join(en.m.UnitDir, "shadow.service")) || exists(filepath.Join(en.m.UnitDir, "theirs.service.d")) {
		t.Error("files written for a foreign unit")
	}
	if err := en.e.Stop(en.ctx, "theirs.service"); !errors.Is(err, systemd.ErrNotOwned) {
		t.Errorf("Stop of a foreign unit: %v, want ErrNotOwned", err)
	}
	if err := en.e.Remove(en.ctx, "theirs.service"); err != nil {
		t.Errorf("Remove of a foreign unit: %v, want a no-op", err)
	}
	if !exists(path) {
		t.Error("Remove deleted a foreign file")
	}
	us, err := en.conn().ListUnitsByNamesContext(en.ctx, []string{"theirs.service"})
	if err != nil || len(us) != 1 || us[0].ActiveState != "active" {
		t.Errorf("foreign unit disturbed: %+v %v", us, err)
	}
	if st, _ := en.e.States(en.ctx); len(st) != 0 {
		t.Errorf("States reports foreign units: %v", st)
	}
}

// TestAgentRestart: a new Executor on the same manager (the agent restarted)
// sees the running units and their states without restarting them; Adopt
// removes the ones no longer targeted here and keeps the others.
func TestAgentRestart(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	body := "[Service]\nExecStart=/bin/sleep 1000\n"
	en.start(en.e, "keep.service", body)
	en.start(en.e, "gone.service", body)
	en.start(en.e, "crash.service", "[Service]\nExecStart=/bin/false\n")
	en.waitState(en.e, "crash.service", is("failed", "failed"))
	pid := en.mainPID("keep.service")
	if err := en.e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := en.e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}

	e2 := en.executor(systemd.Options{})
	st, err := e2.States(en.ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]executor.State{
		"keep.service":  {Load: "loaded", Active: "active", Sub: "running"},
		"gone.service":  {Load: "loaded", Active: "active", Sub: "running"},
		"crash.service": {Load: "loaded", Active: "failed", Sub: "failed"},
	}
	for name, w := range want {
		if st[name] != w {
			t.Errorf("after restart %s: %+v, want %+v", name, st[name], w)
		}
	}
	if len(st) != len(want) {
		t.Errorf("after restart: %v", st)
	}
	en.start(e2, "keep.service", body)
	if got := en.mainPID("keep.service"); got != pid {
		t.Errorf("keep.service restarted by the new agent: pid %d → %d", pid, got)
	}

	removed, err := e2.Adopt(en.ctx, func(name string) bool { return name == "keep.service" })
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 2 {
		t.Errorf("Adopt removed %v, want gone.service and crash.service", removed)
	}
	st, err = e2.States(en.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st["keep.service"].Active != "active" {
		t.Errorf("after Adopt: %v", st)
	}
	if got := en.mainPID("keep.service"); got != pid {
		t.Errorf("Adopt restarted keep.service: pid %d → %d", pid, got)
	}
	us, err := en.conn().ListUnitsByNamesContext(en.ctx, []string{"gone.service"})
	if err != nil || len(us) != 1 || us[0].ActiveState != "inactive" {
		t.Errorf("gone.service after Adopt: %+v %v", us, err)
	}
}

// TestRestartBySystemd: Restart= is systemd's business; the executor reports
// the unit running again, and Changes fires for the transitions.
func TestRestartBySystemd(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	count := en.path("count")
	en.start(en.e, "flaky.service", "[Service]\nRestart=always\nRestartSec=100ms\nExecStart=/bin/sh -c 'echo x >> "+count+"; exec sleep 1000'\n")
	en.waitState(en.e, "flaky.service", is("active", "running"))
	en.waitFile(count, "x")
	// Drain a pending change notification, then kill the main process.
	select {
	case <-en.e.Changes():
	default:
	}
	if err := en.conn().KillUnitWithTarget(en.ctx, "flaky.service", sddbus.Main, int32(syscall.SIGKILL)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-en.e.Changes():
	case <-time.After(hang):
		t.Fatal("no change notified after the unit's process was killed")
	}
	en.waitFile(count, "x\nx")
	en.waitState(en.e, "flaky.service", is("active", "running"))
	n, err := en.conn().GetServicePropertyContext(en.ctx, "flaky.service", "NRestarts")
	if err != nil {
		t.Fatal(err)
	}
	if n.Value.Value().(uint32) != 1 {
		t.Errorf("NRestarts = %v, want 1", n.Value)
	}
}

// TestBoundToAgent: with AgentUnit, fenced units (OnDisconnect=stop) stop
// when the agent's unit goes away — with BindsTo (the default) even when it
// is killed with SIGKILL, when the agent can do nothing itself; with PartOf
// when it is stopped. Other units are not bound: they keep running (an
// agent restart must not stop them).
func TestBoundToAgent(t *testing.T) {
	tests := map[string]struct {
		dep  string
		want string
		kill func(en *env) error
	}{
		"BindsTo, agent killed": {dep: "", want: "BindsTo=agent.service", kill: func(en *env) error {
			return en.conn().KillUnitWithTarget(en.ctx, "agent.service", sddbus.All, int32(syscall.SIGKILL))
		}},
		"PartOf, agent stopped": {dep: systemd.PartOf, want: "PartOf=agent.service", kill: func(en *env) error {
			_, err := en.m.Systemctl(en.ctx, "stop", "agent.service")
			return err
		}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			m := systemdtest.New(t)
			en := &env{t: t, m: m, ctx: ctxT(t)}
			if err := os.WriteFile(filepath.Join(m.UnitDir, "agent.service"), []byte("[Service]\nExecStart=/bin/sleep 1000\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Systemctl(en.ctx, "daemon-reload"); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Systemctl(en.ctx, "start", "agent.service"); err != nil {
				t.Fatal(err)
			}
			en.e = en.executor(systemd.Options{AgentUnit: "agent.service", AgentDependency: tc.dep})
			body := []byte("[Service]\nExecStart=/bin/sleep 1000\n")
			if err := en.e.Start(en.ctx, executor.Spec{Name: "fenced.service", Body: body, EnvFile: en.envFile(), Fenced: true}); err != nil {
				t.Fatal(err)
			}
			en.start(en.e, "free.service", string(body))
			en.waitState(en.e, "fenced.service", is("active", "running"))
			en.waitState(en.e, "free.service", is("active", "running"))
			b, _ := os.ReadFile(filepath.Join(m.UnitDir, "fenced.service.d", "50-flotilla.conf"))
			if !strings.Contains(string(b), tc.want) {
				t.Errorf("fenced unit's drop-in lacks %s:\n%s", tc.want, b)
			}
			b, _ = os.ReadFile(filepath.Join(m.UnitDir, "free.service.d", "50-flotilla.conf"))
			if strings.Contains(string(b), "agent.service") {
				t.Errorf("unfenced unit bound to the agent:\n%s", b)
			}
			if err := tc.kill(en); err != nil {
				t.Fatal(err)
			}
			en.waitState(en.e, "fenced.service", is("inactive", "dead"))
			if st, err := en.e.States(en.ctx); err != nil || st["free.service"].Active != "active" {
				t.Errorf("unfenced unit after the agent went: %+v, %v; want active", st["free.service"], err)
			}
		})
	}
}

// TestAgentRestarting: AgentRestarting tells a restart of the agent's unit
// (what an upgrade does) from a stop, while the agent is being stopped —
// when the agent asks, on its SIGTERM.
func TestAgentRestarting(t *testing.T) {
	m := systemdtest.New(t)
	en := &env{t: t, m: m, ctx: ctxT(t)}
	release := filepath.Join(m.Dir, "release")
	// The stand-in agent holds its stop until the test releases it.
	agent := fmt.Sprintf("[Service]\nExecStart=/bin/sh -c 'trap \"while [ ! -e %s ]; do sleep 0.05; done; exit 0\" TERM; while :; do sleep 0.05; done'\nTimeoutStopSec=infinity\n", release)
	if err := os.WriteFile(filepath.Join(m.UnitDir, "agent.service"), []byte(agent), 0o644); err != nil {
		t.Fatal(err)
	}
	systemctl := func(args ...string) string {
		t.Helper()
		out, err := m.Systemctl(en.ctx, args...)
		if err != nil && args[0] != "is-active" {
			t.Fatalf("systemctl %v: %v %s", args, err, out)
		}
		return strings.TrimSpace(out)
	}
	systemctl("daemon-reload")
	systemctl("start", "agent.service")
	en.e = en.executor(systemd.Options{AgentUnit: "agent.service"})
	restarting := func() bool {
		t.Helper()
		r, err := en.e.AgentRestarting(en.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	until := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(hang)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if restarting() {
		t.Fatal("AgentRestarting while the agent just runs")
	}

	systemctl("restart", "--no-block", "agent.service")
	until("the agent deactivating", func() bool { return systemctl("is-active", "agent.service") == "deactivating" })
	if !restarting() {
		t.Error("AgentRestarting false during systemctl restart")
	}
	os.WriteFile(release, nil, 0o644)
	until("the agent active again", func() bool { return systemctl("is-active", "agent.service") == "active" })
	until("the restart job over", func() bool { return !restarting() })
	os.Remove(release)

	systemctl("stop", "--no-block", "agent.service")
	until("the agent deactivating", func() bool { return systemctl("is-active", "agent.service") == "deactivating" })
	if restarting() {
		t.Error("AgentRestarting true during systemctl stop")
	}
	os.WriteFile(release, nil, 0o644)
	until("the agent stopped", func() bool { return systemctl("is-active", "agent.service") == "inactive" })

	// auto finds no unit for a process its manager does not run (this test).
	if u := en.executor(systemd.Options{AgentUnit: systemd.AgentUnitAuto}).AgentUnit(); u != "" {
		t.Errorf("AgentUnit auto outside the manager = %q, want none", u)
	}
	// Without AgentUnit it never claims a restart.
	if r, err := en.executor(systemd.Options{}).AgentRestarting(en.ctx); r || err != nil {
		t.Errorf("AgentRestarting without AgentUnit = %v, %v", r, err)
	}
}

func TestProbe(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	if err := systemd.Probe(en.ctx, systemd.Options{User: true, BusAddress: en.m.BusAddress}); err != nil {
		t.Errorf("Probe of the test manager: %v", err)
	}
	bad := "unix:path=" + en.path("nobus")
	err := systemd.Probe(en.ctx, systemd.Options{BusAddress: bad})
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("Probe of %s: %v, want an error naming it", bad, err)
	}
	_, err = systemd.New(en.ctx, systemd.Options{BusAddress: bad, UnitDir: en.path("units")})
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("New on %s: %v, want an error naming it", bad, err)
	}
	if exists(en.path("units")) {
		t.Error("New without a manager created the unit directory")
	}
}

// TestConcurrentInstances: the agent may start and remove many instances of
// one template at once; the shared template file must come out right.
func TestConcurrentInstances(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	const n = 8
	body := "[Service]\nExecStart=/bin/sleep 1000\n"
	var g errgroup.Group
	for i := range n {
		g.Go(func() error {
			return en.e.Start(en.ctx, executor.Spec{Name: fmt.Sprintf("c@%d.service", i), Body: []byte(body)})
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	st, err := en.e.States(en.ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if s := st[fmt.Sprintf("c@%d.service", i)]; s.Active != "active" {
			t.Errorf("c@%d.service: %+v", i, s)
		}
	}
	for i := range n {
		g.Go(func() error { return en.e.Remove(en.ctx, fmt.Sprintf("c@%d.service", i)) })
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(en.m.UnitDir)
	for _, e := range ents {
		t.Errorf("left after removing every instance: %s", e.Name())
	}
}

// TestReconnect: when the bus goes away (dbus-daemon killed, then started
// again by its socket), the executor reconnects on its next call and keeps
// reporting and notifying.
func TestReconnect(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	en.start(en.e, "a.service", "[Service]\nExecStart=/bin/sleep 1000\n")
	if _, err := en.m.Systemctl(en.ctx, "kill", "--signal=SIGKILL", "dbus.service"); err != nil {
		t.Fatal(err)
	}
	// The executor's signal connection noticed: a change is signalled.
	select {
	case <-en.e.Changes():
	case <-time.After(hang):
		t.Fatal("losing the bus was not signalled on Changes")
	}
	deadline := time.Now().Add(hang)
	for {
		st, err := en.e.States(en.ctx)
		if err == nil && st["a.service"].Active == "active" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no states after the bus came back: %v %v", st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	en.start(en.e, "b.service", "[Service]\nExecStart=/bin/sleep 1000\n")
	en.waitState(en.e, "b.service", is("active", "running"))
	// Signals flow on the new connection.
	select {
	case <-en.e.Changes():
	default:
	}
	if err := en.e.Stop(en.ctx, "b.service"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-en.e.Changes():
	case <-time.After(hang):
		t.Fatal("no change notified after reconnecting")
	}
	if err := en.e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := en.e.States(en.ctx); !errors.Is(err, systemd.ErrClosed) {
		t.Errorf("States after Close: %v, want ErrClosed", err)
	}
}

// TestUserDefaults: a process given the manager's environment (as
// `scheduler serve --executor systemd` would be, under a user manager) finds
// the bus and the unit directory by itself.
func TestUserDefaults(t *testing.T) {
	m := systemdtest.New(t)
	for _, kv := range m.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	ctx := ctxT(t)
	e, err := systemd.New(ctx, systemd.Options{User: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if e.UnitDir() != m.UnitDir {
		t.Errorf("unit directory %s, want %s", e.UnitDir(), m.UnitDir)
	}
	if err := e.Start(ctx, executor.Spec{Name: "d.service", Body: []byte("[Service]\nExecStart=/bin/sleep 1000\n")}); err != nil {
		t.Fatal(err)
	}
	if err := systemd.Probe(ctx, systemd.Options{User: true}); err != nil {
		t.Errorf("Probe with the user defaults: %v", err)
	}
}

func TestNewOptionErrors(t *testing.T) {
	tests := map[string]struct {
		opts    systemd.Options
		env     map[string]string
		wantErr string
	}{
		"bad dependency": {opts: systemd.Options{AgentUnit: "a.service", AgentDependency: "Requires"}, wantErr: `agent dependency "Requires"`},
		"bad agent unit": {opts: systemd.Options{AgentUnit: "a b"}, wantErr: "agent unit"},
		"user without runtime dir": {opts: systemd.Options{User: true}, env: map[string]string{"XDG_RUNTIME_DIR": ""},
			wantErr: "XDG_RUNTIME_DIR is not set"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			_, err := systemd.New(context.Background(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("New: %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
}

// TestStartDoesNotWait: by default Start returns once the job is queued, so a
// unit stuck in ExecStartPre (an endless image pull) does not hold up the
// agent; the outcome of a job shows in States and Changes.
func TestStartDoesNotWait(t *testing.T) {
	m := systemdtest.New(t)
	en := &env{t: t, m: m, ctx: ctxT(t)}
	en.e = en.executorNoWait(systemd.Options{})
	en.start(en.e, "slow.service", "[Service]\nExecStartPre=/bin/sleep 1000\nExecStart=/bin/sleep 1000\n")
	en.waitState(en.e, "slow.service", is("activating", "start-pre"))
	if err := en.e.Stop(en.ctx, "slow.service"); err != nil {
		t.Fatal(err)
	}
	// Killing ExecStartPre counts as a failure for systemd.
	en.waitState(en.e, "slow.service", func(s executor.State) bool { return s.Active == "inactive" || s.Active == "failed" })

	// A failing oneshot: Start succeeds (queued); the failure is a state.
	select {
	case <-en.e.Changes():
	default:
	}
	en.start(en.e, "bad.service", "[Service]\nType=oneshot\nExecStart=/bin/false\n")
	en.waitState(en.e, "bad.service", is("failed", "failed"))
}
