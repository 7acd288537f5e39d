package fleetapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// TLSFiles are the PEM files of an https listener: the server's pair, and
// the CA that client certificates must be signed by (required: the API has
// no other authentication).
type TLSFiles struct {
	Cert, Key, CACert string
}

// Listen opens one API listener:
//
//	unix:///path/fleet.sock  a unix socket, mode 0660 (a stale socket file is replaced)
//	http://host:port         plain HTTP, loopback addresses only
//	https://host:port        TLS with client certificates (tf required)
func Listen(addr string, tf TLSFiles) (net.Listener, error) {
	if err := CheckAddress(addr, tf); err != nil {
		return nil, err
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("api address %q: %w", addr, err)
	}
	switch u.Scheme {
	case "unix":
		p := u.Path
		if u.Host != "" || p == "" {
			return nil, fmt.Errorf("api address %q: want unix:///absolute/path", addr)
		}
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := net.Dial("unix", p); err == nil {
				c.Close()
				return nil, fmt.Errorf("api address %q: a server is already listening there", addr)
			}
			_ = os.Remove(p)
		}
		l, err := net.Listen("unix", p)
		if err != nil {
			return nil, fmt.Errorf("api listen %s: %w", addr, err)
		}
		if err := os.Chmod(p, 0o660); err != nil {
			l.Close()
			return nil, fmt.Errorf("api listen %s: %w", addr, err)
		}
		return l, nil
	case "http", "https":
		if u.Path != "" && u.Path != "/" {
			return nil, fmt.Errorf("api address %q: no path allowed", addr)
		}
		host, _, err := net.SplitHostPort(u.Host)
		if err != nil {
			return nil, fmt.Errorf("api address %q: want %s://host:port", addr, u.Scheme)
		}
		if u.Scheme == "http" && !isLoopback(host) {
			return nil, fmt.Errorf("api address %q: plain http on a non-loopback address would give anyone who can reach it full control of the cluster; use https:// with --api-cert, --api-key and --api-cacert, a loopback address, or a unix:// socket", addr)
		}
		var cfg *tls.Config
		if u.Scheme == "https" {
			if tf.Cert == "" || tf.Key == "" || tf.CACert == "" {
				return nil, fmt.Errorf("api address %q: https needs --api-cert, --api-key and --api-cacert (client certificates are required)", addr)
			}
			if cfg, err = serverTLS(tf); err != nil {
				return nil, fmt.Errorf("api address %q: %w", addr, err)
			}
		}
		l, err := net.Listen("tcp", u.Host)
		if err != nil {
			return nil, fmt.Errorf("api listen %s: %w", addr, err)
		}
		if cfg != nil {
			l = tls.NewListener(l, cfg)
		}
		return l, nil
	}
	return nil, fmt.Errorf("api address %q: want unix:///path, http://host:port or https://host:port", addr)
}

// CheckAddress refuses an API address Listen would refuse, without
// listening: a malformed one, plain http on a non-loopback address, https
// without its files.
func CheckAddress(addr string, tf TLSFiles) error {
	u, err := url.Parse(addr)
	if err != nil {
		return fmt.Errorf("api address %q: %w", addr, err)
	}
	switch u.Scheme {
	case "unix":
		if u.Host != "" || u.Path == "" {
			return fmt.Errorf("api address %q: want unix:///absolute/path", addr)
		}
		return nil
	case "http", "https":
		if u.Path != "" && u.Path != "/" {
			return fmt.Errorf("api address %q: no path allowed", addr)
		}
		host, _, err := net.SplitHostPort(u.Host)
		if err != nil {
			return fmt.Errorf("api address %q: want %s://host:port", addr, u.Scheme)
		}
		if u.Scheme == "http" && !isLoopback(host) {
			return fmt.Errorf("api address %q: plain http on a non-loopback address would give anyone who can reach it full control of the cluster; use https:// with --api-cert, --api-key and --api-cacert, a loopback address, or a unix:// socket", addr)
		}
		if u.Scheme == "https" && (tf.Cert == "" || tf.Key == "" || tf.CACert == "") {
			return fmt.Errorf("api address %q: https needs --api-cert, --api-key and --api-cacert (client certificates are required)", addr)
		}
		return nil
	}
	return fmt.Errorf("api address %q: want unix:///path, http://host:port or https://host:port", addr)
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func serverTLS(tf TLSFiles) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(tf.Cert, tf.Key)
	if err != nil {
		return nil, fmt.Errorf("load --api-cert/--api-key: %w", err)
	}
	pem, err := os.ReadFile(tf.CACert)
	if err != nil {
		return nil, fmt.Errorf("read --api-cacert: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--api-cacert %s: no PEM certificate", tf.CACert)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}, nil
}

// Serve serves h on every listener until ctx ends, then shuts the servers
// down (in-flight requests get 5 s). It blocks; it closes the listeners.
func Serve(ctx context.Context, h http.Handler, ls ...net.Listener) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, l := range ls {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		g.Go(func() error {
			err := srv.Serve(l)
			if errors.Is(err, http.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("api serve %s: %w", l.Addr(), err)
		})
		g.Go(func() error {
			<-gctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	}
	return g.Wait()
}

// endpointTransport returns the base URL and transport to reach an API
// endpoint (unix://, http://, https://) as a client.
func endpointTransport(endpoint string, tc *tls.Config) (string, *http.Transport, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", nil, fmt.Errorf("endpoint %q: %w", endpoint, err)
	}
	tr := &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 4}
	switch u.Scheme {
	case "unix":
		p := u.Path
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p)
		}
		return "http://unix", tr, nil
	case "http", "https":
		return strings.TrimSuffix(endpoint, "/"), tr, nil
	}
	return "", nil, fmt.Errorf("endpoint %q: want unix://, http:// or https://", endpoint)
}
