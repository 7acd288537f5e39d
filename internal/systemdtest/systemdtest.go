// Package systemdtest gives a test a real systemd: a user-mode manager
// (`/lib/systemd/systemd --user`) started by the test itself inside private
// cgroup, mount and PID namespaces, following recipe A of
// shared/notes/systemd-in-tests.md:
//
//   - a cgroup of its own is created below the test's, in the name=systemd
//     and unified hierarchies, and `unshare --cgroup --mount --pid --fork
//     --kill-child --mount-proc` is started in it; inside, /sys/fs/cgroup is
//     replaced by those two hierarchies rooted there, so systemd sees and
//     touches nothing of the host's cgroups (a user manager started in the
//     host's root cgroup would move every process of it into /init.scope);
//   - a tmpfs is mounted over /run inside the namespace (the manager sees
//     /run/systemd/system and believes systemd booted the machine, while the
//     host's /run is never touched);
//   - the namespace runs its own systemd-journald (volatile, no kmsg), whose
//     files are in JournalDir, then the manager in
//     user.slice/user-UID.slice/user@UID.service as on a real host, so unit
//     output is in the journal under its unit's name;
//   - XDG_RUNTIME_DIR, HOME and the XDG config/data/state/cache directories
//     point into a fresh temporary directory, so nothing of the host user's
//     configuration is read or written;
//   - at cleanup the namespace's init is killed, which makes the kernel kill
//     every process of the namespace (journald, systemd, dbus-daemon, units
//     and their children); the test fails if any process is left in the
//     cgroups, which are then removed. If the test process dies, the
//     namespace dies with it (parent-death signal, --kill-child).
//
// The manager's D-Bus session bus (dbus-user-session's socket-activated
// dbus-daemon) is at BusAddress; unit files go to UnitDir, which is the same
// path inside and outside the namespace. The test process itself stays outside
// the namespaces and talks to systemd over that bus, as an agent would.
//
// New skips the test, with the reason, only when the kernel does not permit
// the namespaces or the cgroup (e.g. not root, or a restricted container).
package systemdtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// SystemdBinary is where Debian installs the manager.
const SystemdBinary = "/lib/systemd/systemd"

// Manager is a running user-mode systemd started by New. Its fields are
// read-only.
type Manager struct {
	// Dir is the temporary directory that holds everything of this manager;
	// tests may put their own files under it (it is visible inside the
	// namespace at the same path). Removed at cleanup.
	Dir string
	// RuntimeDir is the manager's XDG_RUNTIME_DIR (mode 0700).
	RuntimeDir string
	// BusAddress is the D-Bus address of the manager's session bus, e.g.
	// "unix:path=/tmp/sdt123/run/bus".
	BusAddress string
	// UnitDir is the runtime unit directory the manager loads units from:
	// RuntimeDir/systemd/user.
	UnitDir string
	// JournalDir holds the journal of the namespace's own journald, which
	// collects the units' output: read it with `journalctl -D JournalDir
	// --user-unit UNIT`.
	JournalDir string

	t       testing.TB
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has been waited for
	logPath string
	cgroups []string // cgroup directories created for the namespace
}

