package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/flotilla/flotilla/internal/announce"
	"github.com/flotilla/flotilla/internal/applied"
	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/endpoint"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/unit"
)

const usage = `usage: announce [flags] KEY [VALUE]
       announce --detach [flags] KEY [VALUE]
       announce --delete [flags] KEY VALUE|--addr ip:port
       announce --withdraw [flags] KEY VALUE|--addr ip:port
       announce --list [--json] PREFIX
       announce --maintenance on|off KEY

Writes KEY=VALUE to etcd bound to a lease and keeps the lease alive until
SIGTERM/SIGINT, which revokes it: the key disappears at once, and at most
--ttl after a crash or kill -9. When etcd is unreachable or the lease is lost,
it grants a new lease and writes the key again; it never gives up.

VALUE defaults to "<host> <addr>" (--format plain, the seed's format, read by
confd/render templates as "server <host> <ip>:<port>") or, with --format json,
{"host":…,"addr":"ip:port","unit":…,"machine":…}.

  ExecStartPost=/usr/bin/announce --detach --addr ${PUBLIC_IP}:8080 /clusterstate/ns/%n
  ExecStart=/usr/bin/announce --check http://127.0.0.1:8080/ --addr :8080 /clusterstate/ns/%i

--detach returns once the key is written, leaving a keeper process in the
same process group (and cgroup): stopping the unit stops the keeper, which
revokes the lease. When the key is not written within --detach-timeout (etcd
unreachable, the check failing), it returns anyway, so that the unit starts:
the keeper writes the key as soon as it can, and says so in the log.

On SIGTERM/SIGINT (the foreground process or the keeper), the withdrawal is
acknowledged: the key is deleted first, then announce waits until every live
render publishing a status under --status-prefix (render -publish-status)
whose prefixes cover KEY has applied the deletion (at most --drain-timeout),
then --drain-delay, then revokes the lease and exits.

--withdraw does the same from outside, for ExecStop= (which runs before the
main process is signalled): it deletes KEY if it holds this registration's
VALUE (the keeper then leaves it deleted), waits for the renders, then
--drain-delay. --delete (for ExecStopPost=) removes KEY and revokes its lease
only if KEY holds this registration's VALUE: a late stop never removes the
registration of a replacement on another machine.

Environment: ANNOUNCE_ENDPOINTS, then ETCDCTL_ENDPOINTS (and etcdctl's
ETCDCTL_* TLS/auth variables); NOTIFY_SOCKET and WATCHDOG_USEC from systemd
(READY=1 after the first write; WATCHDOG=1; STOPPING=1); FLOTILLA_MACHINE_ID.
Exit status: 0 after a signal, 2 for a bad command line, 1 otherwise.`

// keeperEnv names the environment variable that tells a re-executed announce
// it is the keeper of --detach, and which file descriptor reports the write.
const keeperEnv = "FLOTILLA_ANNOUNCE_KEEPER_FD"

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runEnv(ctx, args, stdout, stderr, os.Getenv)
}

// options is the parsed command line.
type options struct {
	store    store.Config
	cfg      announce.Config
	detach   bool
	delete   bool
	withdraw bool
	list     bool
	json     bool
	maint    string
	// detachTimeout bounds how long --detach waits for the key to be written.
	detachTimeout time.Duration
	log           cmdline.LogFlags
	checkURL      string
	checkOpts     announce.CheckOptions
	// checkCmd is --check-cmd; checkShell runs it with sh -c.
	checkCmd     string
	checkShell   bool
	checkTimeout time.Duration
}

func runEnv(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	o, err := parse(args, stdout, getenv)
	if err != nil {
		return err
	}
	log, err := o.log.Logger(stderr)
	if err != nil {
		return err
	}
	o.cfg.Logger = log
	switch {
	case o.list:
		return listKeys(ctx, o, o.cfg.Key, o.json, stdout)
	case o.maint != "":
		return maintenance(ctx, o, log)
	case o.delete:
		return deleteKey(ctx, o, log)
	case o.withdraw:
		return withdrawKey(ctx, o, log)
	case o.detach && getenv(keeperEnv) == "":
		return detach(ctx, args, stderr, o.cfg.Key, o.detachTimeout)
	}
	var report *os.File
	if fd := getenv(keeperEnv); fd != "" {
		n, err := strconv.Atoi(fd)
		if err != nil || n < 3 {
			return fmt.Errorf("%s=%q: not a file descriptor", keeperEnv, fd)
		}
		report = os.NewFile(uintptr(n), "keeper-report")
		// Detached, like nohup: a closing terminal does not end the keeper
		// (and leave its key to expire); SIGTERM/SIGINT still revoke.
		signal.Ignore(syscall.SIGHUP)
	}
	return keep(ctx, o, log, report)
}

