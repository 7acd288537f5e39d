// Package announce keeps one key in etcd for as long as a service runs: the
// key is always bound to a lease, the lease is kept alive, and when it is lost
// (expired during an etcd outage, revoked, keepalive ended) a new lease is
// granted and the key written again, with backoff. With a health check the
// key exists only while the check passes. Ending the context revokes the
// lease, so the key disappears at once.
package announce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/applied"
	"github.com/flotilla/flotilla/internal/store"
)

// MaxTTL is the longest lease etcd grants.
const MaxTTL = 9_000_000_000 * time.Second

// Config says what to announce and how. Fill it, then Validate (Run does).
type Config struct {
	// Key is the etcd key; it starts with '/' and does not end with one.
	Key string
	// Value is written verbatim; it must not be empty.
	Value string
	// TTL is the lease's time to live (whole seconds, at least store.MinTTL);
	// the key outlives a crash of the process by at most this long.
	TTL time.Duration
	// Check, if not nil, gates the key: it is written only once a check
	// passed, and withdrawn after CheckThreshold failures in a row.
	Check Checker
	// CheckInterval is the time between checks; default 5s.
	CheckInterval time.Duration
	// CheckThreshold is how many failures in a row withdraw the key; default 3.
	CheckThreshold int
	// CheckRise is how many passes in a row (re)write the key; default 1.
	CheckRise int
	// MinBackoff and MaxBackoff bound the wait between failed attempts to
	// (re-)register; defaults 100ms and 2s.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives what happens; nil discards.
	Logger *slog.Logger
	// OnPut, if set, is called after every successful write of the key, from
	// Run's goroutine: a slow OnPut delays the registration loop.
	OnPut func(store.LeaseID)
	// Drain is the acknowledged withdrawal when ctx ends: the key is deleted
	// first, the renders are waited for (Drain.Timeout, zero: not at all),
	// then Drain.Delay, and only then is the lease revoked.
	Drain Drain
}

