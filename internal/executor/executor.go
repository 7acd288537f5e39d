// Package executor is the contract between a machine's agent (internal/agent)
// and the things that actually run units: systemd over D-Bus (internal/systemd)
// and supervised processes (internal/process). It holds types only.
package executor

import "context"

// Spec is one unit to run on this machine.
type Spec struct {
	// Name is the unit name, e.g. "nginx@1.service".
	Name string
	// Body is the unit file as submitted (specifiers not expanded: systemd and
	// the process executor expand them themselves).
	Body []byte
	// Hash identifies Body (the store's content hash); an executor may use it
	// to tell that an installed unit must be replaced.
	Hash string
	// EnvFile is the path of the machine-facts environment file
	// (FLOTILLA_MACHINE_ID, FLOTILLA_PUBLIC_IP, PUBLIC_IP, metadata …) that the
	// agent maintains; executors make it available to the unit's processes.
	EnvFile string
	// Env holds the same facts, for executors that pass them directly.
	Env map[string]string
	// Fenced is set when the unit asks to stop with its agent
	// ([X-Flotilla] OnDisconnect=stop): an executor that can bind the
	// unit's lifetime to the agent's (systemd's AgentUnit) does so for
	// these units alone, so that an agent restart leaves the others running.
	Fenced bool
}

// State is a unit's state as systemd reports it (and fleet shows it):
// Load "loaded"/"not-found", Active "active"/"inactive"/"failed"/"activating"/
// "deactivating", Sub "running"/"exited"/"dead"/"failed"/"auto-restart"/….
type State struct {
	Load, Active, Sub string
}

// Executor runs units. Implementations are safe for concurrent use.
type Executor interface {
	// Start installs spec (replacing an older body of the same name that this
	// executor owns) and starts it. Starting a running unit with the same hash
	// is a no-op.
	Start(ctx context.Context, spec Spec) error
	// Stop stops a unit, ending every process it started; it stays installed.
	Stop(ctx context.Context, name string) error
	// Remove stops a unit and uninstalls it. Removing an unknown unit is a no-op.
	Remove(ctx context.Context, name string) error
	// States returns the state of every unit this executor owns.
	States(ctx context.Context) (map[string]State, error)
	// Changes delivers a value whenever some unit's state may have changed, so
	// that the agent can report promptly; it may be nil (the agent polls).
	Changes() <-chan struct{}
	// Journal returns up to lines last log lines of a unit.
	Journal(ctx context.Context, name string, lines int) ([]string, error)
	// Close releases the executor's resources. It does not stop units: the
	// agent decides that. Close is idempotent.
	Close() error
}
