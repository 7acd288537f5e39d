package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/flotilla/flotilla/internal/announce"
	"github.com/flotilla/flotilla/internal/store"
)

// listEntry is one row of --list.
type listEntry struct {
	Key   string `json:"key"`
	Value string `json:"value,omitempty"`
	Lease string `json:"lease,omitempty"`
	// TTL is the lease's time left in seconds (0: no lease).
	TTL int64 `json:"ttl_seconds"`
	// State is "announced" (the key is there: its check, if any, passes),
	// "withdrawn" (announce --withdraw removed it; its keeper still runs) or
	// "maintenance" (announce --maintenance on: withdrawn until off; a key
	// still there beside it is being withdrawn).
	State string `json:"state"`
}

// listKeys is --list PREFIX: what is announced under prefix, with each
// lease's time left, as a table or JSON on stdout.
func listKeys(ctx context.Context, o *options, prefix string, asJSON bool, stdout io.Writer) error {
	octx, cancel := context.WithTimeout(ctx, o.store.DialTimeout+10*time.Second)
	defer cancel()
	c, err := store.Open(octx, o.store)
	if err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	defer c.Close()
	kvs, _, err := c.GetPrefix(octx, prefix)
	if err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	marks, _, err := c.GetPrefix(octx, announce.WithdrawnMarker(prefix))
	if err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	maint, _, err := c.GetPrefix(octx, announce.MaintenanceMarker(prefix))
	if err != nil {
		return fmt.Errorf("list %s: %w", prefix, err)
	}
	ttls := map[store.LeaseID]time.Duration{}
	ttl := func(id store.LeaseID) (time.Duration, error) {
		if d, ok := ttls[id]; ok {
			return d, nil
		}
		d, err := c.LeaseTTL(octx, id)
		ttls[id] = d
		return d, err
	}
	var rows []listEntry
	add := func(key, value, state string, id store.LeaseID) error {
		d, err := ttl(id)
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		e := listEntry{Key: key, Value: value, TTL: int64(d / time.Second), State: state}
		if id != 0 {
			e.Lease = fmt.Sprintf("%x", int64(id))
		}
		rows = append(rows, e)
		return nil
	}
	for _, kv := range kvs {
		if err := add(kv.Key, string(kv.Value), "announced", kv.Lease); err != nil {
			return err
		}
	}
	for _, m := range marks {
		if err := add(strings.TrimPrefix(m.Key, announce.WithdrawnPrefix), "", "withdrawn", m.Lease); err != nil {
			return err
		}
	}
	for _, m := range maint {
		if err := add(strings.TrimPrefix(m.Key, announce.MaintenancePrefix), "", "maintenance", 0); err != nil {
			return err
		}
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].Key < rows[j].Key })
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if rows == nil {
			rows = []listEntry{}
		}
		return enc.Encode(rows)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tSTATE\tTTL\tLEASE\tVALUE")
	for _, r := range rows {
		lease, left := r.Lease, fmt.Sprintf("%ds", r.TTL)
		if lease == "" {
			lease, left = "-", "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Key, r.State, left, lease, r.Value)
	}
	return tw.Flush()
}