// valueFlags are the flags that make the value from --addr.
type valueFlags struct {
	addr, ipSpec, host, unit, machine, format string
	md                                        metadata
}

// newFlagSet registers every flag of announce into o and v.
func newFlagSet(o *options, v *valueFlags) *flag.FlagSet {
	fs := flag.NewFlagSet("announce", flag.ContinueOnError)
	o.store.RegisterFlags(fs)
	fs.DurationVar(&o.cfg.TTL, "ttl", 30*time.Second, "lease time to live: how long the key outlives a crash (whole seconds, ≥ 1s)")
	fs.StringVar(&v.addr, "addr", "", "ip:port to announce; with \":port\" (or --ip) the IP is found by --ip")
	fs.StringVar(&v.ipSpec, "ip", "", "how to find the IP for --addr: route (source address of the default route) or iface:NAME")
	fs.StringVar(&v.host, "host", "", "host name in the value (default: this machine's host name, systemd's %H)")
	fs.StringVar(&v.unit, "unit", "", "unit name for --format json (default: the systemd unit this runs in)")
	fs.StringVar(&v.machine, "machine", "", "machine id for --format json (default: $FLOTILLA_MACHINE_ID, else /etc/machine-id)")
	fs.StringVar(&v.format, "format", "plain", "value format: plain (\"<host> <ip>:<port>\") or json")
	fs.Var(&stringsFlag{&v.md.tags}, "tag", "with --format json: a tag in the value (repeatable)")
	fs.Var(&stringsFlag{&v.md.meta}, "meta", "with --format json: key=value in the value's meta (repeatable)")
	fs.IntVar(&v.md.weight, "weight", 0, "with --format json: the weight a load balancer gives this instance (0-256; not in the value unless given)")
	fs.StringVar(&o.checkURL, "check", "", "health check gating the key: tcp://host:port or http(s)://host:port/path (2xx/3xx healthy)")
	fs.DurationVar(&o.cfg.CheckInterval, "check-interval", 5*time.Second, "time between health checks (also each check's timeout)")
	fs.IntVar(&o.cfg.CheckThreshold, "check-threshold", 3, "failed checks in a row that withdraw the key")
	fs.BoolVar(&o.checkOpts.InsecureSkipVerify, "check-insecure", false, "accept any certificate from an https check")
	fs.StringVar(&o.checkCmd, "check-cmd", "", "health check gating the key: a command, healthy when it exits 0 (run without a shell; its output goes to the log)")
	fs.BoolVar(&o.checkShell, "check-shell", false, "run --check-cmd with /bin/sh -c")
	fs.DurationVar(&o.checkTimeout, "check-timeout", 0, "bound of one check (default: --check-interval)")
	fs.IntVar(&o.cfg.CheckRise, "check-rise", 1, "passed checks in a row that (re)write the key (beside --check-threshold's failures)")
	fs.Var(&intsFlag{&o.checkOpts.ExpectStatus}, "check-status", "with an http(s) --check: the healthy status codes (repeatable or comma list; default any 2xx/3xx)")
	fs.StringVar(&o.checkOpts.ExpectHeader, "check-header", "", "with an http(s) --check: a header the answer must carry, \"Name: value\"")
	fs.BoolVar(&o.detach, "detach", false, "return once the key is written, leaving a keeper process (for ExecStartPost=)")
	fs.BoolVar(&o.delete, "delete", false, "delete KEY and revoke its lease if KEY holds VALUE (for ExecStopPost=)")
	fs.BoolVar(&o.withdraw, "withdraw", false, "delete KEY if it holds VALUE, wait for the renders to apply that, then exit (for ExecStop=)")
	fs.DurationVar(&o.detachTimeout, "detach-timeout", 10*time.Second, "with --detach: return after this long even if the key is not written yet (0: wait until it is)")
	fs.DurationVar(&o.cfg.Drain.Timeout, "drain-timeout", 10*time.Second, "on stop and with --withdraw: longest wait for the renders to apply the deletion (0: no wait)")
	fs.DurationVar(&o.cfg.Drain.Delay, "drain-delay", 0, "on stop and with --withdraw: wait this long more, for connections in flight")
	fs.StringVar(&o.cfg.Drain.StatusPrefix, "status-prefix", applied.DefaultPrefix, "where renders publish what they applied (render -status-prefix)")
	fs.BoolVar(&o.list, "list", false, "list what is announced under PREFIX: key, state, lease time left, value")
	fs.BoolVar(&o.json, "json", false, "with --list: JSON instead of a table")
	fs.StringVar(&o.maint, "maintenance", "", "on: the running announce of KEY withdraws it (acknowledged; lease and process kept) until off; survives restarts")
	o.log.Register(fs)
	return fs
}