// New starts a user-mode systemd for t and waits until it answers on its bus
// (generous deadline, only to detect a hang). The manager is killed, and its
// directory removed, when t ends.
func New(t testing.TB) *Manager {
	t.Helper()
	if _, err := os.Stat(SystemdBinary); err != nil {
		t.Fatalf("systemdtest: %s not found (install the Debian packages systemd and dbus-user-session: make deps): %v", SystemdBinary, err)
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatalf("systemdtest: unshare not found (Debian package util-linux): %v", err)
	}
	// The same namespaces and mount as below, with nothing started.
	probe := exec.Command(unshare, "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc", "mount", "-n", "-t", "tmpfs", "tmpfs", "/run")
	if out, err := probe.CombinedOutput(); err != nil {
		t.Skipf("systemdtest: private mount/PID namespaces are not permitted here (%v: %s); a real systemd cannot be started safely, skipping", err, bytes.TrimSpace(out))
	}

	// A short directory name: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("", "sdt")
	if err != nil {
		t.Fatalf("systemdtest: %v", err)
	}
	m := &Manager{
		Dir:        dir,
		RuntimeDir: filepath.Join(dir, "run"),
		t:          t,
		done:       make(chan struct{}),
		logPath:    filepath.Join(dir, "systemd.log"),
	}
	m.BusAddress = "unix:path=" + filepath.Join(m.RuntimeDir, "bus")
	m.UnitDir = filepath.Join(m.RuntimeDir, "systemd", "user")
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	for _, d := range []string{m.RuntimeDir, m.UnitDir, filepath.Join(dir, "home"), filepath.Join(dir, "config"), filepath.Join(dir, "data"), filepath.Join(dir, "state"), filepath.Join(dir, "cache")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatalf("systemdtest: %v", err)
		}
	}
	if err := os.Chmod(m.RuntimeDir, 0o700); err != nil {
		t.Fatalf("systemdtest: %v", err)
	}
	cgs := makeCgroups(filepath.Base(dir))
	for _, cg := range cgs {
		m.cgroups = append(m.cgroups, cg.host)
	}
	t.Cleanup(func() {
		for _, cg := range m.cgroups {
			removeCgroup(cg)
		}
	})
	if len(cgs) == 0 {
		t.Skip("systemdtest: cannot create a cgroup of its own for the manager (cgroupfs not writable here); a real systemd cannot be started safely, skipping")
	}
	m.JournalDir = filepath.Join(dir, "journal")
	if err := os.MkdirAll(m.JournalDir, 0o755); err != nil {
		t.Fatalf("systemdtest: %v", err)
	}

	logf, err := os.Create(m.logPath)
	if err != nil {
		t.Fatalf("systemdtest: %v", err)
	}
	defer logf.Close()

	// Outside: sh moves itself into the manager's cgroups, then becomes
	// unshare, so that the new cgroup namespace is rooted there.
	var outer, mounts, enter strings.Builder
	outer.WriteString("set -e\n")
	for _, cg := range cgs {
		fmt.Fprintf(&outer, "echo 0 > '%s/cgroup.procs'\n", cg.host)
		fmt.Fprintf(&mounts, "mkdir -p %s\n%s\n", cg.inside, cg.mount)
		fmt.Fprintf(&enter, "mkdir -p %s/$U; echo 0 > %s/$U/cgroup.procs; ", cg.inside, cg.inside)
	}
	// Inside the namespaces: sh is PID 1. It hides /run and the cgroup
	// hierarchies behind private mounts (the manager sees only its own
	// cgroup subtree), starts journald (its files in JournalDir), then the
	// manager in user@UID.service as on a real host, and waits. When sh
	// dies, the kernel kills everything in the namespace.
	script := `set -e
mount -n -t tmpfs -o mode=0755 tmpfs /run
mount -n -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup
` + mounts.String() + `mkdir -p /run/systemd/system /run/systemd/journald.conf.d /run/user /run/lock /run/log/journal
mount -n --bind "$FLOTILLA_JOURNAL" /run/log/journal
printf '[Journal]\nStorage=volatile\nReadKMsg=no\nForwardToSyslog=no\nForwardToWall=no\nForwardToConsole=no\n' > /run/systemd/journald.conf.d/50-systemdtest.conf
/lib/systemd/systemd-journald &
i=0; while [ ! -S /run/systemd/journal/stdout ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done # a loaded machine can take seconds
U=user.slice/user-$(id -u).slice/user@$(id -u).service
sh -c "` + enter.String() + `exec ` + SystemdBinary + ` --user --log-target=console --log-level=info" &
wait
`
	inner := []string{"--cgroup", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", script}
	cmd := exec.Command("sh", append([]string{"-c", outer.String() + `exec "$@"`, "sh", unshare}, inner...)...)
	cmd.Env = append(m.Env(),
		"PATH="+os.Getenv("PATH"),
		"FLOTILLA_JOURNAL="+m.JournalDir,
	)
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	// The namespace dies with the test process, even on a crash: unshare
	// gets SIGKILL when its parent dies, and --kill-child passes it on to
	// the namespace's init.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("systemdtest: start %s: %v", unshare, err)
	}
	m.cmd = cmd
	go func() { // owned: waited for in stop via m.done
		_ = cmd.Wait()
		close(m.done)
	}()
	t.Cleanup(m.stop)

	if err := m.waitReady(30 * time.Second); err != nil {
		t.Fatalf("systemdtest: user manager did not come up: %v\n%s", err, m.Log())
	}
	return m
}

