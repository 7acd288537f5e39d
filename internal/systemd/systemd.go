// Package systemd is the executor that hands units to systemd over D-Bus, as
// fleet did: it implements executor.Executor with go-systemd's dbus package.
//
// # Files
//
// A unit's body is written, exactly as submitted, to the runtime unit
// directory (/run/systemd/system, or $XDG_RUNTIME_DIR/systemd/user for a user
// manager), so it vanishes at reboot. An instance "nginx@1.service" is run
// through systemd's own templates: the body goes to "nginx@.service" (or, when
// another running instance still uses an older template body, to an
// instance file "nginx@1.service", which systemd prefers over the template).
// What the agent adds goes into a drop-in "<unit>.d/50-flotilla.conf":
// EnvironmentFile=-<machine facts> and, with Options.AgentUnit, the binding
// to the agent's own unit. The unit name's drop-in is the record that a unit
// belongs to this executor; it also records the body's hash.
//
// Every file flotilla writes starts with the line "# flotilla: owned". A file
// of the same name without it, or a unit systemd loads from anywhere else
// (e.g. /etc/systemd/system/x.service, or a masked unit), is foreign: Start
// refuses with ErrNotOwned, and nothing foreign is ever overwritten, deleted
// or stopped.
//
// # The invariant: no unit runs on a machine whose agent lost its presence
//
// Three mechanisms, chosen to cover each way an agent can go away:
//   - The agent keeps its units running while it cannot reach etcd (the
//     default: availability), stops those the engine moved away once it
//     reconnects, and kills fenced units ([X-Flotilla] OnDisconnect=stop)
//     with Kill before its presence lease can expire (the agent's job).
//   - When the agent runs under systemd, Options.AgentUnit makes every
//     fenced unit (Spec.Fenced, [X-Flotilla] OnDisconnect=stop) BindsTo=
//     the agent's unit (PartOf= with Options.AgentDependency), so systemd
//     stops them the moment the agent stops, crashes or is killed — even
//     with kill -9, when the agent can do nothing itself. Other units are
//     not bound to the agent: they keep running while it restarts (an
//     upgrade), as they do while it is cut off from etcd, and the agent
//     adopts them when it is back. AgentRestarting tells the agent, as it
//     shuts down, whether systemd is restarting it (keep the units, hand
//     the presence over to the next run) or stopping it (stop them: they
//     move).
//   - On start, the agent calls Adopt with the set of units still targeted at
//     its machine: every owned unit not in it is stopped and uninstalled (it
//     may have been rescheduled elsewhere while the agent was away). Units
//     still targeted keep running untouched, so an agent restart does not
//     restart them.
//
// Without AgentUnit (the agent not under systemd), a fenced unit too keeps
// running while its agent is dead until the agent comes back and adopts; run
// the agent under systemd in production.
//
// # D-Bus
//
// Calls go through go-systemd's *Context methods; job results arrive on
// buffered channels. Stop and Remove wait for their stop job; Start waits for
// its start job only with Options.WaitStart (else the result is logged and
// signalled on Changes), so a slow ExecStartPre never holds up the agent. State changes come from systemd's PropertiesChanged
// signals on a second connection of the executor's own, filtered to owned
// units and coalesced into Changes. If the bus goes away (dbus-daemon
// restarted), Changes fires and the next call reconnects and resubscribes.
// A unit systemd has never loaded is installed without a daemon-reload
// (systemd retries loading a not-found unit when its unit directories
// change); changing an installed unit reloads.
//
// # Restarts
//
// Restart= is systemd's: a unit that fails and is restarted by systemd goes
// through "activating/auto-restart" and back to "active/running"; the
// executor reports those states and does nothing else, so the engine never
// moves a unit because systemd restarted it. A unit systemd leaves failed
// (Restart=no, or its start limit hit) is the agent's to handle, by the
// unit's failure policy ([X-Flotilla] RestartFailed=, OnFailed=): Start on a
// failed unit resets it (reset-failed clears the start limit) and starts it.
//
// # Journal
//
// Journal runs `journalctl -u UNIT` (`--user-unit` for a user manager;
// Options.JournalDir reads another journal directory) rather than go-systemd's
// sdjournal, which needs cgo at build time and libsystemd at run time, while
// flotilla's binaries are meant to build static (CGO_ENABLED=0, e.g. for FROM
// scratch images); both read the same journal. When the journal has nothing
// for the unit (journald not running, or the unit never logged), Journal says
// so on its first line and returns what systemd reports instead: states,
// result, and each Exec command's last exit status.
package systemd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"

	"github.com/flotilla/flotilla/internal/executor"
)

// ErrNotOwned is returned when a unit of that name exists on this machine but
// was not installed by flotilla; it is left untouched.
var ErrNotOwned = errors.New("systemd: unit not owned by flotilla")

