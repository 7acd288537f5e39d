package systemd

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

func TestParseName(t *testing.T) {
	tests := map[string]struct {
		name    string
		want    unitName
		wantErr string
	}{
		"plain":          {name: "web.service", want: unitName{full: "web.service", prefix: "web", suffix: ".service"}},
		"instance":       {name: "nginx@1.service", want: unitName{full: "nginx@1.service", prefix: "nginx", instance: "1", suffix: ".service"}},
		"template":       {name: "nginx@.service", want: unitName{full: "nginx@.service", prefix: "nginx", suffix: ".service", template: true}},
		"escaped":        {name: `a\x2db@x:y.socket`, want: unitName{full: `a\x2db@x:y.socket`, prefix: `a\x2db`, instance: "x:y", suffix: ".socket"}},
		"timer":          {name: "prefetch.timer", want: unitName{full: "prefetch.timer", prefix: "prefetch", suffix: ".timer"}},
		"empty":          {name: "", wantErr: "invalid unit name"},
		"slash":          {name: "../x.service", wantErr: "invalid unit name"},
		"space":          {name: "a b.service", wantErr: "character ' '"},
		"no suffix":      {name: "web", wantErr: "no unit type suffix"},
		"unknown suffix": {name: "web.conf", wantErr: `unknown unit type ".conf"`},
		"two ats":        {name: "a@b@c.service", wantErr: "invalid unit name"},
		"leading at":     {name: "@1.service", wantErr: "invalid unit name"},
		"only suffix":    {name: ".service", wantErr: "no unit type suffix"},
		"too long":       {name: strings.Repeat("a", 250) + ".service", wantErr: "invalid unit name"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parseName(tc.name)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseName(%q) = %v, want error containing %q", tc.name, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("parseName(%q) = %+v, want %+v", tc.name, got, tc.want)
			}
		})
	}
}

// FuzzParseName: unit names come from users (submitted file names). A name
// that parses must be safe as a file name and be rebuilt from its parts.
func FuzzParseName(f *testing.F) {
	for _, s := range []string{"web.service", "nginx@1.service", "nginx@.service", "a.timer", "x/y.service", "", "@.service"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseName(s)
		if err != nil {
			return
		}
		if strings.ContainsAny(s, "/\x00") || s == "." || s == ".." {
			t.Fatalf("unsafe name %q accepted", s)
		}
		rebuilt := n.prefix + n.suffix
		if n.instance != "" || n.template {
			rebuilt = n.prefix + "@" + n.instance + n.suffix
		}
		if rebuilt != s {
			t.Fatalf("%q parsed as %+v, rebuilt %q", s, n, rebuilt)
		}
		if n.instance != "" {
			if _, err := parseName(n.templateName()); err != nil {
				t.Fatalf("template %q of %q does not parse: %v", n.templateName(), s, err)
			}
		}
	})
}

// TestDropIn compares drop-ins with golden files (go test -run TestDropIn -update).
func TestDropIn(t *testing.T) {
	tests := map[string]struct {
		unit     string
		envFile  string
		env      map[string]string
		agent    string
		agentDep string
	}{
		"envfile":        {unit: "web.service", envFile: "/run/flotilla/machine.env"},
		"agent-bindsto":  {unit: "nginx@1.service", envFile: "/run/flotilla/machine.env", agent: "flotilla.service", agentDep: BindsTo},
		"agent-partof":   {unit: "web.socket", envFile: "/e", agent: "flotilla.service", agentDep: PartOf},
		"env-quoted":     {unit: "web.service", env: map[string]string{"PUBLIC_IP": "10.0.0.1", "META": `a "b" 100% \n`}},
		"timer-no-env":   {unit: "prefetch.timer", envFile: "/e"},
		"nothing to add": {unit: "web.service"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			n, err := parseName(tc.unit)
			if err != nil {
				t.Fatal(err)
			}
			got := dropIn(n, "abc123", tc.envFile, tc.env, tc.agent, tc.agentDep)
			golden := filepath.Join("testdata", "dropin-"+strings.ReplaceAll(name, " ", "-")+".conf")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("drop-in for %s:\n%s\nwant (%s):\n%s", tc.unit, got, golden, want)
			}
			o, err := readOwnedBytes(got)
			if err != nil || !o.owned || o.hash != "abc123" {
				t.Errorf("drop-in not recognised as owned with its hash: %+v %v", o, err)
			}
		})
	}
}

func readOwnedBytes(b []byte) (owned, error) {
	p := filepath.Join(os.TempDir(), "flotilla-readowned-test")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		return owned{}, err
	}
	defer os.Remove(p)
	return readOwned(p)
}

func TestReadOwned(t *testing.T) {
	tests := map[string]struct {
		content   string
		wantOwned bool
		wantHash  string
		wantBody  string
	}{
		"marker and hash": {content: "# flotilla: owned hash=h1\n[Service]\n", wantOwned: true, wantHash: "h1", wantBody: "[Service]\n"},
		"marker only":     {content: "# flotilla: owned\n[Unit]\n", wantOwned: true, wantBody: "[Unit]\n"},
		"foreign":         {content: "[Service]\nExecStart=/bin/true\n"},
		"marker later":    {content: "[Service]\n# flotilla: owned\n"},
		"lookalike":       {content: "# flotilla: ownedX\n"},
		"empty":           {content: ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "u.service")
			if err := os.WriteFile(p, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			o, err := readOwned(p)
			if err != nil {
				t.Fatal(err)
			}
			if !o.exists || o.owned != tc.wantOwned || o.hash != tc.wantHash || (tc.wantOwned && string(o.body) != tc.wantBody) {
				t.Errorf("readOwned = %+v, want owned=%v hash=%q body=%q", o, tc.wantOwned, tc.wantHash, tc.wantBody)
			}
		})
	}
	o, err := readOwned(filepath.Join(t.TempDir(), "missing"))
	if err != nil || o.exists {
		t.Errorf("missing file: %+v %v", o, err)
	}
}

func TestUnitNameFromPath(t *testing.T) {
	tests := map[string]string{
		"/org/freedesktop/systemd1/unit/web_2eservice":           "web.service",
		"/org/freedesktop/systemd1/unit/nginx_401_2eservice":     "nginx@1.service",
		"/org/freedesktop/systemd1/unit/a_5fb_2eservice":         "a_b.service",
		"/org/freedesktop/systemd1/unit/a_5cx2db_2eservice":      `a\x2db.service`,
		"/org/freedesktop/systemd1/unit/trailing_":               "trailing_",
		"/org/freedesktop/systemd1/unit/x_zz_2eservice":          "x_zz.service",
		"/org/freedesktop/systemd1/unit/_2d_2eslice":             "-.slice",
		"/org/freedesktop/systemd1/unit/deep_2dname_40i_2etimer": "deep-name@i.timer",
	}
	for path, want := range tests {
		got, ok := unitNameFromPath(path)
		if !ok || got != want {
			t.Errorf("unitNameFromPath(%q) = %q, %v; want %q", path, got, ok, want)
		}
	}
	if _, ok := unitNameFromPath("/org/freedesktop/systemd1/job/1"); ok {
		t.Error("a job path taken for a unit")
	}
}
