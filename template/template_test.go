package template

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func render(t *testing.T, src string, keys map[string]string, opts Options) (string, error) {
	t.Helper()
	tp, err := Parse("test.tmpl", []byte(src), opts)
	if err != nil {
		return "", err
	}
	out, err := tp.Render(NewStore(keys))
	return string(out), err
}

func TestErrors(t *testing.T) {
	keys := map[string]string{"/app/port": "80", "/app/json": `{"a":1}`, "/bad": "\xff"}
	tests := []struct {
		name, src string
		want      string // the whole error message
		key       string // KeyError.Key expected, if any
	}{
		{"getv missing", "line1\n\n  {{getv \"/clusterstate/x\"}}", `render template test.tmpl:3: getv: key "/clusterstate/x" not found`, "/clusterstate/x"},
		{"get missing", "{{with get \"/nope\"}}{{.Value}}{{end}}", `render template test.tmpl:1: get: key "/nope" not found`, "/nope"},
		{"getv in range", "{{range seq 1 2}}\n{{getv (printf \"/k/%d\" .)}}{{end}}", `render template test.tmpl:2: getv: key "/k/1" not found`, "/k/1"},
		{"bad pattern", `{{gets "/app/["}}`, `render template test.tmpl:1: gets: syntax error in pattern`, ""},
		{"atoi", "{{atoi (getv \"/app/json\")}}", `render template test.tmpl:1: atoi: strconv.Atoi: parsing "{\"a\":1}": invalid syntax`, ""},
		{"json", "{{json (getv \"/app/port\")}}", `render template test.tmpl:1: json: cannot unmarshal number into Go value of type map[string]interface {}`, ""},
		{"base64", "{{base64Decode \"!!\"}}", `render template test.tmpl:1: base64Decode: illegal base64 data at input byte 0`, ""},
		{"div by zero", "{{div 1 0}}", `render template test.tmpl:1: div: runtime error: integer divide by zero`, ""},
		{"missing map key", "{{$m := json (getv \"/app/json\")}}{{$m.b}}", `render template test.tmpl:1: at <$m.b>: map has no entry for key "b"`, ""},
		{"map odd", `{{map "a"}}`, `render template test.tmpl:1: map: odd number of arguments (1): want key, value pairs`, ""},
		{"parse", "ok\n{{nosuchfunc}}", `parse template test.tmpl:2: function "nosuchfunc" not defined`, ""},
		{"parse unclosed", "{{if true}}", `parse template test.tmpl:1: unexpected EOF`, ""},
		{"repeat huge", `{{repeat 1000000000 "abc"}}`, `render template test.tmpl:1: repeat: result would exceed 67108864 bytes`, ""},
		{"seq huge", `{{range seq 1 (atoi "2000000000")}}{{end}}`, `render template test.tmpl:1: seq: 1..2000000000 is more than 16777216 numbers`, ""},
		{"indent huge", `{{indent 1000000000 "x"}}`, `render template test.tmpl:1: indent: 1000000000 spaces is more than 65536`, ""},
		{"regex", `{{regexMatch "(" "x"}}`, "render template test.tmpl:1: regexMatch: error parsing regexp: missing closing ): `(`", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := render(t, tc.src, keys, Options{})
			if err == nil {
				t.Fatalf("no error; output %q", out)
			}
			if err.Error() != tc.want {
				t.Fatalf("error\n%s\nwant\n%s", err, tc.want)
			}
			var ke *KeyError
			if got := errors.As(err, &ke); got != (tc.key != "") || (got && ke.Key != tc.key) {
				t.Fatalf("errors.As KeyError = %v (%+v), want key %q", got, ke, tc.key)
			}
			if tc.key != "" && !errors.Is(err, ErrKeyNotFound) {
				t.Fatal("not ErrKeyNotFound")
			}
		})
	}
}

