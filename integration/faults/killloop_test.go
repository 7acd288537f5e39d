package faults

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/lbtest"
	"github.com/flotilla/flotilla/internal/registry"
)

// TestKillLoop kills machines (agent + engine candidate) with SIGKILL at
// random moments, alternating between the engine's leader and a random
// machine, and restarts them after a random pause, while requests flow
// through haproxy. After every iteration: every launched unit runs on
// exactly one machine, every running instance is announced, nothing dead is
// announced. Throughout: no unit runs twice, and no key is announced without
// a live process for longer than one TTL (plus the sampling period).
func TestKillLoop(t *testing.T) {
	srv := etcdtest.New(t, etcdtest.WithMode(etcdtest.Binary))
	eps := srv.Endpoints()
	c := openStore(t, eps)
	reg := registry.New(c, "")
	iterations := 10
	if long() {
		iterations = 50
	}
	ctx := ctxFor(t, time.Duration(iterations)*30*time.Second+time.Minute)
	const ttl = 2 * time.Second
	tok := token(t)

	l := startLB(t, eps)
	// Four machines for three instances kept apart: a killed machine's
	// instance has somewhere to go.
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}
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
		submitLaunched(ctx, t, reg, name, webUnit(t, tok, name, port+i, eps, ttl, spread))
	}
	eventually(t, 60*time.Second, "units running and announced", func() error { return checkInvariants(ctx, c, tok, units) })

	l.waitServers(t, 30*time.Second, annAddrs(ctx, t, c))
	l.waitServing(ctx, t, len(units))
	mon := startMonitor(ctx, c, tok, units)
	run := l.hammer.Start(ctx)
	var converge []time.Duration
	moves := 0
	for i := 0; i < iterations; i++ {
		before, _ := scheduled(ctx, reg)
		victim := ms[rand.IntN(len(ms))]
		what := "random machine"
		if i%2 == 0 {
			if id, ok, err := c.Leader(ctx, reg.ElectionPrefix()); err == nil && ok {
				for _, m := range ms {
					if m.id == id || strings.Contains(id, m.id) {
						victim, what = m, "engine leader"
					}
				}
			}
		}
		pause := time.Duration(rand.Int64N(int64(2 * ttl)))
		t.Logf("%s iteration %d: kill -9 %s (%s), restart after %s", time.Now().Format("15:04:05.000"), i+1, victim.id, what, pause.Round(time.Millisecond))
		victim.p.Kill()
		killed := time.Now()
		time.Sleep(pause)
		victim.start(t)
		eventually(t, 45*time.Second, fmt.Sprintf("invariants after iteration %d", i+1), func() error {
			return checkInvariants(ctx, c, tok, units)
		})
		converge = append(converge, time.Since(killed))
		after, _ := scheduled(ctx, reg)
		for u, m := range before {
			if after[u] != m {
				moves++
			}
		}
	}
	// haproxy serves every instance again.
	if _, ok := l.hammer.Until(ctx, 30, func(r lbtest.Result) bool { return len(r.By) == len(units) && r.Errors == 0 }); !ok {
		t.Errorf("haproxy does not answer from every instance after the loop")
	}
	res := run.Stop()
	maxDup, maxDead, samples := mon.Stop()
	slices.Sort(converge)
	figure(t, "kill-loop/requests", "errors %d / total %d over %d kill -9 iterations", res.Errors, res.Total, iterations)
	figure(t, "kill-loop/converge", "median %s, max %s from kill to all invariants holding; %d unit moves",
		converge[len(converge)/2].Round(time.Millisecond), converge[len(converge)-1].Round(time.Millisecond), moves)
	figure(t, "kill-loop/monitor", "max duplicate %s, max announced-dead %s over %d samples", maxDup, maxDead, samples)
	if maxDup > ttl {
		t.Errorf("a unit ran on two machines for %s (> one TTL %s)", maxDup, ttl)
	}
	// A killed instance's key lives until its lease expires: one TTL, plus
	// etcd's expiry sweep (500 ms) and the sampling period.
	if maxDead > ttl+time.Second {
		t.Errorf("a dead instance stayed announced for %s (> one TTL %s + 1s)", maxDead, ttl)
	}
	// haproxy health-checks every 200 ms and redispatches: requests in
	// flight to a killed backend are retried elsewhere. A few may still fail
	// (a connection reset mid-answer: measured 0.02%). More than 1% means
	// the LB broke.
	if res.Total == 0 || res.Errors*100 > res.Total {
		t.Errorf("requests through haproxy during the kill loop: %s", res)
		l.logHaproxy(t)
	}
	if l.render.Exited() {
		t.Errorf("render exited: %s", l.render.Output())
	}
}
