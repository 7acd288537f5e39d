package faults

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/agent"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
)

// restartAlways makes the suite's unit restart when its process dies; it
// goes in webUnit's last argument, inside [Service].
const restartAlways = "Restart=always\nRestartSec=200ms\n"

// fenced is the [X-Flotilla] section of a unit that must never run twice.
const fenced = "\n[X-Flotilla]\nOnDisconnect=stop\n"

// pidsByUnit returns the pid of each unit's backend, failing on a unit that
// runs other than once.
func pidsByUnit(t testing.TB, tok string, units []string) map[string]int {
	t.Helper()
	run := backends(tok)
	out := map[string]int{}
	for _, u := range units {
		if len(run[u]) != 1 {
			t.Fatalf("%s runs %d times: %v", u, len(run[u]), run[u])
		}
		out[u] = run[u][0].pid
	}
	return out
}

// TestEtcdOutageKeepsUnits stops the only etcd for 10 s (30 s with
// FLOTILLA_FAULTS_LONG=1) under three machines running three instances,
// requests flowing through haproxy: no request fails, no unit stops or
// restarts (same pids), nothing moves when etcd is back. One instance killed
// during the outage is restarted by its Restart= and announced once etcd
// answers.
func TestEtcdOutageKeepsUnits(t *testing.T) {
	srv := etcdtest.New(t, etcdtest.WithMode(etcdtest.Binary))
	eps := srv.Endpoints()
	c := openStore(t, eps)
	reg := registry.New(c, "")
	ctx := ctxFor(t, 3*time.Minute)
	const ttl = 2 * time.Second
	outage := 10 * time.Second
	if long() {
		outage = 30 * time.Second
	}
	tok := token(t)
	l := startLB(t, eps)
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	var ms []*machine
	for i, ip := range ips {
		ms = append(ms, newMachine(t, eps, fmt.Sprintf("m%d", i+1), ip, ttl))
	}
	waitMachines(ctx, t, reg, len(ms))
	port := freePorts(t, 3, ips...)
	var units []string
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("web-%d.service", i+1)
		units = append(units, name)
		submitLaunched(ctx, t, reg, name, webUnit(t, tok, name, port+i, eps, ttl, restartAlways+spread))
	}
	eventually(t, 60*time.Second, "units running and announced", func() error { return checkInvariants(ctx, c, tok, units) })
	l.waitServers(t, 30*time.Second, annAddrs(ctx, t, c))
	l.waitServing(ctx, t, len(units))
	before, err := scheduled(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}
	pids := pidsByUnit(t, tok, units)
	run := l.hammer.Start(ctx)

	srv.Stop()
	stopped := time.Now()
	// Halfway through, one instance dies: its Restart= brings it back.
	time.Sleep(outage / 2)
	victim := units[0]
	beforeKill := run.Snapshot()
	if err := syscall.Kill(pids[victim], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var restartedAfter time.Duration
	eventually(t, outage, victim+" restarted by Restart= while etcd is down", func() error {
		ps := backends(tok)[victim]
		if len(ps) != 1 || ps[0].pid == pids[victim] {
			return fmt.Errorf("%s runs as %v", victim, ps)
		}
		restartedAfter = time.Since(stopped) - outage/2
		return nil
	})
	for _, u := range units[1:] {
		if !alive(pids[u]) {
			t.Errorf("%s (pid %d) stopped while etcd was down", u, pids[u])
		}
	}
	// The crash itself may fail the requests it had in flight (haproxy
	// cannot retry an answer cut short); haproxy marks it down within
	// 600 ms. Errors are counted apart for these 2 s.
	time.Sleep(2 * time.Second)
	afterKill := run.Snapshot()
	time.Sleep(max(outage-time.Since(stopped), 0))
	during := run.Snapshot()
	srv.Start()
	back := time.Now()
	eventually(t, 60*time.Second, "every instance announced again", func() error { return checkInvariants(ctx, c, tok, units) })
	announcedAfter := time.Since(back)
	// Long enough for a wrong move (TTL + grace after the restart) to show.
	time.Sleep(ttl + moveGrace + 2*time.Second)
	if err := checkInvariants(ctx, c, tok, units); err != nil {
		t.Errorf("after etcd came back: %v", err)
	}
	after, err := scheduled(ctx, reg)
	if err != nil {
		t.Fatal(err)
	}
	for u, m := range before {
		if after[u] != m {
			t.Errorf("%s moved from %s to %s after the etcd outage", u, m, after[u])
		}
	}
	now := pidsByUnit(t, tok, units)
	for _, u := range units[1:] {
		if now[u] != pids[u] {
			t.Errorf("%s restarted across the outage: pid %d, then %d", u, pids[u], now[u])
		}
	}
	l.waitServers(t, 30*time.Second, annAddrs(ctx, t, c))
	res := run.Stop()
	crash := afterKill.Errors - beforeKill.Errors
	figure(t, "etcd-outage/requests", "errors %d / total %d during the %s outage; errors %d / total %d overall, of which %d in the 2 s after an instance was killed -9",
		during.Errors, during.Total, outage, res.Errors, res.Total, crash)
	figure(t, "etcd-outage/units", "%d of %d instances kept their pid, 0 moved; the one killed during the outage restarted after %s, all announced %s after etcd returned",
		len(units)-1, len(units)-1, restartedAfter.Round(time.Millisecond), announcedAfter.Round(time.Millisecond))
	if res.Total == 0 || res.Errors-crash != 0 || crash*100 > afterKill.Total-beforeKill.Total {
		t.Errorf("requests through haproxy across the etcd outage: %s (%d in the 2 s after the kill)", res, crash)
		l.logHaproxy(t)
	}
	for _, m := range ms {
		if m.p.Exited() {
			t.Errorf("machine %s exited: %s", m.id, tail(m.p.Output(), 2000))
		}
	}
}