func parse(args []string, stdout io.Writer, getenv func(string) string) (*options, error) {
	o := &options{store: store.Default()}
	var v valueFlags
	fs := newFlagSet(o, &v)
	if err := cmdline.Parse(fs, args, stdout, usage); err != nil {
		return nil, err
	}
	if _, err := o.log.Logger(io.Discard); err != nil {
		return nil, err
	}
	if err := o.store.FromEnv(getenv, "ANNOUNCE_ENDPOINTS"); err != nil {
		return nil, cmdline.Usagef("%v", err)
	}
	if err := o.store.Validate(); err != nil {
		return nil, cmdline.Usagef("%v", err)
	}
	rest := fs.Args()
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if o.list || set["json"] {
		return parseList(o, set, rest)
	}
	if set["maintenance"] {
		return parseMaintenance(o, set, rest)
	}
	if err := refuseIrrelevant(o, set); err != nil {
		return nil, err
	}
	switch len(rest) {
	case 0:
		return nil, cmdline.Usagef("missing KEY (see --help)")
	case 1, 2:
	default:
		return nil, cmdline.Usagef("too many arguments: %q (quote a VALUE with spaces)", rest[2:])
	}
	o.cfg.Key = rest[0]
	if err := announce.ValidateKey(o.cfg.Key); err != nil {
		return nil, cmdline.Usagef("%v", err)
	}
	if err := parseValue(o, &v, set, rest, getenv); err != nil {
		return nil, err
	}
	if o.delete || o.withdraw {
		if err := applied.ValidatePrefix(o.cfg.Drain.StatusPrefix); err != nil {
			return nil, cmdline.Usagef("--%v", err)
		}
		if o.cfg.Drain.Timeout < 0 || o.cfg.Drain.Delay < 0 {
			return nil, cmdline.Usagef("--drain-timeout and --drain-delay must not be negative")
		}
		return o, nil
	}
	if err := parseCheck(o, set); err != nil {
		return nil, err
	}
	if err := o.cfg.Validate(); err != nil {
		return nil, cmdline.Usagef("%v", err)
	}
	if o.cfg.TTL%time.Second != 0 {
		return nil, cmdline.Usagef("ttl %s: etcd leases are whole seconds", o.cfg.TTL)
	}
	return o, nil
}

// parseList checks --list PREFIX [--json]: only the etcd flags go with it.
// parseValue sets the value of KEY: rest[1] as given, or made from --addr
// (and --format and its metadata flags).
func parseValue(o *options, v *valueFlags, set map[string]bool, rest []string, getenv func(string) string) error {
	f, err := endpoint.ParseFormat(v.format)
	if err != nil {
		return cmdline.Usagef("--%v", err)
	}
	if v.ipSpec != "" {
		if err := announce.ValidateIPSpec(v.ipSpec); err != nil {
			return cmdline.Usagef("%v", err)
		}
	}
	if len(rest) == 2 {
		if v.addr != "" || v.ipSpec != "" {
			return cmdline.Usagef("give VALUE or --addr/--ip, not both")
		}
		for _, name := range []string{"format", "host", "unit", "machine", "tag", "meta", "weight"} {
			if set[name] {
				return cmdline.Usagef("--%s shapes the value made from --addr; a VALUE is written as given: drop one", name)
			}
		}
		if strings.TrimSpace(rest[1]) == "" {
			return cmdline.Usagef("key %s: empty value", o.cfg.Key)
		}
		if strings.ContainsFunc(rest[1], func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return cmdline.Usagef("key %s: value %q contains a control character", o.cfg.Key, rest[1])
		}
		if len(rest[1]) > endpoint.MaxValueLen {
			return cmdline.Usagef("key %s: value of %d bytes, at most %d", o.cfg.Key, len(rest[1]), endpoint.MaxValueLen)
		}
		o.cfg.Value = rest[1]
	} else {
		if f != endpoint.JSON {
			for _, name := range []string{"tag", "meta", "weight"} {
				if set[name] {
					return cmdline.Usagef("--%s needs --format json (the plain value stays the seed's \"<host> <ip>:<port>\")", name)
				}
			}
		}
		v.md.weightSet = set["weight"]
		e, err := v.md.apply()
		if err != nil {
			return cmdline.Usagef("%v", err)
		}
		val, err := buildValue(v.addr, v.ipSpec, v.host, v.unit, v.machine, f, getenv, e)
		if err != nil {
			if (o.delete || o.withdraw) && v.addr == "" {
				return cmdline.Usagef("--%s needs the registration's VALUE or --addr, to remove only its own (see --help)", map[bool]string{true: "delete", false: "withdraw"}[o.delete])
			}
			return cmdline.Usagef("%v", err)
		}
		o.cfg.Value = val
	}
	return nil
}

