// Package rollout carries out planned change without dropping a request:
// rolling a unit's new body over its instances (or a global unit's machines)
// a few at a time, and moving units off a machine one at a time. It writes
// only through internal/registry (job bodies, pins, move requests, drain
// marks); the engine and agents do the rest. What it adds is the wait: an
// instance counts as done only when it runs its new body (active, reported by
// its agent), is announced again (its key under the announce prefix written
// after the change) and every render that publishes its status (see
// Watcher.StatusPrefix) and watches that key has applied the announcement.
//
// A Roller's methods block until done, or until an instance fails (then the
// rollout halts there, the instances not yet touched keep their old body,
// and the error names the unit and the reason). The CLI does not run them
// itself: it stores a Record (Submit) and follows it (Follow), and the
// Driver elected among the `scheduler serve` machines carries records out
// with a Roller, one at a time, resuming after a failover.
package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// Defaults of Options.
const (
	DefaultAnnouncePrefix = "/clusterstate/"
	DefaultStatusPrefix   = "/flotilla/render/"
	DefaultTimeout        = 2 * time.Minute
)

// Options configures a Roller.
type Options struct {
	// Registry is the scheduler state. Required.
	Registry *registry.Registry
	// AnnouncePrefix is where units announce themselves: a unit is announced
	// when a key under it ends in "/<unit name>". "" means
	// DefaultAnnouncePrefix; "-" turns the announcement check off.
	AnnouncePrefix string
	// StatusPrefix is where renders publish what they applied
	// (<prefix><host>/<resource> = {"prefixes":[…],"revision":N}). ""
	// means DefaultStatusPrefix; "-" turns the check off.
	StatusPrefix string
	// Timeout bounds the wait for one instance (default DefaultTimeout).
	Timeout time.Duration
	// Poll is the interval between two reads (default 200ms).
	Poll time.Duration
	// Out receives one progress line per instance; nil discards them.
	Out io.Writer
	// Full keeps machine ids and hashes unshortened in progress lines.
	Full bool
}

// Roller rolls units and moves them. Its methods block; it is safe for
// concurrent use (each call reads the registry afresh).
type Roller struct {
	o   Options
	reg *registry.Registry
}