// nsMachine is a machine in its own network namespace, reaching etcd
// through a proxy on its veth.
type nsMachine struct {
	*machine
	ns *netns
}

// TestPartitionKeepsRunning cuts one machine off (its network namespace's
// link down) for longer than TTL + grace: its instance starts elsewhere
// while the cut machine keeps its copy; within seconds of the link coming
// back the old copy is stopped; no duplicate is left, no unit lost, and the
// replacement is still announced and in haproxy after the old copy stopped.
func TestPartitionKeepsRunning(t *testing.T) {
	ns := newNetns(t)
	srv := etcdtest.New(t, etcdtest.WithMode(etcdtest.Binary))
	direct := srv.Endpoint()
	proxy := startProxy(t, ns.hostIP+":0", strings.TrimPrefix(direct, "http://"))
	eps := []string{direct, "http://" + proxy.Addr()}
	c := openStore(t, eps[:1])
	reg := registry.New(c, "")
	ctx := ctxFor(t, 3*time.Minute)
	const ttl = 2 * time.Second
	partition := ttl + moveGrace + 5*time.Second
	if long() {
		partition = 30 * time.Second
	}
	tok := token(t)
	l := startLB(t, eps[:1])
	hostIPs := []string{"127.0.0.2", "127.0.0.3"}
	for i, ip := range hostIPs {
		newMachine(t, eps, fmt.Sprintf("m%d", i+1), ip, ttl)
	}
	cut := newMachine(t, eps, "cut", ns.nsIP, ttl, ns.exec()...)
	waitMachines(ctx, t, reg, 3)
	port := freePorts(t, 2, append(hostIPs, "127.0.0.1")...)
	units := []string{"web-1.service", "web-2.service"}
	for i, name := range units {
		submitLaunched(ctx, t, reg, name, webUnit(t, tok, name, port+i, eps, ttl, spread))
	}
	eventually(t, 60*time.Second, "units running and announced", func() error { return checkInvariants(ctx, c, tok, units) })
	// Make sure one unit is on the machine to cut: move one there if not.
	sched, _ := scheduled(ctx, reg)
	victim := ""
	for u, m := range sched {
		if m == cut.id {
			victim = u
		}
	}
	if victim == "" {
		t.Skipf("no unit placed on the machine to partition: %v", sched)
	}
	l.waitServers(t, 30*time.Second, annAddrs(ctx, t, c))
	l.waitServing(ctx, t, len(units))
	oldPid := 0
	for _, p := range backends(tok)[victim] {
		oldPid = p.pid
	}
	run := l.hammer.Start(ctx)
	ns.setLink(t, "down")
	cutAt := time.Now()
	// The cut machine's announcement expires with announce's own lease, so
	// haproxy stops sending to it while its unit keeps running.
	var unannounced time.Duration
	eventually(t, ttl+10*time.Second, "the cut machine's announcement gone", func() error {
		ann, err := announced(ctx, c)
		if err != nil {
			return err
		}
		for k, v := range ann {
			if strings.Contains(v, ns.nsIP+":") {
				return fmt.Errorf("%s still announced as %q", k, v)
			}
		}
		unannounced = time.Since(cutAt)
		return nil
	})
	if !alive(oldPid) {
		t.Errorf("the cut machine's copy of %s stopped with its announcement", victim)
	}
	var startedElsewhere time.Duration
	eventually(t, ttl+moveGrace+30*time.Second, victim+" running elsewhere", func() error {
		for _, p := range backends(tok)[victim] {
			if !strings.HasPrefix(p.addr, ns.nsIP+":") {
				startedElsewhere = time.Since(cutAt)
				return nil
			}
		}
		return fmt.Errorf("%s runs only on the cut machine", victim)
	})
	if !alive(oldPid) {
		t.Errorf("the cut machine stopped its copy of %s while cut off", victim)
	}
	// The lease runs TTL from its last renewal, sent up to TTL/4 (the
	// agent's own renewals) before the cut: TTL/2 allows for that.
	if startedElsewhere < ttl/2+moveGrace {
		t.Errorf("%s started elsewhere %s after the cut, before (TTL - last renewal) + grace", victim, startedElsewhere)
	}
	time.Sleep(max(partition-time.Since(cutAt), 0))
	if !alive(oldPid) {
		t.Errorf("the cut machine stopped its copy of %s while cut off", victim)
	}
	ns.setLink(t, "up")
	healed := time.Now()
	var oldStopped time.Duration
	eventually(t, 30*time.Second, "old copy stopped after the heal", func() error {
		if alive(oldPid) {
			return fmt.Errorf("old copy (pid %d) still runs", oldPid)
		}
		oldStopped = time.Since(healed)
		return nil
	})
	eventually(t, 30*time.Second, "invariants after the heal", func() error { return checkInvariants(ctx, c, tok, units) })
	time.Sleep(2 * ttl) // a lost announcement or a duplicate would show now
	if err := checkInvariants(ctx, c, tok, units); err != nil {
		t.Errorf("after healing: %v", err)
	}
	l.waitServers(t, 30*time.Second, annAddrs(ctx, t, c))
	res := run.Stop()
	figure(t, "partition-keep/timeline", "cut copy unannounced %s after the cut (announce TTL %s), replacement started %s after the cut (TTL %s + grace %s), cut copy ran throughout, stopped %s after the link came up",
		unannounced.Round(time.Millisecond), ttl, startedElsewhere.Round(time.Millisecond), ttl, moveGrace, oldStopped.Round(time.Millisecond))
	figure(t, "partition-keep/requests", "errors %d / total %d", res.Errors, res.Total)
	if !tolerable(res) {
		t.Errorf("requests through haproxy during the partition: %s", res)
		l.logHaproxy(t)
	}
}

