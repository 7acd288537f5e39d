package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/flotilla/flotilla/internal/store"
)

// ErrNoAnswer is returned by Journal when the machine's agent did not answer
// in time.
var ErrNoAnswer = errors.New("registry: no answer from the machine's agent")

// Journal asks machine's agent for the last lines of unit's log and waits
// up to timeout for the answer. The request lives under a lease of the
// caller's, so an unanswered request disappears by itself.
func (r *Registry) Journal(ctx context.Context, machine, unit string, lines int, timeout time.Duration) ([]string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	nonce := hex.EncodeToString(b)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	lease, err := r.c.GrantLease(ctx, max(timeout, store.MinTTL))
	if err != nil {
		return nil, fmt.Errorf("journal of %s on %s: %w", unit, machine, err)
	}
	defer lease.Close()
	respKey := r.JournalResponseKey(nonce)
	_, _, rev, err := r.c.Get(ctx, respKey)
	if err != nil {
		return nil, err
	}
	w := r.c.WatchPrefix(ctx, respKey, rev+1)
	defer w.Close()
	if _, err := lease.Put(ctx, r.JournalRequestPrefix(machine)+unit+"/"+nonce, strconv.Itoa(lines)); err != nil {
		return nil, fmt.Errorf("journal of %s on %s: %w", unit, machine, err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("journal of %s on %s: %w", unit, machine, ErrNoAnswer)
		case wb, ok := <-w.C:
			if !ok || wb.Err != nil {
				return nil, fmt.Errorf("journal of %s on %s: %w", unit, machine, ErrNoAnswer)
			}
			for _, ev := range wb.Events {
				if ev.Type != store.EventPut || ev.KV.Key != respKey {
					continue
				}
				r.c.Delete(context.WithoutCancel(ctx), respKey)
				var resp JournalResponse
				if err := json.Unmarshal(ev.KV.Value, &resp); err != nil {
					return nil, fmt.Errorf("decode %s: %w", respKey, err)
				}
				if resp.Error != "" {
					return resp.Lines, fmt.Errorf("journal of %s on %s: %s", unit, machine, resp.Error)
				}
				return resp.Lines, nil
			}
		}
	}
}
