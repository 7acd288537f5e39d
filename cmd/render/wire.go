package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/render"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/resources"
)

func backendName(b string) (string, bool) {
	switch b {
	case "etcd", "etcdv3":
		return "etcdv3", true
	case "file":
		return "file", true
	}
	return "", false
}

// waitSetting is -wait, or the fork's -debounce / -batch-interval.
func waitSetting(o *options) (resources.Wait, error) {
	wait, err := resources.ParseWait(o.wait)
	if err != nil {
		return wait, cmdline.Usagef("-wait: %v", err)
	}
	for _, alt := range []struct{ name, val, suffix string }{{"debounce", o.debounce, ""}, {"batch-interval", o.batch, ":" + o.batch}} {
		if alt.val == "" || !wait.IsZero() {
			continue
		}
		if wait, err = resources.ParseWait(alt.val + alt.suffix); err != nil {
			return wait, cmdline.Usagef("-%s: %v", alt.name, err)
		}
	}
	return wait, nil
}

// source builds the key source the settings name; close releases it.
func source(o *options) (src render.Source, close func(), err error) {
	backend, _ := backendName(o.backend)
	switch {
	case o.mockData != "":
		return &render.FileSource{Files: []string{o.mockData}}, func() {}, nil
	case backend == "file":
		if len(o.files) == 0 {
			return nil, nil, cmdline.Usagef("the file backend needs -file")
		}
		return &render.FileSource{Files: o.files}, func() {}, nil
	case backend == "etcdv3":
		sc := store.Default()
		sc.DialTimeout = o.dialTimeout
		for _, n := range o.nodes {
			if !strings.Contains(n, "://") {
				n = o.scheme + "://" + n
			}
			sc.Endpoints = append(sc.Endpoints, n)
		}
		var so render.EtcdSourceOptions
		so.ReadTimeout = o.readTimeout
		if o.srvDomain != "" || o.srvRecord != "" {
			domain, record, scheme := o.srvDomain, o.srvRecord, o.scheme
			so.Endpoints = func(ctx context.Context) ([]string, error) {
				ctx, cancel := context.WithTimeout(ctx, o.dialTimeout)
				defer cancel()
				return store.SRVEndpoints(ctx, domain, record, scheme)
			}
			sc.Endpoints = []string{"http://srv.invalid:2379"} // replaced at each connect
		}
		if len(sc.Endpoints) == 0 {
			sc.Endpoints = []string{store.DefaultEndpoint}
		}
		sc.Cert, sc.Key, sc.CACert = o.clientCert, o.clientKey, o.clientCA
		sc.InsecureSkipVerify = o.clientInsecure
		sc.Username, sc.Password = o.username, o.password
		if err := sc.Validate(); err != nil {
			return nil, nil, cmdline.Usagef("%v", err)
		}
		if so.Endpoints == nil {
			status := sc // -publish-status opens its own client from the same settings
			o.status.store = &status
		}
		es := render.NewEtcdSourceWith(sc, so)
		return es, func() { es.Close() }, nil
	}
	return nil, nil, cmdline.Usagef("-backend %q: want etcdv3, etcd or file", o.backend)
}