// TestPartitionFenced cuts the machine running a fenced unit
// (OnDisconnect=stop) off, 3 times (20 with FLOTILLA_FAULTS_LONG=1): every
// time the copy on the cut machine is gone before the new one starts.
// Ground truth is /proc, sampled every 10 ms.
func TestPartitionFenced(t *testing.T) {
	nss := []*netns{newNetns(t), newNetns(t)}
	srv := etcdtest.New(t, etcdtest.WithMode(etcdtest.Binary))
	direct := srv.Endpoint()
	c := openStore(t, []string{direct})
	reg := registry.New(c, "")
	cuts := 3
	if long() {
		cuts = 20
	}
	ctx := ctxFor(t, time.Duration(cuts)*40*time.Second+time.Minute)
	const ttl = 2 * time.Second
	tok := token(t)
	var ms []nsMachine
	for i, ns := range nss {
		proxy := startProxy(t, ns.hostIP+":0", strings.TrimPrefix(direct, "http://"))
		eps := []string{direct, "http://" + proxy.Addr()}
		ms = append(ms, nsMachine{newMachine(t, eps, fmt.Sprintf("n%d", i+1), ns.nsIP, ttl, ns.exec()...), ns})
	}
	waitMachines(ctx, t, reg, 2)
	port := freePorts(t, 1, "127.0.0.1")
	const name = "db.service"
	submitLaunched(ctx, t, reg, name, webUnit(t, tok, name, port, []string{direct}, ttl, fenced))
	where := func() (string, int) {
		ps := backends(tok)[name]
		if len(ps) != 1 {
			return "", 0
		}
		return strings.Split(ps[0].addr, ":")[0], ps[0].pid
	}
	var worst time.Duration = -time.Hour
	for i := 0; i < cuts; i++ {
		var ip string
		var pid int
		eventually(t, 60*time.Second, "fenced unit running once", func() error {
			if ip, pid = where(); ip == "" {
				return fmt.Errorf("%s runs %d times", name, len(backends(tok)[name]))
			}
			return nil
		})
		var cut nsMachine
		for _, m := range ms {
			if m.ns.nsIP == ip {
				cut = m
			}
		}
		if cut.machine == nil {
			t.Fatalf("%s runs at %s, on no machine of the test", name, ip)
		}
		cut.ns.setLink(t, "down")
		cutAt := time.Now()
		var lastOld, firstNew time.Time
		for firstNew.IsZero() && time.Since(cutAt) < ttl+moveGrace+30*time.Second {
			now := time.Now()
			for _, p := range backends(tok)[name] {
				if p.pid == pid {
					lastOld = now
				} else if firstNew.IsZero() {
					firstNew = now
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		if firstNew.IsZero() {
			t.Fatalf("cut %d: %s never started elsewhere", i+1, name)
		}
		overlap := lastOld.Sub(firstNew)
		worst = max(worst, overlap)
		t.Logf("cut %d of %s: old copy last seen %s after the cut, new copy first seen %s after: overlap %s",
			i+1, cut.id, lastOld.Sub(cutAt).Round(time.Millisecond), firstNew.Sub(cutAt).Round(time.Millisecond), overlap.Round(time.Millisecond))
		if overlap >= 0 {
			t.Errorf("cut %d: %s ran on two machines for %s", i+1, name, overlap)
		}
		cut.ns.setLink(t, "up")
		waitMachines(ctx, t, reg, 2)
	}
	figure(t, "partition-fenced/overlap", "worst overlap %s over %d cuts (negative: the old copy was gone that long before the new one started); kill deadline TTL %s - margin %s",
		worst.Round(time.Millisecond), cuts, ttl, agent.FenceMargin(ttl))
}
