package lbtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Backend is a tiny HTTP server answering every request with "NAME on ADDR\n"
// and the header X-Backend: NAME. Safe for concurrent use.
type Backend struct {
	// Name is what the backend answers with, e.g. "nginx@1".
	Name string
	// Addr is the ip:port it listens on.
	Addr string

	srv  *http.Server
	hits atomic.Int64
	done chan struct{}
	once sync.Once
}

// StartBackend starts a Backend named name on addr ("127.0.0.3:0" picks a
// free port; see Addr). It is closed when t ends.
func StartBackend(t testing.TB, name, addr string) *Backend {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("lbtest: backend %s: listen %s: %v", name, addr, err)
	}
	b := &Backend{Name: name, Addr: l.Addr().String(), done: make(chan struct{})}
	b.srv = &http.Server{Handler: b, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(b.done)
		if err := b.srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Logf("lbtest: backend %s on %s: %v", name, b.Addr, err)
		}
	}()
	t.Cleanup(b.Close)
	return b
}

// ServeHTTP answers "NAME on ADDR\n".
func (b *Backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.hits.Add(1)
	w.Header().Set("X-Backend", b.Name)
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "%s on %s\n", b.Name, b.Addr)
}

// Hits returns how many requests the backend answered.
func (b *Backend) Hits() int64 { return b.hits.Load() }

// Close stops the backend at once (open connections are closed) and waits
// for its serving goroutine. Safe to call twice.
func (b *Backend) Close() {
	b.once.Do(func() {
		b.srv.Close()
		<-b.done
	})
}

// Shutdown stops the backend gracefully, letting in-flight requests finish.
func (b *Backend) Shutdown(ctx context.Context) error {
	var err error
	b.once.Do(func() {
		err = b.srv.Shutdown(ctx)
		<-b.done
	})
	return err
}