// Env is the environment a process outside the namespace needs to reach this
// manager with `systemctl --user`-style tools or the go-systemd user
// connection: XDG_RUNTIME_DIR, DBUS_SESSION_BUS_ADDRESS, HOME and the XDG
// base directories.
func (m *Manager) Env() []string {
	return []string{
		"XDG_RUNTIME_DIR=" + m.RuntimeDir,
		"DBUS_SESSION_BUS_ADDRESS=" + m.BusAddress,
		"HOME=" + filepath.Join(m.Dir, "home"),
		"XDG_CONFIG_HOME=" + filepath.Join(m.Dir, "config"),
		"XDG_DATA_HOME=" + filepath.Join(m.Dir, "data"),
		"XDG_STATE_HOME=" + filepath.Join(m.Dir, "state"),
		"XDG_CACHE_HOME=" + filepath.Join(m.Dir, "cache"),
	}
}

// Cgroups returns the host paths of the cgroups the namespace lives in (one
// per hierarchy): every process of the manager is below them.
func (m *Manager) Cgroups() []string { return slices.Clone(m.cgroups) }

// Log returns what the manager has logged so far.
func (m *Manager) Log() string {
	b, _ := os.ReadFile(m.logPath)
	return string(b)
}

// Command returns a command that runs inside the manager's namespaces, with
// Env set (e.g. m.Command(ctx, "systemctl", "--user", "status", "x.service")).
func (m *Manager) Command(ctx context.Context, name string, args ...string) (*exec.Cmd, error) {
	pid, err := m.initPID()
	if err != nil {
		return nil, err
	}
	nsargs := append([]string{"-t", strconv.Itoa(pid), "-m", "-p", "--", name}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", nsargs...)
	cmd.Env = append(m.Env(), "PATH="+os.Getenv("PATH"))
	return cmd, nil
}

// Systemctl runs `systemctl --user ARGS…` inside the namespace and returns
// its combined output; a non-zero exit is returned as an error with the
// output.
func (m *Manager) Systemctl(ctx context.Context, args ...string) (string, error) {
	cmd, err := m.Command(ctx, "systemctl", append([]string{"--user", "--no-pager"}, args...)...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("systemctl --user %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// PID is the host PID of the namespace's init (unshare's only child): every
// process of the manager descends from it.
func (m *Manager) PID() (int, error) { return m.initPID() }

func (m *Manager) initPID() (int, error) {
	p := m.cmd.Process.Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p, p))
	if err != nil {
		return 0, fmt.Errorf("systemdtest: find the namespace's init: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, errors.New("systemdtest: the namespace's init is gone")
	}
	return strconv.Atoi(f[0])
}

func (m *Manager) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for delay := 10 * time.Millisecond; time.Now().Before(deadline); delay = min(2*delay, 200*time.Millisecond) {
		select {
		case <-m.done:
			return fmt.Errorf("the namespace exited early (%v)", m.cmd.ProcessState)
		default:
		}
		if last = m.ping(); last == nil {
			return nil
		}
		time.Sleep(delay)
	}
	return last
}

// ping asks the manager, over its bus, for its state; "running" or
// "degraded" means it finished starting up.
func (m *Manager) ping() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := Dial(ctx, m.BusAddress)
	if err != nil {
		return err
	}
	defer conn.Close()
	st, err := conn.SystemStateContext(ctx)
	if err != nil {
		return err
	}
	if s := strings.Trim(st.Value.String(), `"`); s != "running" && s != "degraded" {
		return fmt.Errorf("manager state %s", s)
	}
	return nil
}

// Dial opens a go-systemd connection to the manager on the bus at address.
func Dial(ctx context.Context, address string) (*sddbus.Conn, error) {
	return sddbus.NewConnection(func() (*godbus.Conn, error) {
		c, err := godbus.Dial(address, godbus.WithContext(ctx))
		if err != nil {
			return nil, err
		}
		if err := c.Auth([]godbus.Auth{godbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
			c.Close()
			return nil, err
		}
		if err := c.Hello(); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	})
}

// stop kills the namespace (and so every process in it), waits for it, checks
// that its cgroups are empty and removes them.
func (m *Manager) stop() {
	t := m.t
	if t.Failed() {
		t.Logf("systemdtest: manager log:\n%s", m.Log())
	}
	// Killing the namespace's init makes the kernel kill every process in
	// the namespace; unshare then reaps it and exits. (Killing unshare
	// first would leave init a zombie for the host's init to reap.)
	if pid, err := m.initPID(); err == nil {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	} else {
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
	}
	select {
	case <-m.done:
	case <-time.After(30 * time.Second):
		t.Errorf("systemdtest: unshare (pid %d) did not exit after SIGKILL", m.cmd.Process.Pid)
	}
	for _, cg := range m.cgroups {
		left := waitEmpty(cg, 10*time.Second)
		if len(left) > 0 {
			t.Errorf("systemdtest: processes left in %s after the namespace was killed: %v", cg, left)
			continue
		}
		removeCgroup(cg)
	}
}

// cgroupDir is a cgroup created for one manager in one hierarchy.
type cgroupDir struct {
	host   string // its path on the host
	inside string // where the hierarchy is mounted inside the namespace
	mount  string // the shell command that mounts it there
}

// makeCgroups creates a cgroup named name below the test's own cgroup in the
// name=systemd (v1) and unified (v2) hierarchies, where present and writable.
// Inside the namespace those are the only hierarchies mounted, rooted at
// these cgroups: systemd cannot see or move anything outside them.
func makeCgroups(name string) []cgroupDir {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []cgroupDir
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		var cg cgroupDir
		var root string
		switch {
		case parts[1] == "name=systemd":
			root = "/sys/fs/cgroup/systemd"
			cg.inside = "/sys/fs/cgroup/systemd"
			cg.mount = "mount -n -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd"
		case parts[0] == "0" && parts[1] == "":
			if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err == nil {
				root = "/sys/fs/cgroup/unified"
				cg.inside = "/sys/fs/cgroup/unified"
			} else if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
				root = "/sys/fs/cgroup"
				cg.inside = "/sys/fs/cgroup"
			}
			cg.mount = "mount -n -t cgroup2 cgroup2 " + cg.inside
		}
		if root == "" {
			continue
		}
		cg.host = filepath.Join(root, parts[2], "flotilla-"+name)
		if err := os.Mkdir(cg.host, 0o755); err == nil {
			out = append(out, cg)
		}
	}
	// Pure v2: its mount point is /sys/fs/cgroup itself, mounted first.
	slices.SortFunc(out, func(a, b cgroupDir) int { return strings.Compare(a.inside, b.inside) })
	return out
}

// waitEmpty waits until no process is left anywhere below cg and returns the
// PIDs still there at the deadline.
func waitEmpty(cg string, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		var pids []string
		_ = filepath.WalkDir(cg, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
				pids = append(pids, strings.Fields(string(b))...)
			}
			return nil
		})
		if len(pids) == 0 || time.Now().After(deadline) {
			return pids
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeCgroup removes cg and the cgroups below it, deepest first.
func removeCgroup(cg string) {
	var dirs []string
	_ = filepath.WalkDir(cg, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	slices.Reverse(dirs)
	for _, d := range dirs {
		_ = syscall.Rmdir(d)
	}
}
