// Package scale runs the scheduler at size: hollow machines (real agents, an
// in-memory executor, a few hundred to a process, niced, as they stand for
// other hosts) and two engine candidates, each in a process of its own as
// in a deployment (both kinds this test binary re-executed: TestMain hands
// it to hollow.RunProcess), against a 3-member etcd cluster of Debian's
// etcd binary, with a checker in the test process that watches every
// revision for a unit in two places.
//
// `make test` runs the short size (100 machines × 1,000 units) and asserts
// the invariants only. `make scale` runs FLOTILLA_SCALE (default
// 1000x10000) and prints every figure beside its goal; figures are never
// asserted.
package scale

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
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
	"github.com/flotilla/flotilla/internal/unit"
)

const ttl = 10 * time.Second

// size reads FLOTILLA_SCALE ("MACHINESxUNITS").
func size(t *testing.T) (machines, units int, full bool) {
	v := os.Getenv("FLOTILLA_SCALE")
	if v == "" {
		return 100, 1000, false
	}
	m, u, ok := strings.Cut(v, "x")
	machines, err1 := strconv.Atoi(m)
	units, err2 := strconv.Atoi(u)
	if !ok || err1 != nil || err2 != nil || machines < 10 || units < machines {
		t.Fatalf("FLOTILLA_SCALE=%q: want MACHINESxUNITS, at least 10 machines and as many units", v)
	}
	return machines, units, true
}

// figures prints each figure with its goal and, when FLOTILLA_SCALE_JSON
// names a file, appends it there as a JSON line, as `make bench` does.
type figures struct {
	t   *testing.T
	out *os.File
}

func (f *figures) add(name, unit string, value, goal float64, lowerIsBetter bool) {
	verdict := "—"
	if goal > 0 {
		met := value <= goal
		if !lowerIsBetter {
			met = value >= goal
		}
		verdict = "met"
		if !met {
			verdict = "NOT MET"
		}
	}
	f.t.Logf("FIGURE %-36s %12.3f %-8s goal %-10s %s", name, value, unit, goalString(goal, lowerIsBetter), verdict)
	if f.out != nil {
		b, _ := json.Marshal(map[string]any{"name": "scale/" + name, "unit": unit, "value": value, "goal": goal, "verdict": verdict})
		fmt.Fprintln(f.out, string(b))
	}
}

func goalString(goal float64, lower bool) string {
	if goal == 0 {
		return "-"
	}
	if lower {
		return fmt.Sprintf("<%g", goal)
	}
	return fmt.Sprintf(">%g", goal)
}

// workload is the unit mix: plain units, MachineMetadata, Conflicts groups,
// template instances and one Global unit.
func workload(machines, units int) (bodies map[string][]byte, global map[string]bool) {
	bodies = map[string][]byte{}
	plain := []byte("[Service]\nExecStart=/bin/sleep infinity\n")
	tmpl := []byte("[Unit]\nDescription=instance %i\n\n[Service]\nExecStart=/bin/sleep infinity\n")
	bodies["global.service"] = []byte("[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nGlobal=true\n")
	group := max(machines/2, 1)
	for i := 1; len(bodies) < units; i++ {
		switch i % 10 {
		case 1:
			bodies[fmt.Sprintf("zoned-%d.service", i)] = fmt.Appendf(nil, "[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nMachineMetadata=zone=z%d\n", i%7)
		case 2:
			g := i / 10 / group
			bodies[fmt.Sprintf("cg%d@%d.service", g, i)] = fmt.Appendf(nil, "[Service]\nExecStart=/bin/sleep infinity\n\n[X-Fleet]\nConflicts=cg%d@*.service\n", g)
		case 3:
			bodies[fmt.Sprintf("tpl@%d.service", i)] = tmpl
		default:
			bodies[fmt.Sprintf("plain-%d.service", i)] = plain
		}
	}
	return bodies, map[string]bool{"global.service": true}
}

