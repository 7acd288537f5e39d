package store

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Perm is one permission of an etcd role: read, write or both on every key
// under Prefix.
type Perm struct {
	Prefix      string
	Read, Write bool
	// Exact grants the one key Prefix instead of every key under it.
	Exact bool
}

// EnsureRole creates role if it is missing and grants it perms.
func (c *Client) EnsureRole(ctx context.Context, role string, perms []Perm) error {
	if _, err := c.cli.RoleAdd(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("add etcd role %s: %w", role, err)
	}
	for _, p := range perms {
		t := clientv3.PermRead
		switch {
		case p.Read && p.Write:
			t = clientv3.PermReadWrite
		case p.Write:
			t = clientv3.PermWrite
		}
		end := clientv3.GetPrefixRangeEnd(p.Prefix)
		if p.Exact {
			end = ""
		}
		if _, err := c.cli.RoleGrantPermission(ctx, role, p.Prefix, end, clientv3.PermissionType(t)); err != nil {
			return fmt.Errorf("grant etcd role %s on %s: %w", role, p.Prefix, err)
		}
	}
	return nil
}

// EnsureUser creates user with password if it is missing (reporting
// whether it did) and grants it roles.
func (c *Client) EnsureUser(ctx context.Context, user, password string, roles ...string) (created bool, err error) {
	if _, err := c.cli.UserAdd(ctx, user, password); err == nil {
		created = true
	} else if !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return false, fmt.Errorf("add etcd user %s: %w", user, err)
	}
	for _, r := range roles {
		if _, err := c.cli.UserGrantRole(ctx, user, r); err != nil {
			return created, fmt.Errorf("grant etcd role %s to %s: %w", r, user, err)
		}
	}
	return created, nil
}
