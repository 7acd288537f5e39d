// Package hollow runs hollow machines, as Kubernetes' kubemark does: real
// agents (each with its own etcd client, presence lease and watches) whose
// executor only keeps unit states in memory, so that a thousand machines fit
// on one host and the scheduler's own costs (etcd traffic, engine passes,
// the agents' reports) can be measured at scale.
//
// Every part runs in a process of its own, started by Start from one
// program that hands over to RunProcess (e.g. the test binary re-executed):
// each engine candidate, as in a deployment, reporting its passes on its
// stdout (losing one kills it); and the agents, a few hundred machines to a
// process (Config.AgentProcs), answering requests on their stdin (lose a
// machine, report the process's CPU and heap). The agents processes run
// niced (AgentNice): the machines stand for other hosts, as kubemark's
// hollow nodes run apart from the control plane they load, so that the
// engines, etcd and the caller's checker get the CPU a host of their own
// would give them rather than share it with a thousand agents.
package hollow

import (
	"context"
	"sync"

	"github.com/flotilla/flotilla/internal/executor"
)

// Executor is an executor.Executor that "runs" units instantly: Start makes a
// unit active and running, Stop inactive and dead, Remove forgets it. It is
// safe for concurrent use.
type Executor struct {
	mu      sync.Mutex
	units   map[string]executor.State
	changes chan struct{}
}

var _ executor.Executor = (*Executor)(nil)

// NewExecutor returns an executor with no units.
func NewExecutor() *Executor {
	return &Executor{units: map[string]executor.State{}, changes: make(chan struct{}, 1)}
}

func (e *Executor) set(name string, st executor.State, keep bool) {
	e.mu.Lock()
	if keep {
		e.units[name] = st
	} else {
		delete(e.units, name)
	}
	e.mu.Unlock()
	select {
	case e.changes <- struct{}{}:
	default:
	}
}

// Start marks the unit running.
func (e *Executor) Start(_ context.Context, spec executor.Spec) error {
	e.set(spec.Name, executor.State{Load: "loaded", Active: "active", Sub: "running"}, true)
	return nil
}

// Stop marks the unit dead; it stays installed.
func (e *Executor) Stop(_ context.Context, name string) error {
	e.mu.Lock()
	_, ok := e.units[name]
	e.mu.Unlock()
	if ok {
		e.set(name, executor.State{Load: "loaded", Active: "inactive", Sub: "dead"}, true)
	}
	return nil
}

// Remove forgets the unit.
func (e *Executor) Remove(_ context.Context, name string) error {
	e.set(name, executor.State{}, false)
	return nil
}

// States returns a copy of every unit's state.
func (e *Executor) States(context.Context) (map[string]executor.State, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]executor.State, len(e.units))
	for k, v := range e.units {
		out[k] = v
	}
	return out, nil
}

// Changes signals after every change.
func (e *Executor) Changes() <-chan struct{} { return e.changes }

// Journal has nothing to say: hollow units print nothing.
func (e *Executor) Journal(context.Context, string, int) ([]string, error) { return nil, nil }

// Close does nothing: units are the agent's to stop.
func (e *Executor) Close() error { return nil }
