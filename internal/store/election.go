package store

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Leadership is held by the winner of an election under a prefix, for as long as
// the lease it campaigned with lives. Writes that must only happen while leader
// are made with Txn guarded by Guard().
type Leadership struct {
	elec  *concurrency.Election
	lease *Lease
}

// Campaign blocks until this lease's holder is leader under prefix, or ctx is
// done. value is published as the leader's identity.
func (c *Client) Campaign(ctx context.Context, lease *Lease, prefix, value string) (*Leadership, error) {
	e := concurrency.NewElection(lease.sess, prefix)
	if err := e.Campaign(ctx, value); err != nil {
		return nil, fmt.Errorf("campaign for leadership %s: %w", prefix, err)
	}
	return &Leadership{elec: e, lease: lease}, nil
}

// Key is the leader's key in etcd.
func (l *Leadership) Key() string { return l.elec.Key() }

// Rev is the creation revision of the leader's key: the fencing token.
func (l *Leadership) Rev() int64 { return l.elec.Rev() }

// Guard is the transaction condition "still leader": the leader key still
// exists with the same creation revision.
func (l *Leadership) Guard() Cmp { return CreateRevisionIs(l.Key(), l.Rev()) }

// Done is closed when the lease behind the leadership is lost.
func (l *Leadership) Done() <-chan struct{} { return l.lease.Done() }

// Resign gives up leadership. It is safe to call more than once.
func (l *Leadership) Resign(ctx context.Context) error {
	if err := l.elec.Resign(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("resign leadership %s: %w", l.Key(), err)
	}
	return nil
}

// Leader returns the current leader's value under prefix; found is false when
// there is none.
func (c *Client) Leader(ctx context.Context, prefix string) (value string, found bool, err error) {
	resp, err := c.cli.Get(ctx, prefix+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", false, fmt.Errorf("leader of %s: %w", prefix, err)
	}
	if len(resp.Kvs) == 0 {
		return "", false, nil
	}
	return string(resp.Kvs[0].Value), true, nil
}
