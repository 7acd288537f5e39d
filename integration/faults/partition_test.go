package faults

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// netns is a network namespace joined to the host by a veth pair: the host
// side has hostIP, the namespace side nsIP (a /30 of link-local addresses
// that exist only between the two). Deleted when the test ends.
type netns struct {
	name, hostIf, nsIf, hostIP, nsIP string
}

func newNetns(t testing.TB) *netns {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
	id := rand.Uint32() % 0xffff
	sub := 1 + rand.IntN(60)*4 // 169.254.213.<sub>/30, never .169.254
	n := &netns{name: fmt.Sprintf("flt-faults-%04x", id), hostIf: fmt.Sprintf("flth%04x", id),
		hostIP: fmt.Sprintf("169.254.213.%d", sub), nsIP: fmt.Sprintf("169.254.213.%d", sub+1)}
	nsIf := fmt.Sprintf("fltn%04x", id)
	n.nsIf = nsIf
	subnet := fmt.Sprintf("169.254.213.%d/30", sub-1)
	ipcmd := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := ipcmd("netns", "add", n.name); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	t.Cleanup(func() { ipcmd("netns", "del", n.name) }) // the veth pair goes with it
	// Whatever state the link is in, packets for the namespace's addresses
	// never leave through the host's default route: an unreachable route
	// below the veth's own catches them.
	if err := ipcmd("route", "add", "unreachable", subnet, "metric", "4000"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ipcmd("route", "del", "unreachable", subnet, "metric", "4000") })
	steps := [][]string{
		{"link", "add", n.hostIf, "type", "veth", "peer", "name", nsIf},
		{"link", "set", nsIf, "netns", n.name},
		{"addr", "add", n.hostIP + "/30", "dev", n.hostIf},
		{"link", "set", n.hostIf, "up"},
		{"-n", n.name, "addr", "add", n.nsIP + "/30", "dev", nsIf},
		{"-n", n.name, "link", "set", nsIf, "up"},
		{"-n", n.name, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := ipcmd(s...); err != nil {
			t.Fatal(err)
		}
	}
	return n
}

// setLink sets the namespace's side of the veth up or down: down is the
// partition (the host side loses its carrier; its routes stay, so packets
// are dropped on the veth, and the unreachable route guards the rest).
func (n *netns) setLink(t testing.TB, state string) {
	t.Helper()
	if out, err := exec.Command("ip", "-n", n.name, "link", "set", n.nsIf, state).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s link set %s %s: %v: %s", n.name, n.nsIf, state, err, out)
	}
}

// exec is the command prefix that runs a program inside the namespace.
func (n *netns) exec() []string { return []string{"ip", "netns", "exec", n.name} }

// tcpProxy forwards connections accepted on listen to target, so that a
// machine in a namespace reaches the etcd that listens on the host's
// loopback. Closed when the test ends.
type tcpProxy struct {
	l      net.Listener
	target string
	g      errgroup.Group
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

func startProxy(t testing.TB, listen, target string) *tcpProxy {
	t.Helper()
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{l: l, target: target, conns: map[net.Conn]bool{}}
	p.g.Go(p.accept)
	t.Cleanup(p.Close)
	return p
}

func (p *tcpProxy) Addr() string { return p.l.Addr().String() }

func (p *tcpProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = true
	return true
}

func (p *tcpProxy) accept() error {
	for {
		in, err := p.l.Accept()
		if err != nil {
			return nil
		}
		if !p.track(in) {
			return nil
		}
		p.g.Go(func() error {
			out, err := net.DialTimeout("tcp", p.target, 2*time.Second)
			if err != nil {
				in.Close()
				return nil
			}
			if !p.track(out) {
				in.Close()
				return nil
			}
			var pair errgroup.Group
			pair.Go(func() error { io.Copy(out, in); out.Close(); return nil })
			pair.Go(func() error { io.Copy(in, out); in.Close(); return nil })
			return pair.Wait()
		})
	}
}

// Close stops accepting, closes every connection and waits. Safe to call twice.
func (p *tcpProxy) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		p.l.Close()
		for c := range p.conns {
			c.Close()
		}
	}
	p.mu.Unlock()
	p.g.Wait()
}

