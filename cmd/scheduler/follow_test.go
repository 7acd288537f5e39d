package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/testmain"
)

func TestNewLines(t *testing.T) {
	full, next := make([]string, followWindow), make([]string, followWindow)
	for i := range full {
		full[i], next[i] = fmt.Sprintf("line %d", i), fmt.Sprintf("line %d", followWindow+i)
	}
	for name, c := range map[string]struct {
		seen, cur []string
		want      string
		gap       bool
	}{
		"nothing new":   {[]string{"a", "b"}, []string{"a", "b"}, "", false},
		"grown":         {[]string{"a", "b"}, []string{"a", "b", "c", "d"}, "c d", false},
		"window slid":   {[]string{"a", "b", "c"}, []string{"b", "c", "d"}, "d", false},
		"repeats":       {[]string{"h", "h"}, []string{"h", "h", "h"}, "h", false},
		"from empty":    {nil, []string{"a"}, "a", false},
		"log replaced":  {[]string{"a", "b"}, []string{"z"}, "z", false},
		"lines skipped": {full, next, strings.Join(next, " "), true},
	} {
		got, gap := newLines(c.seen, c.cur)
		if strings.Join(got, " ") != c.want || gap != c.gap {
			t.Errorf("%s: %q gap %v, want %q gap %v", name, got, gap, c.want, c.gap)
		}
	}
}

// TestJournalFollowAndMachine runs a cluster of one, a global unit that
// prints a line a second, and reads it with journal -f --machine.
func TestJournalFollowAndMachine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	data := t.TempDir()
	addr := etcdtest.FreeAddr(t)
	serveInBackground(ctx, t, "--data-dir", data, "--etcd-listen", addr, "--public-ip", "127.0.0.8",
		"--machine-id", "follow1", "--executor", "process", "--ttl", "2s")
	env := etcdEnv(addr)
	client := func(ctx context.Context, out *testmain.SyncBuffer, args ...string) error {
		return runEnv(ctx, args, env, out, &bytes.Buffer{})
	}
	unitFile := filepath.Join(t.TempDir(), "tick.service")
	os.WriteFile(unitFile, []byte("[Service]\nExecStart=/bin/sh -c 'i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.5; done'\n[X-Fleet]\nGlobal=true\n"), 0o644)
	testmain.Eventually(t, 30*time.Second, 200*time.Millisecond, "start", func() error {
		return client(ctx, &testmain.SyncBuffer{}, "start", "--no-block", unitFile)
	})
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"journal", "--machine", "nope", "tick.service"}, "--machine nope: no such machine"},
		{[]string{"status", "--machine", "nope", "tick.service"}, "--machine nope: no such machine"},
		{[]string{"list-units", "--machine", "follow1"}, "--machine applies only to status, journal, not list-units"},
		{[]string{"status", "-f", "tick.service"}, "-f applies only to journal, not status"},
	} {
		if err := client(ctx, &testmain.SyncBuffer{}, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
	var st testmain.SyncBuffer
	testmain.Eventually(t, 30*time.Second, 300*time.Millisecond, "status --machine", func() error {
		st = testmain.SyncBuffer{}
		if err := client(ctx, &st, "status", "--machine", "foll", "tick.service"); err != nil {
			return err
		}
		if !strings.Contains(st.String(), "active (running) on follow1") {
			return errors.New(st.String())
		}
		return nil
	})
	fctx, fstop := context.WithCancel(ctx)
	var out testmain.SyncBuffer
	done := make(chan error, 1)
	go func() { done <- client(fctx, &out, "journal", "-f", "-n", "2", "--machine", "follow1", "tick.service") }()
	// -f keeps printing: lines numbered well past the first ones read appear.
	testmain.Eventually(t, 30*time.Second, 200*time.Millisecond, "journal -f prints new lines", func() error {
		s := out.String()
		var ls []string // the unit's own lines (the executor logs its own too)
		for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
			if strings.Contains(l, "tick ") {
				ls = append(ls, l)
			}
		}
		if len(ls) < 6 {
			return errors.New(s)
		}
		// Consecutive, no repeats: each line's number is the previous + 1.
		var prev int
		for i, l := range ls {
			var n int
			if _, err := fmt.Sscanf(l[strings.Index(l, "tick "):], "tick %d", &n); err != nil {
				return fmt.Errorf("%q: %v", l, err)
			}
			if i > 0 && n != prev+1 {
				return errors.New("not consecutive: " + s)
			}
			prev = n
		}
		return nil
	})
	fstop()
	if err := <-done; err != nil {
		t.Errorf("journal -f ended with %v, want nil on interrupt", err)
	}
}