// Validate fills defaults and checks the configuration. Its messages are one
// line, fit for a command line error.
func (c *Config) Validate() error {
	if err := ValidateKey(c.Key); err != nil {
		return err
	}
	if c.Value == "" {
		return fmt.Errorf("key %s: empty value", c.Key)
	}
	if c.TTL < store.MinTTL {
		return fmt.Errorf("ttl %s: etcd's shortest lease is %s", c.TTL, store.MinTTL)
	}
	if c.TTL > MaxTTL {
		return fmt.Errorf("ttl %s: etcd's longest lease is %s", c.TTL, MaxTTL)
	}
	if c.CheckInterval == 0 {
		c.CheckInterval = 5 * time.Second
	}
	if c.CheckInterval < 0 {
		return fmt.Errorf("check interval %s: must be positive", c.CheckInterval)
	}
	if c.CheckThreshold == 0 {
		c.CheckThreshold = 3
	}
	if c.CheckThreshold < 0 {
		return fmt.Errorf("check threshold %d: must be at least 1", c.CheckThreshold)
	}
	if c.CheckRise == 0 {
		c.CheckRise = 1
	}
	if c.CheckRise < 0 {
		return fmt.Errorf("check rise %d: must be at least 1", c.CheckRise)
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = max(2*time.Second, c.MinBackoff)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Drain.Timeout < 0 || c.Drain.Delay < 0 {
		return fmt.Errorf("drain timeout %s, delay %s: must not be negative", c.Drain.Timeout, c.Drain.Delay)
	}
	if c.Drain.StatusPrefix == "" {
		c.Drain.StatusPrefix = applied.DefaultPrefix
	}
	if err := applied.ValidatePrefix(c.Drain.StatusPrefix); err != nil {
		return err
	}
	return nil
}

// ValidateKey checks an announce key: it starts with '/', names something
// below the root, does not end with '/' and holds no control characters.
func ValidateKey(key string) error {
	switch {
	case key == "":
		return errors.New("empty key")
	case !strings.HasPrefix(key, "/"):
		return fmt.Errorf("key %q: must start with '/'", key)
	case strings.HasSuffix(key, "/"):
		return fmt.Errorf("key %q: must not end with '/' (a key, not a directory)", key)
	case strings.ContainsFunc(key, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Errorf("key %q: contains a control character", key)
	}
	return nil
}

// Run keeps cfg.Key announced until ctx ends, then revokes the lease (the key
// disappears) and returns nil. It never returns because etcd is unreachable:
// it retries, with backoff, logging what failed. It returns an error only for
// an invalid cfg, before touching etcd.
func Run(ctx context.Context, c *store.Client, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if cfg.Check == nil {
		return register(ctx, c, &cfg, nil)
	}
	if l, ok := cfg.Check.(interface{ setLogger(*slog.Logger) }); ok {
		l.setLogger(cfg.Logger.With("key", cfg.Key))
	}
	health := make(chan bool, 1)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { watchHealth(gctx, &cfg, health); return nil })
	g.Go(func() error { return register(gctx, c, &cfg, health) })
	return g.Wait()
}

// register is the registration loop. health carries changes of the check's
// verdict (nil: no check, always healthy).
func register(ctx context.Context, c *store.Client, cfg *Config, health <-chan bool) error {
	log := cfg.Logger.With("key", cfg.Key)
	healthy := health == nil
	backoff := cfg.MinBackoff
	failures := 0
	// Leases given up on (their keepalive ended) that may still exist in
	// etcd: revoked once the key is written with a new one, and on exit, so
	// that nothing lingers on an old lease.
	var stale []store.LeaseID
	defer func() { revokeStale(context.Background(), c, &stale, log) }()
	for {
		for !healthy {
			select {
			case <-ctx.Done():
				return nil
			case healthy = <-health:
			}
		}
		mrev, ok := waitMaintenanceOff(ctx, c, cfg.Key, log)
		if !ok {
			return nil
		}
		lease, rev, err := put(ctx, c, cfg, log)
		if err != nil {
			if ctx.Err() != nil {
				return nil // put withdrew what it may have written
			}
			failures++
			if failures == 1 || failures%10 == 0 {
				log.Warn("announce failed; retrying", "attempt", failures, "err", err)
			}
			select {
			case <-ctx.Done():
				return nil
			case healthy = <-health:
			case <-time.After(jitter(backoff)):
			}
			backoff = min(2*backoff, cfg.MaxBackoff)
			continue
		}
		if failures > 0 {
			log.Info("announced again", "lease", fmt.Sprintf("%x", int64(lease.ID())), "after_attempts", failures)
		} else {
			log.Info("announced", "lease", fmt.Sprintf("%x", int64(lease.ID())), "ttl", lease.TTL())
		}
		failures, backoff = 0, cfg.MinBackoff
		revokeStale(ctx, c, &stale, log)
		if cfg.OnPut != nil {
			cfg.OnPut(lease.ID())
		}
		var out outcome
		out, healthy = hold(ctx, c, cfg, lease, rev, min(rev, mrev), health, log)
		if out == leaseLost {
			stale = append(stale, lease.ID())
		}
		if ctx.Err() != nil || out == withdrawnDone {
			return nil
		}
	}
}

// revokeStale revokes the leases in *stale, each bounded by 2s, keeping
// those etcd did not answer for.
func revokeStale(ctx context.Context, c *store.Client, stale *[]store.LeaseID, log *slog.Logger) {
	if len(*stale) == 0 {
		return
	}
	ctx = context.WithoutCancel(ctx)
	kept := (*stale)[:0]
	for _, id := range *stale {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := c.RevokeLease(rctx, id)
		cancel()
		if err != nil {
			kept = append(kept, id)
			continue
		}
		log.Info("revoked an abandoned lease", "lease", fmt.Sprintf("%x", int64(id)))
	}
	*stale = kept
}

// outcome is how hold ended.
type outcome int

const (
	done          outcome = iota // ctx ended; withdrawn
	leaseLost                    // grant a new lease
	unhealthy                    // the check failed; withdrawn
	withdrawnDone                // withdrawn by announce --withdraw, then ctx ended
)

// hold keeps lease until ctx ends (it then withdraws the key), the lease is
// lost, or the health check fails (it then withdraws the key). Meanwhile it
// watches the key from rev, the revision of the put: when someone else
// deletes it (etcdctl del, a cleanup script), it is written again with the
// same lease; when someone else overwrites it, that is logged, not fought. It
// reports whether the service is still healthy.
func hold(ctx context.Context, c *store.Client, cfg *Config, lease *store.Lease, rev, mrev int64, health <-chan bool, log *slog.Logger) (outcome, bool) {
	w := c.WatchPrefix(ctx, cfg.Key, rev+1)
	defer func() { w.Close() }()
	from := mrev + 1
	if mrev == 0 {
		from = 0 // unknown: from now
	}
	mw := c.WatchPrefix(ctx, MaintenanceMarker(cfg.Key), from)
	defer func() { mw.Close() }()
	inMaint := false
	setMaint := func(on bool) bool {
		switch {
		case on && !inMaint:
			log.Info("maintenance on: withdrawing the key, keeping the lease")
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, _, _, err := DeleteOwn(dctx, c, cfg.Key, "", lease.ID(), false)
			cancel()
			if err != nil && !errors.Is(err, ErrNotOwn) {
				log.Warn("maintenance: delete the key", "err", err)
			}
			inMaint = true
		case !on && inMaint:
			log.Info("maintenance off: announcing again")
			inMaint = false
			if !restore(ctx, c, cfg, lease, log) {
				return false
			}
		}
		return true
	}
	for {
		select {
		case b, ok := <-mw.C:
			if ctx.Err() != nil {
				continue
			}
			on := inMaint
			if !ok || b.Err != nil {
				mw.Close()
				var next int64
				on, next = maintenanceOn(ctx, c, cfg.Key)
				mw = c.WatchPrefix(ctx, MaintenanceMarker(cfg.Key), next)
			} else {
				for _, ev := range b.Events {
					if ev.KV.Key == MaintenanceMarker(cfg.Key) {
						on = ev.Type == store.EventPut
					}
				}
			}
			if !setMaint(on) {
				return leaseLost, true
			}
		case <-ctx.Done():
			drain(c, cfg, lease, log)
			return done, true
		case <-lease.Done():
			log.Warn("lease lost; granting a new one", "lease", fmt.Sprintf("%x", int64(lease.ID())))
			lease.Abandon()
			return leaseLost, true
		case h := <-health:
			if h {
				continue
			}
			log.Warn("health check failing; withdrawing the key")
			withdraw(c, lease, cfg.TTL, log)
			return unhealthy, false
		case b, ok := <-w.C:
			if ctx.Err() != nil {
				continue // ctx.Done is ready too
			}
			if !ok || b.Err != nil {
				// The watch ended (history compacted): look, then watch afresh.
				w.Close()
				missing, next := keyMissing(ctx, c, cfg.Key)
				missing = missing && !inMaint
				if missing && markedWithdrawn(ctx, c, cfg.Key, lease) {
					return stayWithdrawn(ctx, c, cfg, lease, log), true
				}
				if missing && !restore(ctx, c, cfg, lease, log) {
					return leaseLost, true
				}
				w = c.WatchPrefix(ctx, cfg.Key, next)
				continue
			}
			for _, ev := range b.Events {
				if ev.KV.Key != cfg.Key {
					continue // a longer key under the same prefix
				}
				switch {
				case ev.Type == store.EventDelete && inMaint:
					// Our own withdrawal for maintenance.
				case ev.Type == store.EventDelete:
					if markedWithdrawn(ctx, c, cfg.Key, lease) {
						return stayWithdrawn(ctx, c, cfg, lease, log), true
					}
					log.Warn("key deleted by someone else; writing it again")
					if !restore(ctx, c, cfg, lease, log) {
						return leaseLost, true
					}
				case ev.KV.Lease != lease.ID():
					log.Warn("key overwritten by another writer; leaving it to them",
						"their_lease", fmt.Sprintf("%x", int64(ev.KV.Lease)), "value", string(ev.KV.Value))
				}
			}
		}
	}
}

// MaintenancePrefix holds the maintenance markers: announce --maintenance on
// writes MaintenancePrefix+KEY (no lease: it survives a restart of announce)
// and the announce keeping KEY withdraws it, keeping its lease and process,
// until --maintenance off deletes the marker.
const MaintenancePrefix = "/flotilla/announce/maintenance"

// MaintenanceMarker returns the maintenance marker key of key.
func MaintenanceMarker(key string) string { return MaintenancePrefix + key }

// maintenanceOn reads key's marker; on error it answers false (announce) and
// watches from now.
func maintenanceOn(ctx context.Context, c *store.Client, key string) (on bool, next int64) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, found, rev, err := c.Get(rctx, MaintenanceMarker(key))
	if err != nil {
		return false, 0
	}
	return found, rev + 1
}

