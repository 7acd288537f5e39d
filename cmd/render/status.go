package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/applied"
	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/render"
	"github.com/flotilla/flotilla/internal/store"
)

// statusOptions are the flags of the acknowledged withdrawal's render side.
type statusOptions struct {
	publish bool
	prefix  string
	store   *store.Config // the etcd backend's, once known
}

func registerStatusFlags(fs *flag.FlagSet) *statusOptions {
	s := &statusOptions{}
	fs.BoolVar(&s.publish, "publish-status", false, "publish, per resource, the etcd revision applied (installed and reloaded) under -status-prefix<host>/<resource>, bound to render's lease (for announce's acknowledged withdrawal; needs write access)")
	fs.StringVar(&s.prefix, "status-prefix", applied.DefaultPrefix, "where -publish-status writes")
	return s
}

// validate refuses -publish-status where it cannot mean what it says.
func (s *statusOptions) validate(o options, backend string) error {
	if err := applied.ValidatePrefix(s.prefix); err != nil {
		return cmdline.Usagef("-%v", err)
	}
	if !s.publish {
		return nil
	}
	switch {
	case o.onetime:
		return cmdline.Usagef("-publish-status needs a running render (its status lives with its lease): not with -onetime")
	case o.noop, o.syncOnly:
		return cmdline.Usagef("-publish-status reports what is installed and reloaded: not with -noop or -sync-only")
	case o.checkConfig, o.preflight:
		return cmdline.Usagef("-publish-status: not with -check-config or -preflight")
	case o.srvDomain != "" || o.srvRecord != "":
		return cmdline.Usagef("-publish-status with SRV discovery is not supported: name the etcd endpoints with -node")
	case backend != "etcdv3" || s.store == nil:
		return cmdline.Usagef("-publish-status needs the etcd backend")
	}
	return nil
}

// start runs the publisher in g (its client opened there, retried while
// etcd is down: render starts without etcd); rc reports to it.
func (s *statusOptions) start(ctx context.Context, g *errgroup.Group, rc *render.Config, log *slog.Logger) error {
	if !s.publish {
		return nil
	}
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("publish status: host name: %w", err)
	}
	p := &render.StatusPublisher{Prefix: s.prefix, Host: host, Logger: log}
	rc.Applied = p.Update
	g.Go(func() error {
		for attempt := 1; ; attempt++ {
			c, err := store.Open(ctx, *s.store)
			if err == nil {
				defer c.Close()
				p.Client = c
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			if attempt == 1 || attempt%10 == 0 {
				log.Warn("publish status: etcd unreachable; retrying", "attempt", attempt, "err", err)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Second):
			}
		}
		log.Info("publishing applied revisions", "prefix", s.prefix+host+"/")
		return p.Run(ctx)
	})
	return nil
}
