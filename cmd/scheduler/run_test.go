package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/cmdline"
)

// TestVerbFlags: each verb takes only its own flags (and the shared ones); a
// flag of another verb is refused, naming the verbs it applies to, before any
// etcd is dialled.
func TestVerbFlags(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string // "" : accepted (the dial of the unreachable endpoint fails)
	}{
		"cat --replace":              {args: []string{"cat", "--replace", "x.service"}, want: "--replace applies only to submit, load, start, not cat"},
		"stop --replace":             {args: []string{"stop", "--replace", "x.service"}, want: "--replace applies only to submit, load, start, not stop"},
		"cat --no-block":             {args: []string{"cat", "--no-block", "x.service"}, want: "--no-block applies only to submit, load, start, stop, unload, destroy, restart, roll, move, drain, not cat"},
		"list-units -n":              {args: []string{"list-units", "-n", "3"}, want: "-n applies only to status, journal, not list-units"},
		"journal --fields":           {args: []string{"journal", "--fields=unit", "x.service"}, want: "--fields applies only to list-units, list-unit-files, list-machines, not journal"},
		"start --rotate":             {args: []string{"start", "--rotate", "x.service"}, want: "--rotate applies only to token, not start"},
		"token --endpoints":          {args: []string{"token", "--endpoints", "http://127.0.0.1:1"}, want: "--endpoints applies only to"},
		"roles --block-attempts":     {args: []string{"roles", "--block-attempts", "3"}, want: "--block-attempts applies only to"},
		"undrain --no-block":         {args: []string{"undrain", "--no-block", "m1"}, want: "--no-block applies only to"},
		"status --request-timeout=":  {args: []string{"status", "--request-timeout=1s", "x.service"}},
		"list-machines --full":       {args: []string{"--full", "list-machines"}},
		"flags after the units":      {args: []string{"start", "x.service", "--replace", "--no-block"}},
		"flag after -- is an arg":    {args: []string{"cat", "--", "--replace"}},
		"unknown flag":               {args: []string{"cat", "--bogus", "x.service"}, want: "flag provided but not defined: -bogus"},
		"foreign flag before a verb": {args: []string{"--password-dir", "/tmp", "cat", "x.service"}, want: "--password-dir applies only to roles, not cat"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			env := func(string) string { return "" }
			args := append([]string{"--endpoints", "http://127.0.0.1:1", "--dial-timeout", "1ms"}, tc.args...)
			if tc.args[0] == "token" {
				args = tc.args
			}
			err := runEnv(context.Background(), args, env, &bytes.Buffer{}, &bytes.Buffer{})
			var ue *cmdline.UsageError
			isUsage := errors.As(err, &ue)
			if tc.want == "" {
				if isUsage {
					t.Errorf("err = %v; want the flags accepted", err)
				}
				return
			}
			if !isUsage || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v; want a usage error containing %q", err, tc.want)
			}
		})
	}
}

// TestVerbHelp: --help after a verb lists that verb's flags and only those.
func TestVerbHelp(t *testing.T) {
	var out bytes.Buffer
	if err := runEnv(context.Background(), []string{"cat", "--help"}, func(string) string { return "" }, &out, &bytes.Buffer{}); !errors.Is(err, cmdline.ErrHelp) {
		t.Fatalf("cat --help: %v", err)
	}
	for _, want := range []string{"-endpoints", "-prefix", "-data-dir"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("cat --help lacks %s:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "-replace") {
		t.Errorf("cat --help lists --replace:\n%s", out.String())
	}
}

// TestServeLogFlags: serve takes the same --log-level and --log-format as
// render and announce (internal/cmdline.LogFlags), refusing unknown values
// before it starts anything.
func TestServeLogFlags(t *testing.T) {
	tests := map[string]struct {
		args []string
		want string
	}{
		"format": {args: []string{"--log-format", "xml"}, want: `--log-format "xml": want text or json`},
		"level":  {args: []string{"--log-level", "loud"}, want: `--log-level "loud": want debug, info, warn or error`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			args := append([]string{"serve", "--data-dir", t.TempDir()}, tc.args...)
			err := runEnv(context.Background(), args, func(string) string { return "" }, &bytes.Buffer{}, &bytes.Buffer{})
			var ue *cmdline.UsageError
			if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v; want a usage error containing %q", err, tc.want)
			}
		})
	}
}
