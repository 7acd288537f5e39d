package main

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
)

// cutProxy forwards TCP to target until cut, which closes every connection
// and refuses new ones: the machine is cut off from etcd, etcd itself is up.
type cutProxy struct {
	ln     net.Listener
	mu     sync.Mutex
	conns  []net.Conn
	cut    bool
	wg     sync.WaitGroup
	target string
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() { defer p.wg.Done(); io.Copy(u, c); u.Close() }()
			go func() { defer p.wg.Done(); io.Copy(c, u); c.Close() }()
		}
	}()
	t.Cleanup(func() { p.cutOff(); ln.Close(); p.wg.Wait() })
	return p
}

func (p *cutProxy) cutOff() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// TestCutOffKeyExpires: a machine cut off from etcd (etcd up, the path to
// it gone) keeps running its announce, and its key expires with the lease,
// so load balancers stop sending to it.
func TestCutOffKeyExpires(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	u := srv.Endpoint()
	host := u[len("http://"):]
	p := newCutProxy(t, host)
	const ttl = 2 * time.Second
	a := start(t, []string{"ANNOUNCE_ENDPOINTS=http://" + p.ln.Addr().String(), "NOTIFY_SOCKET=", "WATCHDOG_USEC="},
		"--ttl", ttl.String(), "/cut/web1", "h 10.0.0.1:80")
	waitKey(t, c, "/cut/web1", true, 10*time.Second)
	p.cutOff()
	_, took := waitKey(t, c, "/cut/web1", false, 10*time.Second)
	t.Logf("key of the cut-off announce gone %s after the cut (ttl %s)", took.Round(time.Millisecond), ttl)
	if took > ttl+2*time.Second {
		t.Errorf("key outlived the cut by %s, want within TTL (+2s)", took)
	}
	if !a.running() {
		t.Error("announce exited while cut off; it must keep trying")
	}
}