func TestDelims(t *testing.T) {
	keys := map[string]string{"/a": "1"}
	tests := []struct {
		name   string
		delims [2]string
		src    string
		want   string
	}{
		{"default", [2]string{}, `{{getv "/a"}} [[x]]`, "1 [[x]]"},
		{"brackets", [2]string{"[[", "]]"}, `[[getv "/a"]] {{keep}}`, "1 {{keep}}"},
		{"only one set is ignored", [2]string{"[[", ""}, `{{getv "/a"}}`, "1"},
		{"erb style", [2]string{"<%", "%>"}, `<%range getvs "/*"%>v=<%.%><%end%>`, "v=1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := render(t, tc.src, keys, Options{Delims: tc.delims})
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestInclude(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	files := map[string]string{
		"a.tmpl":        `A{{include "b.tmpl"}}`,
		"b.tmpl":        `B{{getv "/k"}}`,
		"self.tmpl":     `{{include "self.tmpl"}}`,
		"loop1.tmpl":    `{{include "loop2.tmpl"}}`,
		"loop2.tmpl":    `{{include "./loop1.tmpl"}}`,
		"dot.tmpl":      `[{{.}}]`,
		"missing.tmpl":  "x\n{{getv \"/nope\"}}",
		"bad.tmpl":      `{{if}}`,
		"sub/deep.tmpl": `D{{include "b.tmpl"}}`,
		"brackets.tmpl": `[[getv "/k"]]`,
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("SECRET"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "link.tmpl")); err != nil {
		t.Fatal(err)
	}
	// a chain of 12 templates, each including the next
	for i := range 12 {
		body := fmt.Sprintf(`%d{{include "chain%d.tmpl"}}`, i, i+1)
		if i == 11 {
			body = "end"
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("chain%d.tmpl", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	keys := map[string]string{"/k": "v"}
	tests := []struct {
		name, src string
		opts      Options
		want      string // output, or the error's text when wantErr
		wantErr   error  // errors.Is target, or nil for "any error"
		isErr     bool
	}{
		{name: "nested", src: `{{include "a.tmpl"}}`, want: "ABv"},
		{name: "subdir", src: `{{include "sub/deep.tmpl"}}`, want: "DBv"},
		{name: "with data", src: `{{include "dot.tmpl" "x"}}{{include "dot.tmpl"}}`, want: "[x][<no value>]"},
		{name: "same delims", src: `[[include "brackets.tmpl"]]`, opts: Options{Delims: [2]string{"[[", "]]"}}, want: "v"},
		{name: "dotdot", src: `{{include "../secret"}}`, wantErr: ErrIncludeEscape, isErr: true},
		{name: "dotdot inside", src: `{{include "sub/../../secret"}}`, wantErr: ErrIncludeEscape, isErr: true},
		{name: "absolute", src: `{{include "/etc/passwd"}}`, wantErr: ErrIncludeEscape, isErr: true},
		{name: "symlink out", src: `{{include "link.tmpl"}}`, wantErr: ErrIncludeEscape, isErr: true},
		{name: "self", src: `{{include "self.tmpl"}}`, wantErr: ErrIncludeCycle, isErr: true},
		{name: "loop", src: `{{include "loop1.tmpl"}}`, wantErr: ErrIncludeCycle, isErr: true},
		{name: "root includes itself", src: `{{include "test.tmpl"}}`, wantErr: ErrIncludeCycle, isErr: true},
		{name: "depth", src: `{{include "chain0.tmpl"}}`, isErr: true, want: `render template test.tmpl:1: include "chain0.tmpl": render template chain0.tmpl:1: include "chain1.tmpl": render template chain1.tmpl:1: include "chain2.tmpl": render template chain2.tmpl:1: include "chain3.tmpl": render template chain3.tmpl:1: include "chain4.tmpl": render template chain4.tmpl:1: include "chain5.tmpl": render template chain5.tmpl:1: include "chain6.tmpl": render template chain6.tmpl:1: include "chain7.tmpl": render template chain7.tmpl:1: include "chain8.tmpl": render template chain8.tmpl:1: include "chain9.tmpl": render template chain9.tmpl:1: include "chain10.tmpl": includes nested deeper than 10`},
		{name: "depth raised", src: `{{include "chain0.tmpl"}}`, opts: Options{IncludeDepth: 12}, want: "012345678910end"},
		{name: "missing file", src: `{{include "nope.tmpl"}}`, wantErr: os.ErrNotExist, isErr: true},
		{name: "missing key inside", src: `{{include "missing.tmpl"}}`, isErr: true, wantErr: ErrKeyNotFound,
			want: `render template test.tmpl:1: include "missing.tmpl": render template missing.tmpl:2: getv: key "/nope" not found`},
		{name: "parse error inside", src: `{{include "bad.tmpl"}}`, isErr: true,
			want: `render template test.tmpl:1: include "bad.tmpl": parse template bad.tmpl:1: missing value for if`},
		{name: "no dir", src: `{{include "a.tmpl"}}`, opts: Options{Dir: "-"}, isErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			if opts.Dir == "" {
				opts.Dir = dir
			} else if opts.Dir == "-" {
				opts.Dir = ""
			}
			got, err := render(t, tc.src, keys, opts)
			if !tc.isErr {
				if err != nil || got != tc.want {
					t.Fatalf("got %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error; output %q", got)
			}
			if strings.Contains(err.Error(), "SECRET") {
				t.Fatal("content from outside the directory leaked")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v is not %v", err, tc.wantErr)
			}
			if tc.want != "" && err.Error() != tc.want {
				t.Fatalf("error\n%s\nwant\n%s", err, tc.want)
			}
		})
	}
}

// TestConcurrentRender renders one template from many goroutines over
// different stores (run with -race): each must see only its own store.
func TestConcurrentRender(t *testing.T) {
	tp, err := Parse("c.tmpl", []byte(`{{range getvs "/s/*"}}{{.}}{{end}}|{{getv "/id"}}`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			s := NewStore(map[string]string{"/id": fmt.Sprint(i), "/s/a": "x", "/s/b": fmt.Sprint(i)})
			for range 50 {
				out, err := tp.Render(s)
				if want := fmt.Sprintf("%s|%d", strings.Join(sortPair("x", fmt.Sprint(i)), ""), i); err != nil || string(out) != want {
					errs <- fmt.Errorf("goroutine %d: %q, %v; want %q", i, out, err, want)
					return
				}
				// Handed back, the buffer may go to any other goroutine's
				// next render: it must never be written by two at once.
				tp.Recycle(out)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func sortPair(a, b string) []string {
	if b < a {
		return []string{b, a}
	}
	return []string{a, b}
}

func TestNilStoreAndName(t *testing.T) {
	tp, err := Parse("n.tmpl", []byte(`{{exists "/x"}} {{getv "/x" "d"}}`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := tp.Render(nil)
	if err != nil || string(out) != "false d" {
		t.Fatalf("got %q, %v", out, err)
	}
	if tp.Name() != "n.tmpl" {
		t.Fatalf("Name = %q", tp.Name())
	}
}

// TestRealLookups uses the real resolver and interfaces, on loopback only.
func TestRealLookups(t *testing.T) {
	out, err := render(t, `{{lookupIPV4 "localhost"}} {{lookupIfaceIPV4 "lo"}} {{lookupIfaceIPV4 "nonexistent0"}}|`, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "127.0.0.1") || !strings.HasSuffix(out, " 127.0.0.1 |") {
		t.Fatalf("got %q, want localhost and lo to give 127.0.0.1", out)
	}
	host, _ := os.Hostname()
	if out, err := render(t, `{{hostname}}`, nil, Options{}); err != nil || out != host {
		t.Fatalf("hostname = %q, %v; want %q", out, err, host)
	}
}

func TestOptionsHooksUsed(t *testing.T) {
	called := map[string]bool{}
	opts := Options{
		Getenv:   func(k string) string { called["getenv"] = true; return "E" },
		Hostname: func() (string, error) { called["hostname"] = true; return "H", nil },
		LookupIP: func(string) ([]net.IP, error) { called["ip"] = true; return []net.IP{net.IPv4(10, 0, 0, 1)}, nil },
	}
	out, err := render(t, `{{getenv "X"}}{{hostname}}{{lookupIP "h"}}`, nil, opts)
	if err != nil || out != "EH[10.0.0.1]" || len(called) != 3 {
		t.Fatalf("got %q, %v, called %v", out, err, called)
	}
}

func TestFuncNamesAndSprigPrefix(t *testing.T) {
	names := FuncNames()
	has := map[string]bool{}
	for _, n := range names {
		has[n] = true
	}
	for _, n := range []string{"getv", "include", "hostname", "upper", "sprig_join", "sprig_seq", "sprig_trimPrefix"} {
		if !has[n] {
			t.Errorf("FuncNames lacks %s", n)
		}
	}
	for _, n := range []string{"env", "expandenv", "now", "randAlpha", "sprig_upper", "sprig_getv"} {
		if has[n] {
			t.Errorf("FuncNames has %s, which must not be there", n)
		}
	}
}

// TestDocsListEveryFunction fails when a function templates can call is not
// named (in backticks) in docs/template-functions.md.
func TestDocsListEveryFunction(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "template-functions.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range FuncNames() {
		if !strings.Contains(string(doc), "`"+name+"`") && !strings.Contains(string(doc), "`"+name+" ") {
			t.Errorf("docs/template-functions.md does not list %s", name)
		}
	}
}

// TestIncludeSeesEdits: an included file edited between two renders of the
// same parsed template is read again.
func TestIncludeSeesEdits(t *testing.T) {
	dir := t.TempDir()
	inc := filepath.Join(dir, "inc.tmpl")
	if err := os.WriteFile(inc, []byte("one"), 0o644); err != nil {
		t.Fatal(err)
	}
	tp, err := Parse("main.tmpl", []byte(`{{include "inc.tmpl"}}{{include "inc.tmpl"}}`), Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"one", "two"} {
		if err := os.WriteFile(inc, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := tp.Render(nil)
		if err != nil || string(out) != want+want {
			t.Fatalf("got %q, %v; want %q", out, err, want+want)
		}
	}
}

func TestKeyRefs(t *testing.T) {
	src := `{{range getvs "/clusterstate/ns/*"}}x{{end}}
{{if exists "/app/on"}}{{getv "/app/port" "80"}}{{else}}{{ls "/app"}}{{end}}
{{define "sub"}}{{(get "/sub/key").Value}}{{end}}{{template "sub"}}
{{with $d := lsdir "/up"}}{{range gets (printf "/up/%s" .)}}{{end}}{{end}}{{join (getvs "/j/*") ","}}`
	tp, err := Parse("refs.tmpl", []byte(src), Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := tp.KeyRefs()
	want := []KeyRef{
		{"getvs", "/clusterstate/ns/*", 1}, {"exists", "/app/on", 2}, {"getv", "/app/port", 2}, {"ls", "/app", 2},
		{"lsdir", "/up", 4}, {"getvs", "/j/*", 4}, {"get", "/sub/key", 3},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("KeyRefs =\n%v\nwant\n%v", got, want)
	}
}

func TestMissingKeyOption(t *testing.T) {
	keys := map[string]string{"/svc": `{"name":"web"}`}
	src := `{{$m := json (getv "/svc")}}{{$m.name}} [{{if $m.tls}}tls{{end}}] [{{index $m "tls"}}] [{{$m.tls}}]`
	tests := []struct {
		opt, want, err string
	}{
		{"", "", `render template test.tmpl:1: at <$m.tls>: map has no entry for key "tls"`},
		{"error", "", `render template test.tmpl:1: at <$m.tls>: map has no entry for key "tls"`},
		{"default", "web [] [<no value>] [<no value>]", ""},
		{"zero", "web [] [<no value>] [<no value>]", ""},
		{"bogus", "", `parse template test.tmpl: missing key option "bogus": want error, default or zero`},
	}
	for _, tc := range tests {
		t.Run(tc.opt, func(t *testing.T) {
			got, err := render(t, src, keys, Options{MissingKey: tc.opt})
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("got %q, %v; want error %s", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
