package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Renew sends one keepalive for the lease, beside the background one, and
// returns when etcd has answered. sent is when the request left this
// process: etcd extends the lease to at least TTL after it receives the
// request, so the lease cannot expire before sent+TTL (on etcd's clock; see
// docs/design.md for the clock-rate assumption). A lease etcd no longer
// has is ErrLeaseLost.
func (l *Lease) Renew(ctx context.Context) (sent time.Time, err error) {
	sent = time.Now()
	resp, err := l.c.cli.KeepAliveOnce(ctx, clientv3.LeaseID(l.ID()))
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return time.Time{}, fmt.Errorf("renew lease %x: %w: %w", int64(l.ID()), ErrLeaseLost, err)
		}
		return time.Time{}, fmt.Errorf("renew lease %x: %w", int64(l.ID()), err)
	}
	if resp.TTL <= 0 {
		return time.Time{}, fmt.Errorf("renew lease %x: %w", int64(l.ID()), ErrLeaseLost)
	}
	return sent, nil
}

// LeaseRemaining returns how long etcd will keep lease id without another
// keepalive (whole seconds, as etcd counts), and false when it has no such
// lease.
func (c *Client) LeaseRemaining(ctx context.Context, id LeaseID) (time.Duration, bool, error) {
	resp, err := c.cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return 0, false, nil
		}
		return 0, false, fmt.Errorf("lease %x time to live: %w", int64(id), err)
	}
	if resp.TTL <= 0 {
		return 0, false, nil
	}
	return time.Duration(resp.TTL) * time.Second, true, nil
}

// Term returns the Raft term etcd answered in: it grows with every etcd
// leader election, so a caller that sees it change knows the cluster
// changed leader (and that leases were extended, never expired, by it).
// It reads key (count only), which the caller must be allowed to read.
func (c *Client) Term(ctx context.Context, key string) (uint64, error) {
	resp, err := c.cli.Get(ctx, key, clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("read etcd term: %w", err)
	}
	return resp.Header.RaftTerm, nil
}
