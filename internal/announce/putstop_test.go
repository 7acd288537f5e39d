package announce_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/announce"
	"github.com/flotilla/flotilla/internal/applied"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

// gate is a TCP proxy to etcd that holds the first client chunk holding
// match (announce's put: only it carries the value) until release is
// closed, and says on held when it holds it.
type gate struct {
	l       net.Listener
	target  string
	match   []byte
	held    chan struct{}
	release chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
}

func newGate(t *testing.T, target string, match []byte) *gate {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{l: l, target: target, match: match, held: make(chan struct{}), release: make(chan struct{})}
	g.wg.Add(1)
	go g.accept()
	t.Cleanup(g.close)
	return g
}

func (g *gate) accept() {
	defer g.wg.Done()
	for {
		c, err := g.l.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", g.target)
		if err != nil {
			c.Close()
			continue
		}
		g.mu.Lock()
		g.conns = append(g.conns, c, s)
		g.mu.Unlock()
		g.wg.Add(2)
		go func() { defer g.wg.Done(); io.Copy(c, s); c.Close() }()
		go func() { defer g.wg.Done(); g.up(c, s); s.Close() }()
	}
}

// up copies client → server, holding the chunk that holds match.
func (g *gate) up(c, s net.Conn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if bytes.Contains(buf[:n], g.match) {
				g.once.Do(func() { close(g.held) })
				<-g.release
			}
			if _, werr := s.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (g *gate) close() {
	g.l.Close()
	select {
	case <-g.release:
	default:
		close(g.release)
	}
	g.mu.Lock()
	for _, c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestStopWhilePutInFlight: a stop (ctx ending, SIGTERM in cmd/announce)
// while the first put is on its way to etcd still ends with the acknowledged
// withdrawal: the put lands, the key is deleted while the lease lives, the
// withdrawal waits for the render covering the key to apply the deletion,
// and only then is the lease revoked.
func TestStopWhilePutInFlight(t *testing.T) {
	srv := etcdtest.New(t)
	if srv.Mode() == etcdtest.External {
		t.Skip("needs an etcd this test can put a proxy in front of")
	}
	direct := srv.Client()
	ctx := ctxT(t, time.Minute)
	const key, value = "/clusterstate/putstop/web@1.service", "web-1 127.0.0.1:9 putstop-value"
	statusKey := applied.Key(applied.DefaultPrefix, "lb", "haproxy.toml")
	status := applied.Status{Host: "lb", Resource: "haproxy.toml", Prefixes: []string{"/clusterstate/putstop"}}
	rev0, err := direct.Put(ctx, statusKey, status.Encode(), 0)
	if err != nil {
		t.Fatal(err)
	}

	u, err := url.Parse(srv.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	g := newGate(t, u.Host, []byte(value))
	cfg := srv.Config()
	cfg.Endpoints = []string{"http://" + g.l.Addr().String()}
	c, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	w := direct.WatchPrefix(ctx, key, rev0+1)
	defer w.Close()
	var logs syncBuffer
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- announce.Run(rctx, c, announce.Config{Key: key, Value: value, TTL: 5 * time.Second,
			Drain:  announce.Drain{Timeout: 30 * time.Second},
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	}()
	select {
	case <-g.held:
	case <-ctx.Done():
		t.Fatal("announce's put never reached the proxy")
	}
	stop() // the stop comes while the put is held on its way
	close(g.release)

	// The key appears (the put landed), then is deleted with its lease alive.
	var lease store.LeaseID
	var delRev int64
	for delRev == 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("no put then delete of %s seen; log:\n%s", key, logs.String())
		case b := <-w.C:
			for _, ev := range b.Events {
				switch ev.Type {
				case store.EventPut:
					lease = ev.KV.Lease
				case store.EventDelete:
					if lease == 0 {
						t.Fatalf("%s deleted before any put was seen; log:\n%s", key, logs.String())
					}
					delRev = ev.KV.ModRevision
				}
			}
		}
	}
	if _, alive, err := direct.LeaseRemaining(ctx, lease); err != nil || !alive {
		t.Fatalf("the key went with its lease (alive %v, %v): dropped, not withdrawn with the drain; log:\n%s", alive, err, logs.String())
	}
	select {
	case err := <-done:
		t.Fatalf("announce returned (%v) before the render applied the deletion; log:\n%s", err, logs.String())
	default:
	}
	status.Revision = delRev
	if _, err := direct.Put(ctx, statusKey, status.Encode(), 0); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatalf("announce did not return once the render applied the deletion; log:\n%s", logs.String())
	}
	if _, alive, err := direct.LeaseRemaining(ctx, lease); err != nil || alive {
		t.Errorf("lease %x alive=%v after announce returned (%v)", int64(lease), alive, err)
	}
	for _, want := range []string{"stopped while the key was being written", "renders applied the withdrawal"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log does not say %q:\n%s", want, logs.String())
		}
	}
}
