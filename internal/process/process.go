// Package process is the executor that runs units as supervised processes,
// without systemd: ExecStartPre, ExecStart, ExecStartPost, ExecStop and
// ExecStopPost with systemd's semantics for the "-" prefix, Type=simple,
// oneshot (with RemainAfterExit) and forking (a "lite" form: the unit is
// running while any process of its group lives), Restart=on-failure/always
// with RestartSec and systemd's start rate limit (StartLimitIntervalSec=,
// StartLimitBurst=, 10s and 5 by default: one start more fails the unit,
// "start-limit-hit", until the next Start), Environment=, EnvironmentFile=
// and the agent's machine facts file, and systemd specifiers (%n %N %p %i
// %I %H %m …).
//
// Every run of a unit has its own process group, led by a small guard
// process. Every process is forked by one dedicated locked OS thread with
// SIGKILL (the guard: SIGUSR1) as its parent-death signal, and the guard
// answers SIGUSR1 by killing its whole group: so when the agent dies, even
// with kill -9, the unit's processes die with it, including children that
// left their parent such as an `announce --detach` keeper. Stopping a unit
// runs ExecStop, then signals the whole group (SIGTERM, then SIGKILL after
// TimeoutStopSec), then runs ExecStopPost.
//
// Each unit logs to <Dir>/<unit>.log: the executor's own lines (start, exit
// status, stop) and everything its processes write to stdout and stderr.
// Journal returns the tail of that file.
package process

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/flotilla/flotilla/internal/executor"
)

var _ executor.Executor = (*Executor)(nil)

// defaultGuard is the guard command: a shell that waits, and on SIGUSR1 (its
// parent-death signal) kills its own process group.
func defaultGuard() []string {
	return []string{"/bin/sh", "-c", `trap 'kill -9 0' USR1; while :; do sleep 3600 & wait $!; done`}
}

// Options configures New.
type Options struct {
	// Dir holds one log file per unit; it is created if missing. Required.
	Dir string
	// Hostname is what %H expands to; default os.Hostname().
	Hostname string
	// MachineID is what %m expands to; default the FLOTILLA_MACHINE_ID of
	// each Spec's Env.
	MachineID string
	// Logger receives the executor's logs; nil discards them.
	Logger *slog.Logger
	// Guard is the per-run guard command (see the package doc); default a
	// /bin/sh one-liner.
	Guard []string
	// DefaultTimeout bounds start and stop commands of units that set no
	// TimeoutStartSec/TimeoutStopSec; default 90s as systemd.
	DefaultTimeout time.Duration
}

// Executor runs units as process groups. It is safe for concurrent use.
type Executor struct {
	opts    Options
	log     *slog.Logger
	sp      *spawner
	changes chan struct{}

	mu     sync.Mutex
	units  map[string]*run
	locks  map[string]*sync.Mutex
	closed bool
	wg     sync.WaitGroup

	closeOnce sync.Once
}

// New returns an executor logging units under opts.Dir.
func New(opts Options) (*Executor, error) {
	if opts.Dir == "" {
		return nil, errors.New("process executor: no log directory")
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("process executor: %w", err)
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if len(opts.Guard) == 0 {
		opts.Guard = defaultGuard()
	}
	if opts.DefaultTimeout <= 0 {
		opts.DefaultTimeout = 90 * time.Second
	}
	return &Executor{
		opts:    opts,
		log:     opts.Logger,
		sp:      newSpawner(),
		changes: make(chan struct{}, 1),
		units:   map[string]*run{},
		locks:   map[string]*sync.Mutex{},
	}, nil
}

// lock serialises operations on one unit.
func (e *Executor) lock(name string) (unlock func(), err error) {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, fmt.Errorf("unit %s: process executor closed", name)
	}
	l := e.locks[name]
	if l == nil {
		l = &sync.Mutex{}
		e.locks[name] = l
	}
	e.mu.Unlock()
	l.Lock()
	return l.Unlock, nil
}

// Start parses spec's body and starts it; a unit already running with the
// same hash is left alone, one with another hash is stopped first. It
// returns once the run is under way (not when it is active).
func (e *Executor) Start(ctx context.Context, spec executor.Spec) error {
	svc, err := parseService(spec, e.opts.Hostname, e.opts.MachineID, e.opts.DefaultTimeout)
	if err != nil {
		return err
	}
	unlock, err := e.lock(spec.Name)
	if err != nil {
		return err
	}
	defer unlock()
	e.mu.Lock()
	cur := e.units[spec.Name]
	e.mu.Unlock()
	if cur != nil && !cur.finished() && cur.spec.Hash == spec.Hash {
		// Running, or failed/dead with its lifecycle still returning (its
		// state is set before it ends): only the former is left alone.
		if st := cur.getState(); st.Active != "failed" && st.Active != "inactive" {
			return nil
		}
	}
	if cur != nil {
		if err := cur.stop(ctx); err != nil {
			return err
		}
	}
	r := &run{
		e:       e,
		spec:    spec,
		svc:     svc,
		stopReq: make(chan struct{}),
		done:    make(chan struct{}),
		state:   executor.State{Load: "loaded", Active: "activating", Sub: "start-pre"},
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return fmt.Errorf("start %s: process executor closed", spec.Name)
	}
	e.units[spec.Name] = r
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		defer close(r.done)
		r.lifecycle()
	}()
	e.notify()
	return nil
}

