package unit

import "testing"

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
		"unknown key":   {body: svc + "[X-Flotilla]\n\nOnDisconect=stop\n", wantErr: `unit a.service line 5: unknown [X-Flotilla] key "OnDisconect" (known: OnDisconnect)`},
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
