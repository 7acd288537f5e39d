package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/render"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/resources"
)

const usage = `usage: render [flags]                      (confd's form: -backend etcdv3 -node URL …)
       render [flags] BACKEND [flags]      (the fork's form: render etcd --node URL --onetime …)

Renders confd template resources (<confdir>/conf.d/*.toml, <confdir>/templates/)
from etcd keys, as confd does, byte for byte. BACKEND is etcdv3 (alias etcd) or
file (-file data.yaml, for trying templates without etcd). While it runs, edits
under conf.d/ and templates/ (included files too) are picked up; other files in
the confdir are not watched. SIGHUP reloads on request.

Settings come from, in order of precedence: flags, CONFD_<FLAG> environment
variables (CONFD_NODE, CONFD_CONFDIR, CONFD_LOG_LEVEL, …), the -config-file
TOML (confd's keys: backend nodes prefix confdir interval log-level noop
sync-only watch client_cert client_key client_cakeys username password scheme).`

// listFlag is a repeatable flag that also takes comma lists.
type listFlag struct{ v *[]string }

func (l listFlag) String() string {
	if l.v == nil {
		return ""
	}
	return strings.Join(*l.v, ",")
}

func (l listFlag) Set(s string) error {
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			*l.v = append(*l.v, x)
		}
	}
	return nil
}

type options struct {
	backend, confdir, configFile, prefix, logLevel, logFormat string
	nodes, files                                              []string
	onetime, watch, noop, syncOnly, keepStage, basicAuth      bool
	checkConfig, strict, clientInsecure                       bool
	interval                                                  int
	clientCert, clientKey, clientCA, username, password       string
	scheme, wait, metricsAddr, debounce, batch                string
	dialTimeout, watchdog, checkTimeout, reloadTimeout        time.Duration
	retryMin, retryMax                                        time.Duration
	preflight                                                 bool
}

// ignored is a flag accepted for compatibility and otherwise ignored.
type ignored struct{ bool bool }

func (ignored) String() string     { return "" }
func (ignored) Set(string) error   { return nil }
func (i ignored) IsBoolFlag() bool { return i.bool }

