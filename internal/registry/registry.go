// Package registry is the scheduler's etcd key layout and the typed reads and
// writes over it. Every key lives under one prefix (default "/flotilla/"):
//
//	<p>units/<hash>              unit body, by content hash (immutable; shared by
//	                             every unit with the same body)
//	<p>jobs/<unit>               desired state of a submitted unit, JSON
//	                             {"hash":…,"desired":"inactive|loaded|launched"};
//	                             written by the CLI
//	<p>schedule/<machine>/<unit> the unit is targeted at that machine, JSON
//	                             {"hash":…,"desired":…}; written only by the engine
//	                             leader, every write fenced by its leadership;
//	                             a global unit has one key per machine. An agent
//	                             watches only its own <p>schedule/<machine>/.
//	<p>unplaced/<unit>           why a loaded/launched unit has no machine (text);
//	                             written by the engine leader
//	<p>machines/<id>             machine presence, JSON {"id","ip","metadata",
//	                             "version"}; bound to the agent's lease: lease
//	                             loss = machine gone
//	<p>states/<unit>/<machine>   the unit's state as reported by that machine's
//	                             agent, JSON {"hash","load","active","sub"};
//	                             bound to the agent's presence lease
//	<p>engine/<lease>            engine leader election (concurrency.Election)
//	<p>failed/<unit>/<machine>   the unit failed there after its restart budget
//	                             (see failed.go); written by that machine's
//	                             agent, bound to a lease that runs out
//	<p>drain/, moves/, pins/     planned change (drains, move requests, bodies
//	                             pinned during a rollout): see rollout.go
//
// Desired state lives apart from the target so that the CLI and the engine
// never write the same key: the CLI owns jobs/, the engine owns schedule/ and
// unplaced/, each agent owns its machines/ and states/ keys.
package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/flotilla/flotilla/internal/store"
)

// DefaultPrefix is the prefix every scheduler key lives under by default.
const DefaultPrefix = "/flotilla/"

// MaxTxnOps bounds the operations put in one transaction (etcd's default
// --max-txn-ops is 128).
const MaxTxnOps = 120

// Desired is a unit's desired state, as fleet names them.
type Desired string

// The desired states.
const (
	Inactive Desired = "inactive"
	Loaded   Desired = "loaded"
	Launched Desired = "launched"
)

// ParseDesired checks a desired-state name.
func ParseDesired(s string) (Desired, error) {
	switch d := Desired(s); d {
	case Inactive, Loaded, Launched:
		return d, nil
	}
	return "", fmt.Errorf("desired state %q: want inactive, loaded or launched", s)
}

// ErrNotFound is returned when a unit is not submitted.
var ErrNotFound = errors.New("registry: unit not found")

// Registry reads and writes the scheduler's keys. It is safe for concurrent
// use; the zero value is not usable (use New).
type Registry struct {
	c      *store.Client
	prefix string
}

// New returns a Registry over c under prefix ("" means DefaultPrefix; a
// missing trailing slash is added).
func New(c *store.Client, prefix string) *Registry {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Registry{c: c, prefix: prefix}
}

// Client returns the store client the registry uses.
func (r *Registry) Client() *store.Client { return r.c }

// Prefix returns the key prefix, ending in "/".
func (r *Registry) Prefix() string { return r.prefix }

// Key layout.

// BodyKey is where the body with this hash is stored.
func (r *Registry) BodyKey(hash string) string { return r.prefix + "units/" + hash }

// JobKey holds a unit's desired state.
func (r *Registry) JobKey(unit string) string { return r.prefix + "jobs/" + unit }

// ScheduleKey targets unit at machine.
func (r *Registry) ScheduleKey(machine, unit string) string {
	return r.prefix + "schedule/" + machine + "/" + unit
}

// SchedulePrefix is the prefix of everything targeted at machine.
func (r *Registry) SchedulePrefix(machine string) string {
	return r.prefix + "schedule/" + machine + "/"
}

// UnplacedKey holds why unit is not placed.
func (r *Registry) UnplacedKey(unit string) string { return r.prefix + "unplaced/" + unit }

// MachineKey is a machine's presence key.
func (r *Registry) MachineKey(id string) string { return r.prefix + "machines/" + id }

// StateKey holds unit's state as machine reports it.
func (r *Registry) StateKey(unit, machine string) string {
	return r.prefix + "states/" + unit + "/" + machine
}

// ElectionPrefix is the engine's election prefix.
func (r *Registry) ElectionPrefix() string { return r.prefix + "engine" }

func (r *Registry) sub(name string) string { return r.prefix + name + "/" }

// Values.

// Job is a submitted unit and what its user wants of it.
type Job struct {
	Name    string  `json:"-"`
	Hash    string  `json:"hash"`
	Desired Desired `json:"desired"`
}

// Assignment is a unit targeted at a machine by the engine.
type Assignment struct {
	Unit    string  `json:"-"`
	Machine string  `json:"-"`
	Hash    string  `json:"hash"`
	Desired Desired `json:"desired"`
}

