package store

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrSharedLeaseClosed is returned by SharedLease.Lease after Close.
var ErrSharedLeaseClosed = errors.New("store: shared lease closed")

// SharedLease is one lease at a time, kept alive by one keepalive for
// several holders of one process (the elections of `scheduler serve`):
// each holder asks Lease at the start of a term and campaigns with it, and
// stops acting when its Done closes, exactly as with a lease of its own. A
// holder does not close the lease; it resigns what it wrote with it. The
// lease is granted on the first Lease and again on the first Lease after
// it ended (lost, or its keepalive stopped), so every holder of a lost
// lease moves to the same new one. Close revokes the current lease.
// The zero value is not usable; see Client.SharedLease. It is safe for
// concurrent use; Close is idempotent.
type SharedLease struct {
	c   *Client
	ttl time.Duration

	mu     sync.Mutex
	cur    *Lease
	closed bool
	err    error
}

// SharedLease returns a SharedLease of the given TTL. It grants nothing
// until its first Lease.
func (c *Client) SharedLease(ttl time.Duration) *SharedLease {
	return &SharedLease{c: c, ttl: ttl}
}

// Lease returns the current lease, kept alive, granting a new one when there
// is none yet or the last one ended (which it first closes: a lease whose
// keepalive stopped while etcd still holds it is revoked, so that its keys
// go at once). It blocks while another caller does the same; ctx bounds
// the grant.
func (s *SharedLease) Lease(ctx context.Context) (*Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrSharedLeaseClosed
	}
	if s.cur != nil {
		select {
		case <-s.cur.Done():
			s.cur.Close()
			s.cur = nil
		default:
			return s.cur, nil
		}
	}
	l, err := s.c.GrantLease(ctx, s.ttl)
	if err != nil {
		return nil, err
	}
	s.cur = l
	return l, nil
}

// Close revokes the current lease (see Lease.Close); later calls of Lease
// fail with ErrSharedLeaseClosed. A second Close returns the first's result.
func (s *SharedLease) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return s.err
	}
	s.closed = true
	if s.cur != nil {
		s.err = s.cur.Close()
	}
	return s.err
}
