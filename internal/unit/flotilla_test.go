package unit

import (
	"testing"
	"time"
)

func TestFlotillaSection(t *testing.T) {
	const svc = "[Service]\nExecStart=/bin/true\n"
	tests := map[string]struct {
		body    string
		want    OnDisconnect
		fenced  bool
		wantErr string // the whole error message
	}{
		"default":       {body: svc, want: ""},
		"keep-running":  {body: svc + "[X-Flotilla]\nOnDisconnect=keep-running\n", want: KeepRunning},
		"stop":          {body: svc + "[X-Flotilla]\nOnDisconnect=stop\n", want: Stop, fenced: true},
		"reset":         {body: svc + "[X-Flotilla]\nOnDisconnect=stop\nOnDisconnect=\n", want: ""},
		"last wins":     {body: svc + "[X-Flotilla]\nOnDisconnect=stop\nOnDisconnect=keep-running\n", want: KeepRunning},
		"beside fleet":  {body: svc + "[X-Fleet]\nConflicts=a*\n[X-Flotilla]\nOnDisconnect=stop\n", want: Stop, fenced: true},
		"bad value":     {body: svc + "[X-Flotilla]\nOnDisconnect=kill\n", wantErr: "unit a.service line 4: OnDisconnect=kill: want keep-running or stop"},
		"case matters":  {body: svc + "[X-Flotilla]\nOnDisconnect=Stop\n", wantErr: "unit a.service line 4: OnDisconnect=Stop: want keep-running or stop"},
		"unknown key":   {body: svc + "[X-Flotilla]\n\nOnDisconect=stop\n", wantErr: `unit a.service line 5: unknown [X-Flotilla] key "OnDisconect" (known: OnDisconnect, RestartFailed, RestartFailedWindow, OnFailed, AvoidFailedFor)`},
		"in x-fleet":    {body: svc + "[X-Fleet]\nOnDisconnect=stop\n", wantErr: `unit a.service line 4: unknown [X-Fleet] key "OnDisconnect" (known: MachineID, MachineOf, MachineMetadata, Conflicts, Global, Replaces)`},
		"other section": {body: svc + "[X-Other]\nOnDisconnect=whatever\n", want: ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f, err := Parse("a.service", []byte(tc.body))
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error\n got: %v\nwant: %s", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if f.Flotilla.OnDisconnect != tc.want || f.Flotilla.Fenced() != tc.fenced {
				t.Errorf("OnDisconnect %q fenced %v, want %q %v", f.Flotilla.OnDisconnect, f.Flotilla.Fenced(), tc.want, tc.fenced)
			}
		})
	}
	t.Run("template instance", func(t *testing.T) {
		f, err := Parse("a@.service", []byte(svc+"[X-Flotilla]\nOnDisconnect=stop\n"))
		if err != nil {
			t.Fatal(err)
		}
		g, err := f.Instantiate("2")
		if err != nil {
			t.Fatal(err)
		}
		if !g.Flotilla.Fenced() {
			t.Errorf("instance lost OnDisconnect=stop")
		}
	})
}

func TestFailurePolicy(t *testing.T) {
	const svc = "[Service]\nExecStart=/bin/true\n[X-Flotilla]\n"
	def := FailurePolicy{Restarts: DefaultRestartFailed, Window: DefaultRestartFailedWindow, Move: true, Avoid: DefaultAvoidFailedFor}
	tests := map[string]struct {
		body    string
		want    FailurePolicy
		wantErr string
	}{
		"default":  {body: svc, want: def},
		"all set":  {body: svc + "RestartFailed=5\nRestartFailedWindow=2min\nOnFailed=stay\nAvoidFailedFor=30s\n", want: FailurePolicy{Restarts: 5, Window: 2 * time.Minute, Move: false, Avoid: 30 * time.Second}},
		"zero":     {body: svc + "RestartFailed=0\n", want: FailurePolicy{Restarts: 0, Window: def.Window, Move: true, Avoid: def.Avoid}},
		"move":     {body: svc + "OnFailed=move\n", want: def},
		"reset":    {body: svc + "RestartFailed=7\nRestartFailed=\nOnFailed=stay\nOnFailed=\nAvoidFailedFor=5s\nAvoidFailedFor=\n", want: def},
		"infinity": {body: svc + "RestartFailedWindow=infinity\n", want: FailurePolicy{Restarts: def.Restarts, Window: Infinity, Move: true, Avoid: def.Avoid}},
		"negative": {body: svc + "RestartFailed=-1\n", wantErr: "unit a.service line 4: RestartFailed=-1: want a number of restarts from 0 to 1000"},
		"too many": {body: svc + "RestartFailed=1001\n", wantErr: "unit a.service line 4: RestartFailed=1001: want a number of restarts from 0 to 1000"},
		"word":     {body: svc + "RestartFailed=three\n", wantErr: "unit a.service line 4: RestartFailed=three: want a number of restarts from 0 to 1000"},
		"bad span": {body: svc + "RestartFailedWindow=soon\n", wantErr: `unit a.service line 4: RestartFailedWindow=soon: `},
		"short":    {body: svc + "AvoidFailedFor=100ms\n", wantErr: "unit a.service line 4: AvoidFailedFor=100ms: want at least 1s"},
		"forever":  {body: svc + "AvoidFailedFor=infinity\n", wantErr: "unit a.service line 4: AvoidFailedFor=infinity: want at most 720h0m0s"},
		"bad move": {body: svc + "\nOnFailed=retry\n", wantErr: "unit a.service line 5: OnFailed=retry: want move or stay"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f, err := Parse("a.service", []byte(tc.body))
			if tc.wantErr != "" {
				if err == nil || len(err.Error()) < len(tc.wantErr) || err.Error()[:len(tc.wantErr)] != tc.wantErr {
					t.Fatalf("error\n got: %v\nwant: %s…", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := f.Flotilla.FailurePolicy(); got != tc.want {
				t.Errorf("policy %+v, want %+v", got, tc.want)
			}
		})
	}
}
