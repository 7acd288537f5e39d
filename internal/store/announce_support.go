package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// OpenOptions tune a client beyond Config; the zero value gives Open's client.
type OpenOptions struct {
	// MaxReconnectDelay caps the wait between attempts to reconnect to an
	// endpoint that went away (gRPC's default grows to 120s). A process that
	// must be back within a second of etcd's return wants about 500ms.
	MaxReconnectDelay time.Duration
}

// OpenWith is Open with options: it connects to etcd and checks that at least
// one endpoint answers within cfg.DialTimeout.
func OpenWith(ctx context.Context, cfg Config, o OpenOptions) (*Client, error) {
	if o.MaxReconnectDelay <= 0 {
		return Open(ctx, cfg)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	where := strings.Join(cfg.Endpoints, ",")
	tlsCfg, err := tlsConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %s: %w", where, err)
	}
	eps := cfg.Endpoints
	if tlsCfg != nil {
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
		PermitWithoutStream:  true,
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           bo,
			MinConnectTimeout: max(o.MaxReconnectDelay, time.Second),
		})},
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %s: %w", where, explain(err, cfg, tlsCfg))
	}
	c := &Client{cli: cli, endpoints: eps}
	if err := c.probe(dctx); err != nil {
		cli.Close()
		return nil, fmt.Errorf("connect to etcd %s (within %s): %w", where, cfg.DialTimeout, explain(err, cfg, tlsCfg))
	}
	return c, nil
}

// RevokeLease revokes lease id, so that every key bound to it disappears at
// once. A lease that no longer exists (expired, already revoked) is not an
// error. It blocks until etcd answers or ctx ends.
func (c *Client) RevokeLease(ctx context.Context, id LeaseID) error {
	if id == 0 {
		return nil
	}
	if _, err := c.cli.Revoke(ctx, clientv3.LeaseID(id)); err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) || errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) {
			return nil
		}
		return fmt.Errorf("revoke lease %x: %w", int64(id), err)
	}
	return nil
}

// IsAuthError reports whether err is etcd refusing the credentials or the
// permission: retrying with the same configuration cannot succeed.
func IsAuthError(err error) bool {
	for _, target := range []error{
		rpctypes.ErrAuthFailed, rpctypes.ErrGRPCAuthFailed,
		rpctypes.ErrPermissionDenied, rpctypes.ErrGRPCPermissionDenied,
		rpctypes.ErrUserEmpty, rpctypes.ErrGRPCUserEmpty,
	} {
		if errors.Is(err, target) {
			return true
		}
	}
	return false
}