// Maintenance turns key's maintenance on (the announce keeping it
// withdraws it; Maintenance then waits for that deletion, at most
// d.Timeout, and for the renders to apply it, as Withdraw does) or off (the
// key comes back).
func Maintenance(ctx context.Context, c *store.Client, key string, on bool, d Drain, log *slog.Logger) error {
	mctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if !on {
		if _, err := c.Delete(mctx, MaintenanceMarker(key)); err != nil {
			return fmt.Errorf("maintenance off %s: %w", key, err)
		}
		log.Info("maintenance off; the announce keeping the key writes it again", "key", key)
		return nil
	}
	// The key is read before the marker is written: the keeper withdraws it
	// as soon as it sees the marker, and the watch below, from this read,
	// sees that deletion however soon it comes.
	_, found, rev, err := c.Get(mctx, key)
	if err != nil {
		return fmt.Errorf("maintenance on %s: %w", key, err)
	}
	if _, err := c.Put(mctx, MaintenanceMarker(key), "on", 0); err != nil {
		return fmt.Errorf("maintenance on %s: %w", key, err)
	}
	if !found {
		log.Info("maintenance on; the key is not announced", "key", key)
		return nil
	}
	wctx, wcancel := context.WithTimeout(ctx, max(d.Timeout, 5*time.Second))
	defer wcancel()
	w := c.WatchPrefix(wctx, key, rev+1)
	defer w.Close()
	for {
		select {
		case <-wctx.Done():
			log.Warn("maintenance on; the key is still there (is its announce running?)", "key", key)
			return nil
		case b, ok := <-w.C:
			if !ok || b.Err != nil {
				continue
			}
			for _, ev := range b.Events {
				if ev.KV.Key == key && ev.Type == store.EventDelete {
					log.Info("maintenance on; key withdrawn, waiting for the load balancers", "key", key, "rev", ev.KV.ModRevision)
					WaitApplied(ctx, c, key, ev.KV.ModRevision, d, log)
					d.sleep(ctx, key, log)
					return nil
				}
			}
		}
	}
}

