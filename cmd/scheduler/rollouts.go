package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/flotilla/flotilla/internal/rollout"
)

// Rollout records: roll, move and drain store one and follow it (or not,
// --no-block); `rollouts` lists them or follows one.

// carry stores rec for the driver and follows it unless --no-block.
func (cl *client) carry(ctx context.Context, rec rollout.Record) error {
	rec.AnnouncePrefix, rec.StatusPrefix, rec.Timeout = cl.o.rollout.announcePrefix, cl.o.rollout.statusPrefix, cl.o.rollout.timeout
	id, err := rollout.Submit(ctx, cl.reg, rec)
	if err != nil {
		return err
	}
	if cl.o.noBlock {
		fmt.Fprintf(cl.stdout, "Rollout %s stored (%s); `scheduler rollouts %s` follows it\n", id, rec.What(), id)
		return nil
	}
	return cl.followRollout(ctx, id)
}

func (cl *client) followRollout(ctx context.Context, id string) error {
	return rollout.Follow(ctx, cl.reg, id, cl.stdout, func() {
		fmt.Fprintf(cl.stderr, "rollout %s: no rollout driver is elected; is a `scheduler serve` of this version running?\n", id)
	})
}

// rolloutsCmd: rollouts [ID].
func (cl *client) rolloutsCmd(ctx context.Context, args []string) error {
	if len(args) == 1 {
		if !cl.o.noBlock {
			return cl.followRollout(ctx, args[0])
		}
		rec, err := rollout.Get(ctx, cl.reg, args[0])
		if err != nil {
			return err
		}
		fmt.Fprintf(cl.stdout, "%s %s %s\n", rec.ID, rec.State, rec.What())
		for _, l := range rec.Progress {
			fmt.Fprintln(cl.stdout, l)
		}
		if rec.Error != "" {
			fmt.Fprintf(cl.stdout, "Error: %s\n", rec.Error)
		}
		return nil
	}
	recs, err := rollout.List(ctx, cl.reg)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(cl.stdout, 0, 8, 1, '\t', 0)
	if !cl.o.noLegend {
		fmt.Fprintln(w, "ID\tKIND\tSTATE\tWHAT\tLAST")
	}
	for _, rec := range recs {
		last := rec.Error
		if last == "" && len(rec.Progress) > 0 {
			last = rec.Progress[len(rec.Progress)-1]
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", rec.ID, rec.Kind, rec.State, rec.What(), strings.ReplaceAll(last, "\t", " "))
	}
	return w.Flush()
}
