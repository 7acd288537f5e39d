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

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/testmain"
)

// TestRolloutFlagsRefused: a planned-change flag is refused by a verb it does
// not apply to (before any etcd is dialled).
func TestRolloutFlagsRefused(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"to on start":           {args: []string{"start", "--to", "m1", "a.service"}, want: "--to applies only to move"},
		"max-unavailable: move": {args: []string{"move", "--max-unavailable", "2", "a.service"}, want: "--max-unavailable applies only to roll"},
		"surge on drain":        {args: []string{"drain", "--surge", "m1"}, want: "--surge applies only to roll"},
		"timeout on list":       {args: []string{"list-units", "--timeout", "1s"}, want: "--timeout applies only to roll, move, drain"},
		"to on roll":            {args: []string{"roll", "--no-block", "--to", "m1", "a.service"}, want: "--to applies only to move"},
		"move two units":        {args: []string{"move", "a.service", "b.service"}, want: "too many arguments"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var out, errb bytes.Buffer
			env := func(string) string { return "" }
			err := runEnv(context.Background(), append([]string{"--endpoints", "http://127.0.0.1:1"}, tc.args...), env, &out, &errb)
			var ue *cmdline.UsageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v; want a usage error containing %q", err, tc.want)
			}
		})
	}
}

// TestRollNoBlock: roll --no-block stores the rollout and returns; serve's
// driver carries it out; rollouts lists it, and rollouts ID follows it to
// its end.
func TestRollNoBlock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	addr := etcdtest.FreeAddr(t)
	serveInBackground(ctx, t, "--data-dir", t.TempDir(), "--etcd-listen", addr, "--public-ip", "127.0.0.7",
		"--machine-id", "m1", "--executor", "process", "--ttl", "2s")
	client := func(args ...string) (string, error) { return cli(ctx, addr, args...) }
	unitFile := filepath.Join(t.TempDir(), "hello.service")
	body := func(v string) []byte {
		return []byte("[Unit]\nDescription=" + v + "\n[Service]\nExecStart=/bin/sleep 1000\n")
	}
	os.WriteFile(unitFile, body("v1"), 0o644)
	testmain.Eventually(t, 30*time.Second, 100*time.Millisecond, "hello.service launched", func() error {
		out, err := client("start", "--block-attempts", "60", unitFile)
		if err != nil || !strings.Contains(out, "launched on") {
			return fmt.Errorf("start = %q, %v", out, err)
		}
		return nil
	})
	os.WriteFile(unitFile, body("v2"), 0o644)
	out, err := client("roll", "--no-block", "--announce-prefix", "-", "--status-prefix", "-", unitFile)
	f := strings.Fields(out)
	if err != nil || len(f) < 3 || f[0] != "Rollout" || f[2] != "stored" || strings.Contains(out, "Unit ") {
		t.Fatalf("roll --no-block = %q, %v", out, err)
	}
	id := f[1]
	if out, err := client("rollouts", "--no-legend"); err != nil || !strings.Contains(out, id+"\troll\t") {
		t.Errorf("rollouts = %q, %v", out, err)
	}
	out, err = client("rollouts", id)
	if err != nil || !strings.Contains(out, "Unit hello.service body ") || !strings.Contains(out, "Rolled 1 unit(s)") {
		t.Errorf("rollouts %s = %q, %v", id, out, err)
	}
	if out, err := client("rollouts", "--no-block", id); err != nil || !strings.HasPrefix(out, id+" done roll hello.service\n") {
		t.Errorf("rollouts --no-block %s = %q, %v", id, out, err)
	}
	if _, err := client("rollouts", "nosuch"); err == nil {
		t.Errorf("rollouts of an unknown id succeeded")
	}
}
