package unit

import (
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// dump renders a parsed file for golden comparison.
func dump(t *testing.T, f *File) []byte {
	t.Helper()
	v := struct {
		Name        string
		Template    bool
		Instance    bool
		Hash        string
		Description string
		Options     []Option
		Fleet       Fleet
		Service     Service
	}{f.Name.Full, f.Name.IsTemplate(), f.Name.IsInstance(), f.Hash(), f.Description, f.Options, f.Fleet, f.Service}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs (run go test -update after checking):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

func TestParseGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/good/*")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, path := range files {
		if strings.HasSuffix(path, ".golden") {
			continue
		}
		n++
		t.Run(filepath.Base(path), func(t *testing.T) {
			body, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := Parse(filepath.Base(path), body)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, path+".golden", dump(t, f))
		})
	}
	if n < 5 {
		t.Fatalf("found only %d unit files under testdata/good", n)
	}
}

func TestParseErrors(t *testing.T) {
	const svc = "[Service]\nExecStart=/bin/true\n"
	tests := map[string]struct {
		name, body string
		want       string // the whole error message
	}{
		"bad name":            {"a/b.service", svc, `unit name "a/b.service": contains "/"`},
		"outside section":     {"a.service", "Description=x\n" + svc, `unit a.service line 1: assignment "Description=x" is outside any section (add [Unit], [Service], …)`},
		"no equals":           {"a.service", svc + "junk\n", `unit a.service line 3: line "junk" is not Key=Value`},
		"empty key":           {"a.service", svc + "=x\n", `unit a.service line 3: assignment "=x" has no key`},
		"key space":           {"a.service", svc + "Exec Start=x\n", `unit a.service line 3: key "Exec Start" contains whitespace`},
		"open section":        {"a.service", "[Service\n", `unit a.service line 1: section header "[Service" has no closing ]`},
		"empty section":       {"a.service", "[]\n", `unit a.service line 1: bad section header "[]"`},
		"nul":                 {"a.service", svc + "X=a\x00b\n", `unit a.service line 3: contains a NUL byte`},
		"bad utf8":            {"a.service", svc + "\n\nX=\xff\n", `unit a.service line 5: invalid UTF-8`},
		"no execstart":        {"a.service", "[Unit]\nDescription=x\n[Service]\nRestart=always\n", `unit a.service: service has no ExecStart= (only Type=oneshot may omit it)`},
		"execstart reset":     {"a.service", svc + "ExecStart=\n", `unit a.service: service has no ExecStart= (only Type=oneshot may omit it)`},
		"oneshot nothing":     {"a.service", "[Service]\nType=oneshot\n", `unit a.service line 2: service has neither ExecStart= nor ExecStop=`},
		"two execstart":       {"a.service", svc + "ExecStart=/bin/false\n", `unit a.service line 3: Type=simple allows one ExecStart= command, found 2 (only Type=oneshot allows several)`},
		"bad type":            {"a.service", svc + "Type=weird\n", `unit a.service line 3: Type=weird: unknown service type (want simple, exec, forking, oneshot, notify, dbus, idle)`},
		"bad restart":         {"a.service", svc + "Restart=sometimes\n", `unit a.service line 3: Restart=sometimes: unknown value (want no, on-success, on-failure, on-abnormal, on-watchdog, on-abort, always)`},
		"bad restartsec":      {"a.service", svc + "RestartSec=5 parsecs\n", `unit a.service line 3: RestartSec=5 parsecs: time span "5 parsecs": unknown unit "parsecs" (use us, ms, s, min, h, d, w)`},
		"bad timeout":         {"a.service", svc + "TimeoutStartSec=soon\n", `unit a.service line 3: TimeoutStartSec=soon: time span "soon": expected a number at "soon"`},
		"unbalanced quote":    {"a.service", "[Service]\n\nExecStart=/bin/echo \"abc\n", `unit a.service line 3: ExecStart=: unbalanced quote "`},
		"unbalanced mid word": {"a.service", "[Service]\nExecStart=/bin/echo --x='b c\n", `unit a.service line 2: ExecStart=: unbalanced quote '`},
		"prefix only":         {"a.service", "[Service]\nExecStart=- /bin/true\n", `unit a.service line 2: ExecStart=: no program after the prefix "-"`},
		"relative path":       {"a.service", "[Service]\nExecStart=bin/true\n", `unit a.service line 2: ExecStart=: program "bin/true" must be an absolute path or a plain name`},
		"bad specifier":       {"a.service", "[Service]\nExecStart=/bin/echo %z\n", `unit a.service line 2: ExecStart=: unknown specifier "%z"`},
		"at needs argv0":      {"a.service", "[Service]\nExecStart=@/bin/true\n", `unit a.service line 2: ExecStart=: the "@" prefix needs argv[0] after the program "/bin/true"`},
		"empty command":       {"a.service", "[Service]\nExecStart=/bin/true ; ; /bin/true\nType=oneshot\n", `unit a.service line 2: ExecStart=: empty command before ";"`},
		"bad environment":     {"a.service", svc + "Environment=1X=2\n", `unit a.service line 3: Environment=: "1X=2" is not NAME=value`},
		"env bad escape":      {"a.service", svc + "Environment=A=1 B=a\\ b\n", `unit a.service line 3: Environment=: invalid escape "\\ " (systemd would ignore the rest of the line)`},
		"env no equals":       {"a.service", svc + "Environment=FOO\n", `unit a.service line 3: Environment=: "FOO" is not NAME=value`},
		"relative envfile":    {"a.service", svc + "EnvironmentFile=-etc/x\n", `unit a.service line 3: EnvironmentFile=-etc/x: not an absolute path`},
		"relative workdir":    {"a.service", svc + "WorkingDirectory=srv\n", `unit a.service line 3: WorkingDirectory=srv: not an absolute path or ~`},
		"bad bool":            {"a.service", svc + "RemainAfterExit=maybe\n", `unit a.service line 3: RemainAfterExit=maybe: "maybe" is not a boolean (want yes/no, true/false, on/off, 1/0)`},
		"unknown xfleet":      {"nginx@.service", svc + "[X-Fleet]\nConflicts=x*\nMachineRole=lb\n", `unit nginx@.service line 5: unknown [X-Fleet] key "MachineRole" (known: MachineID, MachineOf, MachineMetadata, Conflicts, Global, Replaces)`},
		"global machineid":    {"a.service", svc + "[X-Fleet]\nMachineID=abc\nGlobal=true\n", `unit a.service line 4: MachineID cannot be used with Global=true (line 5): a global unit runs on every matching machine`},
		"global machineof":    {"a.service", svc + "[X-Fleet]\nGlobal=yes\nMachineOf=b.service\n", `unit a.service line 5: MachineOf cannot be used with Global=true (line 4): a global unit runs on every matching machine`},
		"global replaces":     {"a.service", svc + "[X-Fleet]\nGlobal=yes\nReplaces=b.service\n", `unit a.service line 5: Replaces cannot be used with Global=true (line 4)`},
		"global bad bool":     {"a.service", svc + "[X-Fleet]\nGlobal=sure\n", `unit a.service line 4: Global=sure: "sure" is not a boolean (want yes/no, true/false, on/off, 1/0)`},
		"metadata no equals":  {"a.service", svc + "[X-Fleet]\nMachineMetadata=role\n", `unit a.service line 4: MachineMetadata=role: want key=value, key!=value or key=v1|v2`},
		"metadata empty key":  {"a.service", svc + "[X-Fleet]\nMachineMetadata==x\n", `unit a.service line 4: MachineMetadata==x: empty metadata key`},
		"metadata empty val":  {"a.service", svc + "[X-Fleet]\nMachineMetadata=role=web|\n", `unit a.service line 4: MachineMetadata=role=web|: empty metadata value for key "role"`},
		"metadata quote":      {"a.service", svc + "[X-Fleet]\nMachineMetadata=\"role=web\n", `unit a.service line 4: MachineMetadata="role=web: unbalanced double quote`},
		"empty quoted":        {"a.service", svc + "[X-Fleet]\nConflicts=\"\"\n", `unit a.service line 4: Conflicts="": empty value`},
		"bad glob":            {"a.service", svc + "[X-Fleet]\nConflicts=a[\n", `unit a.service line 4: Conflicts=a[: bad glob: syntax error in pattern`},
		"machineof bad":       {"a.service", svc + "[X-Fleet]\nMachineOf=b\n", `unit a.service line 4: MachineOf=b: unit name "b": has no type suffix (such as .service)`},
		"machineof self":      {"a@.service", svc + "[X-Fleet]\nMachineOf=%n\n", `unit a@.service line 4: as instance a@1.service: MachineOf=a@1.service: a unit cannot be MachineOf itself`},
		"two machine ids":     {"a.service", svc + "[X-Fleet]\nMachineID=abc\nX-ConditionMachineID=def\n", `unit a.service line 5: X-ConditionMachineID=def: a second machine id (line 4 gave "abc")`},
		"xfleet specifier":    {"a.service", svc + "[X-Fleet]\nConflicts=%H*\n", `unit a.service line 4: Conflicts=%H*: unknown specifier "%H" (X-Fleet supports %n %N %p %i %%)`},
		"continuation line #": {"a.service", "[Service]\nExecStart=/bin/true\n[X-Fleet]\nConflicts=a* \\\n  b*\nBogus=1\n", `unit a.service line 6: unknown [X-Fleet] key "Bogus" (known: MachineID, MachineOf, MachineMetadata, Conflicts, Global, Replaces)`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			f, err := Parse(tc.name, []byte(tc.body))
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", f)
			}
			if err.Error() != tc.want {
				t.Errorf("error\n got: %s\nwant: %s", err, tc.want)
			}
		})
	}
}

func TestParseBOMAndCRLF(t *testing.T) {
	f, err := Parse("a.service", []byte("\ufeff[Service]\r\nExecStart=/bin/echo a \\\r\n b\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Service.ExecStart[0].Argv; strings.Join(got, ",") != "/bin/echo,a,b" {
		t.Errorf("argv = %q", got)
	}
}

func TestParseTooLarge(t *testing.T) {
	body := "[Service]\nExecStart=/bin/true\nX-Pad=" + strings.Repeat("x", MaxFileSize) + "\n"
	_, err := Parse("a.service", []byte(body))
	if err == nil || !strings.Contains(err.Error(), "unit a.service: file is") {
		t.Fatalf("err = %v", err)
	}
}

func TestParseLongLine(t *testing.T) {
	// go-systemd's Deserialize stops at 2048 bytes a line; we do not.
	long := strings.Repeat("a", 5000)
	f, err := Parse("a.service", []byte("[Service]\nExecStart=/bin/echo "+long+"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Service.ExecStart[0].Argv[1]; got != long {
		t.Errorf("argv[1] has %d bytes", len(got))
	}
}

func TestErrorType(t *testing.T) {
	_, err := Parse("a.service", []byte("[Service]\nRestart=x\n"))
	var ue *Error
	if !errors.As(err, &ue) || ue.Unit != "a.service" || ue.Line != 2 {
		t.Fatalf("err = %#v", err)
	}
}

func TestInstantiate(t *testing.T) {
	body := []byte("[Service]\nExecStart=/bin/echo %i\n[X-Fleet]\nConflicts=%p@*.service\nMachineOf=data@%i.service\nMachineMetadata=shard=%i\n")
	tmpl, err := Parse("web@.service", body)
	if err != nil {
		t.Fatal(err)
	}
	if err := tmpl.CheckStartable(); !errors.Is(err, ErrTemplate) {
		t.Errorf("CheckStartable of a template = %v", err)
	}
	// In the template %i is empty: the metadata condition shard= is kept
	// empty-valued only when instantiated.
	inst, err := tmpl.Instantiate("7")
	if err != nil {
		t.Fatal(err)
	}
	if err := inst.CheckStartable(); err != nil {
		t.Errorf("CheckStartable of an instance = %v", err)
	}
	if inst.Name.Full != "web@7.service" || string(inst.Raw) != string(body) || inst.Hash() != tmpl.Hash() {
		t.Errorf("instance = %+v", inst)
	}
	if got := inst.Fleet.MachineOf; len(got) != 1 || got[0] != "data@7.service" {
		t.Errorf("MachineOf = %q", got)
	}
	if got := inst.Fleet.Conflicts; len(got) != 1 || got[0] != "web@*.service" {
		t.Errorf("Conflicts = %q", got)
	}
	if got := inst.Fleet.Metadata; len(got) != 1 || got[0].String() != "shard=7" {
		t.Errorf("Metadata = %v", got)
	}
	// Parsing the instance by name gives the same.
	direct, err := Parse("web@7.service", body)
	if err != nil {
		t.Fatal(err)
	}
	a, b := dump(t, inst), dump(t, direct)
	if string(a) != string(b) {
		t.Errorf("Instantiate and Parse differ:\n%s\n%s", a, b)
	}
	if _, err := inst.Instantiate("8"); err == nil {
		t.Error("Instantiate of an instance succeeded")
	}
	if _, err := tmpl.Instantiate("a b"); err == nil {
		t.Error("Instantiate with a space succeeded")
	}
}

func TestFleetReset(t *testing.T) {
	f, err := Parse("a.service", []byte("[Service]\nExecStart=/bin/true\n[X-Fleet]\nConflicts=x*\nConflicts=\nConflicts=y*\n"+
		"MachineMetadata=a=b\nMachineMetadata=\nMachineMetadata=c=d\nMachineID=abc\nMachineID=\nMachineOf=b.service\nMachineOf=\nGlobal=true\n"))
	if err != nil {
		t.Fatal(err)
	}
	fl := f.Fleet
	if strings.Join(fl.Conflicts, ",") != "y*" || len(fl.Metadata) != 1 || fl.Metadata[0].String() != "c=d" ||
		fl.MachineID != "" || fl.MachineOf != nil || !fl.Global {
		t.Errorf("Fleet = %+v", fl)
	}
}

func TestTimeoutZeroIsInfinity(t *testing.T) {
	f, err := Parse("a.service", []byte("[Service]\nExecStart=/bin/true\nTimeoutStartSec=0\nRestartSec=0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Service.TimeoutStartSec != Infinity || f.Service.RestartSec != 0 || f.Service.TimeoutStopSec != 0 {
		t.Errorf("Service = %+v", f.Service)
	}
}

func TestValues(t *testing.T) {
	f, err := Parse("a.service", []byte("[Unit]\nAfter=x\nAfter=y\nAfter=\nAfter=z\n[Service]\nExecStart=/bin/true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := f.Values("Unit", "After"); strings.Join(got, ",") != "z" {
		t.Errorf("Values = %q", got)
	}
}

func TestHash(t *testing.T) {
	// sha1 of the empty string and of "abc", known values.
	if got := Hash(nil); got != "da39a3ee5e6b4b0d3255bfef95601890afd80709" {
		t.Errorf("Hash(nil) = %s", got)
	}
	if got := Hash([]byte("abc")); got != "a9993e364706816aba3e25717850c26c9cd0d89d" {
		t.Errorf("Hash(abc) = %s", got)
	}
}

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/good/*")
	for _, p := range files {
		if strings.HasSuffix(p, ".golden") {
			continue
		}
		b, err := os.ReadFile(p)
		if err == nil {
			f.Add(filepath.Base(p), b)
		}
	}
	f.Add("a@.service", []byte("[X-Fleet]\nMachineMetadata=\"a=b\" c!=d|e\nGlobal=1\n[Service]\nType=oneshot\nExecStop=/bin/x\n"))
	f.Fuzz(func(t *testing.T, name string, body []byte) {
		u, err := Parse(name, body)
		if err != nil {
			var ue *Error
			if errors.As(err, &ue) && ue.Line < 0 {
				t.Fatalf("negative line: %v", err)
			}
			return
		}
		if u.Hash() != Hash(body) || u.Name.Full != name {
			t.Fatal("name or hash changed")
		}
		if u.Fleet.Global && (u.Fleet.MachineID != "" || len(u.Fleet.MachineOf) > 0) {
			t.Fatalf("accepted Global with MachineID/MachineOf: %+v", u.Fleet)
		}
		for _, m := range u.Fleet.Metadata {
			if m.Key == "" || len(m.Values) == 0 || (m.Op != "=" && m.Op != "!=") {
				t.Fatalf("bad metadata %+v", m)
			}
		}
		if u.Name.Type == "service" && len(u.Service.ExecStart) == 0 && u.Service.Type != "oneshot" {
			t.Fatal("service without ExecStart accepted")
		}
		for _, o := range u.Options {
			if o.Line < 1 || o.Section == "" || o.Name == "" {
				t.Fatalf("bad option %+v", o)
			}
		}
		if u.Name.IsTemplate() {
			if _, err := u.Instantiate("fuzz"); err != nil {
				t.Fatalf("Instantiate of an accepted template: %v", err)
			}
		}
	})
}
