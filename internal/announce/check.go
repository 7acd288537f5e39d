package announce

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
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
)

// CheckOptions tune the checks made by ParseCheck.
type CheckOptions struct {
	// Timeout bounds one check; default 2s.
	Timeout time.Duration
	// InsecureSkipVerify accepts any certificate from an https:// target.
	InsecureSkipVerify bool
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
		return &tcpCheck{addr: u.Host, timeout: opts.Timeout}, nil
	case "http", "https":
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
		return &httpCheck{url: u.String(), client: cl}, nil
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
	url    string
	client *http.Client
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
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("check %s: status %s", c.url, resp.Status)
	}
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
			if !known || !healthy {
				send(true)
			}
		} else {
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