// ErrClosed is returned by an Executor's methods after Close.
var ErrClosed = errors.New("systemd: executor closed")

// Dependencies on the agent's unit (Options.AgentDependency).
const (
	// BindsTo stops units whenever the agent's unit stops or fails.
	BindsTo = "BindsTo"
	// PartOf stops (and restarts) units when the agent's unit is explicitly
	// stopped (or restarted), but not when it crashes.
	PartOf = "PartOf"
)

// Options configure New. The zero value talks to the system manager over the
// system bus and installs units in /run/systemd/system.
type Options struct {
	// User selects the calling user's manager (session bus, units in
	// $XDG_RUNTIME_DIR/systemd/user) instead of the system manager.
	User bool
	// BusAddress is an explicit D-Bus address, e.g.
	// "unix:path=/run/user/0/bus"; a path ending in "systemd/private" is a
	// direct connection to the manager. Empty: DBUS_SESSION_BUS_ADDRESS /
	// $XDG_RUNTIME_DIR/bus for User, else DBUS_SYSTEM_BUS_ADDRESS /
	// /run/dbus/system_bus_socket, else /run/systemd/private.
	BusAddress string
	// UnitDir is where unit files are written. Empty: /run/systemd/system,
	// or $XDG_RUNTIME_DIR/systemd/user for User.
	UnitDir string
	// AgentUnit is the agent's own unit name when the agent runs under
	// systemd (AgentUnitAuto: found by New); every fenced unit
	// (Spec.Fenced) then gets AgentDependency=AgentUnit in its drop-in, and
	// AgentRestarting can tell a restart of the agent from a stop.
	AgentUnit string
	// AgentDependency is BindsTo (default) or PartOf.
	AgentDependency string
	// WaitStart makes Start wait for systemd's start job to finish (after
	// ExecStartPost, or the oneshot's exit) and return its failure. By
	// default Start returns once systemd has queued the job, as the process
	// executor does, so that a slow ExecStartPre (an image pull) never holds
	// up the agent; the job's outcome shows in States and Changes.
	WaitStart bool
	// JournalDir makes Journal read the journal files in this directory
	// (journalctl -D) instead of the system's, e.g. a host's
	// /var/log/journal mounted into the agent's container.
	JournalDir string
	// Logger receives the executor's logs; nil discards them.
	Logger *slog.Logger
}

// Executor runs units through systemd. It is safe for concurrent use; create
// it with New and release it with Close.
type Executor struct {
	opts    Options
	log     *slog.Logger
	unitDir string
	addr    string          // D-Bus address
	base    context.Context // lifetime of connections: until Close
	cancel  context.CancelFunc

	connMu sync.Mutex // guards conn, sig, closed
	conn   *sddbus.Conn
	sig    *godbus.Conn // receives unit signals
	closed atomic.Bool

	mu    sync.Mutex // serialises file changes and daemon-reloads
	names nameLocks  // serialises operations on one unit

	ownedMu sync.RWMutex
	owned   map[string]bool // units with our drop-in, for filtering signals

	changes chan struct{}
	wg      sync.WaitGroup // the signal goroutines
}

var _ executor.Executor = (*Executor)(nil)

// New connects to systemd and subscribes to its unit changes. ctx bounds the
// connection only; the Executor lives until Close.
func New(ctx context.Context, opts Options) (*Executor, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	switch opts.AgentDependency {
	case "":
		opts.AgentDependency = BindsTo
	case BindsTo, PartOf:
	default:
		return nil, fmt.Errorf("systemd: agent dependency %q: want %s or %s", opts.AgentDependency, BindsTo, PartOf)
	}
	if opts.AgentUnit != "" && opts.AgentUnit != AgentUnitAuto {
		if _, err := parseName(opts.AgentUnit); err != nil {
			return nil, fmt.Errorf("systemd: agent unit: %w", err)
		}
	}
	unitDir := opts.UnitDir
	if unitDir == "" {
		unitDir = "/run/systemd/system"
		if opts.User {
			rt := os.Getenv("XDG_RUNTIME_DIR")
			if rt == "" {
				return nil, errors.New("systemd: user manager: XDG_RUNTIME_DIR is not set and no unit directory was given")
			}
			unitDir = filepath.Join(rt, "systemd", "user")
		}
	}
	// unitDir is created on the first Start, never here: an empty
	// /run/systemd/system would make the host look booted with systemd.
	addr := busAddress(opts)
	// The connection lives until Close, not until ctx ends (godbus closes a
	// connection when its context is done).
	base, cancel := context.WithCancel(context.WithoutCancel(ctx))
	conn, err := dial(base, addr)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("systemd: connect to %s: %w", addr, err)
	}
	if _, err := conn.SystemStateContext(ctx); err != nil {
		conn.Close()
		cancel()
		return nil, fmt.Errorf("systemd: no systemd manager on %s: %w", addr, err)
	}
	owned, err := ownedUnits(unitDir)
	if err != nil {
		conn.Close()
		cancel()
		return nil, fmt.Errorf("systemd: read %s: %w", unitDir, err)
	}
	e := &Executor{
		opts:    opts,
		log:     opts.Logger.With("executor", "systemd"),
		conn:    conn,
		unitDir: unitDir,
		addr:    addr,
		base:    base,
		cancel:  cancel,
		owned:   make(map[string]bool),
		changes: make(chan struct{}, 1),
	}
	for name := range owned {
		e.owned[name] = true
	}
	if opts.AgentUnit == AgentUnitAuto {
		e.opts.AgentUnit = ownUnit(ctx, conn)
		e.log.Debug("agent unit", "unit", e.opts.AgentUnit)
	}
	if err := e.subscribe(ctx); err != nil {
		conn.Close()
		cancel()
		return nil, fmt.Errorf("systemd: subscribe on %s: %w", addr, err)
	}
	e.log.Debug("connected", "bus", addr, "unit_dir", unitDir, "owned", len(owned))
	return e, nil
}