func parseList(o *options, set map[string]bool, rest []string) (*options, error) {
	if !o.list {
		return nil, cmdline.Usagef("--json goes with --list")
	}
	for _, name := range []string{"ttl", "addr", "ip", "host", "unit", "machine", "format", "tag", "meta", "weight",
		"check", "check-interval", "check-threshold", "check-insecure", "check-cmd", "check-shell", "check-timeout",
		"check-rise", "check-status", "check-header", "detach", "delete", "withdraw", "detach-timeout",
		"drain-timeout", "drain-delay", "status-prefix"} {
		if set[name] {
			return nil, cmdline.Usagef("--%s means nothing with --list: drop it", name)
		}
	}
	if len(rest) != 1 {
		return nil, cmdline.Usagef("--list takes exactly one PREFIX (see --help)")
	}
	if !strings.HasPrefix(rest[0], "/") {
		return nil, cmdline.Usagef("--list %q: the prefix must start with '/'", rest[0])
	}
	o.cfg.Key = rest[0]
	return o, nil
}

// parseMaintenance checks --maintenance on|off KEY.
func parseMaintenance(o *options, set map[string]bool, rest []string) (*options, error) {
	if o.maint != "on" && o.maint != "off" {
		return nil, cmdline.Usagef("--maintenance %q: want on or off", o.maint)
	}
	for _, name := range []string{"ttl", "addr", "ip", "host", "unit", "machine", "format", "tag", "meta", "weight",
		"check", "check-interval", "check-threshold", "check-insecure", "check-cmd", "check-shell", "check-timeout",
		"check-rise", "check-status", "check-header", "detach", "delete", "withdraw", "detach-timeout"} {
		if set[name] {
			return nil, cmdline.Usagef("--%s means nothing with --maintenance: drop it", name)
		}
	}
	if len(rest) != 1 {
		return nil, cmdline.Usagef("--maintenance takes exactly one KEY (see --help)")
	}
	o.cfg.Key = rest[0]
	if err := announce.ValidateKey(o.cfg.Key); err != nil {
		return nil, cmdline.Usagef("%v", err)
	}
	if err := applied.ValidatePrefix(o.cfg.Drain.StatusPrefix); err != nil {
		return nil, cmdline.Usagef("--%v", err)
	}
	return o, nil
}

// maintenance is --maintenance on|off KEY.
func maintenance(ctx context.Context, o *options, log *slog.Logger) error {
	octx, cancel := context.WithTimeout(ctx, o.store.DialTimeout+10*time.Second)
	c, err := store.Open(octx, o.store)
	cancel()
	if err != nil {
		return fmt.Errorf("maintenance %s: %w", o.cfg.Key, err)
	}
	defer c.Close()
	return announce.Maintenance(ctx, c, o.cfg.Key, o.maint == "on", o.cfg.Drain, log)
}

