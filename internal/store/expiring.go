package store

import (
	"context"
	"fmt"
	"time"
)

// PutExpiring writes key=value bound to a new lease of ttl (rounded up to
// whole seconds, at least MinTTL) that nobody keeps alive: etcd deletes the
// key when the lease runs out. It returns the lease, which RevokeLease ends
// early. It blocks until etcd answers or ctx ends.
func (c *Client) PutExpiring(ctx context.Context, key, value string, ttl time.Duration) (LeaseID, error) {
	if ttl < MinTTL {
		return 0, fmt.Errorf("put %s: ttl %s is below etcd's minimum of %s", key, ttl, MinTTL)
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	resp, err := c.cli.Grant(ctx, secs)
	if err != nil {
		return 0, fmt.Errorf("put %s: grant lease of %ds: %w", key, secs, err)
	}
	id := LeaseID(resp.ID)
	if _, err := c.Put(ctx, key, value, id); err != nil {
		c.RevokeLease(context.WithoutCancel(ctx), id)
		return 0, err
	}
	return id, nil
}