// AgentUnitAuto as Options.AgentUnit makes New find the agent's unit: the
// service this process runs in, if the manager it talks to runs it; none
// otherwise (a shell, another manager).
const AgentUnitAuto = "auto"

// ownUnit returns the service of this manager that runs this process, or "".
func ownUnit(ctx context.Context, c *sddbus.Conn) string {
	name, err := c.GetUnitNameByPID(ctx, uint32(os.Getpid()))
	if err != nil || !strings.HasSuffix(name, ".service") {
		return ""
	}
	return name
}

// agentUnit is the agent unit spec is bound to: AgentUnit for a fenced
// unit, else none.
func (e *Executor) agentUnit(spec executor.Spec) string {
	if !spec.Fenced {
		return ""
	}
	return e.opts.AgentUnit
}

// AgentUnit returns the agent's unit in effect ("" for none).
func (e *Executor) AgentUnit() string { return e.opts.AgentUnit }

// AgentRestarting reports whether systemd is restarting the agent's unit
// (Options.AgentUnit): a job of type restart (systemctl restart, try-restart,
// reload-or-restart, a package upgrade) is running on it. During a stop it
// is false, as it is without AgentUnit. The agent asks when it is told to
// shut down.
func (e *Executor) AgentRestarting(ctx context.Context) (bool, error) {
	if e.opts.AgentUnit == "" {
		return false, nil
	}
	c, err := e.bus(ctx)
	if err != nil {
		return false, err
	}
	jobs, err := c.ListJobsContext(ctx)
	if err != nil {
		return false, fmt.Errorf("systemd: list jobs: %w", err)
	}
	for _, j := range jobs {
		if j.Unit == e.opts.AgentUnit && strings.Contains(j.JobType, "restart") {
			return true, nil
		}
	}
	return false, nil
}

// busAddress resolves the D-Bus address New connects to.
func busAddress(opts Options) string {
	if opts.BusAddress != "" {
		return opts.BusAddress
	}
	if opts.User {
		if a := os.Getenv("DBUS_SESSION_BUS_ADDRESS"); a != "" {
			return a
		}
		rt := os.Getenv("XDG_RUNTIME_DIR")
		if _, err := os.Stat(filepath.Join(rt, "bus")); err == nil || rt == "" {
			return "unix:path=" + filepath.Join(rt, "bus")
		}
		return "unix:path=" + filepath.Join(rt, "systemd", "private")
	}
	if a := os.Getenv("DBUS_SYSTEM_BUS_ADDRESS"); a != "" {
		return a
	}
	if _, err := os.Stat("/run/dbus/system_bus_socket"); err == nil {
		return "unix:path=/run/dbus/system_bus_socket"
	}
	return "unix:path=/run/systemd/private"
}

// dial opens a go-systemd connection on addr. The connection is closed when
// ctx ends.
func dial(ctx context.Context, addr string) (*sddbus.Conn, error) {
	return sddbus.NewConnection(func() (*godbus.Conn, error) { return dialRaw(ctx, addr) })
}