// parseCheck makes o.cfg.Check from --check or --check-cmd and their flags.
func parseCheck(o *options, set map[string]bool) error {
	if o.checkURL != "" && o.checkCmd != "" {
		return cmdline.Usagef("--check and --check-cmd exclude each other")
	}
	if o.checkURL == "" && o.checkCmd == "" {
		for _, name := range []string{"check-interval", "check-threshold", "check-rise", "check-timeout", "check-insecure", "check-status", "check-header", "check-shell"} {
			if set[name] {
				return cmdline.Usagef("--%s needs --check or --check-cmd", name)
			}
		}
		return nil
	}
	if o.cfg.CheckInterval <= 0 {
		return cmdline.Usagef("--check-interval %s: must be positive", o.cfg.CheckInterval)
	}
	if o.cfg.CheckThreshold < 1 {
		return cmdline.Usagef("--check-threshold %d: must be at least 1", o.cfg.CheckThreshold)
	}
	if o.cfg.CheckRise < 1 {
		return cmdline.Usagef("--check-rise %d: must be at least 1", o.cfg.CheckRise)
	}
	if o.checkTimeout < 0 {
		return cmdline.Usagef("--check-timeout %s: must be positive", o.checkTimeout)
	}
	timeout := o.checkTimeout
	if timeout == 0 || timeout > o.cfg.CheckInterval {
		timeout = o.cfg.CheckInterval // a check never outlasts its interval
	}
	if o.checkCmd != "" {
		for _, name := range []string{"check-insecure", "check-status", "check-header"} {
			if set[name] {
				return cmdline.Usagef("--%s applies to an http(s) --check, not --check-cmd", name)
			}
		}
		argv := []string{"/bin/sh", "-c", o.checkCmd}
		if !o.checkShell {
			var err error
			if argv, err = unit.SplitWords(o.checkCmd); err != nil || len(argv) == 0 {
				return cmdline.Usagef("--check-cmd %q: cannot split into words (%v); quote it, or use --check-shell", o.checkCmd, err)
			}
		}
		c, err := announce.CommandCheck(argv, timeout, nil)
		if err != nil {
			return cmdline.Usagef("--%v", err)
		}
		o.cfg.Check = c
		return nil
	}
	if set["check-shell"] {
		return cmdline.Usagef("--check-shell applies to --check-cmd")
	}
	o.checkOpts.Timeout = timeout
	c, err := announce.ParseCheck(o.checkURL, o.checkOpts)
	if err != nil {
		return cmdline.Usagef("--%v", err)
	}
	o.cfg.Check = c
	return nil
}

// intsFlag is a repeatable integer flag that also takes comma lists.
type intsFlag struct{ v *[]int }

func (f *intsFlag) String() string {
	if f.v == nil {
		return ""
	}
	return fmt.Sprint(*f.v)
}

func (f *intsFlag) Set(s string) error {
	for _, x := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(x))
		if err != nil {
			return fmt.Errorf("%q: not a number", x)
		}
		*f.v = append(*f.v, n)
	}
	return nil
}

// stringsFlag is a repeatable string flag.
type stringsFlag struct{ v *[]string }

func (f *stringsFlag) String() string {
	if f.v == nil {
		return ""
	}
	return strings.Join(*f.v, ",")
}

func (f *stringsFlag) Set(s string) error { *f.v = append(*f.v, s); return nil }

// metadata is --tag, --meta and --weight as given.
type metadata struct {
	tags, meta []string
	weight     int
	weightSet  bool
}

// apply returns an Endpoint holding the metadata (validated when encoded).
func (m metadata) apply() (endpoint.Endpoint, error) {
	var e endpoint.Endpoint
	e.Tags = m.tags
	for _, kv := range m.meta {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return e, fmt.Errorf("--meta %q: want key=value", kv)
		}
		if e.Meta == nil {
			e.Meta = map[string]string{}
		}
		if _, dup := e.Meta[k]; dup {
			return e, fmt.Errorf("--meta %s given twice", k)
		}
		e.Meta[k] = v
	}
	if m.weightSet {
		w := m.weight
		e.Weight = &w
	}
	return e, nil
}

