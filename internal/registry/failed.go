package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Failure records that a unit used its restart budget on a machine
// ([X-Flotilla] RestartFailed=) and failed again: the key
// <p>failed/<unit>/<machine>, JSON {"hash","restarts","at","message","move"},
// written by that machine's agent alone and bound to a lease of the unit's
// AvoidFailedFor that nobody keeps alive, so that etcd forgets it then. While
// it exists, and its hash is the unit's current body, the engine places a
// unit with Move set on any other eligible machine (see schedule.Unit.Avoid).
type Failure struct {
	Unit    string `json:"-"`
	Machine string `json:"-"`
	// Hash is the body that failed; a new body is not held to it.
	Hash string `json:"hash"`
	// Restarts is how many times the agent started the unit again there
	// within the window before giving up.
	Restarts int `json:"restarts"`
	// At is when the agent gave up.
	At time.Time `json:"at"`
	// Message is the unit's last state, for humans.
	Message string `json:"message,omitempty"`
	// Move is the unit's OnFailed=move: the engine avoids this machine.
	Move bool `json:"move"`
}

// FailedKey holds unit's failure record on machine.
func (r *Registry) FailedKey(unit, machine string) string {
	return r.prefix + "failed/" + unit + "/" + machine
}

// FailedPrefix is where every failure record lives.
func (r *Registry) FailedPrefix() string { return r.sub("failed") }

// PutFailure writes f's record, forgotten by etcd after avoid.
func (r *Registry) PutFailure(ctx context.Context, f Failure, avoid time.Duration) error {
	if _, err := r.c.PutExpiring(ctx, r.FailedKey(f.Unit, f.Machine), Encode(f), avoid); err != nil {
		return fmt.Errorf("record failure of %s on %s: %w", f.Unit, f.Machine, err)
	}
	return nil
}

// ClearFailure deletes unit's failure record on machine, if any.
func (r *Registry) ClearFailure(ctx context.Context, unit, machine string) error {
	if _, err := r.c.Delete(ctx, r.FailedKey(unit, machine)); err != nil {
		return fmt.Errorf("clear failure of %s on %s: %w", unit, machine, err)
	}
	return nil
}

// parseFailureKey returns the unit and machine of a failure record's key.
func (r *Registry) parseFailureKey(key string) (unit, machine string, err error) {
	rest := strings.TrimPrefix(key, r.FailedPrefix())
	i := strings.LastIndexByte(rest, '/')
	if i <= 0 || i == len(rest)-1 {
		return "", "", fmt.Errorf("decode %s: not %s<unit>/<machine>", key, r.FailedPrefix())
	}
	return rest[:i], rest[i+1:], nil
}

func (r *Registry) decodeFailure(key string, value []byte) (Failure, error) {
	unit, machine, err := r.parseFailureKey(key)
	if err != nil {
		return Failure{}, err
	}
	f := Failure{Unit: unit, Machine: machine}
	if err := json.Unmarshal(value, &f); err != nil {
		return Failure{}, fmt.Errorf("decode %s: %w", key, err)
	}
	return f, nil
}

// Avoided returns, for unit with body hash, the machines a failure record
// asks the engine to avoid, sorted.
func (s *Snapshot) Avoided(unit, hash string) []string {
	var out []string
	for m, f := range s.Failed[unit] {
		if f.Move && f.Hash == hash {
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out
}
