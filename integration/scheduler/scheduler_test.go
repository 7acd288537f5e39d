// Package scheduler_test runs `scheduler serve` machines as separate
// processes on this host (public IPs 127.0.0.2…) against a real etcd, and
// checks the scheduler's promises end to end: the seed's placement, MachineOf,
// Global with late joiners, rescheduling after kill -9 within presence TTL plus
// one reconcile, engine fail-over, no unit ever running on two machines, and
// no process outliving its agent.
package scheduler_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

func TestMain(m *testing.M) { testmain.Run(m, "scheduler") }

// binary returns the scheduler command built by TestMain.
func binary() string { return testmain.Bin("scheduler") }

const ttl = 2 * time.Second

// moveGrace is serve's --move-grace here: a gone machine's units move
// TTL + moveGrace after its last renewal.
const moveGrace = 3 * time.Second

// cluster is a set of `scheduler serve` processes sharing one etcd.
type cluster struct {
	t        testing.TB
	ctx      context.Context
	dir      string
	endpoint string
	c        *store.Client
	reg      *registry.Registry
	mu       sync.Mutex
	procs    map[string]*exec.Cmd
}

func newCluster(t testing.TB) *cluster {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	srv := etcdtest.New(t)
	cl := &cluster{
		t: t, ctx: ctx, dir: t.TempDir(), endpoint: srv.Endpoint(), c: srv.Client(),
		procs: map[string]*exec.Cmd{},
	}
	cl.reg = registry.New(cl.c, registry.DefaultPrefix)
	t.Cleanup(cl.stopAll)
	return cl
}

// machine starts `scheduler serve` for id at 127.0.0.<n>.
func (cl *cluster) machine(id string, n int, metadata string) {
	cl.t.Helper()
	data := filepath.Join(cl.dir, id)
	os.MkdirAll(data, 0o755)
	logf, err := os.Create(filepath.Join(cl.dir, id+".log"))
	if err != nil {
		cl.t.Fatal(err)
	}
	cmd := exec.Command(binary(), "serve", "--endpoints", cl.endpoint, "--data-dir", data,
		"--machine-id", id, "--public-ip", fmt.Sprintf("127.0.0.%d", n), "--metadata", metadata,
		"--executor", "process", "--ttl", ttl.String(), "--move-grace", moveGrace.String(), "--engine-period", "2s", "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		cl.t.Fatal(err)
	}
	logf.Close()
	cl.mu.Lock()
	cl.procs[id] = cmd
	cl.mu.Unlock()
	cl.until("machine "+id+" registered", func(s *registry.Snapshot) bool { _, ok := s.Machines[id]; return ok })
}

// kill sends SIGKILL to a machine's process and reaps it.
func (cl *cluster) kill(id string) {
	cl.mu.Lock()
	cmd := cl.procs[id]
	delete(cl.procs, id)
	cl.mu.Unlock()
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
}

