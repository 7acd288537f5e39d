package scale

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/hollow"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// serveProc is one `scheduler serve` process of TestScaleServe.
type serveProc struct {
	id  string
	cmd *exec.Cmd
}

// procCPU returns the CPU time a process has used so far, and its
// resident set in KiB.
func procCPU(pid int) (time.Duration, float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0
	}
	// Fields after the command (which may hold spaces) start after ")".
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	rss, _ := strconv.ParseInt(f[21], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks, float64(rss*int64(os.Getpagesize())) / 1024
}

// TestScaleServe is TestScale's start, steady state and loss with real
// `scheduler serve` processes (process executor, an engine candidate in
// each) instead of hollow machines, started by `scheduler start` itself, so
// that hollow figures can be held against real ones at the same size. It
// runs only when FLOTILLA_SCALE_SERVE=1 (`make scale-serve`); its size is
// FLOTILLA_SCALE's (keep it small: every unit is a real process).
func TestScaleServe(t *testing.T) {
	if os.Getenv("FLOTILLA_SCALE_SERVE") != "1" {
		t.Skip("FLOTILLA_SCALE_SERVE=1 runs real scheduler serve processes (make scale-serve)")
	}
	machines, units, _ := size(t)
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", dir, "github.com/flotilla/flotilla/cmd/scheduler")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build scheduler: %v\n%s", err, out)
	}
	bin := filepath.Join(dir, "scheduler")
	cl := etcdtest.NewCluster(t, 3)
	cfg := cl.Members[0].Config()
	cfg.Endpoints = cl.Endpoints()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	admin, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	const prefix = "/scale/"
	reg := registry.New(admin, prefix)
	figs := &figures{t: t}
	if p := os.Getenv("FLOTILLA_SCALE_JSON"); p != "" {
		if figs.out, err = os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err != nil {
			t.Fatal(err)
		}
		defer figs.out.Close()
	}
	grace := engine.DefaultMoveGrace
	t.Logf("scale: %d scheduler serve processes (process executor), %d units, 3-member etcd (%s), TTL %s, move grace %s", machines, units, etcdtest.BinaryPath(), ttl, grace)
	bodies, global := workload(machines, units)
	checker, err := hollow.NewChecker(ctx, reg, global)
	if err != nil {
		t.Fatal(err)
	}
	defer checker.Close()

	procs := make([]*serveProc, machines)
	defer func() { stopServes(t, procs) }()
	for i := range procs {
		id := fmt.Sprintf("serve-%04d", i)
		data := filepath.Join(dir, id)
		logf, err := os.Create(data + ".log")
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "serve", "--endpoints", strings.Join(cfg.Endpoints, ","), "--prefix", prefix,
			"--data-dir", data, "--machine-id", id, "--public-ip", fmt.Sprintf("127.2.%d.%d", i/250, i%250+1),
			"--metadata", fmt.Sprintf("zone=z%d", i%7), "--executor", "process", "--ttl", ttl.String())
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		logf.Close()
		procs[i] = &serveProc{id: id, cmd: cmd}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ms, err := reg.Machines(ctx)
		if err == nil && len(ms) == machines {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d machines registered", len(ms), machines)
		}
		time.Sleep(200 * time.Millisecond)
	}
	lost := map[string]bool{}
	want := func() int { return units - 1 + machines - len(lost) }
	settle := func(what string, limit time.Duration) {
		t.Helper()
		start := time.Now()
		for {
			st := checker.Status(lost)
			if st.Active == want() && st.OnLost == 0 {
				return
			}
			if st.Err != nil {
				t.Fatalf("checker: %v", st.Err)
			}
			if time.Since(start) > limit {
				t.Fatalf("%s: after %s, %d of %d units active where targeted, %d targets on lost machines", what, limit, st.Active, want(), st.OnLost)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// 1. `scheduler start` of every unit file.
	unitDir := filepath.Join(dir, "units")
	if err := os.Mkdir(unitDir, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"start", "--prefix", prefix, "--no-block"}
	for _, name := range slices.Sorted(maps.Keys(bodies)) {
		p := filepath.Join(unitDir, name)
		if err := os.WriteFile(p, bodies[name], 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, p)
	}
	start := time.Now()
	cli := exec.CommandContext(ctx, bin, args...)
	cli.Env = append(os.Environ(), "FLOTILLA_ENDPOINTS="+strings.Join(cfg.Endpoints, ","))
	if out, err := cli.CombinedOutput(); err != nil {
		t.Fatalf("scheduler start: %v\n%s", err, out)
	}
	submitted := time.Since(start)
	settle("start", 10*time.Minute)
	figs.add("serve/start/all-active", "s", time.Since(start).Seconds(), 30, true)
	figs.add("serve/start/submit", "s", submitted.Seconds(), 0, true)

	// 2. Steady state: etcd requests, and CPU and memory of the serve
	// processes (their units are sleeping processes).
	cpus := func() (time.Duration, float64) {
		var cpu time.Duration
		var rss float64
		for _, p := range procs {
			c, r := procCPU(p.cmd.Process.Pid)
			cpu += c
			rss += r
		}
		return cpu, rss
	}
	runtime.GC()
	reqs0, t0 := etcdRequests(t, cl), time.Now()
	cpu0, _ := cpus()
	retargets0 := checker.Status(nil).Retargets
	time.Sleep(60 * time.Second)
	el := time.Since(t0).Seconds()
	reqs := (etcdRequests(t, cl) - reqs0) / el
	cpu1, rss := cpus()
	figs.add("serve/steady/etcd-requests-per-machine", "req/s", reqs/float64(machines), 1, true)
	figs.add("serve/steady/cpu-per-machine", "ms/s", (cpu1-cpu0).Seconds()*1000/el/float64(machines), 0, true)
	figs.add("serve/steady/rss-per-machine", "KiB", rss/float64(machines), 0, true)
	if n := checker.Status(nil).Retargets - retargets0; n != 0 {
		t.Errorf("steady state: %d units taken off their machine", n)
	}

	// 3. 10 % of the machines killed at once (never the engine leader's:
	// hollow engines run apart from the machines).
	leader, _, err := admin.Leader(ctx, reg.ElectionPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for i := 3; len(lost) < machines/10 && i < machines; i += 10 {
		p := procs[i]
		if p.id == leader {
			continue
		}
		lost[p.id] = true
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
		procs[i] = nil
	}
	lostAt := time.Now()
	settle("machines lost", 3*time.Minute)
	figs.add("serve/loss/units-active-elsewhere", "s", time.Since(lostAt).Seconds(), (ttl + grace + 2*time.Second).Seconds(), true)
	st := checker.Status(lost)
	figs.add("serve/never-two-places/violations", "count", float64(len(st.Violations)), 0, true)
	for _, v := range st.Violations {
		t.Errorf("a unit in two places: %s", v)
	}
}

// stopServes stops every serve process still running (SIGTERM, then
// SIGKILL after 30 s) and waits for it; their units die with them
// (the process executor's children have SIGKILL as parent-death signal).
func stopServes(t *testing.T, procs []*serveProc) {
	for _, p := range procs {
		if p != nil {
			p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for _, p := range procs {
		if p == nil {
			continue
		}
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not stop on SIGTERM; killing it", p.id)
			p.cmd.Process.Kill()
			<-done
		}
	}
}