// Stop stops a unit and waits until every process of it is gone (bounded by
// its TimeoutStopSec, then SIGKILL). Stopping a stopped or unknown unit is a
// no-op.
func (e *Executor) Stop(ctx context.Context, name string) error {
	unlock, err := e.lock(name)
	if err != nil {
		return err
	}
	defer unlock()
	e.mu.Lock()
	cur := e.units[name]
	e.mu.Unlock()
	if cur == nil {
		return nil
	}
	return cur.stop(ctx)
}

// Kill ends a unit at once, for fencing: SIGKILL to its whole process
// group, no ExecStop, no restart (ExecStopPost still runs after). It
// returns once every process of the group is gone. Killing a stopped or
// unknown unit is a no-op.
func (e *Executor) Kill(ctx context.Context, name string) error {
	e.mu.Lock()
	cur := e.units[name]
	e.mu.Unlock()
	if cur == nil {
		return nil
	}
	// Not under the unit's lock: a Start or Stop in progress (waiting on
	// ExecStop, say) must not delay the kill.
	cur.kill()
	unlock, err := e.lock(name)
	if err != nil {
		return err
	}
	defer unlock()
	return cur.stop(ctx)
}

// Remove stops a unit and forgets it (its log file stays).
func (e *Executor) Remove(ctx context.Context, name string) error {
	unlock, err := e.lock(name)
	if err != nil {
		return err
	}
	defer unlock()
	e.mu.Lock()
	cur := e.units[name]
	e.mu.Unlock()
	if cur == nil {
		return nil
	}
	if err := cur.stop(ctx); err != nil {
		return err
	}
	e.mu.Lock()
	if e.units[name] == cur {
		delete(e.units, name)
	}
	e.mu.Unlock()
	e.notify()
	return nil
}

// States returns the state of every unit the executor knows.
func (e *Executor) States(context.Context) (map[string]executor.State, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]executor.State, len(e.units))
	for name, r := range e.units {
		out[name] = r.getState()
	}
	return out, nil
}

// Changes receives a value after any unit's state changed.
func (e *Executor) Changes() <-chan struct{} { return e.changes }

func (e *Executor) notify() {
	select {
	case e.changes <- struct{}{}:
	default:
	}
}

// Journal returns the last lines of a unit's log file.
func (e *Executor) Journal(_ context.Context, name string, lines int) ([]string, error) {
	f, err := os.Open(e.logPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("journal of %s: %w", name, err)
	}
	defer f.Close()
	return tail(f, lines)
}

// LogPath returns the log file of a unit.
func (e *Executor) LogPath(name string) string { return e.logPath(name) }

func (e *Executor) logPath(name string) string {
	return filepath.Join(e.opts.Dir, filepath.Base(name)+".log")
}

// Close stops every unit (a unit's processes cannot outlive this executor:
// they are bound to its thread) and releases the executor. It is idempotent.
func (e *Executor) Close() error {
	e.closeOnce.Do(func() {
		e.mu.Lock()
		e.closed = true
		runs := make([]*run, 0, len(e.units))
		for _, r := range e.units {
			runs = append(runs, r)
		}
		e.mu.Unlock()
		for _, r := range runs {
			r.requestStop()
		}
		e.wg.Wait()
		e.sp.close()
	})
	return nil
}

// Names returns the names of the units the executor knows, sorted.
func (e *Executor) Names() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]string, 0, len(e.units))
	for n := range e.units {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// tail returns the last n lines of r.
func tail(r io.Reader, n int) ([]string, error) {
	if n <= 0 {
		n = 10
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	ring := make([]string, 0, n)
	for sc.Scan() {
		if len(ring) == n {
			copy(ring, ring[1:])
			ring = ring[:n-1]
		}
		ring = append(ring, string(bytes.Clone(sc.Bytes())))
	}
	if err := sc.Err(); err != nil {
		return ring, err
	}
	return ring, nil
}

// logf writes one executor line to a unit's log file.
func logf(w io.Writer, unit, format string, a ...any) {
	fmt.Fprintf(w, "%s %s: %s\n", time.Now().UTC().Format(time.RFC3339), unit, strings.TrimRight(fmt.Sprintf(format, a...), "\n"))
}