// waitMaintenanceOff returns once key is not in maintenance, with the
// revision it saw that at (0: unknown); false when ctx ended first.
func waitMaintenanceOff(ctx context.Context, c *store.Client, key string, log *slog.Logger) (int64, bool) {
	on, next := maintenanceOn(ctx, c, key)
	if !on {
		return max(next-1, 0), ctx.Err() == nil
	}
	log.Info("in maintenance: not announcing until announce --maintenance off", "marker", MaintenanceMarker(key))
	w := c.WatchPrefix(ctx, MaintenanceMarker(key), next)
	defer w.Close()
	for {
		select {
		case <-ctx.Done():
			return 0, false
		case b, ok := <-w.C:
			if !ok || b.Err != nil {
				if ctx.Err() != nil {
					return 0, false
				}
				return waitMaintenanceOff(ctx, c, key, log)
			}
			for _, ev := range b.Events {
				if ev.KV.Key == MaintenanceMarker(key) && ev.Type == store.EventDelete {
					log.Info("maintenance off")
					return ev.KV.ModRevision, true
				}
			}
		}
	}
}

// markedWithdrawn reports whether key's withdrawn marker exists bound to
// lease: announce --withdraw deleted the key (then it must not be written
// again).
func markedWithdrawn(ctx context.Context, c *store.Client, key string, lease *store.Lease) bool {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	kv, found, _, err := c.Get(rctx, WithdrawnMarker(key))
	return err == nil && found && kv.Lease == lease.ID()
}

// stayWithdrawn keeps the lease (and the marker bound to it) without the key
// until ctx ends, then revokes it.
func stayWithdrawn(ctx context.Context, c *store.Client, cfg *Config, lease *store.Lease, log *slog.Logger) outcome {
	log.Info("key withdrawn by announce --withdraw; not writing it again until stopped")
	select {
	case <-ctx.Done():
		withdraw(c, lease, cfg.TTL, log)
	case <-lease.Done():
		lease.Abandon()
		<-ctx.Done()
	}
	return withdrawnDone
}

