package scheduler_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/embedetcd"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// netns is a network namespace linked to the host by a veth pair:
// host side <prefix>.1, namespace side <prefix>.2.
type netns struct {
	name, hostIf, hostIP, nsIP string
}

func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// newNetns creates the namespace or skips the test when this host does not
// allow it.
func newNetns(t *testing.T) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("partition test: needs root to create a network namespace")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("partition test: needs iproute2's ip")
	}
	id := os.Getpid() % 200
	n := &netns{
		name:   fmt.Sprintf("flt-sched-%d", os.Getpid()),
		hostIf: fmt.Sprintf("fsh%d", os.Getpid()%100000),
		hostIP: fmt.Sprintf("10.213.%d.1", id),
		nsIP:   fmt.Sprintf("10.213.%d.2", id),
	}
	if err := ipCmd("netns", "add", n.name); err != nil {
		t.Skipf("partition test: network namespaces not permitted here: %v", err)
	}
	t.Cleanup(func() { ipCmd("netns", "del", n.name) })
	peer := fmt.Sprintf("fsn%d", os.Getpid()%100000)
	steps := [][]string{
		{"link", "add", n.hostIf, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", n.name},
		{"addr", "add", n.hostIP + "/30", "dev", n.hostIf},
		{"link", "set", n.hostIf, "up"},
		{"-n", n.name, "addr", "add", n.nsIP + "/30", "dev", peer},
		{"-n", n.name, "link", "set", peer, "up"},
		{"-n", n.name, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { ipCmd("link", "del", n.hostIf) })
	return n
}

func (n *netns) link(t *testing.T, up bool) {
	t.Helper()
	state := "down"
	if up {
		state = "up"
	}
	if err := ipCmd("link", "set", n.hostIf, state); err != nil {
		t.Fatal(err)
	}
}

// TestPartitionedMachineKeepsItsUnits cuts a machine (in its own network
// namespace) off etcd: its unit keeps running there while it is cut off and
// starts elsewhere once the machine has been gone for TTL + --move-grace;
// when the link comes back the machine rejoins, stops its old copy, and the
// unit stays where it moved.
func TestPartitionedMachineKeepsItsUnits(t *testing.T) {
	ns := newNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Plain http on the veth: the test network namespace holds only this test.
	srv, err := embedetcd.Start(ctx, embedetcd.Options{ClientAddr: ns.hostIP + ":0", Fast: true, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cfg := store.Default()
	cfg.Endpoints = []string{srv.Endpoint()}
	c, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl := &cluster{t: t, ctx: ctx, dir: t.TempDir(), endpoint: srv.Endpoint(), c: c, procs: map[string]*exec.Cmd{}}
	cl.reg = registry.New(c, registry.DefaultPrefix)
	t.Cleanup(cl.stopAll)
	units := filepath.Join(cl.dir, "units")
	pids := filepath.Join(cl.dir, "pids")
	os.MkdirAll(units, 0o755)
	os.MkdirAll(pids, 0o755)
	writeUnits(t, units, pids)
	mon := cl.monitor(nil)

	cl.machine("m1", 2, "role=worker")
	cl.machine("m2", 3, "role=worker")
	cl.machineIn(ns, "m3", "role=worker")

	u := func(n string) string { return filepath.Join(units, n) }
	cl.mustCLI("start", "--block-attempts", "120", u("nginx@1.service"), u("nginx@2.service"), u("nginx@3.service"))
	s := cl.until("three instances on three machines", func(s *registry.Snapshot) bool {
		return len(running(s, "nginx@1.service"))+len(running(s, "nginx@2.service"))+len(running(s, "nginx@3.service")) == 3
	})
	var victim string
	for _, n := range []string{"nginx@1.service", "nginx@2.service", "nginx@3.service"} {
		if running(s, n)[0] == "m3" {
			victim = n
		}
	}
	if victim == "" {
		t.Fatalf("no instance on the namespaced machine m3: %v", s.States)
	}
	old := unitPIDs(t, pids, "m3")
	if len(old) != 1 {
		t.Fatalf("pids on m3: %v", old)
	}
	cl.machine("m4", 5, "role=worker")

	// Cut m3 off.
	cutAt := time.Now()
	ns.link(t, false)
	var newStarted time.Time
	deadline := time.Now().Add(60 * time.Second)
	for newStarted.IsZero() && time.Now().Before(deadline) {
		if len(unitPIDs(t, pids, "m4")) > 0 {
			newStarted = time.Now()
		}
		time.Sleep(10 * time.Millisecond)
	}
	if newStarted.IsZero() {
		t.Fatalf("%s never started on m4", victim)
	}
	if !alive(old[0]) {
		t.Errorf("%s stopped on the cut-off machine m3 while it was cut off", victim)
	}
	t.Logf("link down: %s kept running on m3, started on m4 after %s (TTL %s + grace %s)",
		victim, newStarted.Sub(cutAt).Round(time.Millisecond), ttl, moveGrace)
	// The lease runs TTL from its last renewal, sent up to TTL/4 before the
	// cut: TTL/2 allows for that.
	if d := newStarted.Sub(cutAt); d < ttl/2+moveGrace {
		t.Errorf("%s started on m4 %s after the cut, before (TTL - last renewal) + grace", victim, d)
	}
	cl.until(victim+" reported on m4", func(s *registry.Snapshot) bool {
		return strings.Join(running(s, victim), ",") == "m4"
	})

	// Link back: m3 registers again, runs nothing it should not.
	ns.link(t, true)
	healed := time.Now()
	cl.until("m3 rejoined", func(s *registry.Snapshot) bool { _, ok := s.Machines["m3"]; return ok })
	for alive(old[0]) && time.Since(healed) < 30*time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("link up: the old copy on m3 stopped %s after the heal", time.Since(healed).Round(time.Millisecond))
	time.Sleep(2 * ttl)
	s, err = cl.reg.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(running(s, victim), ","); got != "m4" {
		t.Errorf("after rejoin %s runs on %q, want m4", victim, got)
	}
	if p := unitPIDs(t, pids, "m3"); len(p) != 0 {
		t.Errorf("processes running on m3 after rejoin: %v", p)
	}
	if d := mon.stop(); len(d) > 0 {
		t.Errorf("units reported running on two machines at once:\n%s", strings.Join(d, "\n"))
	}
}

// machineIn starts `scheduler serve` inside network namespace ns.
func (cl *cluster) machineIn(ns *netns, id, metadata string) {
	cl.t.Helper()
	data := filepath.Join(cl.dir, id)
	os.MkdirAll(data, 0o755)
	logf, err := os.Create(filepath.Join(cl.dir, id+".log"))
	if err != nil {
		cl.t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns.name, binary(), "serve", "--endpoints", cl.endpoint, "--data-dir", data,
		"--machine-id", id, "--public-ip", ns.nsIP, "--metadata", metadata,
		"--executor", "process", "--ttl", ttl.String(), "--move-grace", moveGrace.String(), "--engine-period", "2s", "--log-level", "debug", "--dial-timeout", "2s")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		cl.t.Fatal(err)
	}
	logf.Close()
	cl.mu.Lock()
	cl.procs[id] = cmd
	cl.mu.Unlock()
	cl.until("machine "+id+" registered", func(s *registry.Snapshot) bool { _, ok := s.Machines[id]; return ok })
}
