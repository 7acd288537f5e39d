package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

// The failure policy ([X-Flotilla] RestartFailed=, RestartFailedWindow=,
// OnFailed=, AvoidFailedFor=). A launched unit whose executor reports it
// "failed" (systemd, or the process executor, gave up on it: Restart=no, or
// its start limit hit) is started again in place, up to RestartFailed times
// within RestartFailedWindow. Once that budget is used and it fails again,
// the agent gives up on it here: it stays failed and the agent writes a
// failure record (registry.Failure) that the engine reads as "avoid this
// machine" for AvoidFailedFor (OnFailed=move), so the unit moves. The
// budget is counted in memory: an agent restart starts it afresh. It is
// reset when the unit is stopped, removed or given a new body; the record
// is deleted when the unit runs here again with the body that failed.

// failState is the failure bookkeeping of one unit on this machine.
type failState struct {
	hash     string      // the body the counts are for
	restarts []time.Time // restarts in place, oldest first
	gaveUp   bool        // out of budget: left failed, record written
	recorded bool        // a record of ours exists in etcd
}

// policy returns the failure policy of body (of hash); a body that does not
// parse has the defaults (the executor refuses it anyway).
func (a *Agent) policy(name, hash string, body []byte) unit.FailurePolicy {
	if p, ok := a.policies[hash]; ok {
		return p
	}
	var fl unit.Flotilla
	if f, err := unit.Parse(name, body); err == nil {
		fl = f.Flotilla
	}
	p := fl.FailurePolicy()
	a.policies[hash] = p
	return p
}

// resetFailures forgets the restart budget of a unit (stopped, removed, new
// body); a record in etcd stays until it runs out or the unit runs here.
func (a *Agent) resetFailures(name string) {
	if fs := a.fails[name]; fs != nil {
		fs.restarts, fs.gaveUp = nil, false
	}
}

// handleFailed applies the failure policy to every launched unit the
// executor reports failed, and clears the records of units running again.
func (s *session) handleFailed(ctx context.Context, states map[string]executor.State) {
	a := s.a
	now := time.Now()
	for name, as := range s.desired {
		st, ok := states[name]
		if !ok || as.Desired != registry.Launched || a.started[name] != as.Hash {
			continue
		}
		if _, refused := a.failed[name]; refused {
			continue
		}
		fs := a.fails[name]
		if fs == nil || fs.hash != as.Hash {
			fs = &failState{hash: as.Hash, recorded: fs != nil && fs.recorded}
			a.fails[name] = fs
		}
		if st.Active == "active" && fs.recorded {
			s.clearRecord(ctx, name)
			continue
		}
		if st.Active != "failed" || fs.gaveUp {
			continue
		}
		body, err := s.body(ctx, as.Hash)
		if err != nil {
			a.log.Warn("read unit body for its failure policy", "unit", name, "err", err)
			continue
		}
		p := a.policy(name, as.Hash, body)
		kept := fs.restarts[:0]
		for _, t := range fs.restarts {
			if p.Window == unit.Infinity || now.Sub(t) < p.Window {
				kept = append(kept, t)
			}
		}
		fs.restarts = kept
		if len(fs.restarts) < p.Restarts {
			fs.restarts = append(fs.restarts, now)
			a.log.Warn("unit failed; starting it again here (RestartFailed=)", "unit", name,
				"restart", len(fs.restarts), "of", p.Restarts, "window", p.Window, "sub", st.Sub)
			delete(a.started, name)
			s.apply(ctx, name)
			continue
		}
		s.giveUp(ctx, name, as.Hash, st, p)
	}
}

// giveUp leaves a unit failed here and records it; a record that cannot
// be written is tried again at the next report.
func (s *session) giveUp(ctx context.Context, name, hash string, st executor.State, p unit.FailurePolicy) {
	a := s.a
	fs := a.fails[name]
	f := registry.Failure{
		Unit: name, Machine: a.opts.Machine.ID, Hash: hash, Restarts: len(fs.restarts), At: time.Now().UTC(), Move: p.Move,
		Message: fmt.Sprintf("failed (%s/%s) after %d restarts in place within %s", st.Active, st.Sub, len(fs.restarts), p.Window),
	}
	rctx, cancel := s.rpc(ctx)
	err := a.reg.PutFailure(rctx, f, p.Avoid)
	cancel()
	if err != nil {
		a.log.Error("unit failed for good here, but its failure record was not written; trying again", "unit", name, "err", err)
		return
	}
	fs.gaveUp, fs.recorded = true, true
	if p.Move {
		a.log.Warn("unit failed with its restart budget used; it moves to another machine (OnFailed=move)",
			"unit", name, "restarts", f.Restarts, "window", p.Window, "avoid-for", p.Avoid)
	} else {
		a.log.Warn("unit failed with its restart budget used; it stays failed here (OnFailed=stay)",
			"unit", name, "restarts", f.Restarts, "window", p.Window)
	}
}

// clearRecord deletes this machine's failure record of a unit that runs
// here again.
func (s *session) clearRecord(ctx context.Context, name string) {
	a := s.a
	rctx, cancel := s.rpc(ctx)
	err := a.reg.ClearFailure(rctx, name, a.opts.Machine.ID)
	cancel()
	if err != nil {
		a.log.Warn("clear failure record", "unit", name, "err", err)
		return
	}
	a.fails[name].recorded = false
}

// failureReport adds the failure bookkeeping of a unit to its state.
func (a *Agent) failureReport(name string, us *registry.UnitState) {
	fs := a.fails[name]
	if fs == nil || fs.hash != us.Hash {
		return
	}
	us.Restarts = len(fs.restarts)
	if fs.gaveUp {
		us.GaveUp = true
		if us.Message == "" {
			us.Message = fmt.Sprintf("failed for good here after %d restarts in place", len(fs.restarts))
		}
	}
}
