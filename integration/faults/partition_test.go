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
	ipcmd := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	n := &netns{name: fmt.Sprintf("flt-faults-%04x", id), hostIf: fmt.Sprintf("flth%04x", id)}
	nsIf := fmt.Sprintf("fltn%04x", id)
	n.nsIf = nsIf
	if err := ipcmd("netns", "add", n.name); err != nil {
		t.Skipf("cannot create a network namespace here: %v", err)
	}
	t.Cleanup(func() { ipcmd("netns", "del", n.name) }) // the veth pair goes with it
	// A free 169.254.213.<sub>/30 (never .169.254): the first, from a random
	// start, whose route is not there yet (another namespace of this test, or
	// of a test running beside it, holds the others). Whatever state the link
	// is in, packets for the namespace's addresses never leave through the
	// host's default route: an unreachable route below the veth's own catches
	// them.
	var subnet string
	start := rand.IntN(60)
	for i := range 60 {
		sub := 1 + (start+i)%60*4
		subnet = fmt.Sprintf("169.254.213.%d/30", sub-1)
		err := ipcmd("route", "add", "unreachable", subnet, "metric", "4000")
		if err != nil && strings.Contains(err.Error(), "File exists") && i < 59 {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		n.hostIP, n.nsIP = fmt.Sprintf("169.254.213.%d", sub), fmt.Sprintf("169.254.213.%d", sub+1)
		break
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
