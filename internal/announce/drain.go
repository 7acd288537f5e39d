package announce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/flotilla/flotilla/internal/applied"
	"github.com/flotilla/flotilla/internal/store"
)

// WithdrawnPrefix holds the markers of withdrawn keys: announce --withdraw
// deletes KEY and writes WithdrawnPrefix+KEY with the key's lease in one
// transaction, so that the process keeping KEY (the --detach keeper) does
// not write it again; the marker goes when that lease goes.
const WithdrawnPrefix = "/flotilla/announce/withdrawn"

// WithdrawnMarker returns the marker key of key.
func WithdrawnMarker(key string) string { return WithdrawnPrefix + key }

// Drain says how a withdrawal waits for the load balancers: for every live
// render status under StatusPrefix whose prefixes cover the key to reach the
// deletion's revision, at most Timeout (zero: no wait), then Delay more
// (connections in flight).
type Drain struct {
	StatusPrefix string
	Timeout      time.Duration
	Delay        time.Duration
}

// ErrNotOwn is returned by DeleteOwn when the key holds someone else's
// registration (another value or another lease): it is left alone.
var ErrNotOwn = errors.New("announce: the key holds another registration")

// DeleteOwn deletes key if it holds value (and, when lease is not 0, is bound
// to lease), comparing and deleting in one transaction: a late stop never
// removes a registration that another machine wrote since. With mark, the
// same transaction writes key's withdrawn marker bound to the key's lease.
// It returns the deleted registration's lease and the deletion's revision;
// found is false when the key does not exist.
func DeleteOwn(ctx context.Context, c *store.Client, key, value string, lease store.LeaseID, mark bool) (found bool, deleted store.LeaseID, rev int64, err error) {
	for attempt := 0; attempt < 5; attempt++ {
		kv, ok, _, err := c.Get(ctx, key)
		if err != nil {
			return false, 0, 0, err
		}
		if !ok {
			return false, 0, 0, nil
		}
		if (value != "" && string(kv.Value) != value) || (lease != 0 && kv.Lease != lease) {
			return true, 0, 0, fmt.Errorf("%w: value %q, lease %x", ErrNotOwn, kv.Value, int64(kv.Lease))
		}
		ifs := []store.Cmp{store.LeaseIs(key, kv.Lease), store.ModRevisionIs(key, kv.ModRevision)}
		then := []store.Op{store.OpDelete(key)}
		if mark {
			then = append(then, store.OpPut(WithdrawnMarker(key), "withdrawn", kv.Lease))
		}
		ok, rev, err := c.Txn(ctx, ifs, then, nil)
		if err != nil {
			return true, 0, 0, fmt.Errorf("delete %s: %w", key, err)
		}
		if ok {
			return true, kv.Lease, rev, nil
		}
		// Changed between the read and the transaction: look again.
	}
	return true, 0, 0, fmt.Errorf("delete %s: the key kept changing", key)
}

// WaitApplied waits until every live render status under d.StatusPrefix
// whose prefixes cover key shows a revision of at least rev, or d.Timeout
// has passed (it then says so in the log), or ctx ends. A render whose
// status disappears (stopped, lease expired) is no longer waited for. It
// logs how long it waited and for whom, and returns the renders it was still
// waiting for when it gave up.
func WaitApplied(ctx context.Context, c *store.Client, key string, rev int64, d Drain, log *slog.Logger) (late []string) {
	if d.Timeout <= 0 {
		return nil
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, d.Timeout)
	defer cancel()
	kvs, grev, err := c.GetPrefix(wctx, d.StatusPrefix)
	if err != nil {
		log.Warn("drain: cannot read the render statuses; not waiting for them", "key", key, "err", err)
		return nil
	}
	covering := map[string]string{}        // status key → host/resource
	pending := map[string]applied.Status{} // not yet at rev
	note := func(k string, v []byte) {
		s, err := applied.Decode(v)
		if err != nil || !s.Covers(key) {
			return
		}
		covering[k] = s.Name()
		if s.Revision < rev {
			pending[k] = s
		} else {
			delete(pending, k)
		}
	}
	for _, kv := range kvs {
		note(kv.Key, kv.Value)
	}
	if len(covering) == 0 {
		log.Info("drain: no render publishes a status covering the key; not waiting", "key", key, "status_prefix", d.StatusPrefix)
		return nil
	}
	if len(pending) > 0 {
		w := c.WatchPrefix(wctx, d.StatusPrefix, grev+1)
	wait:
		for len(pending) > 0 {
			select {
			case <-wctx.Done():
				break wait
			case b, ok := <-w.C:
				if !ok || b.Err != nil {
					if wctx.Err() == nil {
						log.Warn("drain: the status watch ended; not waiting longer", "key", key, "err", b.Err)
					}
					break wait
				}
				for _, ev := range b.Events {
					if ev.Type == store.EventDelete {
						if s, ok := pending[ev.KV.Key]; ok {
							log.Info("drain: render gone; not waiting for it", "key", key, "render", s.Name())
							delete(pending, ev.KV.Key)
						}
						continue
					}
					note(ev.KV.Key, ev.KV.Value)
				}
			}
		}
		w.Close()
	}
	waited := time.Since(start).Round(time.Millisecond)
	all := sortedValues(covering)
	if len(pending) > 0 {
		for _, s := range pending {
			late = append(late, fmt.Sprintf("%s@%d", s.Name(), s.Revision))
		}
		slices.Sort(late)
		if ctx.Err() == nil {
			log.Warn("drain timeout cut the wait short", "key", key, "rev", rev, "waited", waited, "timeout", d.Timeout, "not_applied", late, "renders", all)
		}
		return late
	}
	log.Info("drain: renders applied the withdrawal", "key", key, "rev", rev, "waited", waited, "renders", all)
	return nil
}

// Sleep waits d.Delay (connections in flight), logging it, or until ctx ends.
func (d Drain) sleep(ctx context.Context, key string, log *slog.Logger) {
	if d.Delay <= 0 {
		return
	}
	log.Info("drain delay", "key", key, "delay", d.Delay)
	t := time.NewTimer(d.Delay)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Withdraw deletes key if it is this registration (value, and lease when
// not 0) and marks it withdrawn (see WithdrawnMarker), waits for the renders
// (WaitApplied), then d.Delay. It is announce --withdraw, run from ExecStop=
// before the service is signalled. Nothing to delete is not an error.
func Withdraw(ctx context.Context, c *store.Client, key, value string, d Drain, log *slog.Logger) error {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	found, lease, rev, err := DeleteOwn(dctx, c, key, value, 0, true)
	cancel()
	switch {
	case errors.Is(err, ErrNotOwn):
		log.Warn("withdraw: the key holds another registration; leaving it", "key", key, "err", err)
		return nil
	case err != nil:
		return fmt.Errorf("withdraw %s: %w", key, err)
	case !found:
		log.Info("withdraw: nothing to withdraw", "key", key)
		return nil
	}
	log.Info("withdrawn; waiting for the load balancers", "key", key, "lease", fmt.Sprintf("%x", int64(lease)), "rev", rev, "drain_timeout", d.Timeout)
	WaitApplied(ctx, c, key, rev, d, log)
	d.sleep(ctx, key, log)
	return nil
}

func sortedValues(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	slices.Sort(out)
	return out
}
