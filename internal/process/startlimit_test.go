package process_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/executor"
)

// TestStartLimit: a unit that keeps exiting under Restart=always runs
// StartLimitBurst times within StartLimitIntervalSec, then fails with
// start-limit-hit, as under systemd; a new Start begins afresh. Bad values
// are refused by Start.
func TestStartLimit(t *testing.T) {
	e, dir := newExec(t)
	ctx := ctxT(t)
	runs := filepath.Join(dir, "runs")
	count := func() int {
		b, _ := os.ReadFile(runs)
		return strings.Count(string(b), "\n")
	}
	tests := map[string]struct {
		unit, service string
		want          int // runs before failed; 0: Start refuses
		wantErr       string
	}{
		"unit section":    {unit: "StartLimitIntervalSec=1h\nStartLimitBurst=3\n", want: 3},
		"service section": {service: "StartLimitInterval=1h\nStartLimitBurst=2\n", want: 2},
		"default burst":   {unit: "StartLimitIntervalSec=1h\n", want: 5},
		"bad burst":       {unit: "StartLimitBurst=many\n", wantErr: "StartLimitBurst=many"},
		"bad interval":    {unit: "StartLimitIntervalSec=soon\n", wantErr: "StartLimitIntervalSec=soon"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			os.Remove(runs)
			body := "[Unit]\n" + tc.unit + "[Service]\nRestart=always\nRestartSec=10ms\n" + tc.service +
				"ExecStart=/bin/sh -c 'echo . >> " + runs + "'\n"
			spec := executor.Spec{Name: "limit.service", Body: []byte(body)}
			err := e.Start(ctx, spec)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Start = %v, want an error naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			waitState(t, e, "limit.service", "failed", "failed")
			if n := count(); n != tc.want {
				t.Errorf("ran %d times before failing, want %d", n, tc.want)
			}
			lines, _ := e.Journal(ctx, "limit.service", 5)
			if !strings.Contains(strings.Join(lines, "\n"), "start-limit-hit") {
				t.Errorf("journal does not say start-limit-hit:\n%s", strings.Join(lines, "\n"))
			}
			// A new Start (the agent's restart in place) begins afresh.
			if err := e.Start(ctx, spec); err != nil {
				t.Fatal(err)
			}
			waitState(t, e, "limit.service", "failed", "failed")
			if n := count(); n != 2*tc.want {
				t.Errorf("ran %d times in all after a second Start, want %d", n, 2*tc.want)
			}
			if err := e.Remove(ctx, "limit.service"); err != nil {
				t.Fatal(err)
			}
		})
	}
}
