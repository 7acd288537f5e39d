package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/engine"
	"github.com/flotilla/flotilla/internal/fleetapi"
	"github.com/flotilla/flotilla/internal/registry"
)

// repeated is a flag that may be given several times.
type repeated []string

func (r *repeated) String() string { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error {
	*r = append(*r, v)
	return nil
}

// apiOptions are serve's flags of the HTTP face (fleet API v1, /metrics,
// /health, /ready, dashboard).
type apiOptions struct {
	addrs     repeated
	tls       fleetapi.TLSFiles
	prefixes  repeated
	pageLimit int
}

func (a *apiOptions) register(fs *flag.FlagSet) {
	fs.Var(&a.addrs, "api", "serve fleet's API v1, /metrics, /health, /ready and the dashboard here (repeatable): unix:///var/run/fleet.sock, http://127.0.0.1:8080 (loopback only), https://host:port (with --api-cert, --api-key, --api-cacert)")
	fs.StringVar(&a.tls.Cert, "api-cert", "", "https --api: server certificate (PEM)")
	fs.StringVar(&a.tls.Key, "api-key", "", "https --api: server key (PEM)")
	fs.StringVar(&a.tls.CACert, "api-cacert", "", "https --api: CA that client certificates must be signed by (PEM)")
	fs.Var(&a.prefixes, "api-endpoint-prefix", "dashboard: etcd prefix of announced endpoints to show (repeatable; default /clusterstate/)")
	fs.IntVar(&a.pageLimit, "api-page-limit", fleetapi.DefaultPageLimit, "fleet API: items per page of lists (fleetctl expects 100)")
}

// check refuses flags that would do nothing.
func (a *apiOptions) check() error {
	https := false
	for _, addr := range a.addrs {
		https = https || strings.HasPrefix(addr, "https://")
		if err := fleetapi.CheckAddress(addr, a.tls); err != nil {
			return cmdline.Usagef("--api: %v", err)
		}
	}
	if !https && (a.tls.Cert != "" || a.tls.Key != "" || a.tls.CACert != "") {
		return cmdline.Usagef("--api-cert, --api-key and --api-cacert need an https:// --api address")
	}
	if len(a.addrs) == 0 && (len(a.prefixes) > 0 || a.pageLimit != fleetapi.DefaultPageLimit) {
		return cmdline.Usagef("--api-endpoint-prefix and --api-page-limit need an --api address")
	}
	return nil
}

// apiRunner is the started HTTP face; the zero value (no --api) does nothing.
type apiRunner struct {
	srv       *fleetapi.Server
	listeners []net.Listener
}

// start opens the listeners (so a bad address fails serve at once).
func (a *apiOptions) start(reg *registry.Registry, log *slog.Logger) (*apiRunner, error) {
	if len(a.addrs) == 0 {
		return &apiRunner{}, nil
	}
	srv, err := fleetapi.New(fleetapi.Options{Registry: reg, Logger: log, PageLimit: a.pageLimit,
		EndpointPrefixes: a.prefixes, Version: cmdline.Version()})
	if err != nil {
		return nil, err
	}
	r := &apiRunner{srv: srv}
	for _, addr := range a.addrs {
		l, err := fleetapi.Listen(addr, a.tls)
		if err != nil {
			for _, l := range r.listeners {
				l.Close()
			}
			return nil, cmdline.Usagef("--api: %v", err)
		}
		log.Info("api serving", "addr", addr)
		r.listeners = append(r.listeners, l)
	}
	return r, nil
}

// onPass feeds engine passes into /metrics.
func (r *apiRunner) onPass(st engine.PassStats) {
	if r.srv != nil {
		r.srv.Metrics().ObservePass(st.Duration)
	}
}

// run serves until ctx ends.
func (r *apiRunner) run(ctx context.Context) error {
	if r.srv == nil {
		return nil
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return fleetapi.Serve(gctx, r.srv, r.listeners...) })
	g.Go(func() error { return r.srv.Run(gctx) })
	if err := g.Wait(); err != nil {
		return fmt.Errorf("api: %w", err)
	}
	return nil
}

// close closes the listeners (already closed ones once served: harmless).
func (r *apiRunner) close() {
	for _, l := range r.listeners {
		_ = l.Close()
	}
}
