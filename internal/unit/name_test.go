package unit

import (
	"strings"
	"testing"
)

func TestParseName(t *testing.T) {
	tests := map[string]struct {
		in                             string
		prefix, instance, typ          string
		template, instance_, templName string
		wantErr                        string
	}{
		"instance":        {in: "nginx@1.service", prefix: "nginx", instance: "1", typ: "service", instance_: "y", templName: "nginx@.service"},
		"template":        {in: "nginx@.service", prefix: "nginx", typ: "service", template: "y", templName: "nginx@.service"},
		"plain":           {in: "web.service", prefix: "web", typ: "service"},
		"dotted prefix":   {in: "a.b.socket", prefix: "a.b", typ: "socket"},
		"timer":           {in: "backup.timer", prefix: "backup", typ: "timer"},
		"escaped inst":    {in: `mnt@var-lib\x2dx.mount`, prefix: "mnt", instance: `var-lib\x2dx`, typ: "mount", instance_: "y", templName: "mnt@.mount"},
		"at in instance":  {in: "a@b@c.service", prefix: "a", instance: "b@c", typ: "service", instance_: "y", templName: "a@.service"},
		"target":          {in: "multi-user.target", prefix: "multi-user", typ: "target"},
		"empty":           {in: "", wantErr: "empty"},
		"slash":           {in: "a/b.service", wantErr: `"/"`},
		"dotdot":          {in: "..service", wantErr: `".."`},
		"dotdot2":         {in: "a..b.service", wantErr: `".."`},
		"nul":             {in: "a\x00.service", wantErr: "NUL"},
		"control":         {in: "a\x01.service", wantErr: "control"},
		"space":           {in: "a b.service", wantErr: "space"},
		"no type":         {in: "nginx", wantErr: "no type"},
		"unknown type":    {in: "nginx.exe", wantErr: `unknown unit type "exe"`},
		"empty prefix":    {in: "@1.service", wantErr: "empty prefix"},
		"empty prefix 2":  {in: ".service", wantErr: "empty prefix"},
		"bad char":        {in: "a$b.service", wantErr: "characters"},
		"bad inst char":   {in: "a@b$.service", wantErr: "instance"},
		"non-ascii":       {in: "ä.service", wantErr: "non-ASCII"},
		"too long":        {in: strings.Repeat("a", 248) + ".service", wantErr: "longer than 255"},
		"longest allowed": {in: strings.Repeat("a", 247) + ".service", prefix: strings.Repeat("a", 247), typ: "service"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			n, err := ParseName(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseName(%q) = %v, want error containing %q", tc.in, err, tc.wantErr)
				}
				if tc.in != "" && !strings.Contains(err.Error(), "unit name") {
					t.Errorf("error does not name the unit: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseName(%q): %v", tc.in, err)
			}
			if n.Full != tc.in || n.Prefix != tc.prefix || n.Instance != tc.instance || n.Type != tc.typ {
				t.Errorf("ParseName(%q) = %+v", tc.in, n)
			}
			if n.IsTemplate() != (tc.template != "") || n.IsInstance() != (tc.instance_ != "") {
				t.Errorf("IsTemplate=%v IsInstance=%v", n.IsTemplate(), n.IsInstance())
			}
			if n.TemplateName() != tc.templName {
				t.Errorf("TemplateName() = %q, want %q", n.TemplateName(), tc.templName)
			}
		})
	}
}

func TestNameInstantiate(t *testing.T) {
	n, err := ParseName("nginx@.service")
	if err != nil {
		t.Fatal(err)
	}
	i, err := n.Instantiate("2")
	if err != nil || i.Full != "nginx@2.service" || !i.IsInstance() {
		t.Fatalf("Instantiate = %+v, %v", i, err)
	}
	if _, err := n.Instantiate("a/b"); err == nil {
		t.Error("Instantiate accepted a bad instance")
	}
	if _, err := n.Instantiate(""); err == nil {
		t.Error("Instantiate accepted an empty instance")
	}
	if _, err := i.Instantiate("3"); err == nil {
		t.Error("Instantiate of an instance succeeded")
	}
	if got := i.WithoutType(); got != "nginx@2" {
		t.Errorf("WithoutType = %q", got)
	}
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{"nginx@1.service", "nginx@.service", "a.b.socket", "", "@.service", `x@a\x2d.mount`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseName(s)
		if err != nil {
			return
		}
		if n.Full != s || len(s) > MaxNameLen || n.Prefix == "" || !knownType(n.Type) {
			t.Fatalf("accepted %q as %+v", s, n)
		}
		if strings.ContainsAny(s, "/ \x00\t\n") || strings.Contains(s, "..") {
			t.Fatalf("accepted %q", s)
		}
		back := n.Prefix
		if n.IsTemplate() || n.IsInstance() {
			back += "@" + n.Instance
		}
		if back+"."+n.Type != s {
			t.Fatalf("parts of %q do not rebuild it: %+v", s, n)
		}
		if n.IsTemplate() {
			i, err := n.Instantiate("x")
			if err != nil || i.TemplateName() != s {
				t.Fatalf("Instantiate(%q): %+v, %v", s, i, err)
			}
		}
	})
}
