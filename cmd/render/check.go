package main

import (
	"github.com/flotilla/flotilla/internal/cmdline"
)

// check refuses what the settings cannot mean: a refused flag, a flag given
// for a mode or backend where it does nothing, an invalid value. set holds
// the flags given (command line, environment or config file).
func (o *options) check(set map[string]bool, notifySocket bool) error {
	for _, name := range o.refused {
		for _, r := range refusedFlags() {
			if r.name == name {
				return cmdline.Usagef("-%s: refused: %s", name, r.why)
			}
		}
	}
	backend, _ := backendName(o.backend)
	etcdOnly := []string{"node", "n", "client-cert", "client-key", "client-ca-keys", "client-insecure",
		"username", "password", "basic-auth", "srv-domain", "srv-record", "dial-timeout", "backend-timeout", "read-timeout"}
	if backend == "file" {
		for _, name := range etcdOnly {
			if set[name] {
				return cmdline.Usagef("-%s: refused: it configures etcd, and -backend is file", name)
			}
		}
	} else if set["file"] {
		return cmdline.Usagef("-file: refused: only the file backend reads it (-backend file)")
	}
	needs := func(name, other string, ok bool) error {
		if set[name] && !ok {
			return cmdline.Usagef("-%s: refused: only meaningful with %s", name, other)
		}
		return nil
	}
	watching := !o.onetime && !o.checkConfig && !o.preflight
	for _, err := range []error{
		needs("diff", "-noop", o.noop),
		needs("diff-context", "-noop", o.noop),
		needs("color", "-noop", o.noop),
		needs("mock-data", "-check-config", o.checkConfig),
		needs("exec", "a running render (not -onetime, -check-config or -preflight)", watching),
		needs("exec", "files written (not -noop)", !o.noop),
		needs("exec-reload-signal", "-exec", o.exec != ""),
		needs("exec-kill-timeout", "-exec", o.exec != ""),
		needs("interval", "polling: a running render without -watch (-watch follows each change as it comes)", watching && !o.watch),
		needs("preflight-timeout", "-preflight", o.preflight),
		needs("watch-error-backoff", "-watch", o.watch && watching),
		needs("shutdown-timeout", "a running render (not -onetime, -check-config or -preflight)", watching),
		needs("systemd-notify", "a running render (not -onetime, -check-config or -preflight)", watching || !o.systemdNotify),
		needs("watchdog-interval", "NOTIFY_SOCKET set (systemd Type=notify)", notifySocket && o.systemdNotify),
	} {
		if err != nil {
			return err
		}
	}
	if set["systemd-notify"] && o.systemdNotify && !notifySocket {
		return cmdline.Usagef("-systemd-notify: refused: NOTIFY_SOCKET is not set (render is not run by systemd with Type=notify)")
	}
	if o.basicAuth && o.username == "" {
		return cmdline.Usagef("-basic-auth: refused: it needs -username (and -password)")
	}
	if o.srvDomain != "" && o.srvRecord != "" {
		return cmdline.Usagef("-srv-domain and -srv-record: give one")
	}
	if (o.srvDomain != "" || o.srvRecord != "") && len(o.nodes) > 0 {
		return cmdline.Usagef("-srv-domain/-srv-record and -node: give one (SRV finds the nodes)")
	}
	if _, err := parseSignal(o.execReloadSignal); err != nil {
		return cmdline.Usagef("-exec-reload-signal: %v", err)
	}
	if o.diffContext < 0 {
		return cmdline.Usagef("-diff-context %d: must be 0 or more", o.diffContext)
	}
	if o.retryMaxAttempts < 0 {
		return cmdline.Usagef("-retry-max-attempts %d: must be 0 (no limit) or more", o.retryMaxAttempts)
	}
	switch o.failureMode {
	case "best-effort":
	case "fail-fast":
		if !o.onetime {
			return cmdline.Usagef("-failure-mode fail-fast: refused: only with -onetime (a running render keeps the last good files and retries)")
		}
	default:
		return cmdline.Usagef("-failure-mode %q: want best-effort or fail-fast", o.failureMode)
	}
	if o.interval <= 0 {
		return cmdline.Usagef("-interval %d: must be positive", o.interval)
	}
	return nil
}
