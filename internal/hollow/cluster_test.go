package hollow_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/hollow"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/testmain"
)

// TestMain runs the tests, or, re-executed by hollow.Start, an engine
// candidate or an agents process.
func TestMain(m *testing.M) {
	if code, child := hollow.ChildMain(); child {
		os.Exit(code)
	}
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

// command re-executes this test binary as one of a cluster's processes.
var command = []string{os.Args[0], "-test.run=^$"}

// gone reports whether no process pid exists any more.
func gone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

// TestEngineProcesses runs two engine candidates as processes: their passes
// reach Passes and LastPass, losing the leader kills its process and the
// other takes over, and Close stops the other gracefully.
func TestEngineProcesses(t *testing.T) {
	srv := etcdtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const prefix = "/hollow/"
	hc, err := hollow.Start(ctx, hollow.Config{
		Store: srv.Config(), Prefix: prefix, Machines: 3, TTL: 2 * time.Second, MoveGrace: -1,
		Command: command, Dir: t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			hc.Close()
		}
	}()
	for _, e := range hc.Engines {
		if e.Pid() == 0 || gone(e.Pid()) {
			t.Fatalf("engine %s: no process (pid %d)", e.ID, e.Pid())
		}
	}
	reg := registry.New(srv.Client(), prefix)
	body := []byte("[Service]\nExecStart=/bin/sleep infinity\n")
	if err := registry.FirstError(reg.Ensure(ctx, []registry.Want{{Name: "a.service", Body: body, Desired: registry.Launched}}, registry.KeepExisting)); err != nil {
		t.Fatal(err)
	}
	leader := func() *hollow.Node {
		id, found, err := srv.Client().Leader(ctx, reg.ElectionPrefix())
		if err != nil || !found {
			return nil
		}
		for _, e := range hc.Engines {
			if e.ID == id {
				return e
			}
		}
		return nil
	}
	var first *hollow.Node
	testmain.Eventually(t, 30*time.Second, 20*time.Millisecond, "an engine leader's pass", func() error {
		if first = leader(); first == nil || hc.LastPass(first.ID).IsZero() {
			return errors.New("no leader that passed")
		}
		return nil
	})
	for _, p := range hc.Passes() {
		if p.Engine != first.ID || p.At.IsZero() || p.Since <= 0 {
			t.Errorf("pass %+v: want engine %s, its end and the time since the one before", p, first.ID)
		}
	}

	hc.Lose(first)
	lost := time.Now()
	if !first.Lost() || !gone(first.Pid()) {
		t.Fatalf("lost engine %s: Lost %v, process %d still there", first.ID, first.Lost(), first.Pid())
	}
	var second *hollow.Node
	testmain.Eventually(t, 30*time.Second, 20*time.Millisecond, "the other engine leading and passing", func() error {
		if second = leader(); second == nil || second == first || !hc.LastPass(second.ID).After(lost) {
			return errors.New("no new leader that passed")
		}
		return nil
	})

	closed = true
	if err := hc.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if !gone(second.Pid()) {
		t.Errorf("engine %s (pid %d) still running after Close", second.ID, second.Pid())
	}
}

// TestEngineProcessNotReady: Start fails, naming the engine and its log,
// when an engine process ends before it is ready.
func TestEngineProcessNotReady(t *testing.T) {
	srv := etcdtest.New(t)
	unreachable := srv.Config()
	unreachable.Endpoints = []string{"http://127.0.0.1:1"}
	unreachable.DialTimeout = 200 * time.Millisecond
	for name, tc := range map[string]struct {
		cfg     hollow.Config
		wantErr string
	}{
		"no etcd": {
			cfg:     hollow.Config{Store: unreachable, Command: command},
			wantErr: "exited before it was ready (exit status 1)",
		},
		"a program without the hook": {
			cfg:     hollow.Config{Store: srv.Config(), Command: []string{"/bin/true"}},
			wantErr: "exited before it was ready (<nil>)",
		},
		"no program": {
			cfg:     hollow.Config{Store: srv.Config()},
			wantErr: "no Command",
		},
	} {
		t.Run(name, func(t *testing.T) {
			tc.cfg.Prefix, tc.cfg.Dir, tc.cfg.Engines = "/hollow/", t.TempDir(), 1
			hc, err := hollow.Start(context.Background(), tc.cfg)
			if err == nil {
				hc.Close()
				t.Fatal("Start: no error")
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Start: %v; want %q", err, tc.wantErr)
			}
		})
	}
}
