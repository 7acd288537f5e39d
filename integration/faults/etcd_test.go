package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
)

// figure logs a measured figure in a form docs/reliability.md quotes.
func figure(t testing.TB, name string, format string, args ...any) {
	t.Helper()
	t.Logf("FIGURE %s: %s", name, fmt.Sprintf(format, args...))
}

// token returns a string that marks this test's backend processes.
func token(t testing.TB) string {
	return fmt.Sprintf("faults-%d-%d", time.Now().UnixNano(), rand.Uint32())
}

// freePorts returns a base port such that base … base+n-1 were free on every
// ip a moment ago (each unit of a test gets its own port, so that two units
// may share a machine).
func freePorts(t testing.TB, n int, ips ...string) int {
	t.Helper()
	for try := 0; try < 200; try++ {
		base := 20000 + rand.IntN(20000)
		ok := true
		for i := 0; i < n && ok; i++ {
			for _, ip := range ips {
				if !portFree(ip, base+i) {
					ok = false
					break
				}
			}
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free port range")
	return 0
}

// portFree reports whether ip:port can be listened on now.
func portFree(ip string, port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// scheduled returns unit → machine from the registry's schedule.
func scheduled(ctx context.Context, reg *registry.Registry) (map[string]string, error) {
	s, err := reg.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for u := range s.Schedule {
		ts := s.Targets(u)
		out[u] = strings.Join(ts, ",")
	}
	return out, nil
}

// TestLeaderKilledUnderLoad kills the etcd leader of a 3-member cluster while
// requests flow through haproxy: announcements stay, render keeps its file and
// keeps rendering, the engine keeps every placement, no request fails.
func TestLeaderKilledUnderLoad(t *testing.T) {
	cl := etcdtest.NewCluster(t, 3)
	eps := cl.Endpoints()
	c := openStore(t, eps)
	reg := registry.New(c, "")
	ctx := ctxFor(t, 3*time.Minute)
	const ttl = 2 * time.Second
	tok := token(t)

	l := startLB(t, eps)
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	var ms []*machine
	for i, ip := range ips {
		ms = append(ms, newMachine(t, eps, fmt.Sprintf("m%d", i+1), ip, 3*time.Second))
	}
	waitMachines(ctx, t, reg, len(ms))
	port := freePorts(t, 3, ips...)
	var units []string
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("web-%d.service", i+1)
		units = append(units, name)
		submitLaunched(ctx, t, reg, name, webUnit(t, tok, name, port+i, eps, ttl, spread))
	}
	eventually(t, 60*time.Second, "units placed, running and announced", func() error {
		return checkInvariants(ctx, c, tok, units)
	})
	ann, _ := announced(ctx, c)
	var addrs []string
	for _, v := range ann {
		addrs = append(addrs, strings.Fields(v)[1])
	}
	l.waitServers(t, 30*time.Second, addrs)
	before, err := scheduled(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}

	l.waitServing(ctx, t, len(units))
	mon := startMonitor(ctx, c, tok, units)
	pids := pidsByUnit(t, tok, units)
	run := l.hammer.Start(ctx)
	leader := cl.Leader()
	t.Logf("killing etcd leader m%d", leader)
	cl.Members[leader].Kill()
	// Watch the outcome for three announce TTLs: nothing may change.
	deadline := time.Now().Add(3 * ttl)
	for time.Now().Before(deadline) {
		if got := l.servers(); strings.Join(got, " ") != strings.Join(sortedCopy(addrs), " ") {
			t.Errorf("rendered servers changed after the leader was killed: %v, want %v", got, addrs)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	eventually(t, 20*time.Second, "invariants after leader kill", func() error { return checkInvariants(ctx, c, tok, units) })
	after, err := scheduled(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}
	for u, m := range before {
		if after[u] != m {
			t.Errorf("placement of %s moved from %s to %s after an etcd leader change", u, m, after[u])
		}
	}
	ann2, _ := announced(ctx, c)
	for k, v := range ann {
		if ann2[k] != v {
			t.Errorf("announcement %s changed from %q to %q", k, v, ann2[k])
		}
	}

	// Keeps rendering: a new announcement reaches haproxy while the old
	// leader is still down, and again after it is back.
	extra := startAnnouncer(t, eps, "extra", "127.0.0.5", ttl)
	l.waitServers(t, 20*time.Second, append(addrs, extra.addr))
	cl.Restart(leader)
	extra.p.Stop()
	l.waitServers(t, 20*time.Second, addrs)

	// Twice in a row: the new leader is killed too. Nothing stops, nothing
	// moves (the engine restarts its absence clocks on the new term).
	second := cl.Leader()
	t.Logf("killing etcd leader m%d (second in a row)", second)
	cl.Members[second].Kill()
	time.Sleep(ttl + moveGrace + time.Second)
	eventually(t, 20*time.Second, "invariants after the second leader kill", func() error { return checkInvariants(ctx, c, tok, units) })
	cl.Restart(second)
	after2, err := scheduled(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}
	for u, m := range before {
		if after2[u] != m {
			t.Errorf("placement of %s moved from %s to %s after two etcd leader changes", u, m, after2[u])
		}
	}
	for u, pid := range pidsByUnit(t, tok, units) {
		if pid != pids[u] {
			t.Errorf("%s restarted across the etcd leader kills: pid %d, then %d", u, pids[u], pid)
		}
	}
	res := run.Stop()
	maxDup, maxDead, samples := mon.Stop()
	figure(t, "leader-kill/requests", "errors %d / total %d over two leader kills in a row; every instance kept its pid, none moved", res.Errors, res.Total)
	figure(t, "leader-kill/monitor", "max duplicate %s, max announced-dead %s over %d samples", maxDup, maxDead, samples)
	if !tolerable(res) {
		t.Errorf("requests through haproxy failed during the leader kill: %s", res)
		l.logHaproxy(t)
	}
	if maxDup > 0 {
		t.Errorf("a unit ran twice for %s", maxDup)
	}
	for _, m := range ms {
		if m.p.Exited() {
			t.Errorf("machine %s exited: %s", m.id, tail(m.p.Output(), 2000))
		}
	}
	if l.render.Exited() {
		t.Errorf("render exited: %s", l.render.Output())
	}
}

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

// TestEtcdDownAndBack stops the only etcd for a while (10 s; 30 s with
// FLOTILLA_FAULTS_LONG=1): render keeps the last good file and haproxy keeps
// serving; render and announce do not spin (their CPU is measured from
// /proc); after the restart every announcement is there and rendering goes on.
func TestEtcdDownAndBack(t *testing.T) {
	srv := etcdtest.New(t, etcdtest.WithMode(etcdtest.Binary))
	eps := srv.Endpoints()
	c := openStore(t, eps)
	ctx := ctxFor(t, 3*time.Minute)
	const ttl = 2 * time.Second
	outage := 10 * time.Second
	if long() {
		outage = 30 * time.Second
	}

	l := startLB(t, eps)
	var as []*announcer
	var addrs []string
	for i, ip := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"} {
		a := startAnnouncer(t, eps, fmt.Sprintf("b%d", i+1), ip, ttl)
		as = append(as, a)
		addrs = append(addrs, a.addr)
	}
	l.waitServers(t, 30*time.Second, addrs)
	before, _ := announced(ctx, c)
	l.waitServing(ctx, t, len(as))
	run := l.hammer.Start(ctx)

	pids := map[string]int{"render": l.render.Pid()}
	for _, a := range as {
		pids["announce-"+a.name] = a.p.Pid()
	}
	ticks0 := map[string]int64{}
	for n, pid := range pids {
		ticks0[n], _ = cpuTicks(pid)
	}
	srv.Stop()
	start := time.Now()
	for time.Since(start) < outage {
		if got := l.servers(); strings.Join(got, " ") != strings.Join(sortedCopy(addrs), " ") {
			t.Fatalf("render changed the file while etcd was down: %v", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
	elapsed := time.Since(start)
	for n, pid := range pids {
		t1, err := cpuTicks(pid)
		if err != nil {
			t.Errorf("%s (pid %d) died while etcd was down: %v", n, pid, err)
			continue
		}
		used := time.Duration(t1-ticks0[n]) * 10 * time.Millisecond
		pct := 100 * used.Seconds() / elapsed.Seconds()
		figure(t, "etcd-down/cpu/"+n, "%.1f%% of one core (%s CPU in %s)", pct, used, elapsed.Round(time.Millisecond))
		// A busy loop burns a whole core; a retrying client a few per cent.
		if pct > 25 {
			t.Errorf("%s used %.0f%% CPU while etcd was down: a busy loop", n, pct)
		}
	}
	during := run.Snapshot()
	srv.Start()
	eventually(t, 30*time.Second, "announcements back", func() error {
		now, err := announced(ctx, c)
		if err != nil {
			return err
		}
		for k, v := range before {
			if now[k] != v {
				return fmt.Errorf("%s = %q, want %q", k, now[k], v)
			}
		}
		return nil
	})
	extra := startAnnouncer(t, eps, "extra", "127.0.0.5", ttl)
	l.waitServers(t, 30*time.Second, append(addrs, extra.addr))
	res := run.Stop()
	figure(t, "etcd-down/requests", "errors %d / total %d during the %s outage; errors %d / total %d overall", during.Errors, during.Total, outage, res.Errors, res.Total)
	if !tolerable(res) {
		t.Errorf("requests failed while etcd was down: %s", res)
		l.logHaproxy(t)
	}
}

// TestCompactionAndDefragDuringWatches compacts and defragments etcd while
// render, agents and the engine watch, with render frozen (SIGSTOP) across
// changes and a compaction so that it resumes behind the compacted revision:
// everything converges to the keys as they are and keeps following changes.
func TestCompactionAndDefragDuringWatches(t *testing.T) {
	srv := etcdtest.New(t, etcdtest.WithMode(etcdtest.Binary))
	eps := srv.Endpoints()
	c := openStore(t, eps)
	reg := registry.New(c, "")
	admin := srv.Admin()
	ctx := ctxFor(t, 3*time.Minute)
	const ttl = 2 * time.Second
	tok := token(t)

	l := startLB(t, eps)
	ips := []string{"127.0.0.2", "127.0.0.3"}
	for i, ip := range ips {
		newMachine(t, eps, fmt.Sprintf("m%d", i+1), ip, 2*time.Second)
	}
	waitMachines(ctx, t, reg, len(ips))
	port := freePorts(t, 2, ips...)
	units := []string{"web-1.service", "web-2.service"}
	for i, u := range units {
		submitLaunched(ctx, t, reg, u, webUnit(t, tok, u, port+i, eps, ttl, spread))
	}
	eventually(t, 60*time.Second, "units running and announced", func() error { return checkInvariants(ctx, c, tok, units) })

	compact := func() {
		t.Helper()
		st, err := admin.Status(ctx, srv.Endpoint())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Compact(ctx, st.Header.Revision); err != nil {
			t.Fatalf("compact: %v", err)
		}
		if _, err := admin.Defragment(ctx, srv.Endpoint()); err != nil {
			t.Fatalf("defrag: %v", err)
		}
	}
	rounds := 5
	if long() {
		rounds = 20
	}
	for r := 0; r < rounds; r++ {
		// Freeze render, change what it watches, compact past the change.
		if err := syscall.Kill(l.render.Pid(), syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		junk := fmt.Sprintf("%sjunk-%d", announcePrefix, r)
		if _, err := c.Put(ctx, junk, fmt.Sprintf("junk%d 127.0.0.9:%d", r, 1000+r), 0); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Delete(ctx, junk); err != nil {
			t.Fatal(err)
		}
		// And move a unit away and back while compacting: the agents and the
		// engine must follow.
		u := units[r%len(units)]
		if err := reg.SetDesired(ctx, u, registry.Inactive); err != nil {
			t.Fatal(err)
		}
		compact()
		if err := syscall.Kill(l.render.Pid(), syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		eventually(t, 30*time.Second, "unit stopped after compaction", func() error {
			if n := len(backends(tok)[u]); n != 0 {
				return fmt.Errorf("%s still runs %d times", u, n)
			}
			return nil
		})
		compact()
		if err := reg.SetDesired(ctx, u, registry.Launched); err != nil {
			t.Fatal(err)
		}
		compact()
		eventually(t, 30*time.Second, "invariants after compaction", func() error { return checkInvariants(ctx, c, tok, units) })
		ann, _ := announced(ctx, c)
		var addrs []string
		for _, v := range ann {
			addrs = append(addrs, strings.Fields(v)[1])
		}
		l.waitServers(t, 30*time.Second, addrs)
	}
	if l.render.Exited() {
		t.Errorf("render exited: %s", l.render.Output())
	}
	figure(t, "compaction", "%d rounds of compact+defrag with render frozen across changes: converged every time", rounds)
}
