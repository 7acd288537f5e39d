package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrCompacted is matched (errors.Is) by a *CompactedError: the revision a watch
// asked for is gone, and the caller must read afresh.
var ErrCompacted = errors.New("store: revision compacted")

// CompactedError reports that a watch could not resume because the store was
// compacted past the requested revision.
type CompactedError struct {
	Prefix    string
	Requested int64 // the revision the watch asked for
	Compacted int64 // the store's compaction revision
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("watch %s from revision %d: compacted up to revision %d", e.Prefix, e.Requested, e.Compacted)
}

// Is makes errors.Is(err, ErrCompacted) true.
func (e *CompactedError) Is(target error) bool { return target == ErrCompacted }

// EventType says what happened to a key.
type EventType int

const (
	// EventPut is a create or an update.
	EventPut EventType = iota
	// EventDelete is a delete or a lease expiry.
	EventDelete
)

func (t EventType) String() string {
	if t == EventDelete {
		return "delete"
	}
	return "put"
}

// Event is one change. For a delete, KV holds the key and the revision of the
// delete, and no value.
type Event struct {
	Type EventType
	KV   KV
}

// WatchBatch is what one revision (or several) changed. Rev is the store
// revision the batch brings the watcher to; a batch with no events is a progress
// notification. A batch with Err set is the last one: the watch has ended
// (ErrCompacted, or ctx done).
type WatchBatch struct {
	Rev    int64
	Events []Event
	Err    error
}

// Watch is a running watch of one prefix. Read C until it is closed; Close stops
// it early. Close is safe to call more than once.
type Watch struct {
	C      <-chan WatchBatch
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// Close stops the watch and waits for its goroutine to end, discarding what
// was not read.
func (w *Watch) Close() {
	w.once.Do(func() {
		w.cancel()
		for range w.C {
		}
		<-w.done
	})
}

// WatchPrefix watches every key under prefix from revision fromRev (0: from
// the revision at which etcd created the watch). It survives disconnects,
// leader changes and a partitioned member: the watch is re-established from
// the revision after the last one delivered (or after the one it was created
// at), so no event is lost or repeated. It ends with a batch whose Err is a
// *CompactedError when that revision has been compacted away.
func (c *Client) WatchPrefix(ctx context.Context, prefix string, fromRev int64) *Watch {
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan WatchBatch, 16)
	w := &Watch{C: out, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer close(out)
		c.watchLoop(ctx, prefix, fromRev, out)
	}()
	return w
}

func (c *Client) watchLoop(ctx context.Context, prefix string, next int64, out chan<- WatchBatch) {
	backoff := 50 * time.Millisecond
	send := func(b WatchBatch) bool {
		select {
		case out <- b:
			return true
		case <-ctx.Done():
			return false
		}
	}
	// last is the final batch; it is always delivered (Close drains C).
	last := func(err error) { out <- WatchBatch{Err: err} }
	for ctx.Err() == nil {
		opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithProgressNotify()}
		if next > 0 {
			opts = append(opts, clientv3.WithRev(next))
		} else {
			// From now: etcd says which revision "now" was, and a watch
			// re-established before the first event resumes after it.
			opts = append(opts, clientv3.WithCreatedNotify())
		}
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := c.cli.Watch(wctx, prefix, opts...)
		for resp := range wch {
			if resp.CompactRevision != 0 {
				wcancel()
				last(&CompactedError{Prefix: prefix, Requested: next, Compacted: resp.CompactRevision})
				return
			}
			if err := resp.Err(); err != nil {
				if errors.Is(err, rpctypes.ErrCompacted) {
					wcancel()
					last(&CompactedError{Prefix: prefix, Requested: next})
					return
				}
				break // re-establish below
			}
			if resp.Created {
				if next == 0 {
					next = resp.Header.Revision + 1
				}
				continue
			}
			b := WatchBatch{Rev: resp.Header.Revision}
			for _, ev := range resp.Events {
				e := Event{KV: fromPB(ev.Kv)}
				if ev.Type == clientv3.EventTypeDelete {
					e.Type = EventDelete
				}
				b.Events = append(b.Events, e)
			}
			if n := len(resp.Events); n > 0 {
				if last := resp.Events[n-1].Kv.ModRevision; last+1 > next {
					next = last + 1
				}
			} else if resp.Header.Revision+1 > next && resp.IsProgressNotify() {
				next = resp.Header.Revision + 1
			}
			if !send(b) {
				break
			}
			backoff = 50 * time.Millisecond
		}
		wcancel()
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
	last(ctx.Err())
}
