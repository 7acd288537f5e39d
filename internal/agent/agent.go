// Package agent runs one machine of the scheduler: it announces the machine's
// presence under a lease, watches what the engine targets at the machine,
// runs those units through an executor.Executor, and reports their states
// bound to the same lease.
//
// The safety rule: a unit runs on a machine only while that machine's
// presence lease lives. When the lease is lost (revoked, expired), or etcd
// has not confirmed it alive for a third of its TTL, at least 1.5s (the
// agent asks every quarter TTL) — so before etcd can expire it and the engine move the units
// — the agent stops every unit at once, then registers again with a new
// lease and starts what is targeted at it then. On start, and
// after every re-registration, units the executor runs that are not targeted
// at this machine are stopped and removed.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/atomicfile"
	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/process"
	"github.com/flotilla/flotilla/internal/registry"
)

// Options configures an Agent.
type Options struct {
	// Registry is where the machine registers and finds its units. Required.
	Registry *registry.Registry
	// Executor runs the units. Required.
	Executor executor.Executor
	// Machine is this machine's identity: ID (required), IP, Metadata, Version.
	Machine registry.Machine
	// TTL of the presence lease; default 10s.
	TTL time.Duration
	// EnvFile is where the machine facts are written; required.
	EnvFile string
	// PollInterval is how often unit states are polled when the executor has
	// no change feed, and at most how stale a report gets; default 1s.
	PollInterval time.Duration
	// StopTimeout bounds stopping all units when the lease is lost or the
	// agent ends; default 2 minutes.
	StopTimeout time.Duration
	// Logger receives the agent's logs; nil discards them.
	Logger *slog.Logger
}

// Agent is one machine's agent. Run it once.
type Agent struct {
	opts Options
	reg  *registry.Registry
	ex   executor.Executor
	log  *slog.Logger
	env  map[string]string
}

// New checks opts and returns an agent.
func New(opts Options) (*Agent, error) {
	switch {
	case opts.Registry == nil:
		return nil, errors.New("agent: no registry")
	case opts.Executor == nil:
		return nil, errors.New("agent: no executor")
	case opts.Machine.ID == "" || strings.ContainsAny(opts.Machine.ID, "/ \t\n"):
		return nil, fmt.Errorf("agent: machine id %q: must be non-empty, without / or spaces", opts.Machine.ID)
	case opts.EnvFile == "":
		return nil, errors.New("agent: no machine facts file")
	}
	if opts.TTL == 0 {
		opts.TTL = 10 * time.Second
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = time.Second
	}
	if opts.StopTimeout == 0 {
		opts.StopTimeout = 2 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Agent{
		opts: opts,
		reg:  opts.Registry,
		ex:   opts.Executor,
		log:  opts.Logger.With("machine", opts.Machine.ID),
		env:  Facts(opts.Machine),
	}, nil
}

// Facts returns the environment a machine gives its units:
// FLOTILLA_MACHINE_ID, FLOTILLA_PUBLIC_IP and PUBLIC_IP, and
// FLOTILLA_METADATA_<KEY> for each metadata key (upper-cased, characters
// other than letters and digits replaced by "_").
func Facts(m registry.Machine) map[string]string {
	env := map[string]string{
		"FLOTILLA_MACHINE_ID": m.ID,
		"FLOTILLA_PUBLIC_IP":  m.IP,
		"PUBLIC_IP":           m.IP,
	}
	for k, v := range m.Metadata {
		env["FLOTILLA_METADATA_"+envKey(k)] = v
	}
	return env
}

func envKey(k string) string {
	b := []byte(strings.ToUpper(k))
	for i, c := range b {
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

// writeFacts writes the machine facts file atomically.
func (a *Agent) writeFacts() error {
	keys := make([]string, 0, len(a.env))
	for k := range a.env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	vars := make([][2]string, len(keys))
	for i, k := range keys {
		vars[i] = [2]string{k, a.env[k]}
	}
	if err := atomicfile.Write(a.opts.EnvFile, process.WriteEnvFile(vars), 0o644); err != nil {
		return fmt.Errorf("machine facts: %w", err)
	}
	return nil
}

// errLeaseLost ends a session whose presence lease is gone.
var errLeaseLost = errors.New("presence lease lost")

// Run registers the machine and runs what is targeted at it until ctx is
// done. It then stops every unit, revokes the presence lease, and returns
// nil. Lost leases are survived (units stopped, machine registered again);
// Run returns an error only for what retrying cannot fix.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.writeFacts(); err != nil {
		return err
	}
	backoff := 200 * time.Millisecond
	for {
		err := a.session(ctx)
		// Whatever ended the session, nothing may keep running here.
		a.stopAll()
		if ctx.Err() != nil {
			return nil
		}
		a.log.Warn("agent session ended; units stopped, registering again", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		if backoff < 5*time.Second {
			backoff *= 2
		}
	}
}

// stopAll stops and removes every unit the executor has.
func (a *Agent) stopAll() {
	ctx, cancel := context.WithTimeout(context.Background(), a.opts.StopTimeout)
	defer cancel()
	states, err := a.ex.States(ctx)
	if err != nil {
		a.log.Error("list units to stop", "err", err)
		return
	}
	for name := range states {
		if err := a.ex.Remove(ctx, name); err != nil {
			a.log.Error("stop unit", "unit", name, "err", err)
		} else {
			a.log.Info("stopped unit", "unit", name)
		}
	}
}