// dialRaw opens a D-Bus connection on addr: EXTERNAL authentication with the
// numeric uid (no user lookup), and Hello unless addr is the manager's
// private socket.
func dialRaw(ctx context.Context, addr string) (*godbus.Conn, error) {
	c, err := godbus.Dial(addr, godbus.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	if err := c.Auth([]godbus.Auth{godbus.AuthExternal(strconv.Itoa(os.Getuid()))}); err != nil {
		c.Close()
		return nil, err
	}
	if !isPrivate(addr) {
		if err := c.Hello(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// isPrivate tells a direct connection to the manager from a bus.
func isPrivate(addr string) bool { return strings.HasSuffix(addr, "systemd/private") }

// subscribe feeds Changes from systemd's PropertiesChanged signals for owned
// units, on a D-Bus connection of its own (go-systemd's property subscriber
// races with its dispatcher). The goroutine is owned by the Executor: it ends
// when that connection closes (Close, or the bus went away), which closes the
// signal channel. Called by New, and by bus with connMu held.
func (e *Executor) subscribe(ctx context.Context) error {
	sig, err := dialRaw(e.base, e.addr)
	if err != nil {
		return err
	}
	if !isPrivate(e.addr) { // a direct connection gets every signal anyway
		if err := sig.AddMatchSignalContext(ctx,
			godbus.WithMatchInterface("org.freedesktop.DBus.Properties"),
			godbus.WithMatchMember("PropertiesChanged"),
			godbus.WithMatchPathNamespace(godbus.ObjectPath(strings.TrimSuffix(unitPathPrefix, "/"))),
		); err != nil {
			sig.Close()
			return err
		}
	}
	mgr := sig.Object("org.freedesktop.systemd1", "/org/freedesktop/systemd1")
	if err := mgr.CallWithContext(ctx, "org.freedesktop.systemd1.Manager.Subscribe", 0).Err; err != nil {
		sig.Close()
		return err
	}
	signals := make(chan *godbus.Signal, 256)
	sig.Signal(signals)
	e.sig = sig
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for s := range signals {
			if s.Name != "org.freedesktop.DBus.Properties.PropertiesChanged" || len(s.Body) == 0 {
				continue
			}
			if iface, _ := s.Body[0].(string); iface != "org.freedesktop.systemd1.Unit" {
				continue
			}
			name, ok := unitNameFromPath(string(s.Path))
			if !ok {
				continue
			}
			e.ownedMu.RLock()
			mine := e.owned[name]
			e.ownedMu.RUnlock()
			if mine {
				e.notify()
			}
		}
		if !e.closed.Load() {
			// The bus went away: wake the agent, whose next call reconnects.
			e.log.Warn("systemd signal connection lost", "bus", e.addr)
			e.notify()
		}
	}()
	return nil
}

// bus returns a live connection to the manager, reconnecting and
// resubscribing when the previous one was lost (dbus-daemon or the manager
// restarted). Safe for concurrent use.
func (e *Executor) bus(ctx context.Context) (*sddbus.Conn, error) {
	e.connMu.Lock()
	defer e.connMu.Unlock()
	if e.closed.Load() {
		return nil, ErrClosed
	}
	if e.conn.Connected() && e.sig.Connected() {
		return e.conn, nil
	}
	e.conn.Close()
	e.sig.Close()
	conn, err := dial(e.base, e.addr)
	if err != nil {
		return nil, fmt.Errorf("systemd: reconnect to %s: %w", e.addr, err)
	}
	if _, err := conn.SystemStateContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("systemd: reconnect to %s: %w", e.addr, err)
	}
	if err := e.subscribe(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("systemd: reconnect to %s: subscribe: %w", e.addr, err)
	}
	e.conn = conn
	e.log.Info("reconnected to systemd", "bus", e.addr)
	e.notify() // states may have changed unseen
	return conn, nil
}

// unitPathPrefix is the D-Bus object path prefix of units.
const unitPathPrefix = "/org/freedesktop/systemd1/unit/"

// unitNameFromPath undoes systemd's bus path escaping ("_2e" for ".").
func unitNameFromPath(p string) (string, bool) {
	esc, ok := strings.CutPrefix(p, unitPathPrefix)
	if !ok {
		return "", false
	}
	var b strings.Builder
	for i := 0; i < len(esc); i++ {
		if esc[i] == '_' && i+2 < len(esc) {
			if v, err := strconv.ParseUint(esc[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i += 2
				continue
			}
		}
		b.WriteByte(esc[i])
	}
	return b.String(), true
}

func (e *Executor) notify() {
	select {
	case e.changes <- struct{}{}:
	default:
	}
}

// Changes delivers a value (coalesced) whenever the state of a unit this
// executor owns may have changed.
func (e *Executor) Changes() <-chan struct{} { return e.changes }

// Close ends the subscription and the D-Bus connection; units keep running.
// It is idempotent; afterwards methods return ErrClosed.
func (e *Executor) Close() error {
	e.connMu.Lock()
	if !e.closed.Swap(true) {
		e.sig.Close()
		e.conn.Close()
		e.cancel()
	}
	e.connMu.Unlock()
	e.wg.Wait()
	return nil
}

// UnitDir is the directory the executor writes unit files to.
func (e *Executor) UnitDir() string { return e.unitDir }

func (e *Executor) dropInPath(name string) string {
	return filepath.Join(e.unitDir, name+".d", dropInName)
}

func (e *Executor) setOwned(name string, on bool) {
	e.ownedMu.Lock()
	defer e.ownedMu.Unlock()
	if on {
		e.owned[name] = true
	} else {
		delete(e.owned, name)
	}
}

// Start installs spec and starts it; see executor.Executor. A unit whose body
// changed while it runs is restarted. Start returns when systemd's start job
// has finished; a failed job is an error naming the unit's state.
func (e *Executor) Start(ctx context.Context, spec executor.Spec) error {
	n, err := parseName(spec.Name)
	if err != nil {
		return fmt.Errorf("systemd: start: %w", err)
	}
	if n.template {
		return fmt.Errorf("systemd: start %s: a template cannot be started; start an instance such as %s@1%s", n.full, n.prefix, n.suffix)
	}
	if spec.EnvFile != "" && (!filepath.IsAbs(spec.EnvFile) || strings.ContainsAny(spec.EnvFile, "\n\r")) {
		return fmt.Errorf("systemd: start %s: environment file %q: want an absolute path on one line", n.full, spec.EnvFile)
	}
	for k, v := range spec.Env {
		if k == "" || strings.ContainsAny(k, "= \t\n\r\"\\%") || strings.ContainsAny(v, "\r") {
			return fmt.Errorf("systemd: start %s: environment variable %q: invalid name or value", n.full, k)
		}
	}
	defer e.names.lock(n.full)()
	hash := spec.Hash
	if hash == "" {
		hash = bodyHash(spec.Body)
	}
	c, err := e.bus(ctx)
	if err != nil {
		return err
	}
	loadBefore, err := e.checkNotForeign(ctx, c, n)
	if err != nil {
		return fmt.Errorf("systemd: start %s: %w", n.full, err)
	}
	prevHash, changed, err := e.install(ctx, c, n, hash, spec, loadBefore == "not-found")
	if err != nil {
		return fmt.Errorf("systemd: start %s: %w", n.full, err)
	}
	e.notify()
	props, err := c.GetUnitPropertiesContext(ctx, n.full)
	if err != nil {
		return fmt.Errorf("systemd: start %s: read state: %w", n.full, err)
	}
	load, _ := props["LoadState"].(string)
	if load == "not-found" && changed {
		// Installed without a reload and systemd did not pick it up.
		if err := c.ReloadContext(ctx); err != nil {
			return fmt.Errorf("systemd: start %s: daemon-reload: %w", n.full, err)
		}
		if props, err = c.GetUnitPropertiesContext(ctx, n.full); err != nil {
			return fmt.Errorf("systemd: start %s: read state: %w", n.full, err)
		}
		load, _ = props["LoadState"].(string)
	}
	active, _ := props["ActiveState"].(string)
	if load != "loaded" {
		return fmt.Errorf("systemd: start %s: unit not loaded (%s)%s", n.full, load, loadError(props))
	}
	verb, method := "start", c.StartUnitContext
	switch active {
	case "active", "activating", "reloading":
		if !changed && prevHash == hash {
			return nil // already running this body
		}
		verb, method = "restart", c.RestartUnitContext
	case "failed":
		// Clears the failure and the start rate limit before a new attempt.
		_ = c.ResetFailedUnitContext(ctx, n.full)
	}
	if !e.opts.WaitStart {
		return e.queueJob(ctx, c, verb, n.full, hash, method)
	}
	if err := e.runJob(ctx, c, verb, n.full, method); err != nil {
		return err
	}
	e.log.Info("unit "+verb+"ed", "unit", n.full, "hash", hash)
	return nil
}

// queueJob queues a start/restart job and returns; a goroutine owned by the
// Executor (ended by Close) logs the job's outcome and signals Changes.
func (e *Executor) queueJob(ctx context.Context, c *sddbus.Conn, verb, name, hash string, method func(context.Context, string, string, chan<- string) (int, error)) error {
	done := make(chan string, 1) // go-systemd sends from its dispatcher
	if _, err := method(ctx, name, "replace", done); err != nil {
		return fmt.Errorf("systemd: %s %s: %w", verb, name, err)
	}
	e.log.Debug("unit "+verb+" queued", "unit", name, "hash", hash)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		select {
		case res := <-done:
			if res == "done" {
				e.log.Info("unit "+verb+"ed", "unit", name, "hash", hash)
			} else {
				e.log.Warn("unit "+verb+" job "+res, "unit", name, "hash", hash)
			}
			e.notify()
		case <-e.base.Done():
		}
	}()
	return nil
}

// checkNotForeign refuses a unit that systemd loads from a file flotilla does
// not own, or that is masked. It returns the unit's load state.
func (e *Executor) checkNotForeign(ctx context.Context, c *sddbus.Conn, n unitName) (string, error) {
	props, err := c.GetUnitPropertiesContext(ctx, n.full)
	if err != nil {
		return "", fmt.Errorf("read unit properties: %w", err)
	}
	load, _ := props["LoadState"].(string)
	if load == "masked" {
		return load, fmt.Errorf("%w: the unit is masked on this machine", ErrNotOwned)
	}
	frag, _ := props["FragmentPath"].(string)
	if frag == "" {
		return load, nil
	}
	ours := []string{filepath.Join(e.unitDir, n.full)}
	if n.instance != "" {
		ours = append(ours, filepath.Join(e.unitDir, n.templateName()))
	}
	for _, p := range ours {
		if frag == p {
			return load, nil
		}
	}
	return load, fmt.Errorf("%w: systemd loads it from %s", ErrNotOwned, frag)
}

// install writes the unit's body and drop-in and reloads systemd if a file
// changed. It returns the hash the unit was installed with before. When the
// unit is new to systemd (notFound) and only new files were created, the
// reload (tens of milliseconds) is skipped: systemd retries loading a
// not-found unit when its unit directories changed; Start reloads if it did
// not.
func (e *Executor) install(ctx context.Context, c *sddbus.Conn, n unitName, hash string, spec executor.Spec, notFound bool) (prevHash string, changed bool, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()

	dropPath := e.dropInPath(n.full)
	prev, err := readOwned(dropPath)
	if err != nil {
		return "", false, err
	}
	if prev.exists && !prev.owned {
		return "", false, fmt.Errorf("%w: %s exists", ErrNotOwned, dropPath)
	}
	body := ownedContent(hash, spec.Body)
	ownPath := filepath.Join(e.unitDir, n.full)
	own, err := readOwned(ownPath)
	if err != nil {
		return "", false, err
	}
	if own.exists && !own.owned {
		return "", false, fmt.Errorf("%w: %s exists", ErrNotOwned, ownPath)
	}
	modified := false // an existing file changed or went
	write := func(path string, content []byte) error {
		_, serr := os.Stat(path)
		wrote, err := writeAtomic(path, content)
		changed = changed || wrote
		modified = modified || (wrote && serr == nil)
		return err
	}
	if n.instance == "" {
		if err := write(ownPath, body); err != nil {
			return "", false, err
		}
	} else {
		tplPath := filepath.Join(e.unitDir, n.templateName())
		tpl, err := readOwned(tplPath)
		if err != nil {
			return "", false, err
		}
		if tpl.exists && !tpl.owned {
			return "", false, fmt.Errorf("%w: template %s exists", ErrNotOwned, tplPath)
		}
		shared, err := e.templateInUse(n)
		if err != nil {
			return "", false, err
		}
		if !tpl.exists || tpl.hash == hash || !shared {
			// The template carries this body; an older instance file goes.
			if err := write(tplPath, body); err != nil {
				return "", false, err
			}
			if own.owned {
				if err := os.Remove(ownPath); err != nil {
					return "", false, err
				}
				changed, modified = true, true
			}
		} else {
			// Other instances still run the template's older body: this
			// instance gets a file of its own, which systemd prefers.
			if err := write(ownPath, body); err != nil {
				return "", false, err
			}
		}
	}
	// A drop-in that changed alone (the agent binding of an older version,
	// the facts file's path) takes a reload, not a restart of the unit.
	bodyChanged := changed || !prev.exists
	if err := write(dropPath, dropIn(n, hash, spec.EnvFile, spec.Env, e.agentUnit(spec), e.opts.AgentDependency)); err != nil {
		return "", false, err
	}
	e.setOwned(n.full, true)
	if modified || (changed && !notFound) {
		if err := c.ReloadContext(ctx); err != nil {
			return "", false, fmt.Errorf("daemon-reload: %w", err)
		}
	}
	return prev.hash, bodyChanged, nil
}

// templateInUse reports whether another owned instance of n's template runs
// the template file's body (has no instance file of its own).
func (e *Executor) templateInUse(n unitName) (bool, error) {
	owned, err := ownedUnits(e.unitDir)
	if err != nil {
		return false, err
	}
	for name := range owned {
		o, err := parseName(name)
		if err != nil || name == n.full || o.prefix != n.prefix || o.suffix != n.suffix || o.instance == "" {
			continue
		}
		inst, err := readOwned(filepath.Join(e.unitDir, name))
		if err != nil {
			return false, err
		}
		if !inst.owned {
			return true, nil
		}
	}
	return false, nil
}

// runJob runs a start/stop/restart job and waits for its result. The result
// channel is buffered: go-systemd sends on it from its signal dispatcher.
func (e *Executor) runJob(ctx context.Context, c *sddbus.Conn, verb, name string, method func(context.Context, string, string, chan<- string) (int, error)) error {
	done := make(chan string, 1)
	if _, err := method(ctx, name, "replace", done); err != nil {
		return fmt.Errorf("systemd: %s %s: %w", verb, name, err)
	}
	select {
	case res := <-done:
		if res == "done" {
			return nil
		}
		return fmt.Errorf("systemd: %s %s: job %s%s", verb, name, res, e.stateSuffix(ctx, c, name))
	case <-ctx.Done():
		return fmt.Errorf("systemd: %s %s: waiting for the job: %w", verb, name, ctx.Err())
	}
}

// stateSuffix describes a unit's state for an error message.
func (e *Executor) stateSuffix(ctx context.Context, c *sddbus.Conn, name string) string {
	st, err := c.ListUnitsByNamesContext(ctx, []string{name})
	if err != nil || len(st) != 1 {
		return ""
	}
	s := fmt.Sprintf(" (%s/%s", st[0].ActiveState, st[0].SubState)
	if p, err := c.GetUnitTypePropertyContext(ctx, name, unitType(name), "Result"); err == nil {
		s += ", result " + strings.Trim(p.Value.String(), `"`)
	}
	return s + "; see journal)"
}

// Stop stops an owned unit and waits for the stop job; the unit stays
// installed. Stopping a unit that is not installed is a no-op; a unit of
// that name that flotilla does not own is ErrNotOwned and is not stopped.
func (e *Executor) Stop(ctx context.Context, name string) error {
	n, err := parseName(name)
	if err != nil {
		return fmt.Errorf("systemd: stop: %w", err)
	}
	defer e.names.lock(n.full)()
	o, err := readOwned(e.dropInPath(n.full))
	if err != nil {
		return fmt.Errorf("systemd: stop %s: %w", name, err)
	}
	c, err := e.bus(ctx)
	if err != nil {
		return err
	}
	if !o.owned {
		st, err := c.ListUnitsByNamesContext(ctx, []string{name})
		if err == nil && len(st) == 1 && st[0].LoadState != "not-found" {
			return fmt.Errorf("systemd: stop %s: %w", name, ErrNotOwned)
		}
		return nil
	}
	return e.stop(ctx, c, name)
}

// Kill ends an owned unit at once, for fencing: SIGKILL to every process of
// its cgroup, then a stop job so that Restart= does not bring it back
// (ExecStop finds nothing left to stop; ExecStopPost runs). Killing a unit
// that is not installed or not owned is a no-op.
func (e *Executor) Kill(ctx context.Context, name string) error {
	n, err := parseName(name)
	if err != nil {
		return fmt.Errorf("systemd: kill: %w", err)
	}
	o, err := readOwned(e.dropInPath(n.full))
	if err != nil {
		return fmt.Errorf("systemd: kill %s: %w", name, err)
	}
	if !o.owned {
		return nil
	}
	c, err := e.bus(ctx)
	if err != nil {
		return err
	}
	// Not under the unit's lock: a start or stop job in progress must not
	// delay the kill.
	kerr := c.KillUnitWithTarget(ctx, name, sddbus.All, int32(syscall.SIGKILL))
	var derr godbus.Error
	if kerr != nil && !(errors.As(kerr, &derr) && (derr.Name == "org.freedesktop.systemd1.NoSuchUnit" || derr.Name == "org.freedesktop.systemd1.NoUnitProcesses")) {
		e.log.Warn("kill unit", "unit", name, "err", kerr)
	}
	defer e.names.lock(n.full)()
	if err := e.stop(ctx, c, name); err != nil {
		return fmt.Errorf("systemd: kill %s: %w", name, err)
	}
	e.log.Warn("unit killed (fencing)", "unit", name)
	return nil
}

func (e *Executor) stop(ctx context.Context, c *sddbus.Conn, name string) error {
	err := e.runJob(ctx, c, "stop", name, c.StopUnitContext)
	var derr godbus.Error
	if errors.As(err, &derr) && derr.Name == "org.freedesktop.systemd1.NoSuchUnit" {
		return nil
	}
	if err == nil {
		e.log.Info("unit stopped", "unit", name)
	}
	return err
}

// Remove stops an owned unit, deletes its files (the template too, once no
// owned instance uses it), reloads systemd and clears a failed state.
// Removing a unit flotilla does not own is a no-op.
func (e *Executor) Remove(ctx context.Context, name string) error {
	n, err := parseName(name)
	if err != nil {
		return fmt.Errorf("systemd: remove: %w", err)
	}
	defer e.names.lock(n.full)()
	o, err := readOwned(e.dropInPath(n.full))
	if err != nil {
		return fmt.Errorf("systemd: remove %s: %w", name, err)
	}
	if !o.owned {
		return nil
	}
	c, err := e.bus(ctx)
	if err != nil {
		return err
	}
	if err := e.stop(ctx, c, name); err != nil {
		return fmt.Errorf("systemd: remove %s: %w", name, err)
	}
	if err := e.uninstall(ctx, c, n); err != nil {
		return fmt.Errorf("systemd: remove %s: %w", name, err)
	}
	_ = c.ResetFailedUnitContext(ctx, name) // fails when not failed
	e.log.Info("unit removed", "unit", name)
	e.notify()
	return nil
}

func (e *Executor) uninstall(ctx context.Context, c *sddbus.Conn, n unitName) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	dropPath := e.dropInPath(n.full)
	if _, err := removeOwned(dropPath); err != nil {
		return err
	}
	if err := os.Remove(filepath.Dir(dropPath)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		e.log.Debug("drop-in directory kept", "dir", filepath.Dir(dropPath), "err", err)
	}
	e.setOwned(n.full, false)
	if _, err := removeOwned(filepath.Join(e.unitDir, n.full)); err != nil {
		return err
	}
	if n.instance != "" {
		inUse, err := e.templateUsers(n)
		if err != nil {
			return err
		}
		if !inUse {
			if _, err := removeOwned(filepath.Join(e.unitDir, n.templateName())); err != nil {
				return err
			}
		}
	}
	if err := c.ReloadContext(ctx); err != nil {
		return fmt.Errorf("daemon-reload: %w", err)
	}
	return nil
}

// templateUsers reports whether any other owned instance of n's template is
// still installed.
func (e *Executor) templateUsers(n unitName) (bool, error) {
	owned, err := ownedUnits(e.unitDir)
	if err != nil {
		return false, err
	}
	for name := range owned {
		if o, err := parseName(name); err == nil && name != n.full && o.prefix == n.prefix && o.suffix == n.suffix && o.instance != "" {
			return true, nil
		}
	}
	return false, nil
}

// States returns the state of every unit this executor owns, as systemd
// reports it (LoadState, ActiveState, SubState).
func (e *Executor) States(ctx context.Context) (map[string]executor.State, error) {
	owned, err := ownedUnits(e.unitDir)
	if err != nil {
		return nil, fmt.Errorf("systemd: states: read %s: %w", e.unitDir, err)
	}
	out := make(map[string]executor.State, len(owned))
	if len(owned) == 0 {
		return out, nil
	}
	names := make([]string, 0, len(owned))
	for name := range owned {
		names = append(names, name)
	}
	c, err := e.bus(ctx)
	if err != nil {
		return nil, err
	}
	st, err := c.ListUnitsByNamesContext(ctx, names)
	if err != nil {
		return nil, fmt.Errorf("systemd: states: %w", err)
	}
	for _, s := range st {
		out[s.Name] = executor.State{Load: s.LoadState, Active: s.ActiveState, Sub: s.SubState}
	}
	return out, nil
}

// Adopt is called by the agent when it starts: every owned unit for which
// keep returns false (no longer targeted at this machine) is stopped and
// removed; the others are left as they are, running or not. It returns the
// names removed and the errors met (all units are tried).
func (e *Executor) Adopt(ctx context.Context, keep func(name string) bool) ([]string, error) {
	owned, err := ownedUnits(e.unitDir)
	if err != nil {
		return nil, fmt.Errorf("systemd: adopt: read %s: %w", e.unitDir, err)
	}
	var removed []string
	var errs []error
	for name := range owned {
		e.setOwned(name, true)
		if keep(name) {
			continue
		}
		if err := e.Remove(ctx, name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, name)
	}
	return removed, errors.Join(errs...)
}

// unitType is the D-Bus interface suffix of a unit name: "Service" for
// "x.service".
func unitType(name string) string {
	t := name[strings.LastIndexByte(name, '.')+1:]
	return strings.ToUpper(t[:1]) + t[1:]
}

// loadError formats a unit's LoadError property, if any.
func loadError(props map[string]any) string {
	le, ok := props["LoadError"].([]any)
	if !ok || len(le) != 2 {
		return ""
	}
	if msg, _ := le[1].(string); msg != "" {
		return ": " + msg
	}
	return ""
}

// nameLocks is a set of per-name mutexes, created on demand and dropped when
// unused.
type nameLocks struct {
	mu    sync.Mutex
	locks map[string]*nameLock
}

type nameLock struct {
	sync.Mutex
	refs int
}

// lock locks name and returns its unlock function.
func (l *nameLocks) lock(name string) func() {
	l.mu.Lock()
	if l.locks == nil {
		l.locks = make(map[string]*nameLock)
	}
	nl := l.locks[name]
	if nl == nil {
		nl = &nameLock{}
		l.locks[name] = nl
	}
	nl.refs++
	l.mu.Unlock()
	nl.Lock()
	return func() {
		nl.Unlock()
		l.mu.Lock()
		if nl.refs--; nl.refs == 0 {
			delete(l.locks, name)
		}
		l.mu.Unlock()
	}
}
