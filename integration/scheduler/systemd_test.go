package scheduler_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/systemdtest"
)

// TestSystemdExecutorSurvivesAgentRestart runs a machine with
// `--executor systemd` against a real user-mode systemd: a unit started
// through the scheduler runs as a systemd unit; the agent is killed with -9
// and started again within the presence TTL: the unit keeps running, the same
// process, and is reported again; destroy removes it from systemd.
func TestSystemdExecutorSurvivesAgentRestart(t *testing.T) {
	m := systemdtest.New(t)
	cl := newCluster(t)
	units := filepath.Join(cl.dir, "units")
	os.MkdirAll(units, 0o755)
	os.WriteFile(filepath.Join(units, "solo.service"), []byte("[Unit]\nDescription=solo\n[Service]\nExecStart=/bin/sleep 1000\n"), 0o644)

	start := func() {
		t.Helper()
		data := filepath.Join(cl.dir, "s1")
		os.MkdirAll(data, 0o755)
		logf, err := os.OpenFile(filepath.Join(cl.dir, "s1.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(binary(), "serve", "--endpoints", cl.endpoint, "--data-dir", data, "--machine-id", "s1",
			"--public-ip", "127.0.0.2", "--executor", "systemd", "--systemd-user", "--ttl", ttl.String(), "--log-level", "debug")
		cmd.Env = append(os.Environ(), m.Env()...)
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		logf.Close()
		cl.mu.Lock()
		cl.procs["s1"] = cmd
		cl.mu.Unlock()
	}
	start()
	cl.until("machine registered", func(s *registry.Snapshot) bool { _, ok := s.Machines["s1"]; return ok })
	cl.mustCLI("start", "--block-attempts", "120", filepath.Join(units, "solo.service"))
	cl.until("solo running", func(s *registry.Snapshot) bool { return len(running(s, "solo.service")) == 1 })
	mainPID := func() string {
		out, err := m.Systemctl(cl.ctx, "show", "-p", "MainPID", "--value", "solo.service")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	before := mainPID()
	if before == "" || before == "0" {
		t.Fatalf("solo.service has no main process in systemd (MainPID=%q)", before)
	}

	// The agent dies and comes back within the TTL.
	cl.mu.Lock()
	cmd := cl.procs["s1"]
	cl.mu.Unlock()
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	start()
	// The new agent reports the unit (its state key is re-bound to the new
	// lease, so it outlives the old one).
	time.Sleep(2 * ttl)
	cl.until("solo reported by the new agent", func(s *registry.Snapshot) bool {
		return strings.Join(running(s, "solo.service"), ",") == "s1" && s.States["solo.service"]["s1"].State == "launched"
	})
	if after := mainPID(); after != before {
		t.Errorf("solo.service restarted across the agent restart: MainPID %s → %s", before, after)
	}

	cl.mustCLI("destroy", "solo.service")
	cl.until("solo gone", func(s *registry.Snapshot) bool { return len(s.States["solo.service"]) == 0 })
	if out, _ := m.Systemctl(cl.ctx, "is-active", "solo.service"); strings.TrimSpace(out) == "active" {
		t.Error("solo.service still active in systemd after destroy")
	}
	if _, err := os.Stat(filepath.Join(m.UnitDir, "solo.service")); !os.IsNotExist(err) {
		t.Errorf("unit file still in %s after destroy: %v", m.UnitDir, err)
	}
}
