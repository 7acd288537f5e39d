package systemdtest_test

import (
	"context"
	"errors"
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

	"github.com/flotilla/flotilla/internal/systemdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestManager starts a manager, runs a unit in it through systemctl inside
// the namespace and checks that the unit's process ran with the manager's
// runtime directory, and that the manager answers on its bus.
func TestManager(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m := systemdtest.New(t)

	// start installs a unit file and starts the unit through systemctl.
	start := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(m.UnitDir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Systemctl(ctx, "daemon-reload"); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Systemctl(ctx, "start", name); err != nil {
			t.Fatal(err)
		}
	}

	out := filepath.Join(m.Dir, "out")
	start("hello.service", "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo $XDG_RUNTIME_DIR > "+out+"'\n")
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("the unit did not run: %v", err)
	}
	if got := strings.TrimSpace(string(b)); got != m.RuntimeDir {
		t.Errorf("unit saw XDG_RUNTIME_DIR=%q, want %q", got, m.RuntimeDir)
	}

	conn, err := systemdtest.Dial(ctx, m.BusAddress)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := conn.ListUnitsByNamesContext(ctx, []string{"hello.service"})
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].LoadState != "loaded" || st[0].ActiveState != "inactive" {
		t.Errorf("hello.service over the bus: %+v, want loaded/inactive", st)
	}

	// A unit's output reaches the namespace's journald, attributed to it.
	// The writer stays alive until its line is found: journald attributes
	// a stream to a unit by the sender's cgroup, looked up by pid, which a
	// process already gone (journald can lag by seconds on a loaded
	// machine) no longer has.
	release := filepath.Join(m.Dir, "release")
	start("talk.service", "[Service]\nExecStart=/bin/sh -c 'echo said-hello; i=0; while [ ! -e "+release+" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done'\n")
	deadline := time.Now().Add(30 * time.Second)
	for {
		j, err := exec.CommandContext(ctx, "journalctl", "-D", m.JournalDir, "--user-unit", "talk.service", "-o", "cat", "--no-pager").CombinedOutput()
		if err == nil && strings.Contains(string(j), "said-hello") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal of talk.service: %v\n%s", err, j)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	// A running unit's cgroup is below the manager's own cgroup on the host.
	start("long.service", "[Service]\nExecStart=/bin/sleep 1000\n")
	if len(m.Cgroups()) == 0 {
		t.Fatal("no cgroups")
	}
	for _, cg := range m.Cgroups() {
		found := false
		_ = filepath.WalkDir(cg, func(p string, d os.DirEntry, err error) error {
			found = found || (err == nil && d.IsDir() && d.Name() == "long.service")
			return nil
		})
		if !found {
			t.Errorf("long.service has no cgroup below %s", cg)
		}
	}
}

// TestHostUntouched checks that the host's /run is not the one the manager
// sees: /run/systemd/system must not appear outside the namespace.
func TestHostUntouched(t *testing.T) {
	_, before := os.Stat("/run/systemd/system")
	systemdtest.New(t)
	if _, after := os.Stat("/run/systemd/system"); (before == nil) != (after == nil) {
		t.Errorf("/run/systemd/system changed on the host: before %v, after %v", before, after)
	}
}

// TestNothingLeftBehind: once a test's cleanup ran, no process of its
// manager (init, systemd, dbus-daemon, units) is alive.
func TestNothingLeftBehind(t *testing.T) {
	var pids []int
	t.Run("manager", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		m := systemdtest.New(t)
		if err := os.WriteFile(filepath.Join(m.UnitDir, "sleeper.service"), []byte("[Service]\nExecStart=/bin/sleep 1000\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Systemctl(ctx, "daemon-reload"); err != nil {
			t.Fatal(err)
		}
		if _, err := m.Systemctl(ctx, "start", "sleeper.service"); err != nil {
			t.Fatal(err)
		}
		pid, err := m.PID()
		if err != nil {
			t.Fatal(err)
		}
		pids = descendants(pid)
		if len(pids) < 4 { // sh, systemd, dbus-daemon, sleep
			t.Fatalf("namespace processes: %v, want init, systemd, dbus-daemon and the unit", pids)
		}
	})
	for _, p := range pids {
		if err := syscall.Kill(p, 0); !errors.Is(err, syscall.ESRCH) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
			t.Errorf("process %d (%q) still alive after cleanup", p, b)
		}
	}
}

// descendants lists pid and every process below it.
func descendants(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", out[i]))
		for _, task := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", out[i], task.Name()))
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
				}
			}
		}
	}
	return out
}