// New checks o and returns a Roller.
func New(o Options) (*Roller, error) {
	if o.Registry == nil {
		return nil, errors.New("rollout: no registry")
	}
	if o.AnnouncePrefix == "" {
		o.AnnouncePrefix = DefaultAnnouncePrefix
	}
	if o.StatusPrefix == "" {
		o.StatusPrefix = DefaultStatusPrefix
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Poll <= 0 {
		o.Poll = 200 * time.Millisecond
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	return &Roller{o: o, reg: o.Registry}, nil
}

// Ready is what a wait saw when an instance was done.
type Ready struct {
	Machine   string
	Announced string // the announcement key, "" if not checked
	Renders   int    // renders that acknowledged it
	Took      time.Duration
}

// Failure is an instance that did not become ready: the rollout halts there.
type Failure struct {
	Unit, Machine string
	Reason        string
}

func (f *Failure) Error() string {
	if f.Machine != "" {
		return fmt.Sprintf("unit %s on %s: %s", f.Unit, f.Machine, f.Reason)
	}
	return fmt.Sprintf("unit %s: %s", f.Unit, f.Reason)
}

// want says what an instance must show to be done.
type want struct {
	unit, hash string
	// machine is where it must run; "" : wherever it is targeted.
	machine string
	// since: an announcement counts only if written after this revision.
	since int64
	// announce: the instance must be announced (it was before the change).
	announce bool
	// move: a move request of the unit is pending; its key gone while the
	// unit is not targeted at machine means the engine dropped it.
	move bool
}

// announceKey returns the key announcing unit (the newest if several), or
// found false.
func (r *Roller) announceKey(ctx context.Context, unit string) (store.KV, bool, error) {
	if r.o.AnnouncePrefix == "-" {
		return store.KV{}, false, nil
	}
	kvs, _, err := r.reg.Client().GetPrefix(ctx, r.o.AnnouncePrefix)
	if err != nil {
		return store.KV{}, false, fmt.Errorf("read announcements under %s: %w", r.o.AnnouncePrefix, err)
	}
	var best store.KV
	found := false
	for _, kv := range kvs {
		if path.Base(kv.Key) == unit && (!found || kv.ModRevision > best.ModRevision) {
			best, found = kv, true
		}
	}
	return best, found, nil
}

// renderStatus is what a render publishes per resource.
type renderStatus struct {
	Host     string   `json:"host"`
	Resource string   `json:"resource"`
	Prefixes []string `json:"prefixes"`
	Revision int64    `json:"revision"`
}

// behind returns the renders (host/resource) whose watched prefixes cover key
// and which have not applied rev yet, and how many cover it.
func (r *Roller) behind(ctx context.Context, key string, rev int64) (lagging []string, covering int, err error) {
	if r.o.StatusPrefix == "-" {
		return nil, 0, nil
	}
	kvs, _, err := r.reg.Client().GetPrefix(ctx, r.o.StatusPrefix)
	if err != nil {
		return nil, 0, fmt.Errorf("read render status under %s: %w", r.o.StatusPrefix, err)
	}
	for _, kv := range kvs {
		var st renderStatus
		if json.Unmarshal(kv.Value, &st) != nil {
			continue // not a status; nothing to wait for
		}
		for _, p := range st.Prefixes {
			if strings.HasPrefix(key, p) {
				covering++
				if st.Revision < rev {
					lagging = append(lagging, strings.TrimPrefix(kv.Key, r.o.StatusPrefix))
				}
				break
			}
		}
	}
	sort.Strings(lagging)
	return lagging, covering, nil
}

// wait blocks until w holds, the instance fails, or the timeout passes.
func (r *Roller) wait(ctx context.Context, w want) (Ready, error) {
	start := time.Now()
	deadline := start.Add(r.o.Timeout)
	var why string
	for {
		rd, done, reason, err := r.check(ctx, w)
		if err != nil {
			var f *Failure
			if errors.As(err, &f) {
				return Ready{}, err
			}
			why = err.Error() // etcd briefly unreachable: keep trying
		} else if done {
			rd.Took = time.Since(start)
			return rd, nil
		} else {
			why = reason
		}
		if time.Now().After(deadline) {
			return Ready{}, &Failure{Unit: w.unit, Machine: w.machine, Reason: fmt.Sprintf("not ready after %s: %s", r.o.Timeout, why)}
		}
		select {
		case <-ctx.Done():
			return Ready{}, fmt.Errorf("wait for %s: %w (%s)", w.unit, ctx.Err(), why)
		case <-time.After(r.o.Poll):
		}
	}
}

// check looks once: done, or why not yet, or a Failure.
func (r *Roller) check(ctx context.Context, w want) (Ready, bool, string, error) {
	s, err := r.reg.Snapshot(ctx)
	if err != nil {
		return Ready{}, false, "", err
	}
	machines := s.Targets(w.unit)
	if w.machine != "" {
		machines = []string{w.machine}
	}
	if len(machines) == 0 {
		if why := s.Unplaced[w.unit]; why != "" {
			return Ready{}, false, "not placed: " + why, nil
		}
		return Ready{}, false, "not targeted at any machine yet", nil
	}
	m := machines[0]
	if _, pending := s.Plan.Moves[w.unit]; w.move && !pending {
		if _, there := s.Schedule[w.unit][m]; !there && len(s.Schedule[w.unit]) > 0 {
			return Ready{}, false, "", &Failure{Unit: w.unit, Machine: r.label(m), Reason: "the engine dropped the move (its log says why)"}
		}
	}
	if _, ok := s.Schedule[w.unit][m]; !ok {
		return Ready{}, false, "not targeted at " + r.label(m) + " yet", nil
	}
	st, ok := s.States[w.unit][m]
	switch {
	case !ok:
		return Ready{}, false, "no state reported by " + r.label(m), nil
	case st.Hash != w.hash:
		return Ready{}, false, fmt.Sprintf("%s still reports body %s", r.label(m), r.short(st.Hash)), nil
	case st.Active == "failed":
		reason := fmt.Sprintf("failed (%s/%s; `scheduler journal %s` shows why)", st.Active, st.Sub, w.unit)
		if st.Message != "" {
			reason = "failed: " + st.Message
		}
		return Ready{}, false, "", &Failure{Unit: w.unit, Machine: r.label(m), Reason: reason}
	case st.State != string(registry.Launched) || st.Active != "active":
		return Ready{}, false, fmt.Sprintf("%s/%s on %s", st.Active, st.Sub, r.label(m)), nil
	}
	rd := Ready{Machine: m}
	if !w.announce {
		return rd, true, "", nil
	}
	kv, found, err := r.announceKey(ctx, w.unit)
	if err != nil {
		return Ready{}, false, "", err
	}
	if !found || kv.ModRevision <= w.since {
		return Ready{}, false, "active, not announced yet under " + r.o.AnnouncePrefix, nil
	}
	rd.Announced = kv.Key
	lag, n, err := r.behind(ctx, kv.Key, kv.ModRevision)
	if err != nil {
		return Ready{}, false, "", err
	}
	if len(lag) > 0 {
		return Ready{}, false, fmt.Sprintf("announced; render %s has not applied revision %d yet", strings.Join(lag, ", "), kv.ModRevision), nil
	}
	rd.Renders = n
	return rd, true, "", nil
}

func (r *Roller) label(m string) string {
	if !r.o.Full && len(m) > 8 {
		return m[:8] + "..."
	}
	return m
}

func (r *Roller) short(h string) string {
	if !r.o.Full && len(h) > 7 {
		return h[:7]
	}
	return h
}

// describe is the tail of a progress line.
func (r *Roller) describe(rd Ready) string {
	var b strings.Builder
	fmt.Fprintf(&b, "active on %s", r.label(rd.Machine))
	if rd.Announced != "" {
		fmt.Fprintf(&b, ", announced %s, applied by %d render(s)", rd.Announced, rd.Renders)
	}
	fmt.Fprintf(&b, " (%s)", rd.Took.Round(10*time.Millisecond))
	return b.String()
}

// revision returns the store's current revision.
func (r *Roller) revision(ctx context.Context) (int64, error) {
	_, _, rev, err := r.reg.Client().Get(ctx, r.reg.JobKey(""))
	return rev, err
}