func (cl *cluster) stopAll() {
	cl.mu.Lock()
	procs := cl.procs
	cl.procs = map[string]*exec.Cmd{}
	cl.mu.Unlock()
	for _, cmd := range procs {
		cmd.Process.Signal(syscall.SIGTERM)
	}
	for id, cmd := range procs {
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cl.t.Errorf("machine %s did not stop on SIGTERM; killing it", id)
			cmd.Process.Kill()
			<-done
		}
	}
	if cl.t.Failed() {
		for id := range procs {
			b, _ := os.ReadFile(filepath.Join(cl.dir, id+".log"))
			cl.t.Logf("log of %s:\n%s", id, lastLines(string(b), 40))
		}
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// cli runs a client command against the cluster.
func (cl *cluster) cli(args ...string) (string, error) {
	cmd := exec.CommandContext(cl.ctx, binary(), args...)
	cmd.Env = append(os.Environ(), "FLOTILLA_ENDPOINTS="+cl.endpoint)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("scheduler %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func (cl *cluster) mustCLI(args ...string) string {
	cl.t.Helper()
	out, err := cl.cli(args...)
	if err != nil {
		cl.t.Fatal(err)
	}
	return out
}

func (cl *cluster) until(what string, cond func(s *registry.Snapshot) bool) *registry.Snapshot {
	cl.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var s *registry.Snapshot
	for time.Now().Before(deadline) {
		var err error
		if s, err = cl.reg.Snapshot(cl.ctx); err == nil && cond(s) {
			return s
		}
		time.Sleep(50 * time.Millisecond)
	}
	cl.t.Fatalf("timed out waiting for %s; schedule %v states %v unplaced %v", what, s.Schedule, s.States, s.Unplaced)
	return nil
}

// running returns the machines reporting unit running.
func running(s *registry.Snapshot, unit string) []string {
	var out []string
	for m, st := range s.States[unit] {
		if st.Active == "active" {
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out
}

// monitor watches every reported state and records any moment a non-global
// unit is reported running on two machines.
type monitor struct {
	w      *store.Watch
	done   chan struct{}
	mu     sync.Mutex
	double []string
}

func (cl *cluster) monitor(global map[string]bool) *monitor {
	_, rev, err := cl.c.GetPrefix(cl.ctx, cl.reg.Prefix()+"states/")
	if err != nil {
		cl.t.Fatal(err)
	}
	m := &monitor{w: cl.c.WatchPrefix(cl.ctx, cl.reg.Prefix()+"states/", rev+1), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		live := map[string]map[string]bool{} // unit → machines running it
		for b := range m.w.C {
			if b.Err != nil {
				return
			}
			for _, ev := range b.Events {
				st, err := cl.reg.DecodeState(ev.KV)
				if err != nil && ev.Type == store.EventPut {
					continue
				}
				if ev.Type == store.EventDelete {
					rest := strings.TrimPrefix(ev.KV.Key, cl.reg.Prefix()+"states/")
					i := strings.LastIndexByte(rest, '/')
					st.Unit, st.Machine = rest[:i], rest[i+1:]
				}
				if live[st.Unit] == nil {
					live[st.Unit] = map[string]bool{}
				}
				if ev.Type == store.EventPut && st.Running() {
					live[st.Unit][st.Machine] = true
				} else {
					delete(live[st.Unit], st.Machine)
				}
				if !global[st.Unit] && len(live[st.Unit]) > 1 {
					m.mu.Lock()
					m.double = append(m.double, fmt.Sprintf("rev %d: %s running on %v", b.Rev, st.Unit, live[st.Unit]))
					m.mu.Unlock()
				}
			}
		}
	}()
	return m
}

func (m *monitor) stop() []string {
	m.w.Close()
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.double
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

// unitPIDs reads the pid files the test units write under dir for machine.
func unitPIDs(t *testing.T, dir, machine string) []int {
	matches, _ := filepath.Glob(filepath.Join(dir, "*."+machine+".pid"))
	var out []int
	for _, m := range matches {
		b, _ := os.ReadFile(m)
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil && alive(p) {
				out = append(out, p)
			}
		}
	}
	return out
}

func writeUnits(t testing.TB, dir, pidDir string) {
	t.Helper()
	// Every process writes its pid to <pidDir>/<unit>.<machine>.pid; the
	// sidekick also leaves a detached child behind, as `announce --detach`
	// does.
	units := map[string]string{
		"nginx@.service": `[Unit]
Description=web server %i
[Service]
ExecStart=/bin/sh -c 'echo $$$$ >> ` + pidDir + `/%n.$FLOTILLA_MACHINE_ID.pid; exec sleep 1000'
[X-Fleet]
Conflicts=nginx@*.service
MachineMetadata=role=worker
`,
		"announce@.service": `[Unit]
Description=announces nginx@%i
[Service]
ExecStart=/bin/sh -c 'echo $$$$ >> ` + pidDir + `/%n.$FLOTILLA_MACHINE_ID.pid; exec sleep 1000'
ExecStartPost=/bin/sh -c '(sleep 1000 & echo $! >> ` + pidDir + `/%n.$FLOTILLA_MACHINE_ID.pid) &'
[X-Fleet]
MachineOf=nginx@%i.service
`,
		"prefetch.service": `[Unit]
Description=prefetch images
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
[X-Fleet]
Global=true
MachineMetadata=role=worker
`,
		"solo.service": `[Service]
ExecStart=/bin/sleep 1000
`,
	}
	for name, body := range units {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSchedulerCluster(t *testing.T) {
	cl := newCluster(t)
	units := filepath.Join(cl.dir, "units")
	pids := filepath.Join(cl.dir, "pids")
	os.MkdirAll(units, 0o755)
	os.MkdirAll(pids, 0o755)
	writeUnits(t, units, pids)
	mon := cl.monitor(map[string]bool{"prefetch.service": true})

	cl.machine("m1", 2, "role=lb")
	cl.machine("m2", 3, "role=worker")
	cl.machine("m3", 4, "role=worker")

	u := func(n string) string { return filepath.Join(units, n) }
	out := cl.mustCLI("start", "--block-attempts", "120", u("nginx@1.service"), u("nginx@2.service"), u("announce@1.service"), u("announce@2.service"), u("prefetch.service"))
	t.Logf("start:\n%s", out)
	s := cl.until("all launched", func(s *registry.Snapshot) bool {
		return len(running(s, "nginx@1.service")) == 1 && len(running(s, "nginx@2.service")) == 1 &&
			len(running(s, "announce@1.service")) == 1 && len(running(s, "announce@2.service")) == 1 &&
			len(running(s, "prefetch.service")) == 2
	})
	n1, n2 := running(s, "nginx@1.service")[0], running(s, "nginx@2.service")[0]
	if n1 == n2 || n1 == "m1" || n2 == "m1" {
		t.Fatalf("nginx@1 on %s, nginx@2 on %s: want two different workers", n1, n2)
	}
	if a := running(s, "announce@1.service")[0]; a != n1 {
		t.Errorf("announce@1 on %s, nginx@1 on %s", a, n1)
	}
	if got := strings.Join(running(s, "prefetch.service"), ","); got != "m2,m3" {
		t.Errorf("global prefetch on %s, want m2,m3", got)
	}
	lf := cl.mustCLI("list-unit-files")
	t.Logf("list-unit-files:\n%s", lf)
	if !strings.Contains(lf, "UNIT\t") || !strings.Contains(lf, "nginx@1.service") || !strings.Contains(lf, "launched") {
		t.Errorf("list-unit-files:\n%s", lf)
	}

	// A machine joining later gets the global unit.
	cl.machine("m4", 5, "role=worker")
	cl.until("prefetch on m4", func(s *registry.Snapshot) bool {
		return strings.Join(running(s, "prefetch.service"), ",") == "m2,m3,m4"
	})

	// kill -9 nginx@1's machine: its processes die with it, and nginx@1 with
	// its sidekick run on m4 (the only worker without an nginx) within TTL +
	// one reconcile.
	victims := unitPIDs(t, pids, n1)
	if len(victims) < 3 {
		t.Fatalf("expected nginx@1's, announce@1's and the detached child's pids on %s, got %v", n1, victims)
	}
	killedAt := time.Now()
	cl.kill(n1)
	deadline := time.Now().Add(10 * time.Second)
	for _, p := range victims {
		for alive(p) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if alive(p) {
			t.Errorf("process %d outlived its agent %s (orphan)", p, n1)
			syscall.Kill(p, syscall.SIGKILL)
		}
	}
	s = cl.until("nginx@1 rescheduled", func(s *registry.Snapshot) bool {
		return strings.Join(running(s, "nginx@1.service"), ",") == "m4" && strings.Join(running(s, "announce@1.service"), ",") == "m4"
	})
	moved := time.Since(killedAt)
	t.Logf("machine %s killed: nginx@1 running on m4 after %s (presence TTL %s)", n1, moved.Round(time.Millisecond), ttl)
	if got := running(s, "nginx@2.service"); len(got) != 1 || got[0] != n2 {
		t.Errorf("nginx@2 moved from %s to %v without reason", n2, got)
	}

	// Kill the engine leader: another machine takes over and keeps placing.
	leader, found, err := cl.c.Leader(cl.ctx, cl.reg.ElectionPrefix())
	if err != nil || !found {
		t.Fatalf("no engine leader: %v", err)
	}
	cl.kill(leader)
	deadline = time.Now().Add(30 * time.Second)
	var next string
	for time.Now().Before(deadline) {
		if v, ok, _ := cl.c.Leader(cl.ctx, cl.reg.ElectionPrefix()); ok && v != leader {
			next = v
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if next == "" {
		t.Fatalf("no new engine leader after killing %s", leader)
	}
	t.Logf("engine leader %s killed; %s took over", leader, next)
	out = cl.mustCLI("start", "--block-attempts", "120", u("solo.service"))
	t.Logf("start solo:\n%s", out)
	cl.until("solo placed by the new leader", func(s *registry.Snapshot) bool { return len(running(s, "solo.service")) == 1 })

	// stop / destroy through the CLI.
	cl.mustCLI("stop", "--no-block", "nginx@2.service")
	cl.until("nginx@2 stopped", func(s *registry.Snapshot) bool { return len(running(s, "nginx@2.service")) == 0 })
	cl.mustCLI("destroy", "solo.service")
	cl.until("solo gone", func(s *registry.Snapshot) bool { return len(s.States["solo.service"]) == 0 })

	t.Logf("list-units:\n%s", cl.mustCLI("list-units"))
	if d := mon.stop(); len(d) > 0 {
		t.Errorf("units reported running on two machines at once:\n%s", strings.Join(d, "\n"))
	}
}

// BenchmarkMachineLossToRunning measures the time from kill -9 of the machine
// running a unit to that unit reported running on another machine, with the
// presence TTL of this suite (2s): the figure is TTL + detection + one
// reconcile + start.
func BenchmarkMachineLossToRunning(b *testing.B) {
	var total time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		cl := newCluster(b)
		units := filepath.Join(cl.dir, "units")
		pids := filepath.Join(cl.dir, "pids")
		os.MkdirAll(units, 0o755)
		os.MkdirAll(pids, 0o755)
		writeUnits(b, units, pids)
		cl.machine("m1", 2, "role=worker")
		cl.machine("m2", 3, "role=worker")
		if _, err := cl.cli("start", "--block-attempts", "120", filepath.Join(units, "solo.service")); err != nil {
			b.Fatal(err)
		}
		s := cl.until("solo running", func(s *registry.Snapshot) bool { return len(running(s, "solo.service")) == 1 })
		from := running(s, "solo.service")[0]
		b.StartTimer()
		start := time.Now()
		cl.kill(from)
		cl.until("solo moved", func(s *registry.Snapshot) bool {
			r := running(s, "solo.service")
			return len(r) == 1 && r[0] != from
		})
		total += time.Since(start)
		b.StopTimer()
		cl.stopAll()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "loss-to-running-s")
	b.ReportMetric(ttl.Seconds(), "presence-ttl-s")
}