// refuseIrrelevant refuses the modes that exclude each other and the flags
// the chosen mode would silently ignore.
func refuseIrrelevant(o *options, set map[string]bool) error {
	modes := 0
	for _, m := range []bool{o.detach, o.delete, o.withdraw} {
		if m {
			modes++
		}
	}
	if modes > 1 {
		return cmdline.Usagef("--detach, --delete and --withdraw exclude each other")
	}
	var irrelevant []string
	mode := ""
	switch {
	case o.delete:
		mode = "--delete"
		irrelevant = []string{"ttl", "check", "check-interval", "check-threshold", "check-insecure", "check-cmd", "check-shell", "check-timeout", "check-rise", "check-status", "check-header", "detach-timeout", "drain-timeout", "drain-delay", "status-prefix"}
	case o.withdraw:
		mode = "--withdraw"
		irrelevant = []string{"ttl", "check", "check-interval", "check-threshold", "check-insecure", "check-cmd", "check-shell", "check-timeout", "check-rise", "check-status", "check-header", "detach-timeout"}
	case !o.detach:
		mode = "announce without --detach"
		irrelevant = []string{"detach-timeout"}
	}
	for _, name := range irrelevant {
		if set[name] {
			return cmdline.Usagef("--%s means nothing with %s: drop it", name, mode)
		}
	}
	if o.detachTimeout < 0 {
		return cmdline.Usagef("--detach-timeout %s: must not be negative", o.detachTimeout)
	}
	return nil
}

// buildValue makes the default value from --addr/--ip and the machine's facts.
func buildValue(addr, ipSpec, host, unit, machine string, f endpoint.Format, getenv func(string) string, e endpoint.Endpoint) (string, error) {
	if addr == "" {
		return "", errors.New("missing VALUE or --addr ip:port (see --help)")
	}
	if port, ok := strings.CutPrefix(addr, ":"); ok {
		if ipSpec == "" {
			ipSpec = "route"
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return "", fmt.Errorf("--addr %q: want ip:port or :port (port 1-65535)", addr)
		}
		ip, err := announce.ResolveIP(ipSpec)
		if err != nil {
			return "", err
		}
		addr = netip.AddrPortFrom(ip, uint16(n)).String()
	} else if ipSpec != "" {
		return "", fmt.Errorf("--ip %s needs the port alone: --addr :PORT", ipSpec)
	}
	if _, err := endpoint.ParseAddr(addr); err != nil {
		return "", fmt.Errorf("--addr: %w", err)
	}
	if host == "" {
		var err error
		if host, err = os.Hostname(); err != nil {
			return "", fmt.Errorf("host name: %w (give --host)", err)
		}
	}
	e.Host, e.Addr = host, addr
	if f == endpoint.JSON {
		e.Unit, e.Machine = unit, machine
		if e.Unit == "" {
			e.Unit = announce.SelfUnit()
		}
		if e.Machine == "" {
			e.Machine = announce.MachineID(getenv)
		}
	}
	v, err := e.Encode(f)
	if err != nil {
		return "", fmt.Errorf("value: %w", err)
	}
	return v, nil
}