// Machine is a machine's presence record.
type Machine struct {
	ID       string            `json:"id"`
	IP       string            `json:"ip"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Version  string            `json:"version,omitempty"`
	// LogDir is where the process executor keeps unit logs on that machine
	// (journal reads it when the machine is this host).
	LogDir string `json:"log_dir,omitempty"`
	// Capacity is the most non-global units the machine takes; 0: no limit.
	Capacity int `json:"capacity,omitempty"`
}

// UnitState is a unit's state on one machine, as its agent reports it.
type UnitState struct {
	Unit    string `json:"-"`
	Machine string `json:"-"`
	Hash    string `json:"hash"`
	// State is the agent's side of fleet's job state: "launched" once it
	// has started the unit with Hash, "loaded" when it holds it stopped.
	State  string `json:"state,omitempty"`
	Load   string `json:"load"`
	Active string `json:"active"`
	Sub    string `json:"sub"`
	// Message says why a unit could not be started, when it could not, or
	// that it failed for good here.
	Message string `json:"message,omitempty"`
	// Restarts is how many times the agent started the failed unit again
	// on this machine within its RestartFailedWindow.
	Restarts int `json:"restarts,omitempty"`
	// GaveUp is set once the unit failed with its restart budget used here.
	GaveUp bool `json:"gave_up,omitempty"`
}

// Running reports whether the state means the unit has (or may have)
// processes: active, activating, deactivating, reloading.
func (s UnitState) Running() bool {
	switch s.Active {
	case "active", "activating", "deactivating", "reloading":
		return true
	}
	return false
}

// Snapshot is a consistent view of everything but the bodies.
type Snapshot struct {
	// Rev is the store revision of the snapshot; a watch from Rev+1 misses nothing.
	Rev      int64
	Jobs     map[string]Job
	Machines map[string]Machine
	// Schedule maps unit → machine → assignment.
	Schedule map[string]map[string]Assignment
	Unplaced map[string]string
	// States maps unit → machine → state.
	States map[string]map[string]UnitState
	// ModRevs holds the mod revision of every schedule and unplaced key read,
	// by key, for guarded updates.
	ModRevs map[string]int64
	// Skipped lists the keys left out because their values do not decode.
	Skipped []error
	// Plan holds drains, moves and pins (see rollout.go).
	Plan Plan
	// Failed maps unit → machine → failure record (see failed.go).
	Failed map[string]map[string]Failure
}

// Snapshot reads jobs, machines, schedule, unplaced and states in one
// consistent read. Keys whose values do not decode are left out and listed in
// Skipped (each error names the key): one hostile or corrupt key must not stop
// the engine from reconciling everything else.
func (r *Registry) Snapshot(ctx context.Context) (*Snapshot, error) {
	prefixes := r.snapshotPrefixes()
	m, rev, err := r.c.GetPrefixes(ctx, append(prefixes, r.planPrefixes()...))
	if err != nil {
		return nil, fmt.Errorf("read scheduler state: %w", err)
	}
	return r.decodeSnapshot(prefixes, m, rev), nil
}

// snapshotPrefixes are the prefixes a Snapshot reads besides the plan's.
func (r *Registry) snapshotPrefixes() []string {
	return []string{r.sub("jobs"), r.sub("machines"), r.sub("schedule"), r.sub("unplaced"), r.sub("states"), r.MetadataPrefix(""), r.FailedPrefix()}
}

// decodeSnapshot builds a Snapshot from the kvs read under prefixes
// (snapshotPrefixes) and the plan's, at revision rev.
func (r *Registry) decodeSnapshot(prefixes []string, m map[string][]store.KV, rev int64) *Snapshot {
	s := &Snapshot{
		Rev:      rev,
		Jobs:     make(map[string]Job, len(m[prefixes[0]])),
		Machines: make(map[string]Machine, len(m[prefixes[1]])),
		Schedule: make(map[string]map[string]Assignment, len(m[prefixes[2]])),
		Unplaced: make(map[string]string, len(m[prefixes[3]])),
		States:   make(map[string]map[string]UnitState, len(m[prefixes[4]])),
		ModRevs:  make(map[string]int64, len(m[prefixes[2]])+len(m[prefixes[3]])),
	}
	for _, kv := range m[prefixes[0]] {
		j, err := r.DecodeJob(kv)
		if err != nil {
			s.Skipped = append(s.Skipped, err)
			continue
		}
		s.Jobs[j.Name] = j
	}
	for _, kv := range m[prefixes[1]] {
		mc, err := r.DecodeMachine(kv)
		if err != nil {
			s.Skipped = append(s.Skipped, err)
			continue
		}
		s.Machines[mc.ID] = mc
	}
	r.mergeMetadata(s.Machines, m[prefixes[5]])
	for _, kv := range m[prefixes[2]] {
		a, err := r.DecodeAssignment(kv)
		if err != nil {
			s.Skipped = append(s.Skipped, err)
			continue
		}
		if s.Schedule[a.Unit] == nil {
			s.Schedule[a.Unit] = map[string]Assignment{}
		}
		s.Schedule[a.Unit][a.Machine] = a
		s.ModRevs[kv.Key] = kv.ModRevision
	}
	for _, kv := range m[prefixes[3]] {
		name := strings.TrimPrefix(kv.Key, prefixes[3])
		s.Unplaced[name] = string(kv.Value)
		s.ModRevs[kv.Key] = kv.ModRevision
	}
	for _, kv := range m[prefixes[4]] {
		st, err := r.DecodeState(kv)
		if err != nil {
			s.Skipped = append(s.Skipped, err)
			continue
		}
		if s.States[st.Unit] == nil {
			s.States[st.Unit] = map[string]UnitState{}
		}
		s.States[st.Unit][st.Machine] = st
	}
	s.Failed = map[string]map[string]Failure{}
	for _, kv := range m[prefixes[6]] {
		f, err := r.decodeFailure(kv.Key, kv.Value)
		if err != nil {
			s.Skipped = append(s.Skipped, err)
			continue
		}
		if s.Failed[f.Unit] == nil {
			s.Failed[f.Unit] = map[string]Failure{}
		}
		s.Failed[f.Unit][f.Machine] = f
	}
	r.decodePlan(s, m)
	return s
}

// Targets returns the machines unit is targeted at, sorted.
func (s *Snapshot) Targets(unit string) []string {
	var out []string
	for m := range s.Schedule[unit] {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// Decoding, by key kind.

// DecodeJob decodes a jobs/ key.
func (r *Registry) DecodeJob(kv store.KV) (Job, error) {
	var j Job
	if err := json.Unmarshal(kv.Value, &j); err != nil {
		return Job{}, fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	j.Name = strings.TrimPrefix(kv.Key, r.sub("jobs"))
	return j, nil
}

// DecodeMachine decodes a machines/ key.
func (r *Registry) DecodeMachine(kv store.KV) (Machine, error) {
	var m Machine
	if err := json.Unmarshal(kv.Value, &m); err != nil {
		return Machine{}, fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	m.ID = strings.TrimPrefix(kv.Key, r.sub("machines"))
	return m, nil
}

// ParseScheduleKey splits a schedule/ key into its machine and unit; both
// must be non-empty. A delete event has only its key: this is all of it
// that can be read.
func (r *Registry) ParseScheduleKey(key string) (machine, unit string, err error) {
	rest := strings.TrimPrefix(key, r.sub("schedule"))
	machine, unit, ok := strings.Cut(rest, "/")
	if !ok || machine == "" || unit == "" || rest == key {
		return "", "", fmt.Errorf("decode %s: not %s<machine>/<unit>", key, r.sub("schedule"))
	}
	return machine, unit, nil
}

// DecodeAssignment decodes a schedule/ key and its value; on any error it
// returns the zero Assignment.
func (r *Registry) DecodeAssignment(kv store.KV) (Assignment, error) {
	machine, unit, err := r.ParseScheduleKey(kv.Key)
	if err != nil {
		return Assignment{}, err
	}
	a := Assignment{Unit: unit, Machine: machine}
	if err := json.Unmarshal(kv.Value, &a); err != nil {
		return Assignment{}, fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	return a, nil
}

// DecodeState decodes a states/ key.
func (r *Registry) DecodeState(kv store.KV) (UnitState, error) {
	rest := strings.TrimPrefix(kv.Key, r.sub("states"))
	i := strings.LastIndexByte(rest, '/')
	if i < 0 {
		return UnitState{}, fmt.Errorf("decode %s: not <unit>/<machine>", kv.Key)
	}
	st := UnitState{Unit: rest[:i], Machine: rest[i+1:]}
	if err := json.Unmarshal(kv.Value, &st); err != nil {
		return UnitState{}, fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	return st, nil
}

// Encode marshals a value for one of the registry's keys.
func Encode(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Only plain structs of strings and maps are encoded here.
		panic(fmt.Sprintf("registry: encode %T: %v", v, err))
	}
	return string(b)
}

// JournalRequestPrefix is where requests for machine's unit logs appear:
// <p>journal/req/<machine>/<unit>/<nonce> = number of lines, bound to the
// requester's lease. The machine's agent answers at JournalResponseKey.
func (r *Registry) JournalRequestPrefix(machine string) string {
	return r.prefix + "journal/req/" + machine + "/"
}

// JournalResponseKey is where an agent answers the request with this nonce:
// JSON {"lines":[…],"error":…}, bound to the agent's presence lease; the
// requester deletes it once read.
func (r *Registry) JournalResponseKey(nonce string) string {
	return r.prefix + "journal/resp/" + nonce
}

// JournalResponse is an agent's answer to a journal request.
type JournalResponse struct {
	Lines []string `json:"lines"`
	Error string   `json:"error,omitempty"`
}
