package render

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/flotilla/flotilla/internal/applied"
	"github.com/flotilla/flotilla/internal/store"
)

// Applied is what one resource has applied: every key under Prefixes is, in
// the installed file, as of etcd revision Rev, and the reload_cmd that file
// called for has succeeded.
type Applied struct {
	Resource string
	Prefixes []string
	Rev      int64
}

// reportApplied works out, after each turn of the loop, the revision each
// resource has applied, and hands the whole list to cfg.Applied when it
// changed. A resource has applied e.seen (the revision of the last change
// under its keys, or of the last full read) when nothing is pending for it:
// its snapshot is current (no resync owed), it is rendered (not dirty, no
// failure, no job running) and no reload is owed. Otherwise it keeps the
// revision it last applied. (Not r.rev: with a watch on "/", the statuses'
// own writes would advance it, and each publication cause the next.)
func (r *runner) reportApplied(w *workers, needResync bool) {
	if r.cfg.Applied == nil {
		return
	}
	list := make([]Applied, 0, len(r.entries))
	for _, e := range r.sorted() {
		if !needResync && e.rendered && e.store != nil && !e.dirty && e.failures == 0 &&
			!e.reloadWanted && !w.busy[e.res.Dest] {
			e.applied = e.seen
		}
		list = append(list, Applied{Resource: e.res.Name, Prefixes: e.res.Keys, Rev: e.applied})
	}
	if slices.EqualFunc(list, r.lastApplied, func(a, b Applied) bool {
		return a.Resource == b.Resource && a.Rev == b.Rev && slices.Equal(a.Prefixes, b.Prefixes)
	}) {
		return
	}
	r.lastApplied = list
	r.cfg.Applied(list)
}

// StatusPublisher writes each resource's Applied state to etcd, under
// Prefix+Host+"/"+resource (applied.Key), bound to a lease of its own: the
// statuses are gone when render is. Update is safe for concurrent use and
// never blocks; Run does the writing.
type StatusPublisher struct {
	Client *store.Client
	Prefix string // applied.DefaultPrefix when empty
	Host   string
	TTL    time.Duration // 10s when zero
	Logger *slog.Logger

	mu   sync.Mutex
	want map[string]applied.Status // by key
	kick chan struct{}
	once sync.Once
}

func (p *StatusPublisher) init() {
	p.once.Do(func() {
		if p.Prefix == "" {
			p.Prefix = applied.DefaultPrefix
		}
		if p.TTL <= 0 {
			p.TTL = 10 * time.Second
		}
		if p.Logger == nil {
			p.Logger = slog.New(slog.DiscardHandler)
		}
		p.kick = make(chan struct{}, 1)
		if p.want == nil {
			p.want = map[string]applied.Status{}
		}
	})
}

// Update replaces the statuses to publish; it is a Config.Applied.
func (p *StatusPublisher) Update(list []Applied) {
	p.init()
	want := make(map[string]applied.Status, len(list))
	for _, a := range list {
		want[applied.Key(p.Prefix, p.Host, a.Resource)] = applied.Status{
			Host: p.Host, Resource: a.Resource, Prefixes: a.Prefixes, Revision: a.Rev,
		}
	}
	p.mu.Lock()
	p.want = want
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Run publishes until ctx ends, then revokes its lease (the statuses go).
// It retries etcd failures with backoff and a lost lease with a new one.
func (p *StatusPublisher) Run(ctx context.Context) error {
	p.init()
	backoff := 200 * time.Millisecond
	wait := func() bool {
		t := time.NewTimer(time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64())))
		defer t.Stop()
		backoff = min(2*backoff, 5*time.Second)
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for ctx.Err() == nil {
		gctx, cancel := context.WithTimeout(ctx, p.TTL)
		lease, err := p.Client.GrantLease(gctx, p.TTL)
		cancel()
		if err != nil {
			p.Logger.Warn("publish status: grant lease; retrying", "err", err)
			if !wait() {
				return nil
			}
			continue
		}
		backoff = 200 * time.Millisecond
		p.hold(ctx, lease, wait)
	}
	return nil
}

// hold writes the statuses with lease until ctx ends (it then revokes the
// lease) or the lease is lost.
func (p *StatusPublisher) hold(ctx context.Context, lease *store.Lease, wait func() bool) {
	written := map[string]string{} // key → value in etcd
	for {
		p.mu.Lock()
		want := p.want
		p.mu.Unlock()
		ok := true
		for k, s := range want {
			v := s.Encode()
			if written[k] == v {
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, p.TTL)
			_, err := lease.Put(pctx, k, v)
			cancel()
			if err != nil {
				ok = false
				if ctx.Err() == nil {
					p.Logger.Warn("publish status", "key", k, "err", err)
				}
				break
			}
			written[k] = v
			p.Logger.Debug("status published", "resource", s.Resource, "rev", s.Revision)
		}
		for k := range written {
			if _, keep := want[k]; keep || !ok {
				continue
			}
			dctx, cancel := context.WithTimeout(ctx, p.TTL)
			_, err := p.Client.Delete(dctx, k)
			cancel()
			if err != nil {
				ok = false
				break
			}
			delete(written, k)
		}
		var retry <-chan time.Time
		if !ok {
			retry = time.After(time.Second)
		}
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			if err := p.Client.RevokeLease(rctx, lease.ID()); err != nil {
				p.Logger.Warn("publish status: statuses stay until their lease expires", "ttl", p.TTL, "err", err)
			}
			lease.Abandon()
			return
		case <-lease.Done():
			p.Logger.Warn("publish status: lease lost; granting a new one", "lease", fmt.Sprintf("%x", int64(lease.ID())))
			lease.Abandon()
			wait()
			return
		case <-p.kick:
		case <-retry:
		}
	}
}
