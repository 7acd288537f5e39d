package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// MinTTL is the shortest lease etcd accepts.
const MinTTL = time.Second

// ErrLeaseLost is returned by operations on a lease that expired or was revoked.
var ErrLeaseLost = errors.New("store: lease lost")

// Lease is a granted etcd lease kept alive in the background until Close, or
// until it is lost (expired while etcd was unreachable, or revoked elsewhere),
// whereupon Done is closed. Keys written with it vanish when it ends.
// It is safe for concurrent use; Close is idempotent.
type Lease struct {
	c    *Client
	sess *concurrency.Session
	ttl  time.Duration
	once sync.Once
	err  error
}

// GrantLease grants a lease of the given TTL (rounded up to whole seconds, at
// least MinTTL) and starts keeping it alive. ctx bounds only the grant.
func (c *Client) GrantLease(ctx context.Context, ttl time.Duration) (*Lease, error) {
	if ttl < MinTTL {
		return nil, fmt.Errorf("grant lease: ttl %s is below etcd's minimum of %s", ttl, MinTTL)
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	resp, err := c.cli.Grant(ctx, secs)
	if err != nil {
		return nil, fmt.Errorf("grant lease of %ds: %w", secs, err)
	}
	// The session's keepalive lives as long as the client, not ctx.
	sess, err := concurrency.NewSession(c.cli, concurrency.WithLease(resp.ID), concurrency.WithTTL(int(secs)))
	if err != nil {
		c.cli.Revoke(context.WithoutCancel(ctx), resp.ID)
		return nil, fmt.Errorf("keep lease %x alive: %w", resp.ID, err)
	}
	return &Lease{c: c, sess: sess, ttl: time.Duration(secs) * time.Second}, nil
}

// ID returns the lease's id.
func (l *Lease) ID() LeaseID { return LeaseID(l.sess.Lease()) }

// TTL returns the granted time to live.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Done is closed when the lease is no longer kept alive: lost or closed.
func (l *Lease) Done() <-chan struct{} { return l.sess.Done() }

// Put writes key=value bound to the lease.
func (l *Lease) Put(ctx context.Context, key, value string) (int64, error) {
	rev, err := l.c.Put(ctx, key, value, l.ID())
	if err != nil && errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return 0, fmt.Errorf("put %s: %w: %w", key, ErrLeaseLost, err)
	}
	return rev, err
}

// Alive asks etcd whether the lease still exists (its remaining TTL > 0).
func (l *Lease) Alive(ctx context.Context) (bool, error) {
	resp, err := l.c.cli.TimeToLive(ctx, clientv3.LeaseID(l.ID()))
	if err != nil {
		return false, fmt.Errorf("lease %x time to live: %w", int64(l.ID()), err)
	}
	return resp.TTL > 0, nil
}

// Close stops the keepalive and revokes the lease, so every key bound to it
// disappears at once. It waits at most the lease's TTL for etcd to answer (the
// lease expires by itself anyway). A second Close returns the first's result.
func (l *Lease) Close() error {
	l.once.Do(func() {
		err := l.sess.Close()
		if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			l.err = fmt.Errorf("revoke lease %x: %w", int64(l.ID()), err)
		}
	})
	return l.err
}

// Abandon stops the keepalive without revoking: the lease runs out its TTL.
// It is meant for tests that simulate a crash, and for hand-over.
func (l *Lease) Abandon() {
	l.once.Do(func() { l.sess.Orphan() })
}
