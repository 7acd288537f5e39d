package lbtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// Hammer sends requests through a load balancer and counts the answers. The
// zero value is not usable: set URL. A Hammer is safe for concurrent use once
// configured.
type Hammer struct {
	// URL is requested with GET, e.g. "http://127.0.0.1:8080/".
	URL string
	// Timeout bounds each request (default 2s).
	Timeout time.Duration
	// Interval is the pause between two requests of Run (default none).
	Interval time.Duration
	// Identify names the backend that answered; the default is the first
	// word of the body ("nginx@1" for "nginx@1 on 127.0.0.3:8080").
	Identify func(resp *http.Response, body []byte) string
}

// Result counts what a Hammer saw. Errors are transport failures and non-2xx
// answers.
type Result struct {
	Total, Errors int
	// By counts successful answers per backend (as Identify names them).
	By map[string]int
	// FirstErrors keeps the first few error messages.
	FirstErrors []string
}

// String is "errors 1/200; nginx@1=100 nginx@2=99".
func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "errors %d/%d;", r.Errors, r.Total)
	for _, k := range r.Backends() {
		fmt.Fprintf(&b, " %s=%d", k, r.By[k])
	}
	if len(r.FirstErrors) > 0 {
		fmt.Fprintf(&b, "; first errors: %s", strings.Join(r.FirstErrors, " | "))
	}
	return b.String()
}

// Backends returns the names of the backends that answered, sorted.
func (r Result) Backends() []string {
	names := make([]string, 0, len(r.By))
	for k := range r.By {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

// Add merges o into r.
func (r *Result) Add(o Result) {
	r.Total += o.Total
	r.Errors += o.Errors
	for k, v := range o.By {
		if r.By == nil {
			r.By = map[string]int{}
		}
		r.By[k] += v
	}
	for _, e := range o.FirstErrors {
		if len(r.FirstErrors) < 5 {
			r.FirstErrors = append(r.FirstErrors, e)
		}
	}
}

// client returns a client that opens a new connection per request, so that
// every request goes through the load balancer's current configuration.
func (h *Hammer) client() *http.Client {
	timeout := h.Timeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
}

// One sends one request and returns the backend's name, or an error.
func (h *Hammer) One(ctx context.Context) (string, error) {
	return h.one(ctx, h.client())
}

func (h *Hammer) one(ctx context.Context, c *http.Client) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.URL, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", fmt.Errorf("GET %s: read body: %w", h.URL, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "", fmt.Errorf("GET %s: %s", h.URL, resp.Status)
	}
	if h.Identify != nil {
		return h.Identify(resp, body), nil
	}
	if f := bytes.Fields(body); len(f) > 0 {
		return string(f[0]), nil
	}
	return "", nil
}

// Send sends n requests one after the other (stopping early if ctx ends)
// and returns the counts.
func (h *Hammer) Send(ctx context.Context, n int) Result {
	c := h.client()
	defer c.CloseIdleConnections()
	var r Result
	for i := 0; i < n && ctx.Err() == nil; i++ {
		r.record(h.one(ctx, c))
	}
	return r
}

func (r *Result) record(name string, err error) {
	r.Total++
	if err != nil {
		r.Errors++
		if len(r.FirstErrors) < 5 {
			r.FirstErrors = append(r.FirstErrors, err.Error())
		}
		return
	}
	if r.By == nil {
		r.By = map[string]int{}
	}
	r.By[name]++
}

// Until sends requests until cond holds for the counts of the last window
// requests (cond sees only that window), or ctx ends. It returns every count
// and whether cond held. Use it to wait for a load balancer to reach a state
// ("both instances answer", "nginx@1 no longer answers").
func (h *Hammer) Until(ctx context.Context, window int, cond func(Result) bool) (Result, bool) {
	c := h.client()
	defer c.CloseIdleConnections()
	var all Result
	for ctx.Err() == nil {
		var w Result
		for i := 0; i < window && ctx.Err() == nil; i++ {
			w.record(h.one(ctx, c))
		}
		all.Add(w)
		if ctx.Err() == nil && cond(w) {
			return all, true
		}
		if h.Interval > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(h.Interval):
			}
		}
	}
	return all, false
}

// Running is a Hammer sending requests in the background; see Hammer.Start.
type Running struct {
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	res    Result
	once   sync.Once
}

// Start sends requests back to back (with Interval between them) until Stop
// or until ctx ends.
func (h *Hammer) Start(ctx context.Context) *Running {
	ctx, cancel := context.WithCancel(ctx)
	r := &Running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		c := h.client()
		defer c.CloseIdleConnections()
		for ctx.Err() == nil {
			name, err := h.one(ctx, c)
			if ctx.Err() != nil {
				return // the request was cut by Stop: not the balancer's fault
			}
			r.mu.Lock()
			r.res.record(name, err)
			r.mu.Unlock()
			if h.Interval > 0 {
				select {
				case <-ctx.Done():
				case <-time.After(h.Interval):
				}
			}
		}
	}()
	return r
}

// Snapshot returns the counts so far without stopping.
func (r *Running) Snapshot() Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.res.clone()
}

// Stop stops sending, waits for the goroutine and returns the counts. Safe to
// call twice.
func (r *Running) Stop() Result {
	r.once.Do(func() {
		r.cancel()
		<-r.done
	})
	return r.Snapshot()
}

func (r Result) clone() Result {
	c := r
	c.By = make(map[string]int, len(r.By))
	for k, v := range r.By {
		c.By[k] = v
	}
	c.FirstErrors = append([]string(nil), r.FirstErrors...)
	return c
}
