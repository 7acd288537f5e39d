package store_test

import (
	"errors"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/flotilla/flotilla/internal/store"
)

// TestMemberErrors: the retryable refusals of a membership change are
// recognised by their etcd error, wrapped or not, and not by a text alone.
func TestMemberErrors(t *testing.T) {
	tests := map[string]struct {
		err                 error
		notReady, unhealthy bool
	}{
		"nil":                 {},
		"learner not ready":   {err: fmt.Errorf("promote etcd member 1: %w", rpctypes.ErrMemberLearnerNotReady), notReady: true},
		"unhealthy":           {err: fmt.Errorf("add etcd learner http://x:2380: %w", rpctypes.ErrUnhealthy), unhealthy: true},
		"other etcd error":    {err: fmt.Errorf("remove etcd member 1: %w", rpctypes.ErrMemberNotFound)},
		"same text, not etcd": {err: errors.New("etcdserver: unhealthy cluster; in sync with leader")},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := store.IsNotReadyToPromote(tc.err); got != tc.notReady {
				t.Errorf("IsNotReadyToPromote = %v, want %v", got, tc.notReady)
			}
			if got := store.IsUnhealthy(tc.err); got != tc.unhealthy {
				t.Errorf("IsUnhealthy = %v, want %v", got, tc.unhealthy)
			}
		})
	}
}