// configKeys maps confd's config-file keys (and ours) to flag names.
func configKeys() map[string]string {
	return map[string]string{
		"backend": "backend", "nodes": "node", "node": "node", "prefix": "prefix", "confdir": "confdir",
		"interval": "interval", "log-level": "log-level", "log_level": "log-level", "noop": "noop",
		"sync-only": "sync-only", "sync_only": "sync-only", "watch": "watch", "onetime": "onetime",
		"client_cert": "client-cert", "client_key": "client-key", "client_cakeys": "client-ca-keys",
		"client-ca-keys": "client-ca-keys", "client_ca_keys": "client-ca-keys",
		"username": "username", "password": "password", "scheme": "scheme", "basic_auth": "basic-auth",
		"file": "file", "keep-stage-file": "keep-stage-file", "keep_stage_file": "keep-stage-file",
		"wait": "wait", "metrics-addr": "metrics-addr", "metrics_addr": "metrics-addr",
		"log-format": "log-format", "log_format": "log-format", "strict": "strict",
		"client_insecure": "client-insecure",
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := options{}
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	fs.StringVar(&o.backend, "backend", "etcdv3", "key source: etcdv3 (alias etcd) or file")
	fs.Var(listFlag{&o.nodes}, "node", "etcd client URL (repeatable; default http://127.0.0.1:2379)")
	fs.StringVar(&o.confdir, "confdir", "/etc/confd", "directory holding conf.d/ and templates/")
	fs.StringVar(&o.configFile, "config-file", "", "global settings TOML (default /etc/confd/confd.toml if it exists)")
	fs.BoolVar(&o.onetime, "onetime", false, "render once and exit (non-zero if any resource failed)")
	fs.BoolVar(&o.watch, "watch", false, "follow etcd's changes (else poll every -interval)")
	fs.IntVar(&o.interval, "interval", 600, "polling interval in seconds (without -watch)")
	fs.StringVar(&o.prefix, "prefix", "", "key prefix joined before every resource's prefix")
	fs.BoolVar(&o.noop, "noop", false, "write nothing: print a unified diff of what would change")
	fs.BoolVar(&o.syncOnly, "sync-only", false, "write files without check_cmd and reload_cmd")
	fs.BoolVar(&o.keepStage, "keep-stage-file", false, "keep staged files")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json (logs go to stderr)")
	fs.StringVar(&o.clientCert, "client-cert", "", "etcd client certificate")
	fs.StringVar(&o.clientKey, "client-key", "", "etcd client key")
	fs.StringVar(&o.clientCA, "client-ca-keys", "", "CA bundle to verify etcd")
	fs.BoolVar(&o.clientInsecure, "client-insecure", false, "do not verify etcd's certificate")
	fs.StringVar(&o.username, "username", "", "etcd user")
	fs.StringVar(&o.password, "password", "", "etcd password")
	fs.BoolVar(&o.basicAuth, "basic-auth", false, "accepted for confd compatibility (etcd auth is on when -username is set)")
	fs.StringVar(&o.scheme, "scheme", "http", "scheme for -node values given without one")
	fs.DurationVar(&o.dialTimeout, "dial-timeout", 5*time.Second, "etcd connect/request timeout")
	fs.Var(listFlag{&o.files}, "file", "YAML/JSON data file for the file backend (repeatable)")
	fs.StringVar(&o.wait, "wait", "", "quiescence min:max (e.g. 50ms:500ms): render once changes stop for min, at most max after the first")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve /metrics, /health and /ready on this address")
	fs.BoolVar(&o.checkConfig, "check-config", false, "validate every resource and template (parse, render against the keys), write nothing")
	fs.BoolVar(&o.strict, "strict", false, "unknown keys in resource and config files are errors, not warnings")
	// The fork's flags (abtreece/confd): mapped where render has the notion,
	// accepted (no effect) where it does not, so its unit files run unchanged.
	fs.Var(listFlag{&o.nodes}, "n", "alias of -node (the fork)")
	fs.DurationVar(&o.watchdog, "watchdog-interval", 0, "send WATCHDOG=1 this often (default: half of systemd's WatchdogSec)")
	fs.StringVar(&o.debounce, "debounce", "", "the fork's debounce d: same as -wait d:4d")
	fs.StringVar(&o.batch, "batch-interval", "", "the fork's batch interval d: same as -wait d:d")
	fs.DurationVar(&o.checkTimeout, "check-cmd-timeout", 0, "default check_cmd timeout (30s)")
	fs.DurationVar(&o.reloadTimeout, "reload-cmd-timeout", 0, "default reload_cmd timeout (60s)")
	fs.DurationVar(&o.retryMin, "retry-base-delay", time.Second, "first backoff after a failure")
	fs.DurationVar(&o.retryMax, "retry-max-delay", time.Minute, "longest backoff after failures")
	fs.BoolVar(&o.checkConfig, "validate", false, "same as -check-config (the fork)")
	fs.BoolVar(&o.preflight, "preflight", false, "check that the backend answers, then exit")
	for _, name := range []string{"systemd-notify", "diff", "color", "template-cache", "no-template-cache"} {
		fs.Var(ignored{bool: true}, name, "accepted for the fork's unit files; no effect")
	}
	for _, name := range []string{"failure-mode", "backend-timeout", "read-timeout", "write-timeout", "retry-max-attempts",
		"watch-error-backoff", "preflight-timeout", "shutdown-timeout", "stat-cache-ttl", "diff-context",
		"auth-token", "srv-domain", "srv-record", "mock-data", "resource"} {
		fs.Var(ignored{}, name, "accepted for the fork's unit files; no effect")
	}
	status := registerStatusFlags(fs)
	if err := cmdline.Parse(fs, args, stdout, usage); err != nil {
		return err
	}
	if fs.NArg() > 0 { // the fork's form: BACKEND then its flags
		b := fs.Arg(0)
		if _, ok := backendName(b); !ok {
			return cmdline.Usagef("unknown backend or argument %q (want etcdv3, etcd or file)", b)
		}
		if err := fs.Parse(fs.Args()[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				cmdline.PrintUsage(fs, stdout, usage)
				return cmdline.ErrHelp
			}
			return cmdline.Usagef("%v (see --help)", err)
		}
		if fs.NArg() > 0 {
			return cmdline.Usagef("unexpected argument %q", fs.Arg(0))
		}
		if err := fs.Set("backend", b); err != nil {
			return err
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	// Environment, for flags not given.
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || f.Name == "version" {
			return
		}
		names := []string{"CONFD_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))}
		switch f.Name {
		case "node":
			names = append(names, "CONFD_NODES")
		case "client-ca-keys":
			names = append(names, "CONFD_CLIENT_CAKEYS")
		}
		for _, n := range names {
			if v, ok := os.LookupEnv(n); ok && v != "" {
				if err := fs.Set(f.Name, v); err != nil && envErr == nil {
					envErr = cmdline.Usagef("%s=%q: %v", n, v, err)
				}
				set[f.Name] = true
				break
			}
		}
	})
	if envErr != nil {
		return envErr
	}
	log, err := newLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	// The config file, for what neither flags nor env gave.
	cfgFile, explicit := o.configFile, o.configFile != ""
	if !explicit {
		cfgFile = "/etc/confd/confd.toml"
	}
	if err := applyConfigFile(fs, set, cfgFile, explicit, o.strict, log); err != nil {
		return err
	}
	if log, err = newLogger(stderr, o.logLevel, o.logFormat); err != nil {
		return err
	}

	wait, err := resources.ParseWait(o.wait)
	if err != nil {
		return cmdline.Usagef("-wait: %v", err)
	}
	for _, alt := range []struct{ name, val, suffix string }{{"debounce", o.debounce, ""}, {"batch-interval", o.batch, ":" + o.batch}} {
		if alt.val == "" || !wait.IsZero() {
			continue
		}
		if wait, err = resources.ParseWait(alt.val + alt.suffix); err != nil {
			return cmdline.Usagef("-%s: %v", alt.name, err)
		}
	}
	if o.interval <= 0 {
		return cmdline.Usagef("-interval %d: must be positive", o.interval)
	}
	backend, _ := backendName(o.backend)
	var src render.Source
	switch backend {
	case "file":
		if len(o.files) == 0 {
			return cmdline.Usagef("the file backend needs -file")
		}
		src = &render.FileSource{Files: o.files}
	case "etcdv3":
		sc := store.Default()
		sc.DialTimeout = o.dialTimeout
		for _, n := range o.nodes {
			if !strings.Contains(n, "://") {
				n = o.scheme + "://" + n
			}
			sc.Endpoints = append(sc.Endpoints, n)
		}
		if len(sc.Endpoints) == 0 {
			sc.Endpoints = []string{store.DefaultEndpoint}
		}
		sc.Cert, sc.Key, sc.CACert = o.clientCert, o.clientKey, o.clientCA
		sc.InsecureSkipVerify = o.clientInsecure
		sc.Username, sc.Password = o.username, o.password
		if err := sc.Validate(); err != nil {
			return cmdline.Usagef("%v", err)
		}
		es := render.NewEtcdSource(sc)
		defer es.Close()
		src = es
		status.store = &sc
	default:
		return cmdline.Usagef("-backend %q: want etcdv3, etcd or file", o.backend)
	}

	rc := render.Config{
		ConfDir: o.confdir, Prefix: o.prefix, Source: src,
		Interval: time.Duration(o.interval) * time.Second, Wait: wait,
		Noop: o.noop, SyncOnly: o.syncOnly, KeepStageFile: o.keepStage, Strict: o.strict,
		Diff: stdout, Logger: log,
	}
	if !o.watch {
		rc.Mode = render.Poll
	}
	rc.CheckTimeout, rc.ReloadTimeout = o.checkTimeout, o.reloadTimeout
	rc.RetryMin, rc.RetryMax = o.retryMin, o.retryMax
	if err := status.validate(o, backend); err != nil {
		return err
	}
	switch {
	case o.preflight:
		pctx, cancel := context.WithTimeout(ctx, o.dialTimeout)
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

	g, ctx := errgroup.WithContext(ctx)
	if err := status.start(ctx, g, &rc, log); err != nil {
		return err
	}
	if os.Getenv("NOTIFY_SOCKET") != "" {
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
	log.Info("render starting", "confdir", o.confdir, "backend", backend, "watch", o.watch, "wait", wait.String())
	g.Go(func() error { return render.Run(ctx, rc) })
	return g.Wait()
}

func backendName(b string) (string, bool) {
	switch b {
	case "etcd", "etcdv3":
		return "etcdv3", true
	case "file":
		return "file", true
	}
	return "", false
}

// applyConfigFile sets, from confd's TOML config file, every flag not yet set.
func applyConfigFile(fs *flag.FlagSet, set map[string]bool, file string, explicit, strict bool, log *slog.Logger) error {
	b, err := os.ReadFile(file)
	if err != nil {
		if !explicit && errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("config file: %w", err)
	}
	var m map[string]any
	if _, err := toml.Decode(string(b), &m); err != nil {
		return fmt.Errorf("config file %s: %w", file, err)
	}
	known := configKeys()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		name, ok := known[k]
		if !ok {
			msg := fmt.Sprintf("config file %s: unknown key %q", file, k)
			if strict {
				return errors.New(msg)
			}
			log.Warn(msg)
			continue
		}
		if set[name] {
			continue
		}
		var vals []string
		switch v := m[k].(type) {
		case []any:
			for _, x := range v {
				vals = append(vals, fmt.Sprint(x))
			}
		case string:
			vals = []string{v}
		case int64:
			vals = []string{strconv.FormatInt(v, 10)}
		case bool:
			vals = []string{strconv.FormatBool(v)}
		default:
			return fmt.Errorf("config file %s: key %q: unsupported value %v", file, k, v)
		}
		for _, v := range vals {
			if err := fs.Set(name, v); err != nil {
				return fmt.Errorf("config file %s: key %q: %w", file, k, err)
			}
		}
		set[name] = true
	}
	return nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "", "info":
		l = slog.LevelInfo
	case "warn", "warning":
		l = slog.LevelWarn
	case "error", "fatal", "panic":
		l = slog.LevelError
	default:
		return nil, cmdline.Usagef("-log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, cmdline.Usagef("-log-format %q: want text or json", format)
}
