package unit

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/systemdtest"
)

// TestExecMatchesSystemd runs unit files through a real systemd (a user
// manager in a private mount namespace, as shared/notes/systemd-in-tests.md
// describes) and checks that Parse and Exec.Command give every program the
// argv systemd gives it: continuation lines, quoting, escapes, specifiers
// and $VAR/${VAR} expansion. Each unit runs printf '%s\0' with the words
// under test; the NUL-separated output is systemd's argv.
func TestExecMatchesSystemd(t *testing.T) {
	// systemdtest keeps the manager in its own cgroup, mount and PID
	// namespaces: a user manager started in the host's root cgroup would move
	// the host's processes into /init.scope.
	m := systemdtest.New(t)
	printf, err := exec.LookPath("printf")
	if err != nil {
		t.Skip("no printf program")
	}
	cases := []struct {
		name     string // the test name and the unit's prefix
		instance string
		service  string // [Service] lines before ExecStart
		args     string // what follows printf's format on the ExecStart line
	}{
		{name: "env", service: "Environment=\"A=one two\" B=x", args: `$A ${A} "$A" a$B $$B ${B}c ${NOPE}. $NOPE end`},
		{name: "envdefault", service: "Environment=A=set EMPTY=", args: `${A:-d} ${NOPE:-d} ${EMPTY:-d} ${A:+alt} ${NOPE:+alt}.`},
		{name: "quotes", args: `--o="a b" x'y z' "a b"c 'it''s' "" '' "q\"q" 'd"q'`},
		{name: "escapes", args: `\; ";" "\x41\101" '\t' \s \u00e9 \U0001F600 a\ b \\ "\\"`},
		{name: "specifiers", instance: `a-b\x20c`, args: `%i %I %n %N %p %P %f %j %J 100%% %%i`},
		{name: "machine", args: `%H %m %l`},
		{name: "continuation", args: "first \\\n  second \\\n# a comment inside is skipped\n  third"},
		{name: "relaxed", args: `a\qb \$A x\ y "in\ q" \x4 \xzz \x00 \0101 \777 \ud800 \U00110000 \U0010ffff \ufffe \U0001F600 "a\;b" 'a\'b' \; \\; a\;b end`},
		{name: "words", service: "Environment=\"A=one two\" B=x", args: `'$A' $A$B ${A}${B} $ {A} $} ${ ${1X}. $1X ${A ";" ';' ${A:-${B}} end`},
		{name: "prefix", args: `x y`}, // run with the - prefix below
		// environment runs env -0 instead of printf: Environment= parsing.
		{name: "environment", service: "Environment=\"FA=x y\" FB='q r' FC=a\\tb\\s FD=\\x41 \"FE=1\" FF=\nEnvironment=FG=%n FH=100%% FF=last\nEnvironment=FI=\"in\"side", args: "-0"},
	}
	dir := filepath.Join(m.Dir, "exec")
	var starts []string
	if err := os.MkdirAll(filepath.Join(dir, "units"), 0o755); err != nil {
		t.Fatal(err)
	}
	type job struct {
		name, unitName, out string
		file                *File
	}
	var jobs []job
	for _, c := range cases {
		prefix := ""
		if c.name == "prefix" {
			prefix = "-"
		}
		out := filepath.Join(dir, c.name+".out")
		program := printf + ` '%%s\\0'`
		if c.name == "environment" {
			program = "/usr/bin/env"
		}
		body := fmt.Sprintf("[Unit]\nDescription=%s\n[Service]\nType=oneshot\n%s\nStandardOutput=file:%s\nExecStart=%s%s %s\n",
			c.name, c.service, out, prefix, program, c.args)
		file, unitName := c.name+"@.service", c.name+"@"+c.instance+".service"
		if c.instance == "" {
			file, unitName = c.name+".service", c.name+".service"
		}
		if err := os.WriteFile(filepath.Join(m.UnitDir, file), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := Parse(unitName, []byte(body))
		if err != nil {
			t.Fatalf("%s: Parse: %v\n%s", c.name, err, body)
		}
		jobs = append(jobs, job{name: c.name, unitName: unitName, out: out, file: f})
		starts = append(starts, unitName)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := m.Systemctl(ctx, "daemon-reload"); err != nil {
		t.Fatal(err)
	}
	for _, u := range starts {
		if out, err := m.Systemctl(ctx, "start", u); err != nil {
			status, _ := m.Systemctl(ctx, "status", u)
			t.Fatalf("start %s: %v\n%s\n%s\nmanager log:\n%s", u, err, out, status, m.Log())
		}
	}

	host, _ := os.Hostname()
	machineID, _ := os.ReadFile("/etc/machine-id")
	for _, j := range jobs {
		t.Run(j.name, func(t *testing.T) {
			raw, err := os.ReadFile(j.out)
			if err != nil {
				t.Fatal(err)
			}
			want := strings.Split(strings.TrimSuffix(string(raw), "\x00"), "\x00")
			sp := Specifiers{Name: j.file.Name, Hostname: host, MachineID: string(bytes.TrimSpace(machineID))}
			if j.name == "environment" {
				ours := map[string]string{}
				for _, kv := range j.file.Service.Environment {
					k, v, _ := strings.Cut(ExpandSpecifiers(kv, sp), "=")
					ours[k] = v
				}
				theirs := map[string]string{}
				for _, kv := range want {
					if k, v, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "F") && len(k) == 2 {
						theirs[k] = v
					}
				}
				if !maps.Equal(ours, theirs) {
					t.Errorf("environment:\n ours:    %q\n systemd: %q", ours, theirs)
				}
				return
			}
			e := j.file.Service.ExecStart[0]
			path, argv, err := e.Command(sp, j.file.Service.Environment)
			if err != nil {
				t.Fatal(err)
			}
			if path != printf || len(argv) < 2 {
				t.Fatalf("Command = %q %q", path, argv)
			}
			if got := argv[2:]; !slices.Equal(got, want) {
				t.Errorf("argv after the format:\n ours:    %q\n systemd: %q", got, want)
			}
			if j.name == "prefix" && !e.IgnoreFailure {
				t.Error("the - prefix was not seen")
			}
		})
	}
}

// TestTimespanMatchesSystemd compares ParseTimespan with systemd's own
// parser, as `systemd-analyze timespan` prints it.
func TestTimespanMatchesSystemd(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze")
	}
	inputs := []string{"1min 30s", "1.5h", "5", "100ms", "1h2m3s", "2 min", "1w 1d", "5 10s", "5 s 3",
		"1.2.3s", "5s min", "infinity", "0", "1M", "1y", "3 hours", "1.5", " 5s ", "5S", "2weeks",
		"10usec", "1e3s", "0x10s", "5secs", "1.000001s", "90sec", "1d12h", "soon", "-5s", "1 hr", ".5s"}
	for _, in := range inputs {
		t.Run(in, func(t *testing.T) {
			out, err := exec.Command(analyze, "timespan", "--", in).CombinedOutput()
			theirs := ""
			switch {
			case err != nil:
				theirs = "error"
			case bytes.Contains(out, []byte("Original: infinity")):
				theirs = "infinity"
			default:
				for _, line := range strings.Split(string(out), "\n") {
					if _, v, ok := strings.Cut(line, "μs: "); ok {
						theirs = strings.TrimSpace(v)
					}
				}
			}
			d, perr := ParseTimespan(in)
			ours := ""
			switch {
			case perr != nil:
				ours = "error"
			case d == Infinity:
				ours = "infinity"
			default:
				ours = fmt.Sprint(d.Microseconds())
			}
			if ours != theirs {
				t.Errorf("ParseTimespan(%q) = %s (%v), systemd says %s", in, ours, perr, theirs)
			}
		})
	}
}
