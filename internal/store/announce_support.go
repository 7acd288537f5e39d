package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

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

// LeaseIs holds when key exists bound to lease id (0: key absent or bound
// to no lease).
func LeaseIs(key string, id LeaseID) Cmp {
	return Cmp{clientv3.Compare(clientv3.LeaseValue(key), "=", clientv3.LeaseID(id))}
}

// LeaseTTL returns the time lease id has left (0 when it no longer exists).
func (c *Client) LeaseTTL(ctx context.Context, id LeaseID) (time.Duration, error) {
	if id == 0 {
		return 0, nil
	}
	resp, err := c.cli.TimeToLive(ctx, clientv3.LeaseID(id))
	if err != nil {
		return 0, fmt.Errorf("lease %x time to live: %w", int64(id), err)
	}
	if resp.TTL <= 0 {
		return 0, nil
	}
	return time.Duration(resp.TTL) * time.Second, nil
}