// wire builds the runner's configuration from the settings and runs the mode
// they ask for.
func wire(ctx context.Context, o *options, set map[string]bool, log *slog.Logger, stdout io.Writer) error {
	if o.onetime {
		defer onetimeGC(os.Getenv)()
	}
	wait, err := waitSetting(o)
	if err != nil {
		return err
	}
	src, closeSrc, err := source(o)
	if err != nil {
		return err
	}
	defer closeSrc()
	rc := render.Config{
		ConfDir: o.confdir, Prefix: o.prefix, Source: src,
		Interval: time.Duration(o.interval) * time.Second, Wait: wait,
		Noop: o.noop, SyncOnly: o.syncOnly, KeepStageFile: o.keepStage, Strict: o.strict,
		Diff: stdout, Logger: log,
		DiffContext: o.diffContext, DiffColor: o.color, DiffNamesOnly: !o.diff,
		Only: o.resources, FailFast: o.failureMode == "fail-fast", MaxAttempts: o.retryMaxAttempts,
		WatchErrorBackoff: o.watchErrorBackoff, ShutdownTimeout: o.shutdownTimeout,
	}
	if o.diffContext == 0 {
		rc.DiffContext = resources.NoDiffContext
	}
	if !o.watch {
		rc.Mode = render.Poll
	}
	rc.CheckTimeout, rc.ReloadTimeout = o.checkTimeout, o.reloadTimeout
	rc.RetryMin, rc.RetryMax = o.retryMin, o.retryMax
	backend, _ := backendName(o.backend)
	if err := o.status.validate(*o, backend); err != nil {
		return err
	}
	switch {
	case o.preflight:
		limit := o.preflightTimeout
		if limit <= 0 {
			limit = o.dialTimeout
		}
		pctx, cancel := context.WithTimeout(ctx, limit)
		defer cancel()
		if err := src.Ping(pctx); err != nil {
			return fmt.Errorf("preflight: %w", err)
		}
		fmt.Fprintln(stdout, "preflight: backend answers")
		return nil
	case o.checkConfig:
		return render.CheckConfig(ctx, rc, stdout)
	case o.onetime:
		return render.Onetime(ctx, rc)
	}
	return serve(ctx, o, rc, log, wait, stdout)
}

// serve runs render until ctx ends, with what a long-running render has:
// sd_notify, metrics, SIGHUP.
func serve(ctx context.Context, o *options, rc render.Config, log *slog.Logger, wait resources.Wait, stdout io.Writer) error {
	g, ctx := errgroup.WithContext(ctx)
	if err := o.status.start(ctx, g, &rc, log); err != nil {
		return err
	}
	if os.Getenv("NOTIFY_SOCKET") != "" && o.systemdNotify {
		rc.Notify = func(state string) {
			if _, err := daemon.SdNotify(false, state); err != nil {
				log.Warn("sd_notify", "state", state, "err", err)
			}
		}
		if d, err := daemon.SdWatchdogEnabled(false); err == nil && d > 0 {
			rc.WatchdogInterval = d / 2
		}
		if o.watchdog > 0 {
			rc.WatchdogInterval = o.watchdog
		}
	}
	if o.metricsAddr != "" {
		rc.Metrics = render.NewMetrics()
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics: listen %s: %w", o.metricsAddr, err)
		}
		srv := &http.Server{Handler: rc.Metrics.Handler(), ReadHeaderTimeout: 5 * time.Second}
		log.Info("metrics", "addr", ln.Addr().String())
		g.Go(func() error {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("metrics: %w", err)
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		})
	}
	if o.exec != "" {
		sig, _ := parseSignal(o.execReloadSignal) // checked
		x := newExecChild(o.exec, sig, o.execKillTimeout, stdout, log)
		notify := rc.Notify
		rc.Notify = func(state string) {
			if notify != nil {
				notify(state)
			}
			if state == "READY=1" {
				x.rendered()
			}
		}
		rc.Changed = func(string) { x.changed() }
		g.Go(func() error {
			err := x.run(ctx)
			if err == nil && ctx.Err() == nil {
				return errChildDone // the child ended well: so does render
			}
			return err
		})
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	rc.Reload = reload
	g.Go(func() error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-hup:
				select {
				case reload <- struct{}{}:
				default:
				}
			}
		}
	})
	backend, _ := backendName(o.backend)
	log.Info("render starting", "confdir", o.confdir, "backend", backend, "watch", o.watch, "wait", wait.String())
	g.Go(func() error { return render.Run(ctx, rc) })
	if err := g.Wait(); !errors.Is(err, errChildDone) {
		return err
	}
	return nil
}

// errChildDone ends serve when the -exec child exited with status 0.
var errChildDone = errors.New("exec: child exited")
