package store_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

// cutProxy forwards TCP to one address and can cut every connection and
// refuse new ones for a while: a network blip between a client and etcd.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() { ln.Close(); p.cut(false) })
	go p.serve()
	return p
}

func (p *cutProxy) Addr() string { return p.ln.Addr().String() }

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { io.Copy(up, c); up.Close() }()
		go func() { io.Copy(c, up); c.Close() }()
	}
}

// cut closes every connection; down says whether new ones are refused.
func (p *cutProxy) cut(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// A watch from "now" whose stream breaks before its first event resumes from
// the revision it was created at: a put made while it was reconnecting is
// delivered, not skipped.
func TestWatchFromNowSurvivesBreakBeforeFirstEvent(t *testing.T) {
	srv := etcdtest.New(t)
	direct := srv.Client()
	proxy := newCutProxy(t, strings.TrimPrefix(srv.Endpoint(), "http://"))
	cfg := srv.Config()
	cfg.Endpoints = []string{"http://" + proxy.Addr()}
	c, err := store.Open(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxT(t)
	// Another key's put, outside the prefix, gives etcd a revision past 1.
	if _, err := direct.Put(ctx, "/other", "x", 0); err != nil {
		t.Fatal(err)
	}
	w := c.WatchPrefix(ctx, "/w/", 0)
	defer w.Close()
	time.Sleep(500 * time.Millisecond) // the watch is created
	proxy.cut(true)
	if _, err := direct.Put(ctx, "/w/during-the-gap", "1", 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	proxy.cut(false)
	select {
	case b := <-w.C:
		if b.Err != nil {
			t.Fatalf("watch ended: %v", b.Err)
		}
		if len(b.Events) == 0 || b.Events[0].KV.Key != "/w/during-the-gap" {
			t.Fatalf("first batch = %+v, want the put made during the gap", b)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the put made while the watch was reconnecting never came")
	}
}

// A watch from "now" ended by etcd itself before its first event (its member
// lost the leader: WithRequireLeader cancels the stream) is re-established
// from the revision it was created at, so a put made while it waited for a
// leader again is delivered.
func TestWatchFromNowSurvivesLeaderLossBeforeFirstEvent(t *testing.T) {
	cl := etcdtest.NewCluster(t, 3)
	cfg := cl.Members[0].Config()
	c, err := store.Open(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxT(t)
	w := c.WatchPrefix(ctx, "/w/", 0)
	defer w.Close()
	time.Sleep(500 * time.Millisecond) // the watch is created
	cl.Members[1].Stop()
	cl.Members[2].Stop()
	time.Sleep(3 * time.Second) // member 0 notices it has no leader
	cl.Restart(1)
	cl.Restart(2)
	if _, err := cl.Members[1].Client().Put(ctx, "/w/after-the-loss", "1", 0); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case b := <-w.C:
			if b.Err != nil {
				t.Fatalf("watch ended: %v", b.Err)
			}
			if len(b.Events) == 0 {
				continue // progress
			}
			if b.Events[0].KV.Key != "/w/after-the-loss" {
				t.Fatalf("first event = %+v, want the put made after the leader came back", b.Events[0])
			}
			return
		case <-time.After(15 * time.Second):
			t.Fatal("the put made while the watch waited for a leader never came")
		}
	}
}

// The batch that ends a watch on cancellation always comes, even when the
// reader is slow to take it.
func TestWatchLastBatchOnCancel(t *testing.T) {
	c := etcdtest.New(t).Client()
	for range 20 {
		ctx, cancel := context.WithCancel(ctxT(t))
		w := c.WatchPrefix(ctx, "/w/", 0)
		cancel()
		time.Sleep(10 * time.Millisecond)
		var last store.WatchBatch
		for b := range w.C {
			last = b
		}
		if !errors.Is(last.Err, context.Canceled) {
			t.Fatalf("last batch = %+v, want the cancellation", last)
		}
		w.Close()
	}
}
