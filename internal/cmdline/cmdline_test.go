package cmdline_test

import (
	"bytes"
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/cmdline"
)

func TestParse(t *testing.T) {
	tests := map[string]struct {
		args     []string
		wantErr  error
		wantCode int
		stdout   string
	}{
		"ok":           {args: []string{"-n", "3"}},
		"help":         {args: []string{"--help"}, wantErr: cmdline.ErrHelp, stdout: "usage: x [flags]"},
		"version":      {args: []string{"--version"}, wantErr: cmdline.ErrHelp, stdout: "x "},
		"unknown flag": {args: []string{"--bogus"}, wantCode: 2},
		"bad value":    {args: []string{"-n", "many"}, wantCode: 2},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			fs.Int("n", 0, "a number")
			var out bytes.Buffer
			err := cmdline.Parse(fs, tc.args, &out, "usage: x [flags]")
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			var errOut bytes.Buffer
			if code := cmdline.Exit("x", err, &errOut); code != tc.wantCode {
				t.Errorf("exit code = %d, want %d (%v)", code, tc.wantCode, err)
			}
			if tc.wantCode == 2 && strings.Count(errOut.String(), "\n") != 1 {
				t.Errorf("usage error is not one line: %q", errOut.String())
			}
			if !strings.Contains(out.String(), tc.stdout) {
				t.Errorf("stdout %q lacks %q", out.String(), tc.stdout)
			}
		})
	}
}
