package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/cmdline"
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
