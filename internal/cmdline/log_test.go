package cmdline_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/cmdline"
)

func TestLogFlags(t *testing.T) {
	tests := map[string]struct {
		args    []string
		wantErr string // a usage error containing this
		json    bool
		debug   bool // a debug record is written
		info    bool // an info record is written
	}{
		"defaults":      {info: true},
		"debug json":    {args: []string{"--log-level", "debug", "--log-format", "json"}, json: true, debug: true, info: true},
		"warn":          {args: []string{"--log-level", "warn"}},
		"confd warning": {args: []string{"--log-level", "WARNING"}},
		"upper JSON":    {args: []string{"--log-format", "JSON"}, json: true, info: true},
		"bad level":     {args: []string{"--log-level", "loud"}, wantErr: `--log-level "loud": want debug, info, warn or error`},
		"bad format":    {args: []string{"--log-format", "xml"}, wantErr: `--log-format "xml": want text or json`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var f cmdline.LogFlags
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			f.Register(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			log, err := f.Logger(&out)
			if tc.wantErr != "" {
				var ue *cmdline.UsageError
				if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want a usage error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("d-record")
			log.Info("i-record")
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if got := strings.Contains(out.String(), "d-record"); got != tc.debug {
				t.Errorf("debug record written: %v, want %v (%q)", got, tc.debug, out.String())
			}
			if got := strings.Contains(out.String(), "i-record"); got != tc.info {
				t.Errorf("info record written: %v, want %v (%q)", got, tc.info, out.String())
			}
			if out.Len() > 0 {
				if got := json.Valid([]byte(lines[0])); got != tc.json {
					t.Errorf("json: %v, want %v (%q)", got, tc.json, lines[0])
				}
			}
		})
	}
}
