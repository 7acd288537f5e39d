package store

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Member is one etcd cluster member.
type Member struct {
	ID         uint64
	Name       string // empty until the member has started
	PeerURLs   []string
	ClientURLs []string
	IsLearner  bool
}

// Members lists the cluster's members.
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	r, err := c.cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list etcd members: %w", err)
	}
	out := make([]Member, 0, len(r.Members))
	for _, m := range r.Members {
		out = append(out, Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner})
	}
	return out, nil
}

// AddLearner adds a non-voting member that will listen on peerURL.
func (c *Client) AddLearner(ctx context.Context, peerURL string) (uint64, error) {
	r, err := c.cli.MemberAddAsLearner(ctx, []string{peerURL})
	if err != nil {
		return 0, fmt.Errorf("add etcd learner %s: %w", peerURL, err)
	}
	return r.Member.ID, nil
}

// Promote makes a learner a voting member. etcd refuses while the learner
// has not caught up with the leader; call again later.
func (c *Client) Promote(ctx context.Context, id uint64) error {
	if _, err := c.cli.MemberPromote(ctx, id); err != nil {
		return fmt.Errorf("promote etcd member %x: %w", id, err)
	}
	return nil
}

// RemoveMember removes a member from the cluster.
func (c *Client) RemoveMember(ctx context.Context, id uint64) error {
	if _, err := c.cli.MemberRemove(ctx, id); err != nil {
		return fmt.Errorf("remove etcd member %x: %w", id, err)
	}
	return nil
}

// IsNotReadyToPromote reports whether Promote failed only because the
// learner is still catching up.
func IsNotReadyToPromote(err error) bool {
	return errors.Is(err, rpctypes.ErrMemberLearnerNotReady)
}

// IsUnhealthy reports whether etcd refused a change of its members because
// the leader has not been connected to a quorum for long enough (just after
// a member joined or restarted): the change succeeds when tried again.
func IsUnhealthy(err error) bool {
	return errors.Is(err, rpctypes.ErrUnhealthy)
}

// SyncEndpoints replaces the client's endpoints by the client URLs of the
// cluster's started voting members and returns them, so that a client
// opened with one member's address survives that member's loss.
func (c *Client) SyncEndpoints(ctx context.Context) ([]string, error) {
	if err := c.cli.Sync(ctx); err != nil {
		return nil, fmt.Errorf("sync etcd endpoints: %w", err)
	}
	return c.cli.Endpoints(), nil
}
