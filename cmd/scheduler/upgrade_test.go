package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/systemdtest"
	"github.com/flotilla/flotilla/internal/unit"
)

// TestAgentRestartUnderSystemd runs `scheduler serve --executor systemd`
// as a service of a real (user-mode) systemd, the way deploy.md installs it,
// with --agent-unit left at auto. `systemctl restart` of it (an upgrade)
// leaves its unit running, the same invocation, and its presence in place
// for the next run; `systemctl stop` stops the unit.
func TestAgentRestartUnderSystemd(t *testing.T) {
	m := systemdtest.New(t)
	srv := etcdtest.New(t)
	reg := registry.New(srv.Client(), "")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	bin := filepath.Join(m.Dir, "scheduler")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	data := filepath.Join(m.Dir, "data")
	agent := fmt.Sprintf(`[Service]
Environment=DBUS_SESSION_BUS_ADDRESS=%s XDG_RUNTIME_DIR=%s
ExecStart=%s serve --endpoints %s --executor systemd --systemd-user --machine-id m1 --public-ip 127.0.0.1 --data-dir %s --ttl 3s
Restart=on-failure
`, m.BusAddress, m.RuntimeDir, bin, srv.Endpoint(), data)
	if err := os.WriteFile(filepath.Join(m.UnitDir, "flotilla.service"), []byte(agent), 0o644); err != nil {
		t.Fatal(err)
	}
	systemctl := func(args ...string) string {
		t.Helper()
		out, err := m.Systemctl(ctx, args...)
		if err != nil {
			t.Fatalf("systemctl %v: %v %s\n%s", args, err, out, m.Log())
		}
		return strings.TrimSpace(out)
	}
	journal := func() string {
		out, _ := exec.Command("journalctl", "-D", m.JournalDir, "--no-pager", "-n", "80", "--user-unit", "flotilla.service").CombinedOutput()
		return string(out)
	}
	until := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s\n%s", what, journal())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	systemctl("daemon-reload")
	systemctl("start", "flotilla.service")

	body := []byte("[Service]\nExecStart=/bin/sleep 1000\n")
	if _, err := reg.Submit(ctx, "web.service", unit.Hash(body), body, registry.ReplaceBody); err != nil {
		t.Fatal(err)
	}
	if err := reg.SetDesired(ctx, "web.service", registry.Launched); err != nil {
		t.Fatal(err)
	}
	presence := func() int64 {
		kv, found, _, err := reg.Client().Get(ctx, reg.MachineKey("m1"))
		if err != nil || !found {
			return 0
		}
		return int64(kv.Lease)
	}
	reported := func() (lease int64, sub string) {
		kv, found, _, err := reg.Client().Get(ctx, reg.StateKey("web.service", "m1"))
		if err != nil || !found {
			return 0, ""
		}
		st, _ := reg.DecodeState(kv)
		return int64(kv.Lease), st.Sub
	}
	until("web.service running", func() bool { _, sub := reported(); return sub == "running" })
	inv := systemctl("show", "-p", "InvocationID", "web.service")
	lease := presence()
	_, _, rev, err := reg.Client().Get(ctx, reg.MachineKey("m1"))
	if err != nil {
		t.Fatal(err)
	}
	w := reg.Client().WatchPrefix(ctx, reg.MachineKey("m1"), rev+1)
	defer w.Close()

	// An upgrade: systemctl restart. The unit keeps running; the next run
	// takes the presence key over (a new lease, the key never gone) and
	// reports the unit under it.
	systemctl("restart", "flotilla.service")
	var next int64
	until("the next run registered", func() bool { next = presence(); return next != 0 && next != lease })
	until("the next run reporting web.service", func() bool { l, sub := reported(); return sub == "running" && l == next })
	if now := systemctl("show", "-p", "InvocationID", "web.service"); now != inv {
		t.Errorf("web.service restarted with the agent: %s, then %s\n%s", inv, now, journal())
	}
	// The watch saw the take-over; a delete before it would have been the
	// machine leaving (and its units moving).
	for seen := false; !seen; {
		select {
		case b := <-w.C:
			for _, ev := range b.Events {
				if ev.Type == store.EventDelete {
					t.Errorf("presence key deleted during the restart\n%s", journal())
				}
				seen = seen || int64(ev.KV.Lease) == next
			}
		case <-ctx.Done():
			t.Fatal("no take-over of the presence key seen")
		}
	}
	s, err := reg.Snapshot(ctx)
	if err != nil || len(s.Schedule["web.service"]) != 1 {
		t.Fatalf("schedule after the restart: %v, %v", s.Schedule, err)
	}
	if _, ok := s.Schedule["web.service"]["m1"]; !ok {
		t.Errorf("web.service moved off m1: %v", s.Schedule["web.service"])
	}

	// A stop: the unit stops and the machine leaves.
	systemctl("stop", "flotilla.service")
	if st := systemctl("show", "-p", "ActiveState", "web.service"); st != "ActiveState=inactive" {
		t.Errorf("web.service after systemctl stop of the agent: %s", st)
	}
	if presence() != 0 {
		t.Errorf("presence left after systemctl stop of the agent\n%s", journal())
	}
}

// TestAgentUnitRefusedWithProcessExecutor: --agent-unit binds nothing under
// the process executor (its units end with the agent anyway): refused.
func TestAgentUnitRefusedWithProcessExecutor(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := []string{"serve", "--data-dir", t.TempDir(), "--etcd-listen", etcdtest.FreeAddr(t), "--machine-id", "m1",
		"--executor", "process", "--agent-unit", "flotilla.service"}
	err := runEnv(ctx, args, func(string) string { return "" }, &bytes.Buffer{}, &syncBuffer{})
	if err == nil || !strings.Contains(err.Error(), "--agent-unit flotilla.service: only the systemd executor") {
		t.Errorf("serve %q: %v, want a refusal of --agent-unit", args, err)
	}
}