// etcdRequests sums the request messages every member has received.
func etcdRequests(t *testing.T, cl *etcdtest.Cluster) float64 {
	var sum float64
	for _, m := range cl.Members {
		if !m.Running() {
			continue
		}
		resp, err := http.Get(m.Endpoint() + "/metrics")
		if err != nil {
			t.Logf("metrics of %s: %v", m.Endpoint(), err)
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "grpc_server_msg_received_total{") {
				continue
			}
			if v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64); err == nil {
				sum += v
			}
		}
		resp.Body.Close()
	}
	return sum
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procStat is a process's CPU time so far and its resident set (KiB).
type procStat struct {
	cpu time.Duration
	rss float64
}

// engineCPU reads each engine process's procStat, by engine id.
func engineCPU(hc *hollow.Cluster) map[string]procStat {
	m := map[string]procStat{}
	for _, e := range hc.Engines {
		cpu, rss := procCPU(e.Pid())
		m[e.ID] = procStat{cpu, rss}
	}
	return m
}

// agentStats asks every agents process for its figures.
func agentStats(t *testing.T, hc *hollow.Cluster) []hollow.AgentStats {
	t.Helper()
	st, err := hc.AgentStats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestScale(t *testing.T) {
	begin := time.Now()
	machines, units, full := size(t)
	cl := etcdtest.NewCluster(t, 3)
	cfg := cl.Members[0].Config()
	cfg.Endpoints = cl.Endpoints()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	admin, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	reg := registry.New(admin, "/scale/")
	figs := &figures{t: t}
	if p := os.Getenv("FLOTILLA_SCALE_JSON"); p != "" {
		if figs.out, err = os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err != nil {
			t.Fatal(err)
		}
		defer figs.out.Close()
	}
	// The engine's default move grace in the full run; a short one in make
	// test, which checks invariants, not figures.
	grace := engine.DefaultMoveGrace
	if !full {
		grace = 2 * time.Second
	}
	t.Logf("scale: %d hollow machines (niced agents processes), %d units, 2 engine candidates, 3-member etcd (%s), TTL %s, move grace %s", machines, units, etcdtest.BinaryPath(), ttl, grace)

	bodies, global := workload(machines, units)
	checker, err := hollow.NewChecker(ctx, reg, global)
	if err != nil {
		t.Fatal(err)
	}
	defer checker.Close()
	hc, err := hollow.Start(ctx, hollow.Config{
		Store: cfg, Prefix: "/scale/", Machines: machines, TTL: ttl, MoveGrace: grace, Dir: t.TempDir(),
		Metadata: func(i int) map[string]string { return map[string]string{"zone": fmt.Sprintf("z%d", i%7)} },
		// Each engine candidate in a process of its own, as in a
		// deployment, and the agents in a few (niced): this test binary
		// again, TestMain's hook.
		Command: []string{os.Args[0], "-test.run=^$"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := hc.Close(); err != nil {
			t.Errorf("hollow cluster: %v", err)
		}
	}()
	lost := map[string]bool{}
	want := func() int { return units - 1 + machines - len(lost) } // global runs on every live machine
	settle := func(what string, limit time.Duration) time.Duration {
		t.Helper()
		start, lastLog := time.Now(), time.Now()
		for {
			st := checker.Status(lost)
			if st.Active == want() && st.OnLost == 0 {
				return time.Since(start)
			}
			if st.Err != nil {
				t.Fatalf("checker: %v", st.Err)
			}
			if time.Since(lastLog) > 15*time.Second {
				t.Logf("%s: %d of %d units active where targeted, %d targets on lost machines, %d engine passes", what, st.Active, want(), st.OnLost, len(hc.Passes()))
				lastLog = time.Now()
			}
			if time.Since(start) > limit {
				t.Fatalf("%s: after %s, %d of %d units active where targeted, %d targets on lost machines", what, limit, st.Active, want(), st.OnLost)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Every machine registered before the units come: the start figure is
	// the scheduler's, not the machines' start-up.
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

	// 1. Submit and start everything, as `scheduler start` does: every
	// file parsed, then registry.Ensure (batched transactions).
	start := time.Now()
	names := slices.Sorted(maps.Keys(bodies))
	wants := make([]registry.Want, 0, len(names))
	for _, name := range names {
		if _, err := unit.Parse(name, bodies[name]); err != nil {
			t.Fatal(err)
		}
		wants = append(wants, registry.Want{Name: name, Hash: unit.Hash(bodies[name]), Body: bodies[name], Desired: registry.Launched})
	}
	if err := registry.FirstError(reg.Ensure(ctx, wants, registry.KeepExisting)); err != nil {
		t.Fatal(err)
	}
	submitted := time.Since(start)
	settle("start", 10*time.Minute)
	figs.add("start/all-active", "s", time.Since(start).Seconds(), 30, true)
	figs.add("start/submit", "s", submitted.Seconds(), 0, true)
	figs.add("start/engine-passes", "passes", float64(len(hc.Passes())), 0, true)

	// 2. Steady state.
	steady := 10 * time.Second
	if full {
		steady = 60 * time.Second
	}
	agents0 := agentStats(t, hc)
	reqs0, cpu0, t0 := etcdRequests(t, cl), cpuTime(), time.Now()
	engineCPU0 := engineCPU(hc)
	retargets0 := checker.Status(nil).Retargets
	time.Sleep(steady)
	el := time.Since(t0).Seconds()
	reqs := (etcdRequests(t, cl) - reqs0) / el
	engineCPU1 := engineCPU(hc)
	cpu1 := cpuTime()
	agents1 := agentStats(t, hc)
	figs.add("steady/etcd-requests-per-machine", "req/s", reqs/float64(machines), 1, true)
	figs.add("steady/etcd-requests", "req/s", reqs, 0, true)
	// The agents run in processes of their own, the engines in theirs,
	// the checker in this one.
	t.Logf("scale: cpu-per-machine and heap-per-machine are the agents processes' (summed); the engines' are engine-cpu and engine-rss; this test process (checker) used %.1f ms/s", (cpu1-cpu0).Seconds()*1000/el)
	var agentCPU, agentDelay time.Duration
	var heap uint64
	for i, s := range agents1 {
		cpu, delay := s.CPU-agents0[i].CPU, s.RunDelay-agents0[i].RunDelay
		t.Logf("scale: %s (pid %d, %d machines): %.1f ms/s CPU, %.1f ms/s waiting for one, %.0f KiB heap in use", s.Name, s.Pid, s.Machines, cpu.Seconds()*1000/el, delay.Seconds()*1000/el, float64(s.HeapInuse)/1024)
		agentCPU += cpu
		agentDelay += delay
		heap += s.HeapInuse
	}
	t.Logf("scale: the agents processes: %.1f ms/s CPU, %.1f ms/s waiting for one (niced)", agentCPU.Seconds()*1000/el, agentDelay.Seconds()*1000/el)
	figs.add("steady/cpu-per-machine", "ms/s", agentCPU.Seconds()*1000/el/float64(machines), 0, true)
	figs.add("steady/heap-per-machine", "KiB", float64(heap)/1024/float64(machines), 0, true)
	var cpuSum time.Duration
	var rssMax float64
	for _, e := range hc.Engines {
		cpu := engineCPU1[e.ID].cpu - engineCPU0[e.ID].cpu
		t.Logf("scale: engine %s (pid %d): %.1f ms/s CPU, %.0f KiB resident", e.ID, e.Pid(), cpu.Seconds()*1000/el, engineCPU1[e.ID].rss)
		cpuSum += cpu
		rssMax = max(rssMax, engineCPU1[e.ID].rss)
	}
	figs.add("steady/engine-cpu", "ms/s", cpuSum.Seconds()*1000/el, 0, true)
	figs.add("steady/engine-rss-max", "KiB", rssMax, 0, true)
	if n := checker.Status(nil).Retargets - retargets0; n != 0 {
		t.Errorf("steady state: %d units taken off their machine", n)
	}

	// 3. 10 % of the machines lost at once.
	for i := 0; i < machines/10; i++ {
		n := hc.Machines[i*10+3]
		lost[n.ID] = true
		if err := hc.Lose(n); err != nil {
			t.Fatal(err)
		}
	}
	lostAt := time.Now()
	t.Logf("lost %d machines at +%s", len(lost), lostAt.Sub(begin).Round(time.Millisecond))
	settle("machines lost", 3*time.Minute)
	// The goal is TTL + 2 s; units now wait out the move grace too
	// (docs/design.md, "When etcd is unreachable"), so the goal carries it.
	figs.add("loss/units-active-elsewhere", "s", time.Since(lostAt).Seconds(), (ttl + grace + 2*time.Second).Seconds(), true)

	// 4. The engine leader killed (SIGKILL of its process): a new leader
	// once its leadership lease expires, and no unit moves.
	leaderID, found, err := admin.Leader(ctx, reg.ElectionPrefix())
	if err != nil || !found {
		t.Fatalf("engine leader: %q %v %v", leaderID, found, err)
	}
	if kvs, _, err := admin.GetPrefix(ctx, reg.ElectionPrefix()); err == nil {
		for _, kv := range kvs {
			t.Logf("engine candidate %s: key %s, created at revision %d", kv.Value, kv.Key, kv.CreateRevision)
		}
	}
	var other *hollow.Node
	for _, e := range hc.Engines {
		if e.ID == leaderID {
			hc.Lose(e)
		} else {
			other = e
		}
	}
	retargets0 = checker.Status(lost).Retargets
	killed := time.Now()
	t.Logf("engine leader %s lost at +%s", leaderID, killed.Sub(begin).Round(time.Millisecond))
	for {
		id, found, err := admin.Leader(ctx, reg.ElectionPrefix())
		if err == nil && found && id == other.ID && hc.LastPass(other.ID).After(killed) {
			break
		}
		if time.Since(killed) > 2*ttl+30*time.Second {
			t.Fatalf("no new engine leader %s after the leader's loss (leader %q)", time.Since(killed), id)
		}
		time.Sleep(50 * time.Millisecond)
	}
	figs.add("engine-loss/new-leader", "s", time.Since(killed).Seconds(), 0, true)
	time.Sleep(2 * time.Second)
	if n := checker.Status(lost).Retargets - retargets0; n != 0 {
		t.Errorf("engine leader lost: %d units taken off their machine", n)
	}

	// 5. The etcd leader killed: nothing moves, everything keeps reporting.
	li := cl.Leader()
	t.Logf("etcd leader (member %d) killed at +%s", li, time.Since(begin).Round(time.Millisecond))
	cl.Members[li].Kill()
	time.Sleep(ttl)
	cl.Restart(li)
	settle("etcd leader lost", time.Minute)
	if n := checker.Status(lost).Retargets - retargets0; n != 0 {
		t.Errorf("etcd leader lost: %d units taken off their machine", n)
	}

	var durs []float64
	for _, p := range hc.Passes() {
		durs = append(durs, p.Duration.Seconds()*1000)
		if p.Duration > 250*time.Millisecond || p.Moved > 0 {
			t.Logf("engine pass %s at +%s: %s (planning %s), %d ops in %d txns, %d requests, %d moved, %d unplaced; its process in the %s since its previous pass: %s on a CPU, %s waiting for one (its threads summed)", p.Engine,
				p.At.Sub(begin).Round(time.Millisecond), p.Duration.Round(time.Millisecond), p.Plan.Round(time.Millisecond),
				p.Ops, p.Txns, p.Requests, p.Moved, p.Unplaced,
				p.Since.Round(time.Millisecond), p.CPU.Round(time.Millisecond), p.RunDelay.Round(time.Millisecond))
		}
	}
	slices.Sort(durs)
	if len(durs) > 0 {
		figs.add("engine/pass-p99", "ms", durs[len(durs)*99/100], 500, true)
		figs.add("engine/passes", "passes", float64(len(durs)), 0, true)
	}
	st := checker.Status(lost)
	figs.add("never-two-places/violations", "count", float64(len(st.Violations)), 0, true)
	for _, v := range st.Violations {
		t.Errorf("a unit in two places: %s", v)
	}
}
