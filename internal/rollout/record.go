package rollout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/unit"
)

// Records: a planned change (roll, move, drain) is written by the CLI as a
// record, and carried out by the one driver that `scheduler serve` elects
// (see Driver), which writes its progress and outcome back into it. Keys,
// under the scheduler's prefix <p>, bound to no lease (a record outlives
// the CLI that wrote it and the driver that runs it):
//
//	<p>rollouts/<id>     JSON Record; <id> sorts by creation time
//	<p>rollout-driver/   the driver's election (concurrency.Election)

// Kind is what a record asks for.
type Kind string

// Kinds of records.
const (
	KindRoll  Kind = "roll"
	KindMove  Kind = "move"
	KindDrain Kind = "drain"
)

// State is where a record stands.
type State string

// States of a record: pending until a driver takes it, running while one
// carries it out (a driver elected after that one resumes it), then done or
// failed.
const (
	Pending State = "pending"
	Running State = "running"
	Done    State = "done"
	Failed  State = "failed"
)

// Record is one planned change handed to the driver, and what became of it.
type Record struct {
	ID      string    `json:"-"`
	Kind    Kind      `json:"kind"`
	Created time.Time `json:"created"`

	// Roll: the units and their new bodies, how many at a time, surge.
	Targets        []Target `json:"targets,omitempty"`
	MaxUnavailable int      `json:"max_unavailable,omitempty"`
	Surge          bool     `json:"surge,omitempty"`
	// Move: the unit and the machine asked for ("" : the scheduler's choice).
	Unit string `json:"unit,omitempty"`
	To   string `json:"to,omitempty"`
	// Drain: the machine (already marked drained by the CLI).
	Machine string `json:"machine,omitempty"`

	// Hashes are the bodies of Targets, stored under the registry's units/
	// with the record (kept there while the record is not over).
	Hashes []string `json:"hashes,omitempty"`

	// How the waits go (see Options).
	AnnouncePrefix string        `json:"announce_prefix,omitempty"`
	StatusPrefix   string        `json:"status_prefix,omitempty"`
	Timeout        time.Duration `json:"timeout,omitempty"`

	// Written by the driver.
	State    State     `json:"state"`
	Driver   string    `json:"driver,omitempty"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	// Announced: the roll's units announced when it began (for a resume).
	Announced map[string]bool `json:"announced,omitempty"`
	// Plan: the move as resolved when it began (for a resume).
	Plan *MovePlan `json:"plan,omitempty"`
	// Progress holds one line per instance, as a blocking command prints them.
	Progress []string `json:"progress,omitempty"`
	// Error says why it failed; FailedUnit and FailedMachine name the
	// instance that halted it, when one did.
	Error         string `json:"error,omitempty"`
	FailedUnit    string `json:"failed_unit,omitempty"`
	FailedMachine string `json:"failed_machine,omitempty"`
}

// Over reports whether the record is done or failed.
func (rec *Record) Over() bool { return rec.State == Done || rec.State == Failed }

// What is a short description: "roll 3 unit(s)", "move a.service", "drain m1".
func (rec *Record) What() string {
	switch rec.Kind {
	case KindRoll:
		if len(rec.Targets) == 1 {
			return "roll " + rec.Targets[0].Unit
		}
		return fmt.Sprintf("roll %d units", len(rec.Targets))
	case KindMove:
		if rec.To != "" {
			return "move " + rec.Unit + " to " + rec.To
		}
		return "move " + rec.Unit
	case KindDrain:
		return "drain " + rec.Machine
	}
	return string(rec.Kind)
}

// Check reports what is wrong with a record a CLI is about to write.
func (rec *Record) Check() error {
	switch rec.Kind {
	case KindRoll:
		if len(rec.Targets) == 0 {
			return errors.New("rollout record: roll of no unit")
		}
	case KindMove:
		if rec.Unit == "" {
			return errors.New("rollout record: move of no unit")
		}
	case KindDrain:
		if rec.Machine == "" {
			return errors.New("rollout record: drain of no machine")
		}
	default:
		return fmt.Errorf("rollout record: unknown kind %q", rec.Kind)
	}
	return nil
}

// RecordPrefix is where records are kept.
func RecordPrefix(reg *registry.Registry) string { return reg.RolloutPrefix() }

// ElectionPrefix is the driver's election.
func ElectionPrefix(reg *registry.Registry) string { return reg.Prefix() + "rollout-driver" }

// ErrNoRecord is returned for a record id that is not stored.
var ErrNoRecord = errors.New("rollout: no such rollout")

// Submit stores rec as a new pending record, and the bodies of its targets,
// in one transaction, and returns its id. It does not block on the change
// itself (see Follow).
func Submit(ctx context.Context, reg *registry.Registry, rec Record) (string, error) {
	if err := rec.Check(); err != nil {
		return "", err
	}
	rec.Created = time.Now().UTC()
	rec.State = Pending
	rec.Progress, rec.Error, rec.Driver = nil, "", ""
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	rec.ID = rec.Created.Format("20060102-150405.000") + "-" + hex.EncodeToString(b)
	key := RecordPrefix(reg) + rec.ID
	var ops []store.Op
	rec.Hashes = nil
	rec.Targets = slices.Clone(rec.Targets)
	for i, t := range rec.Targets {
		h := unit.Hash(t.Body)
		rec.Targets[i].Hash = h
		if !slices.Contains(rec.Hashes, h) {
			rec.Hashes = append(rec.Hashes, h)
			ops = append(ops, store.OpPut(reg.BodyKey(h), string(t.Body), 0))
		}
	}
	if len(ops) >= registry.MaxTxnOps {
		return "", fmt.Errorf("store %s: %d bodies; at most %d in one rollout", rec.What(), len(ops), registry.MaxTxnOps-1)
	}
	ops = append(ops, store.OpPut(key, registry.Encode(rec), 0))
	ok, _, err := reg.Client().Txn(ctx, []store.Cmp{store.Missing(key)}, ops, nil)
	if err != nil {
		return "", fmt.Errorf("store %s: %w", rec.What(), err)
	}
	if !ok {
		return "", fmt.Errorf("store %s: record %s exists", rec.What(), rec.ID)
	}
	return rec.ID, nil
}

// Get reads the record id.
func Get(ctx context.Context, reg *registry.Registry, id string) (Record, error) {
	kv, found, _, err := reg.Client().Get(ctx, RecordPrefix(reg)+id)
	if err != nil {
		return Record{}, fmt.Errorf("read rollout %s: %w", id, err)
	}
	if !found {
		return Record{}, fmt.Errorf("rollout %s: %w", id, ErrNoRecord)
	}
	return decodeRecord(reg, kv)
}

func decodeRecord(reg *registry.Registry, kv store.KV) (Record, error) {
	var rec Record
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return Record{}, fmt.Errorf("decode %s: %w", kv.Key, err)
	}
	rec.ID = strings.TrimPrefix(kv.Key, RecordPrefix(reg))
	return rec, nil
}

// stored is a record with the revisions of its key.
type stored struct {
	Record
	create, mod int64
}

// List reads every record, oldest first; undecodable keys are skipped.
func List(ctx context.Context, reg *registry.Registry) ([]Record, error) {
	st, _, err := list(ctx, reg)
	out := make([]Record, len(st))
	for i := range st {
		out[i] = st[i].Record
	}
	return out, err
}

func list(ctx context.Context, reg *registry.Registry) ([]stored, int64, error) {
	kvs, rev, err := reg.Client().GetPrefix(ctx, RecordPrefix(reg))
	if err != nil {
		return nil, 0, fmt.Errorf("read rollouts: %w", err)
	}
	out := make([]stored, 0, len(kvs))
	for _, kv := range kvs {
		rec, err := decodeRecord(reg, kv)
		if err != nil {
			continue
		}
		out = append(out, stored{Record: rec, create: kv.CreateRevision, mod: kv.ModRevision})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].create < out[j].create })
	return out, rev, nil
}

// Follow writes the progress lines of record id to out as they come, from
// the first, and blocks until the record is over: it returns nil when the
// change is done and an error naming the instance and the reason when it
// failed. When the record is not over after a few seconds and no driver is
// elected, it calls noDriver once (nil: nothing). Returning early (ctx done)
// leaves the change going on.
func Follow(ctx context.Context, reg *registry.Registry, id string, out io.Writer, noDriver func()) error {
	printed := 0
	start := time.Now()
	warned := noDriver == nil
	for {
		rec, err := Get(ctx, reg, id)
		if err != nil && (errors.Is(err, ErrNoRecord) || ctx.Err() != nil) {
			return err
		}
		if err == nil {
			for ; printed < len(rec.Progress); printed++ {
				fmt.Fprintln(out, rec.Progress[printed])
			}
			switch rec.State {
			case Done:
				return nil
			case Failed:
				return fmt.Errorf("%s: %s", rec.What(), rec.Error)
			default: // pending, or running with its driver gone
				if !warned && time.Since(start) > 5*time.Second {
					if _, found, err := reg.Client().Leader(ctx, ElectionPrefix(reg)); err == nil && !found {
						warned = true
						noDriver()
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("follow rollout %s: %w (the change goes on: scheduler rollouts %s)", id, ctx.Err(), id)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
