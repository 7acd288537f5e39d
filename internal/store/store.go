// Package store is flotilla's only door to etcd: it owns the etcd v3 client and
// offers what the rest of the code needs — reads with their revision, watches that
// resume from a revision, leases as objects, guarded transactions and leader
// election — with errors that name the operation and the endpoints.
package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Client is a connection to an etcd cluster. It is safe for concurrent use.
type Client struct {
	cli       *clientv3.Client
	endpoints []string
}

// DefaultMaxReconnectDelay caps the wait between attempts to reconnect to an
// endpoint that went away (gRPC's own default grows to 120 s, far too long for
// a sidekick or a renderer that must be back within a second of etcd).
const DefaultMaxReconnectDelay = time.Second

// OpenOptions tune a client beyond Config; the zero value gives Open's client.
type OpenOptions struct {
	// MaxReconnectDelay caps the wait between reconnection attempts; zero
	// means DefaultMaxReconnectDelay.
	MaxReconnectDelay time.Duration
}

// Open connects to etcd and checks that at least one endpoint answers (and that
// the credentials are accepted) within cfg.DialTimeout. When none does, it
// spends at most explainTimeout more dialling every endpoint at once to say
// why; it never blocks longer than the two, and returns when ctx ends.
// cfg is validated first.
func Open(ctx context.Context, cfg Config) (*Client, error) {
	return OpenWith(ctx, cfg, OpenOptions{})
}

// OpenWith is Open with options.
func OpenWith(ctx context.Context, cfg Config, o OpenOptions) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if o.MaxReconnectDelay <= 0 {
		o.MaxReconnectDelay = DefaultMaxReconnectDelay
	}
	where := strings.Join(cfg.Endpoints, ",")
	tlsCfg, err := tlsConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %s: %w", where, err)
	}
	eps := cfg.Endpoints
	if tlsCfg != nil {
		// The client picks TLS per endpoint from its scheme.
		eps = make([]string, len(cfg.Endpoints))
		for i, ep := range cfg.Endpoints {
			eps[i] = strings.Replace(ep, "http://", "https://", 1)
		}
	}
	bo := backoff.DefaultConfig
	bo.BaseDelay = min(bo.BaseDelay, o.MaxReconnectDelay/4)
	bo.MaxDelay = o.MaxReconnectDelay
	dctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            eps,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  tlsCfg,
		Username:             cfg.Username,
		Password:             cfg.Password,
		Logger:               zap.NewNop(),
		Context:              ctx,
		PermitWithoutStream:  false, // etcd answers pings without a stream with GOAWAY too_many_pings
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           bo,
			MinConnectTimeout: max(o.MaxReconnectDelay, time.Second),
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %s: %w", where, explain(ctx, err, cfg, tlsCfg))
	}
	c := &Client{cli: cli, endpoints: eps}
	if err := c.probe(dctx); err != nil {
		cli.Close()
		return nil, fmt.Errorf("connect to etcd %s (within %s): %w", where, cfg.DialTimeout, explain(ctx, err, cfg, tlsCfg))
	}
	return c, nil
}

// probe asks for a key that is not expected to exist: it exercises connection,
// TLS and authentication with the smallest request.
func (c *Client) probe(ctx context.Context) error {
	_, err := c.cli.Get(ctx, "\x00flotilla-probe", clientv3.WithCountOnly())
	if errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrGRPCPermissionDenied) {
		return nil // authenticated; the user is just not allowed that key
	}
	return err
}

// Endpoints returns the endpoints the client was opened with.
func (c *Client) Endpoints() []string { return append([]string(nil), c.endpoints...) }

// Close closes the connection. It is safe to call more than once.
func (c *Client) Close() error {
	err := c.cli.Close()
	if err != nil && (errors.Is(err, context.Canceled) || status.Code(err) == codes.Canceled) {
		return nil
	}
	return err
}

// Ping checks that etcd answers within ctx.
func (c *Client) Ping(ctx context.Context) error {
	if err := c.probe(ctx); err != nil {
		return fmt.Errorf("ping etcd %s: %w", strings.Join(c.endpoints, ","), err)
	}
	return nil
}

func tlsConfig(cfg Config) (*tls.Config, error) {
	if !cfg.TLSEnabled() {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify}
	if cfg.CACert != "" {
		pem, err := os.ReadFile(cfg.CACert)
		if err != nil {
			return nil, fmt.Errorf("read CA %s: %w", cfg.CACert, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read CA %s: no PEM certificate in it", cfg.CACert)
		}
		tc.RootCAs = pool
	}
	if cfg.Cert != "" {
		pair, err := tls.LoadX509KeyPair(cfg.Cert, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("load client certificate %s / %s: %w", cfg.Cert, cfg.Key, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// explain turns a bare deadline into the reason behind it when one can be
// found: a refused connection or a failed TLS handshake says more than
// "context deadline exceeded".
// explainTimeout bounds the diagnosis Open runs after a failed connection.
const explainTimeout = time.Second

// explain turns a failed connection into a reason per endpoint: it dials
// every endpoint at once (TCP, then the TLS handshake when TLS is on), each
// bounded by explainTimeout and ctx.
func explain(ctx context.Context, err error, cfg Config, tlsCfg *tls.Config) error {
	if errors.Is(err, rpctypes.ErrAuthFailed) || errors.Is(err, rpctypes.ErrGRPCAuthFailed) {
		return fmt.Errorf("authentication failed for user %q: %w", cfg.Username, err)
	}
	if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, explainTimeout)
	defer cancel()
	reasons := make([]string, len(cfg.Endpoints))
	var wg sync.WaitGroup
	for i, ep := range cfg.Endpoints {
		u, perr := url.Parse(ep)
		if perr != nil {
			continue
		}
		wg.Go(func() { reasons[i] = diagnose(ctx, u.Host, tlsCfg) })
	}
	wg.Wait()
	reasons = slices.DeleteFunc(reasons, func(r string) bool { return r == "" })
	if len(reasons) == 0 {
		return fmt.Errorf("no answer: %w", err)
	}
	return fmt.Errorf("%s: %w", strings.Join(reasons, "; "), err)
}

// diagnose dials host and, with tlsCfg, shakes hands; it returns what failed,
// or "" when both went through.
func diagnose(ctx context.Context, host string, tlsCfg *tls.Config) string {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return fmt.Sprintf("%s: %v", host, err)
	}
	defer conn.Close()
	if tlsCfg == nil {
		return ""
	}
	tc := tlsCfg.Clone()
	if tc.ServerName == "" {
		tc.ServerName, _, _ = net.SplitHostPort(host)
	}
	tconn := tls.Client(conn, tc)
	if dl, ok := ctx.Deadline(); ok {
		tconn.SetDeadline(dl)
	}
	if err := tconn.HandshakeContext(ctx); err != nil {
		return fmt.Sprintf("%s: TLS handshake: %v", host, err)
	}
	// TLS 1.3: the server refuses a client certificate after the handshake,
	// with an alert (crypto/tls reports alerts as net.OpError "remote error").
	var alert *net.OpError
	if _, err := tconn.Read(make([]byte, 1)); errors.As(err, &alert) && alert.Op == "remote error" {
		return fmt.Sprintf("%s: TLS: %v", host, err)
	}
	return ""
}