// connect opens the etcd client, retrying while etcd is unreachable: only an
// authentication failure (which retrying cannot fix) or ctx ends it.
func connect(ctx context.Context, cfg store.Config, log *slog.Logger) (*store.Client, error) {
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		c, err := store.OpenWith(ctx, cfg, store.OpenOptions{MaxReconnectDelay: 500 * time.Millisecond})
		if err == nil {
			if attempt > 1 {
				log.Info("connected to etcd", "endpoints", strings.Join(cfg.Endpoints, ","), "attempts", attempt)
			}
			return c, nil
		}
		if store.IsAuthError(err) || ctx.Err() != nil {
			return nil, err
		}
		if attempt == 1 || attempt%10 == 0 {
			log.Warn("etcd unreachable; retrying", "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// keep runs the registration in the foreground until ctx ends. report, when
// not nil (the keeper of --detach), gets one line after the first write and
// is closed.
func keep(ctx context.Context, o *options, log *slog.Logger, report *os.File) error {
	sd := &announce.Systemd{Logger: log}
	if report != nil {
		sd = nil // the keeper is not the unit's main process: systemd's readiness is the parent's exit
	}
	c, err := connect(ctx, o.store, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // a signal before etcd was ever reached: nothing to withdraw
		}
		return err
	}
	defer c.Close()
	first := true
	written := make(chan struct{})
	o.cfg.OnPut = func(id store.LeaseID) {
		if sd != nil {
			if first {
				sd.Ready("announced " + o.cfg.Key)
			} else {
				sd.Status("announced " + o.cfg.Key + " again")
			}
		}
		if first {
			close(written)
		}
		if first && report != nil {
			fmt.Fprintf(report, "written %x\n", int64(id))
			report.Close()
		}
		first = false
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		// Once settled (key written, its watch and keepalive running), give
		// back the pages start-up touched.
		select {
		case <-gctx.Done():
		case <-written:
			select {
			case <-gctx.Done():
			case <-time.After(2 * time.Second):
				trimResident()
			}
		}
		return nil
	})
	if sd != nil {
		g.Go(func() error { sd.Watchdog(gctx); return nil })
	}
	g.Go(func() error {
		err := announce.Run(gctx, c, o.cfg)
		if sd != nil {
			sd.Stopping()
		}
		return err
	})
	return g.Wait()
}

// detach re-executes this program as the keeper, in the same process group,
// and returns once the keeper reports the key written (or fails).
func detach(ctx context.Context, args []string, stderr io.Writer, key string, timeout time.Duration) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("detach: find own executable: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("detach: pipe: %w", err)
	}
	defer r.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		w.Close()
		return fmt.Errorf("detach: %w", err)
	}
	defer devnull.Close()
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), keeperEnv+"=3")
	cmd.Stdin, cmd.Stdout = devnull, devnull
	cmd.Stderr = stderr // the unit's journal
	if f, ok := stderr.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeNamedPipe != 0 {
			// A pipe's reader (`$(announce --detach …)`, a test harness)
			// would wait for the keeper's end to close, i.e. forever.
			fmt.Fprintln(stderr, "announce: stderr is a pipe: the keeper's logs are discarded")
			cmd.Stderr = devnull
		}
	}
	cmd.ExtraFiles = []*os.File{w}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("detach: start keeper: %w", err)
	}
	w.Close()
	line := make(chan string, 1)
	go func() { // ends when the keeper writes or closes its end (exits)
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- s
	}()
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	select {
	case <-expired:
		// An instance restarted while etcd is down must still start: the
		// keeper goes on trying and writes the key as soon as it can.
		fmt.Fprintf(stderr, "announce: %s not written within --detach-timeout %s (etcd unreachable or the check failing); starting anyway: the keeper (pid %d) writes it as soon as it can\n", key, timeout, cmd.Process.Pid)
		return cmd.Process.Release()
	case s := <-line:
		if strings.HasPrefix(s, "written ") {
			// The keeper lives on; the process is released, never waited for.
			return cmd.Process.Release()
		}
		err := cmd.Wait()
		return fmt.Errorf("detach: keeper exited before the key was written: %v", err)
	case <-ctx.Done():
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		r.Close()
		<-line
		return nil
	}
}

// deleteKey removes the key if it holds this registration's value, and
// revokes the lease it was bound to; comparing and deleting are one
// transaction.
func deleteKey(ctx context.Context, o *options, log *slog.Logger) error {
	octx, cancel := context.WithTimeout(ctx, o.store.DialTimeout+10*time.Second)
	defer cancel()
	c, err := store.Open(octx, o.store)
	if err != nil {
		return fmt.Errorf("delete %s: %w", o.cfg.Key, err)
	}
	defer c.Close()
	found, lease, _, err := announce.DeleteOwn(octx, c, o.cfg.Key, o.cfg.Value, 0, false)
	switch {
	case errors.Is(err, announce.ErrNotOwn):
		log.Warn("not deleted: the key holds another registration", "key", o.cfg.Key, "err", err)
		return nil
	case err != nil:
		return fmt.Errorf("delete %s: %w", o.cfg.Key, err)
	case !found:
		log.Info("nothing to delete", "key", o.cfg.Key)
		return nil
	}
	if err := c.RevokeLease(octx, lease); err != nil {
		return fmt.Errorf("delete %s: %w", o.cfg.Key, err)
	}
	log.Info("deleted", "key", o.cfg.Key, "lease", fmt.Sprintf("%x", int64(lease)))
	return nil
}

// withdrawKey is --withdraw: the acknowledged withdrawal, from ExecStop=.
func withdrawKey(ctx context.Context, o *options, log *slog.Logger) error {
	octx, cancel := context.WithTimeout(ctx, o.store.DialTimeout+10*time.Second)
	c, err := store.Open(octx, o.store)
	cancel()
	if err != nil {
		return fmt.Errorf("withdraw %s: %w", o.cfg.Key, err)
	}
	defer c.Close()
	return announce.Withdraw(ctx, c, o.cfg.Key, o.cfg.Value, o.cfg.Drain, log)
}
