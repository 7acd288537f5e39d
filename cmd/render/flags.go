package main

import (
	"flag"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/cmdline"
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
sync-only watch client_cert client_key client_cakeys username password scheme
srv_domain srv_record).

Flags that confd or the fork accept but that have no meaning here are refused
(exit 2) with the reason.`

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

// options is every setting of render's command line.
type options struct {
	backend, confdir, configFile, prefix                 string
	log                                                  cmdline.LogFlags
	nodes, files, resources                              []string
	onetime, watch, noop, syncOnly, keepStage, basicAuth bool
	checkConfig, strict, clientInsecure                  bool
	interval                                             int
	clientCert, clientKey, clientCA, username, password  string
	scheme, wait, metricsAddr, debounce, batch           string
	dialTimeout, watchdog, checkTimeout, reloadTimeout   time.Duration
	retryMin, retryMax, readTimeout, preflightTimeout    time.Duration
	shutdownTimeout, watchErrorBackoff                   time.Duration
	preflight, diff, color, systemdNotify                bool
	diffContext, retryMaxAttempts                        int
	failureMode, mockData, srvDomain, srvRecord          string
	exec, execReloadSignal                               string
	execKillTimeout                                      time.Duration
	status                                               *statusOptions

	refused []string // refused flags that were given, in order
}

// refusedFlag is a flag confd or the fork has that means nothing for render:
// giving it (on the command line or in the environment) is a usage error
// that says why.
type refusedFlag struct {
	name, why string
	bool      bool
	o         *options
}

func (r refusedFlag) String() string   { return "" }
func (r refusedFlag) IsBoolFlag() bool { return r.bool }
func (r refusedFlag) Set(string) error {
	r.o.refused = append(r.o.refused, r.name)
	return nil
}

// refusedFlags returns the flags render refuses, and why.
func refusedFlags() []struct {
	name, why string
	bool      bool
} {
	return []struct {
		name, why string
		bool      bool
	}{
		{"template-cache", "render always keeps parsed templates and re-parses one when its file changes", true},
		{"no-template-cache", "render always keeps parsed templates and re-parses one when its file changes", true},
		{"stat-cache-ttl", "render keeps no stat cache: it compares each destination with the rendered bytes", false},
		{"auth-token", "render's only backend with auth is etcd, which takes -username and -password", false},
		{"write-timeout", "render's only writes to etcd (-publish-status) are bounded by -dial-timeout", false},
	}
}

// newFlagSet declares every flag of render into o. New flags go at the end
// of their group (confd's, flotilla's additions, the fork's).
func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	// confd's flags.
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
	o.log.Register(fs) // -log-format is flotilla's
	fs.StringVar(&o.clientCert, "client-cert", "", "etcd client certificate")
	fs.StringVar(&o.clientKey, "client-key", "", "etcd client key")
	fs.StringVar(&o.clientCA, "client-ca-keys", "", "CA bundle to verify etcd")
	fs.StringVar(&o.username, "username", "", "etcd user")
	fs.StringVar(&o.password, "password", "", "etcd password")
	fs.BoolVar(&o.basicAuth, "basic-auth", false, "confd's switch for -username/-password (render uses them whenever -username is set; -basic-auth without -username is refused)")
	fs.StringVar(&o.scheme, "scheme", "http", "scheme for -node values given without one, and for etcd found by SRV (https: _etcd-client-ssl first)")
	fs.StringVar(&o.srvDomain, "srv-domain", "", "find etcd by the SRV records _etcd-client-ssl._tcp.DOMAIN and _etcd-client._tcp.DOMAIN (looked up again on every reconnect)")
	fs.StringVar(&o.srvRecord, "srv-record", "", "find etcd by this SRV record (e.g. _etcd-client._tcp.example.com; looked up again on every reconnect)")

	// flotilla's additions.
	fs.BoolVar(&o.clientInsecure, "client-insecure", false, "do not verify etcd's certificate")
	fs.DurationVar(&o.dialTimeout, "dial-timeout", 5*time.Second, "etcd connect/request timeout")
	fs.Var(listFlag{&o.files}, "file", "YAML/JSON data file for the file backend (repeatable)")
	fs.StringVar(&o.wait, "wait", "", "quiescence min:max (e.g. 50ms:500ms): render once changes stop for min, at most max after the first")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "", "serve /metrics, /health and /ready on this address")
	fs.BoolVar(&o.checkConfig, "check-config", false, "validate every resource and template (parse, render against the keys), write nothing")
	fs.BoolVar(&o.strict, "strict", false, "unknown keys in resource and config files are errors, not warnings")
	fs.StringVar(&o.exec, "exec", "", "once every resource has rendered, run this command (/bin/sh -c 'exec CMD') as render's child: signalled or restarted after a change, sent render's SIGTERM/SIGINT/SIGHUP; render exits with its status")
	fs.StringVar(&o.execReloadSignal, "exec-reload-signal", "", "with -exec: send this signal (HUP, USR1, USR2…) after a change instead of restarting the child")
	fs.DurationVar(&o.execKillTimeout, "exec-kill-timeout", 30*time.Second, "with -exec: how long a stopped child gets before SIGKILL")
	o.status = registerStatusFlags(fs)

	// The fork's flags (abtreece/confd), so that its unit files run.
	fs.Var(listFlag{&o.nodes}, "n", "alias of -node (the fork)")
	fs.DurationVar(&o.watchdog, "watchdog-interval", 0, "send WATCHDOG=1 this often (default: half of systemd's WatchdogSec)")
	fs.StringVar(&o.debounce, "debounce", "", "the fork's debounce d: same as -wait d:4d")
	fs.StringVar(&o.batch, "batch-interval", "", "the fork's batch interval d: same as -wait d:d")
	fs.DurationVar(&o.checkTimeout, "check-cmd-timeout", 0, "default check_cmd timeout (30s)")
	fs.DurationVar(&o.reloadTimeout, "reload-cmd-timeout", 0, "default reload_cmd timeout (60s)")
	fs.DurationVar(&o.retryMin, "retry-base-delay", time.Second, "first backoff after a failure")
	fs.DurationVar(&o.retryMax, "retry-max-delay", time.Minute, "longest backoff after failures")
	fs.IntVar(&o.retryMaxAttempts, "retry-max-attempts", 0, "attempts at reading the keys (onetime, -check-config) and at rendering or reloading a resource before giving up on it until its next change (0: no limit; onetime: 1)")
	fs.BoolVar(&o.checkConfig, "validate", false, "same as -check-config (the fork)")
	fs.StringVar(&o.mockData, "mock-data", "", "with -check-config: render against the keys of this YAML/JSON file instead of the backend")
	fs.BoolVar(&o.preflight, "preflight", false, "check that the backend answers, then exit")
	fs.DurationVar(&o.preflightTimeout, "preflight-timeout", 0, "how long -preflight waits for the backend (default: -dial-timeout)")
	fs.DurationVar(&o.dialTimeout, "backend-timeout", 5*time.Second, "same as -dial-timeout (the fork)")
	fs.DurationVar(&o.readTimeout, "read-timeout", 0, "limit of one full read of the keys (default: twice -dial-timeout)")
	fs.DurationVar(&o.watchErrorBackoff, "watch-error-backoff", 0, "wait after a watch error before reading the keys again (default: at once)")
	fs.Var(listFlag{&o.resources}, "resource", "render only this resource (conf.d file name, with or without .toml; repeatable)")
	fs.StringVar(&o.failureMode, "failure-mode", "best-effort", "onetime: best-effort (render every resource, report the failures) or fail-fast (stop at the first failure)")
	fs.BoolVar(&o.diff, "diff", true, "with -noop: print the unified diff (-diff=false: only name the files that would change)")
	fs.IntVar(&o.diffContext, "diff-context", 3, "with -noop: lines of context in the diff")
	fs.BoolVar(&o.color, "color", false, "with -noop: colour the diff")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 0, "on SIGTERM/SIGINT, wait at most this long for running checks and reloads (default: their own timeouts)")
	fs.BoolVar(&o.systemdNotify, "systemd-notify", true, "send sd_notify READY/RELOADING/STOPPING when NOTIFY_SOCKET is set (-systemd-notify=false: never; given without NOTIFY_SOCKET: refused)")
	for _, r := range refusedFlags() {
		fs.Var(refusedFlag{name: r.name, why: r.why, bool: r.bool, o: o}, r.name, "refused: "+r.why)
	}
	return fs
}