// drain is the acknowledged withdrawal on stop: delete the key if it is
// still bound to lease, wait for the renders to apply the deletion (bounded
// by cfg.Drain.Timeout) and cfg.Drain.Delay, then revoke the lease.
func drain(c *store.Client, cfg *Config, lease *store.Lease, log *slog.Logger) {
	ctx := context.Background()
	dctx, cancel := context.WithTimeout(ctx, min(cfg.TTL, 5*time.Second))
	found, _, rev, err := DeleteOwn(dctx, c, cfg.Key, "", lease.ID(), false)
	cancel()
	switch {
	case err != nil && !errors.Is(err, ErrNotOwn):
		log.Warn("withdraw: delete the key", "err", err)
	case err == nil && found:
		log.Info("key deleted; waiting for the load balancers", "rev", rev, "drain_timeout", cfg.Drain.Timeout)
		WaitApplied(ctx, c, cfg.Key, rev, cfg.Drain, log)
		cfg.Drain.sleep(ctx, cfg.Key, log)
	}
	withdraw(c, lease, cfg.TTL, log)
}

// keyMissing reads key; on error it answers false (nothing to restore) and
// watches from now.
func keyMissing(ctx context.Context, c *store.Client, key string) (missing bool, next int64) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, found, rev, err := c.Get(rctx, key)
	if err != nil {
		return false, 0
	}
	return !found, rev + 1
}

// restore writes the key again with lease. It reports false when the lease
// is gone (the caller then grants a new one).
func restore(ctx context.Context, c *store.Client, cfg *Config, lease *store.Lease, log *slog.Logger) bool {
	pctx, cancel := context.WithTimeout(ctx, max(cfg.TTL, 2*time.Second))
	defer cancel()
	if _, err := lease.Put(pctx, cfg.Key, cfg.Value); err != nil {
		if errors.Is(err, store.ErrLeaseLost) {
			log.Warn("lease lost; granting a new one", "lease", fmt.Sprintf("%x", int64(lease.ID())))
			lease.Abandon()
			return false
		}
		// etcd unreachable: the keepalive decides whether the lease survives.
		log.Warn("write the key again", "err", err)
		return true
	}
	if cfg.OnPut != nil {
		cfg.OnPut(lease.ID())
	}
	return true
}

// put grants a lease and writes the key with it. Each step is bounded by the
// TTL: past that, a lease granted before a hang may be gone anyway.
//
// A stop (ctx ending) interrupts the grant (nothing is written yet) but not
// the write: once sent, it may reach etcd whatever happens here, so put
// waits for its answer, and when ctx has ended meanwhile withdraws the key
// as any stop does (deleted if it is ours, the renders waited for, then the
// lease revoked), instead of dropping it with the lease unannounced.
func put(ctx context.Context, c *store.Client, cfg *Config, log *slog.Logger) (*store.Lease, int64, error) {
	actx, cancel := context.WithTimeout(ctx, max(cfg.TTL, 2*time.Second))
	defer cancel()
	lease, err := c.GrantLease(actx, cfg.TTL)
	if err != nil {
		return nil, 0, err
	}
	pctx, pcancel := context.WithTimeout(context.WithoutCancel(ctx), max(cfg.TTL, 2*time.Second))
	defer pcancel()
	rev, err := lease.Put(pctx, cfg.Key, cfg.Value)
	if ctx.Err() != nil {
		log.Info("stopped while the key was being written; withdrawing it", "put_err", err)
		drain(c, cfg, lease, log)
		return nil, 0, ctx.Err()
	}
	if err != nil {
		lease.Abandon()
		// Best effort: the lease would expire by itself anyway.
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		c.RevokeLease(rctx, lease.ID())
		rcancel()
		return nil, 0, err
	}
	return lease, rev, nil
}

// withdraw stops the keepalive and revokes the lease, waiting for etcd at
// most min(TTL, 5s): past that the lease expires by itself.
func withdraw(c *store.Client, lease *store.Lease, ttl time.Duration, log *slog.Logger) {
	lease.Abandon()
	ctx, cancel := context.WithTimeout(context.Background(), min(ttl, 5*time.Second))
	defer cancel()
	if err := c.RevokeLease(ctx, lease.ID()); err != nil {
		log.Warn("withdraw: the key stays until its lease expires", "ttl", ttl, "err", err)
		return
	}
	log.Info("withdrawn", "lease", fmt.Sprintf("%x", int64(lease.ID())))
}

// jitter returns d ± 20 %.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