// TestPartitionedMachine cuts one machine (in its own network namespace) off
// the network with its veth link down: its instance stops there and starts
// elsewhere, never alive in both places beyond one TTL; haproxy keeps
// answering; when the link comes back there is no duplicate and no lost unit.
func TestPartitionedMachine(t *testing.T) {
	ns := newNetns(t)
	srv := etcdtest.New(t, etcdtest.WithMode(etcdtest.Binary))
	direct := srv.Endpoint() // http://127.0.0.1:P
	proxy := startProxy(t, ns.hostIP+":0", strings.TrimPrefix(direct, "http://"))
	// Every process gets both endpoints: on the host the first works, in the
	// namespace (whose loopback has no etcd) the second.
	eps := []string{direct, "http://" + proxy.Addr()}
	c := openStore(t, eps[:1])
	reg := registry.New(c, "")
	ctx := ctxFor(t, 3*time.Minute)
	const ttl = 2 * time.Second
	partition := 3 * ttl
	if long() {
		partition = 30 * time.Second
	}
	tok := token(t)

	l := startLB(t, eps[:1])
	hostIPs := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	for i, ip := range hostIPs {
		newMachine(t, eps, fmt.Sprintf("m%d", i+1), ip, ttl)
	}
	cut := newMachine(t, eps, "cut", ns.nsIP, ttl, ns.exec()...)
	waitMachines(ctx, t, reg, 4)
	port := freePorts(t, 4, append(hostIPs, "127.0.0.1")...)
	var units []string
	for i := 0; i < 4; i++ {
		name := fmt.Sprintf("web-%d.service", i+1)
		units = append(units, name)
		submitLaunched(ctx, t, reg, name, webUnit(t, tok, name, port+i, eps, ttl, ""))
	}
	eventually(t, 60*time.Second, "units running and announced", func() error { return checkInvariants(ctx, c, tok, units) })
	sched, _ := scheduled(ctx, reg)
	var victim string
	for u, m := range sched {
		if m == cut.id {
			victim = u
		}
	}
	if victim == "" {
		t.Fatalf("no unit placed on the machine to partition: %v", sched)
	}
	l.waitServers(t, 30*time.Second, annAddrs(ctx, t, c))

	l.waitServing(ctx, t, len(units))
	mon := startMonitor(ctx, c, tok, units)
	run := l.hammer.Start(ctx)
	t.Logf("partition: link of %s down (it runs %s)", cut.id, victim)
	ns.setLink(t, "down")
	cutAt := time.Now()
	var stoppedThere, startedElsewhere time.Duration
	eventually(t, 30*time.Second, victim+" stopped on the cut machine and running elsewhere", func() error {
		var there, elsewhere bool
		for _, p := range backends(tok)[victim] {
			if strings.HasPrefix(p.addr, ns.nsIP+":") {
				there = true
			} else {
				elsewhere = true
			}
		}
		if !there && stoppedThere == 0 {
			stoppedThere = time.Since(cutAt)
		}
		if elsewhere && startedElsewhere == 0 {
			startedElsewhere = time.Since(cutAt)
		}
		if there || !elsewhere {
			return fmt.Errorf("on the cut machine: %v, elsewhere: %v", there, elsewhere)
		}
		return checkInvariants(ctx, c, tok, units)
	})
	// The rest of the partition: nothing changes.
	time.Sleep(partition - time.Since(cutAt))
	if err := checkInvariants(ctx, c, tok, units); err != nil {
		t.Errorf("during the partition: %v", err)
	}
	l.waitServers(t, 30*time.Second, annAddrs(ctx, t, c))

	ns.setLink(t, "up")
	healed := time.Now()
	// The cut machine comes back (new lease) and gets nothing twice.
	waitMachines(ctx, t, reg, 4)
	rejoin := time.Since(healed)
	eventually(t, 30*time.Second, "invariants after the partition heals", func() error { return checkInvariants(ctx, c, tok, units) })
	time.Sleep(2 * ttl) // a duplicate would show now
	if err := checkInvariants(ctx, c, tok, units); err != nil {
		t.Errorf("after healing: %v", err)
	}
	res := run.Stop()
	maxDup, maxDead, samples := mon.Stop()
	figure(t, "partition/timeline", "stopped on the cut machine after %s, running elsewhere after %s, cut machine rejoined %s after the link came up",
		stoppedThere.Round(time.Millisecond), startedElsewhere.Round(time.Millisecond), rejoin.Round(time.Millisecond))
	figure(t, "partition/monitor", "max duplicate %s, max announced-dead %s over %d samples", maxDup, maxDead, samples)
	figure(t, "partition/requests", "errors %d / total %d", res.Errors, res.Total)
	// The agent notices the lost lease about when etcd expires it and the
	// engine moves the unit, then stops the unit: the overlap is bounded by
	// one TTL, plus the stop itself and the 100 ms sampling (1 s allowed).
	if maxDup > ttl+time.Second {
		t.Errorf("%s ran in two places for %s (> one TTL %s + 1s)", victim, maxDup, ttl)
	}
	if res.Total == 0 || res.Errors*100 > res.Total {
		t.Errorf("requests through haproxy during the partition: %s", res)
		l.logHaproxy(t)
	}
}

// annAddrs returns the addresses announced now.
func annAddrs(ctx context.Context, t testing.TB, c *store.Client) []string {
	t.Helper()
	ann, err := announced(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for k, v := range ann {
		f := strings.Fields(v)
		if len(f) != 2 {
			t.Fatalf("%s: bad value %q", k, v)
		}
		addrs = append(addrs, f[1])
	}
	return addrs
}
