package main

import (
	"context"
	"flag"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/flotilla/flotilla/internal/registry"
)

// followWindow is how many of the last lines each follow poll asks for; more
// new lines than this between two polls are partly skipped (and said so).
const followWindow = 200

func (o *options) registerFollow(fs *flag.FlagSet) {
	fs.BoolVar(&o.follow, "follow", false, "keep printing new lines until interrupted")
	fs.BoolVar(&o.follow, "f", false, "keep printing new lines (short for --follow)")
}

func (o *options) registerMachine(fs *flag.FlagSet) {
	fs.StringVar(&o.machine, "machine", "", "only the unit on this machine (id or unique id prefix), e.g. one machine of a global unit")
}

// onMachine narrows the machines of unit n to --machine (when given). A
// machine that does not exist, or does not have the unit, is an error.
func (cl *client) onMachine(s *registry.Snapshot, n string, machines map[string]bool) (map[string]bool, error) {
	if cl.o.machine == "" {
		return machines, nil
	}
	var ids []string
	for id := range s.Machines {
		if strings.HasPrefix(id, cl.o.machine) {
			ids = append(ids, id)
		}
	}
	for id := range machines {
		if strings.HasPrefix(id, cl.o.machine) && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	switch len(ids) {
	case 0:
		return nil, fmt.Errorf("--machine %s: no such machine", cl.o.machine)
	case 1:
	default:
		slices.Sort(ids)
		return nil, fmt.Errorf("--machine %s: ambiguous, matches %s", cl.o.machine, strings.Join(ids, ", "))
	}
	if !machines[ids[0]] {
		return nil, fmt.Errorf("%s is not on machine %s", n, ids[0])
	}
	return map[string]bool{ids[0]: true}, nil
}

// follow prints the unit's last --lines lines on machine m, then every new
// line as the machine's agent reports it (polled every second), until ctx
// ends (Ctrl-C: exit 0).
func (cl *client) follow(ctx context.Context, s *registry.Snapshot, n, m string) error {
	lines, err := cl.journal(ctx, s.Machines[m], m, n)
	if err != nil {
		return err
	}
	for _, l := range lines {
		fmt.Fprintln(cl.stdout, l)
	}
	o := *cl.o
	o.lines = followWindow
	wide := &client{o: &o, reg: cl.reg, stdout: cl.stdout, stderr: cl.stderr, getenv: cl.getenv}
	seen, err := wide.journal(ctx, s.Machines[m], m, n)
	if err != nil {
		return err
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		cur, err := wide.journal(ctx, s.Machines[m], m, n)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(cl.stderr, "journal %s: %v (retrying)\n", n, err)
			continue
		}
		fresh, gap := newLines(seen, cur)
		if gap {
			fmt.Fprintf(cl.stderr, "journal %s: more than %d lines since the last read; some were skipped\n", n, followWindow)
		}
		for _, l := range fresh {
			fmt.Fprintln(cl.stdout, l)
		}
		seen = cur
	}
}

// newLines returns the lines of cur (a later tail of the same log as seen)
// that come after seen: cur minus its longest prefix that is a suffix of
// seen. gap reports that seen and cur do not overlap at all while both are
// full windows (lines were missed).
func newLines(seen, cur []string) (fresh []string, gap bool) {
	for o := min(len(seen), len(cur)); o > 0; o-- {
		if slices.Equal(seen[len(seen)-o:], cur[:o]) {
			return cur[o:], false
		}
	}
	return cur, len(seen) >= followWindow && len(cur) >= followWindow
}
