package hollow

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// Checker follows the scheduler's keys through one watch and checks, at every
// revision, that no unit other than a global one is targeted at or reported
// running on two machines.
type Checker struct {
	reg    *registry.Registry
	global map[string]bool

	mu         sync.Mutex
	targets    map[string]map[string]bool // unit → machines it is targeted at
	running    map[string]map[string]bool // unit → machines reporting it running
	violations []string
	retargets  int // schedule keys deleted: a unit taken off a machine
	err        error
	w          *store.Watch
	done       chan struct{}
}

// NewChecker reads the scheduler's keys and follows them until Close.
// global names the units that run on every machine.
func NewChecker(ctx context.Context, reg *registry.Registry, global map[string]bool) (*Checker, error) {
	k := &Checker{reg: reg, global: global, targets: map[string]map[string]bool{},
		running: map[string]map[string]bool{}, done: make(chan struct{})}
	kvs, rev, err := reg.Client().GetPrefix(ctx, reg.Prefix())
	if err != nil {
		return nil, fmt.Errorf("checker: %w", err)
	}
	for _, kv := range kvs {
		k.apply(store.Event{Type: store.EventPut, KV: kv})
	}
	k.w = reg.Client().WatchPrefix(ctx, reg.Prefix(), rev+1)
	go func() {
		defer close(k.done)
		for b := range k.w.C {
			k.mu.Lock()
			if b.Err != nil && k.err == nil && ctx.Err() == nil {
				k.err = b.Err
			}
			for _, ev := range b.Events {
				k.applyLocked(ev)
			}
			k.checkLocked(b.Rev)
			k.mu.Unlock()
		}
	}()
	return k, nil
}

func (k *Checker) apply(ev store.Event) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.applyLocked(ev)
}

func (k *Checker) applyLocked(ev store.Event) {
	key := ev.KV.Key
	switch {
	case strings.HasPrefix(key, k.reg.Prefix()+"schedule/"):
		m, u, err := k.reg.ParseScheduleKey(key)
		if err != nil {
			return
		}
		if ev.Type == store.EventDelete {
			delete(k.targets[u], m)
			k.retargets++
			return
		}
		if k.targets[u] == nil {
			k.targets[u] = map[string]bool{}
		}
		k.targets[u][m] = true
	case strings.HasPrefix(key, k.reg.Prefix()+"states/"):
		if ev.Type == store.EventDelete {
			rest := strings.TrimPrefix(key, k.reg.Prefix()+"states/")
			if i := strings.LastIndexByte(rest, '/'); i > 0 {
				delete(k.running[rest[:i]], rest[i+1:])
			}
			return
		}
		st, err := k.reg.DecodeState(ev.KV)
		if err != nil {
			return
		}
		if k.running[st.Unit] == nil {
			k.running[st.Unit] = map[string]bool{}
		}
		if st.Running() {
			k.running[st.Unit][st.Machine] = true
		} else {
			delete(k.running[st.Unit], st.Machine)
		}
	}
}

func (k *Checker) checkLocked(rev int64) {
	if len(k.violations) > 20 {
		return
	}
	for u, ms := range k.targets {
		if len(ms) > 1 && !k.global[u] {
			k.violations = append(k.violations, fmt.Sprintf("revision %d: %s targeted at %d machines", rev, u, len(ms)))
		}
	}
	for u, ms := range k.running {
		if len(ms) > 1 && !k.global[u] {
			k.violations = append(k.violations, fmt.Sprintf("revision %d: %s running on %d machines", rev, u, len(ms)))
		}
	}
}

// Status is what the checker has seen so far.
type Status struct {
	// Active counts (unit, machine) pairs that are targeted and reported running.
	Active int
	// OnLost counts targets on machines in the lost set given to Status.
	OnLost int
	// Retargets counts schedule keys deleted so far (a unit taken off a machine).
	Retargets  int
	Violations []string
	Err        error
}

// Status reports the checker's view; lost names machines that must hold no
// target any more.
func (k *Checker) Status(lost map[string]bool) Status {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := Status{Retargets: k.retargets, Violations: append([]string(nil), k.violations...), Err: k.err}
	for u, ms := range k.targets {
		for m := range ms {
			if lost[m] {
				s.OnLost++
			}
			if k.running[u][m] {
				s.Active++
			}
		}
	}
	return s
}

// Close stops following.
func (k *Checker) Close() {
	k.w.Close()
	<-k.done
}
