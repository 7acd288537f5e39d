package announce

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Checker says whether the announced service is healthy. Check must return
// within ctx's deadline; nil means healthy.
type Checker interface {
	Check(ctx context.Context) error
}

// CheckFunc adapts a function to Checker.
type CheckFunc func(ctx context.Context) error

// Check calls f.
func (f CheckFunc) Check(ctx context.Context) error { return f(ctx) }

var (
	_ Checker = CheckFunc(nil)
	_ Checker = (*tcpCheck)(nil)
	_ Checker = (*httpCheck)(nil)
	_ Checker = (*cmdCheck)(nil)
)

// CheckOptions tune the checks made by ParseCheck.
type CheckOptions struct {
	// Timeout bounds one check; default 2s.
	Timeout time.Duration
	// InsecureSkipVerify accepts any certificate from an https:// target.
	InsecureSkipVerify bool
	// ExpectStatus, for http(s), lists the healthy status codes (empty:
	// any 2xx or 3xx).
	ExpectStatus []int
	// ExpectHeader, for http(s), is "Name: value": the answer must carry
	// that header with exactly that value (surrounding spaces ignored).
	ExpectHeader string
}

// ParseCheck returns the check a URL describes: tcp://host:port (healthy when
// a connection opens) or http(s)://… (healthy on a 2xx or 3xx answer to GET;
// redirects are not followed).
func ParseCheck(raw string, opts CheckOptions) (Checker, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("check %q: %w", raw, err)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("check %q: no host (want tcp://host:port or http(s)://host[:port]/path)", raw)
	}
	switch u.Scheme {
	case "tcp":
		if _, port, err := net.SplitHostPort(u.Host); err != nil || port == "" {
			return nil, fmt.Errorf("check %q: tcp needs host:port", raw)
		}
		if u.Path != "" && u.Path != "/" {
			return nil, fmt.Errorf("check %q: a tcp check has no path", raw)
		}
		if len(opts.ExpectStatus) > 0 || opts.ExpectHeader != "" {
			return nil, fmt.Errorf("check %q: an expected status or header needs an http(s) check", raw)
		}
		return &tcpCheck{addr: u.Host, timeout: opts.Timeout}, nil
	case "http", "https":
		hc := &httpCheck{url: u.String(), status: opts.ExpectStatus}
		for _, code := range opts.ExpectStatus {
			if code < 100 || code > 599 {
				return nil, fmt.Errorf("check status %d: want 100-599", code)
			}
		}
		if opts.ExpectHeader != "" {
			name, value, ok := strings.Cut(opts.ExpectHeader, ":")
			name = strings.TrimSpace(name)
			if !ok || name == "" || strings.ContainsAny(name, " \t") {
				return nil, fmt.Errorf("check header %q: want \"Name: value\"", opts.ExpectHeader)
			}
			hc.header, hc.headerValue = http.CanonicalHeaderKey(name), strings.TrimSpace(value)
		}
		tr := &http.Transport{
			Proxy:             nil, // a local health check never goes through a proxy
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: opts.InsecureSkipVerify},
		}
		cl := &http.Client{
			Transport:     tr,
			Timeout:       opts.Timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
		hc.client = cl
		return hc, nil
	}
	return nil, fmt.Errorf("check %q: scheme %q: want tcp, http or https", raw, u.Scheme)
}

type tcpCheck struct {
	addr    string
	timeout time.Duration
}

func (c *tcpCheck) Check(ctx context.Context) error {
	d := net.Dialer{Timeout: c.timeout}
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return fmt.Errorf("check tcp://%s: %w", c.addr, err)
	}
	return conn.Close()
}

type httpCheck struct {
	url                 string
	client              *http.Client
	status              []int
	header, headerValue string
}

func (c *httpCheck) Check(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return fmt.Errorf("check %s: %w", c.url, err)
	}
	req.Header.Set("User-Agent", "flotilla-announce")
	resp, err := c.client.Do(req)
	if err != nil {
		return fmt.Errorf("check %s: %w", c.url, err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	if len(c.status) > 0 {
		if !slices.Contains(c.status, resp.StatusCode) {
			return fmt.Errorf("check %s: status %s, want %v", c.url, resp.Status, c.status)
		}
	} else if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("check %s: status %s", c.url, resp.Status)
	}
	if c.header != "" {
		if got := strings.TrimSpace(resp.Header.Get(c.header)); got != c.headerValue {
			return fmt.Errorf("check %s: header %s %q, want %q", c.url, c.header, got, c.headerValue)
		}
	}
	return nil
}

// CommandCheck returns a check that runs argv (healthy when it exits 0),
// killed after timeout; its output (the first 4 KiB) is in the error, and
// in log at debug level on success. argv runs without a shell; for one, pass
// {"/bin/sh", "-c", CMD}.
func CommandCheck(argv []string, timeout time.Duration, log *slog.Logger) (Checker, error) {
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("check command: empty")
	}
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &cmdCheck{argv: argv, timeout: timeout, log: log}, nil
}

type cmdCheck struct {
	argv    []string
	timeout time.Duration
	log     *slog.Logger
}

// setLogger is how Run hands a check its logger.
func (c *cmdCheck) setLogger(l *slog.Logger) { c.log = l }

// limitedBuffer keeps the first n bytes written to it.
type limitedBuffer struct {
	b []byte
	n int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.n - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (c *cmdCheck) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.argv[0], c.argv[1:]...)
	out := &limitedBuffer{n: 4096}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	text := strings.TrimSpace(string(out.b))
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("check command %q: timed out after %s; output: %q", c.argv, c.timeout, text)
	}
	if err != nil {
		return fmt.Errorf("check command %q: %w; output: %q", c.argv, err, text)
	}
	c.log.Debug("check command passed", "argv", c.argv, "output", text)
	return nil
}

// watchHealth runs the check every interval and sends each change of verdict
// on out (buffer 1; a newer verdict replaces one not yet read). The first
// verdict is sent whatever it is, once the first check passed or the
// threshold of failures was reached. It returns when ctx ends.
func watchHealth(ctx context.Context, cfg *Config, out chan bool) {
	log := cfg.Logger.With("key", cfg.Key)
	var (
		known    bool // a verdict was sent
		healthy  bool // the last verdict sent
		failures int
		passes   int // in a row
	)
	send := func(v bool) {
		select {
		case <-out:
		default:
		}
		out <- v
		known, healthy = true, v
	}
	t := time.NewTicker(cfg.CheckInterval)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, cfg.CheckInterval)
		err := cfg.Check.Check(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			if failures > 0 {
				log.Info("health check passes again", "after_failures", failures)
			}
			failures = 0
			passes++
			if (!known || !healthy) && passes >= cfg.CheckRise {
				send(true)
			}
		} else {
			passes = 0
			failures++
			if failures == 1 || failures == cfg.CheckThreshold {
				log.Warn("health check failed", "failures", failures, "threshold", cfg.CheckThreshold, "err", err)
			}
			if failures >= cfg.CheckThreshold && (!known || healthy) {
				send(false)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
