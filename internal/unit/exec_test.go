package unit

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseExec(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    [][]string // argv of each command
		path    string     // Path of the first command
		ignore  bool
		wantErr string
	}{
		"plain":            {in: "/bin/echo a b", want: [][]string{{"/bin/echo", "a", "b"}}, path: "/bin/echo"},
		"ignore":           {in: "-/bin/false", want: [][]string{{"/bin/false"}}, path: "/bin/false", ignore: true},
		"argv0":            {in: "@/bin/sleep mysleep 10", want: [][]string{{"mysleep", "10"}}, path: "/bin/sleep"},
		"all prefixes":     {in: "-@+!:/bin/x y", want: [][]string{{"y"}}, path: "/bin/x", ignore: true},
		"double quotes":    {in: `/bin/echo "a b"  c`, want: [][]string{{"/bin/echo", "a b", "c"}}, path: "/bin/echo"},
		"single quotes":    {in: `/bin/echo 'a "b"' c`, want: [][]string{{"/bin/echo", `a "b"`, "c"}}, path: "/bin/echo"},
		"empty quoted":     {in: `/bin/echo "" x`, want: [][]string{{"/bin/echo", "", "x"}}, path: "/bin/echo"},
		"escapes":          {in: `/bin/echo \x41\101\u00e9 "\"q\"" \\ \s`, want: [][]string{{"/bin/echo", "AAé", `"q"`, `\`, " "}}, path: "/bin/echo"},
		"escapes in quote": {in: `/bin/echo "\t\n\s"`, want: [][]string{{"/bin/echo", "\t\n "}}, path: "/bin/echo"},
		"two commands":     {in: "/bin/a 1 ; -/bin/b 2", want: [][]string{{"/bin/a", "1"}, {"/bin/b", "2"}}, path: "/bin/a"},
		"literal ;":        {in: `/bin/echo \; ";"`, want: [][]string{{"/bin/echo", ";", ";"}}, path: "/bin/echo"},
		"trailing ;":       {in: "/bin/a ;", want: [][]string{{"/bin/a"}}, path: "/bin/a"},
		"plain name":       {in: "sleep 1", want: [][]string{{"sleep", "1"}}, path: "sleep"},
		"env kept":         {in: "/bin/echo $A ${B}", want: [][]string{{"/bin/echo", "$A", "${B}"}}, path: "/bin/echo"},
		"tabs":             {in: "\t/bin/echo\ta\t", want: [][]string{{"/bin/echo", "a"}}, path: "/bin/echo"},
		"empty":            {in: "", want: nil},
		"unbalanced":       {in: `/bin/echo "a`, wantErr: "unbalanced quote"},
		"unbalanced '":     {in: `/bin/echo 'a`, wantErr: "unbalanced quote '"},
		"quote in word":    {in: `/bin/run --opt="a b" x'y z'`, want: [][]string{{"/bin/run", "--opt=a b", "xy z"}}, path: "/bin/run"},
		"after quote":      {in: `/bin/echo "a"b'c'`, want: [][]string{{"/bin/echo", "abc"}}, path: "/bin/echo"},
		// As systemd: escapes it cannot decode are kept as written.
		"trailing \\":    {in: `/bin/echo a\`, want: [][]string{{"/bin/echo", `a\`}}, path: "/bin/echo"},
		"nul escape":     {in: `/bin/echo \x00 \u0000 \000`, want: [][]string{{"/bin/echo", `\x00`, `\u0000`, `\000`}}, path: "/bin/echo"},
		"short hex":      {in: `/bin/echo \x4`, want: [][]string{{"/bin/echo", `\x4`}}, path: "/bin/echo"},
		"bad hex":        {in: `/bin/echo \xzz \U00110000 \U0010ffff \ud800 \ufffe`, want: [][]string{{"/bin/echo", `\xzz`, `\U00110000`, `\U0010ffff`, "\xed\xa0\x80", "\ufffe"}}, path: "/bin/echo"},
		"octal":          {in: `/bin/echo \091 \0101 \777`, want: [][]string{{"/bin/echo", `\091`, "\x081", `\777`}}, path: "/bin/echo"},
		"unknown escape": {in: `/bin/echo \q a\;b "\;" \\;`, want: [][]string{{"/bin/echo", `\q`, `a\;b`, `\;`, `\;`}}, path: "/bin/echo"},
		"escaped space":  {in: `/bin/echo a\ b`, want: [][]string{{"/bin/echo", `a\ b`}}, path: "/bin/echo"},
		"only prefix":    {in: "-", wantErr: "no program"},
		"at alone":       {in: "@/bin/x", wantErr: `"@" prefix needs argv[0]`},
		"empty before ;": {in: "; /bin/x", wantErr: "empty command"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cmds, err := ParseExec(tc.in, 3)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseExec(%q) = %v, %v; want error %q", tc.in, cmds, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseExec(%q): %v", tc.in, err)
			}
			var got [][]string
			for _, c := range cmds {
				got = append(got, c.Argv)
				if c.Line != 3 {
					t.Errorf("Line = %d", c.Line)
				}
			}
			if !slices.EqualFunc(got, tc.want, slices.Equal) {
				t.Fatalf("ParseExec(%q) argv = %q, want %q", tc.in, got, tc.want)
			}
			if len(cmds) > 0 && (cmds[0].Path != tc.path || cmds[0].IgnoreFailure != tc.ignore) {
				t.Errorf("Path=%q IgnoreFailure=%v", cmds[0].Path, cmds[0].IgnoreFailure)
			}
			// A command re-parsed from Raw is the same command.
			for _, c := range cmds {
				again, err := ParseExec(c.Raw, 3)
				if err != nil || len(again) != 1 || !slices.Equal(again[0].Argv, c.Argv) || again[0].Path != c.Path {
					t.Errorf("Raw %q re-parses as %+v, %v", c.Raw, again, err)
				}
			}
		})
	}
}

func TestExpandEnv(t *testing.T) {
	env := []string{"A=one two", "B=x", "EMPTY=", "B=y", "S=  spaced  out  "}
	tests := map[string]struct {
		in, want []string
	}{
		"word splits":        {[]string{"/bin/echo", "$A"}, []string{"/bin/echo", "one", "two"}},
		"braced one word":    {[]string{"/bin/echo", "${A}"}, []string{"/bin/echo", "one two"}},
		"braced in word":     {[]string{"--x=${A}!"}, []string{"--x=one two!"}},
		"last wins":          {[]string{"$B"}, []string{"y"}},
		"unset word":         {[]string{"a", "$NOPE", "b"}, []string{"a", "b"}},
		"empty word":         {[]string{"a", "$EMPTY", "b"}, []string{"a", "b"}},
		"unset braced":       {[]string{"a${NOPE}b"}, []string{"ab"}},
		"unbraced in word":   {[]string{"a$B"}, []string{"a$B"}},
		"dollar dollar":      {[]string{"$$B", "cost$$"}, []string{"$B", "cost$"}},
		"no default syntax":  {[]string{"${NOPE:-def}", "x${B:+alt}", "${A:-${B}}"}, []string{"${NOPE:-def}", "x${B:+alt}", "${A:-y}"}},
		"whitespace runs":    {[]string{"$S"}, []string{"spaced", "out"}},
		"unterminated brace": {[]string{"${A"}, []string{"${A"}},
		"any name":           {[]string{"${1A}.", "$1A", "$A$B", "${A}${B}"}, []string{".", "one twoy"}},
		"lone dollar":        {[]string{"$", "a$", "$}"}, []string{"a$"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := ExpandEnv(tc.in, env)
			if !slices.Equal(got, tc.want) {
				t.Errorf("ExpandEnv(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestCommand(t *testing.T) {
	n, _ := ParseName(`web@a-b\x20c.service`)
	sp := Specifiers{Name: n, Hostname: "host1", MachineID: "m1"}
	env := []string{"PUBLIC_IP=10.0.0.1", "OPTS=-v -x"}
	tests := map[string]struct {
		raw, path string
		argv      []string
	}{
		"seed announce": {`/usr/bin/announce --addr ${PUBLIC_IP}:8080 /clusterstate/ns/%n "%H ${PUBLIC_IP}:8080"`, "/usr/bin/announce",
			[]string{"/usr/bin/announce", "--addr", "10.0.0.1:8080", `/clusterstate/ns/web@a-b\x20c.service`, "host1 10.0.0.1:8080"}},
		"split opts":   {"/bin/prog $OPTS %m", "/bin/prog", []string{"/bin/prog", "-v", "-x", "m1"}},
		"no expansion": {":/bin/echo $OPTS", "/bin/echo", []string{"/bin/echo", "$OPTS"}},
		"instance":     {"/bin/echo %i %I %p %N", "/bin/echo", []string{"/bin/echo", `a-b\x20c`, "a/b c", "web", `web@a-b\x20c`}},
		"argv0":        {"@/bin/sleep %p 1", "/bin/sleep", []string{"web", "1"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cmds, err := ParseExec(tc.raw, 1)
			if err != nil {
				t.Fatal(err)
			}
			path, argv, err := cmds[0].Command(sp, env)
			if err != nil {
				t.Fatal(err)
			}
			if path != tc.path || !slices.Equal(argv, tc.argv) {
				t.Errorf("Command = %q %q, want %q %q", path, argv, tc.path, tc.argv)
			}
		})
	}
	cmds, _ := ParseExec("$NOTHING", 4)
	if _, _, err := cmds[0].Command(sp, nil); err == nil || !strings.Contains(err.Error(), "line 4") {
		t.Errorf("empty command: err = %v", err)
	}
}

func TestSpecifiers(t *testing.T) {
	inst, _ := ParseName(`mnt@var-lib-x\x2dy.mount`)
	plain, _ := ParseName("a-b.service")
	sp := Specifiers{Name: inst, Hostname: "h", MachineID: "m", BootID: "b"}
	tests := map[string]struct {
		in, want string
		sp       Specifiers
	}{
		"name":         {"%n|%N|%p|%P|%i|%I|%f", `mnt@var-lib-x\x2dy.mount|mnt@var-lib-x\x2dy|mnt|mnt|var-lib-x\x2dy|var/lib/x-y|/var/lib/x-y`, sp},
		"machine":      {"%H %m %b", "h m b", sp},
		"percent":      {"100%% %%n", "100% %n", sp},
		"unknown":      {"%z %", "%z %", sp},
		"plain %f":     {"%f %P %i", "/a/b a/b ", Specifiers{Name: plain}},
		"nothing":      {"no specifiers", "no specifiers", sp},
		"zero":         {"[%n][%H]", "[][]", Specifiers{}},
		"adjacent":     {"%p%i", `mntvar-lib-x\x2dy`, sp},
		"trailing":     {"x%", "x%", sp},
		"bad unesc":    {"%I", `bad\xZZ`, Specifiers{Name: Name{Instance: `bad\xZZ`, at: true}}},
		"j J":          {"%j|%J", `x\x2dy|x-y`, Specifiers{Name: Name{Prefix: `var-lib-x\x2dy`}}},
		"j no dash":    {"%j", "mnt", sp},
		"short host":   {"%l|%H", "web1|web1.example.com", Specifiers{Hostname: "web1.example.com"}},
		"user":         {"%u %U %g %G %h %s", "www 33 www 33 /var/www /bin/sh", Specifiers{User: "www", UID: "33", Group: "www", GID: "33", Home: "/var/www", Shell: "/bin/sh"}},
		"dirs default": {"%t %S %C %L %E %T %V", "/run /var/lib /var/cache /var/log /etc /tmp /var/tmp", Specifiers{}},
		"dirs user":    {"%t/x %S", "/run/user/1000/x /home/u/.local/state", Specifiers{RuntimeDir: "/run/user/1000", StateDir: "/home/u/.local/state"}},
		"extra":        {"%a|%v|%o", "x86-64|6.1.0|", Specifiers{Extra: map[byte]string{'a': "x86-64", 'v': "6.1.0"}}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := ExpandSpecifiers(tc.in, tc.sp); got != tc.want {
				t.Errorf("ExpandSpecifiers(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
	if got := CheckSpecifiers("ok %n %% %t %h %z"); got != "%z" {
		t.Errorf("CheckSpecifiers = %q", got)
	}
}

func TestParseTimespan(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		"bare seconds":  {in: "90", want: 90 * time.Second},
		"seconds":       {in: "5s", want: 5 * time.Second},
		"combined":      {in: "1min 30s", want: 90 * time.Second},
		"no space":      {in: "1h2m3s", want: time.Hour + 2*time.Minute + 3*time.Second},
		"ms":            {in: "100ms", want: 100 * time.Millisecond},
		"us":            {in: "10us", want: 10 * time.Microsecond},
		"fraction":      {in: "1.5h", want: 90 * time.Minute},
		"unit space":    {in: "2 min", want: 2 * time.Minute},
		"long names":    {in: "1 hour 1 minute 1 second", want: time.Hour + time.Minute + time.Second},
		"days weeks":    {in: "1w 1d", want: 8 * 24 * time.Hour},
		"infinity":      {in: "infinity", want: Infinity},
		"zero":          {in: "0", want: 0},
		"empty":         {in: "", wantErr: "empty"},
		"unknown unit":  {in: "5 parsecs", wantErr: `unknown unit "parsecs"`},
		"word":          {in: "soon", wantErr: "expected a number"},
		"bare then":     {in: "5 10s", want: 15 * time.Second},
		"negative":      {in: "-5s", wantErr: "expected a number"},
		"two dots":      {in: "1.2.3s", wantErr: "bad number"},
		"overflow":      {in: "999999999999y", wantErr: "too long"},
		"trailing unit": {in: "5s min", wantErr: "expected a number"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseTimespan(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseTimespan(%q) = %v, %v; want error %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ParseTimespan(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestParseBool(t *testing.T) {
	for _, s := range []string{"1", "yes", "Y", "TRUE", "t", "on"} {
		if b, err := ParseBool(s); err != nil || !b {
			t.Errorf("ParseBool(%q) = %v, %v", s, b, err)
		}
	}
	for _, s := range []string{"0", "no", "n", "False", "f", "OFF"} {
		if b, err := ParseBool(s); err != nil || b {
			t.Errorf("ParseBool(%q) = %v, %v", s, b, err)
		}
	}
	if _, err := ParseBool("2"); err == nil {
		t.Error("ParseBool(2) succeeded")
	}
}

func FuzzExecLine(f *testing.F) {
	for _, s := range []string{"/bin/echo a b", `-@/bin/x "a b" 'c' \x41 ; /bin/y \;`, `/bin/echo "a`, "${A} $B $$", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		cmds, err := ParseExec(line, 1)
		if err != nil {
			return
		}
		for _, c := range cmds {
			if c.Path == "" || len(c.Argv) == 0 {
				t.Fatalf("ParseExec(%q) gave an empty command %+v", line, c)
			}
			again, err := ParseExec(c.Raw, 1)
			if err != nil || len(again) != 1 || !slices.Equal(again[0].Argv, c.Argv) || again[0].Path != c.Path ||
				again[0].IgnoreFailure != c.IgnoreFailure || again[0].NoEnvExpand != c.NoEnvExpand {
				t.Fatalf("ParseExec(%q): Raw %q re-parses as %+v, %v (was %q)", line, c.Raw, again, err, c.Argv)
			}
			_ = ExpandEnv(c.Argv, []string{"A=1 2", "B="})
		}
	})
}
