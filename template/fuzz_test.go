package template

import (
	"encoding/base64"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// fuzzFuncsTmpl passes two key values (outside input) to the functions that
// parse or transform them; it must render or fail with an error, never panic.
const fuzzFuncsTmpl = `{{$a := getv "/a"}}{{$b := getv "/b"}}
{{snakecase $a}}{{camelcase $a}}{{kebabcase $a}}{{nospace $a}}{{toUpper $a}}{{trimSuffix $a $b}}{{trimPrefix $a $b}}
{{base $a}}{{dir $a}}{{quote $a}}{{squote $a}}{{sha256sum $a}}{{indent 2 $a}}{{replace $a $b "x" -1}}{{contains $a $b}}
{{ls $a}}{{lsdir $a}}{{gets $b}}{{getvs $b}}{{exists $a}}{{sortByLength (split $a $b)}}{{reverse (split $a $b)}}
{{toJson $a}}{{range seq 0 (len $b)}}{{.}}{{end}}{{regexFind "[0-9]+" $a}}
`

// FuzzFuncArgs: arbitrary key values (binary, invalid UTF-8, huge, empty)
// never panic; round trips hold; failures are errors that name the template.
func FuzzFuncArgs(f *testing.F) {
	parse := func(src string) *Template {
		tp, err := Parse("fuzz.tmpl", []byte(src), Options{})
		if err != nil {
			f.Fatal(err)
		}
		return tp
	}
	all := parse(fuzzFuncsTmpl)
	splitJoin := parse(`{{join (split (getv "/a") (getv "/b")) (getv "/b")}}`)
	b64 := parse(`{{base64Decode (base64Encode (getv "/a"))}}`)
	atoi := parse(`{{atoi (getv "/a")}}`)
	f.Add("host1 10.0.0.1:8080", " ")
	f.Add("a,b,,c", ",")
	f.Add("\xff\xfe\x00", "")
	f.Add("-42", "/a/*")
	f.Add("HTTPServerID_x-y z", "[")
	f.Add("/a/b/../c", "\\")
	f.Fuzz(func(t *testing.T, a, b string) {
		s := NewStore(map[string]string{"/a": a, "/b": b})
		_, err := all.Render(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "render template fuzz.tmpl:") {
				t.Fatalf("error does not name the template: %v", err)
			}
			// only gets/getvs may fail: on a malformed pattern
			if _, perr := path.Match(b, "/a"); perr == nil {
				t.Fatalf("render failed for a=%q b=%q: %v", a, b, err)
			}
		}
		if out, err := splitJoin.Render(s); err != nil || string(out) != a {
			t.Fatalf("join(split(%q, %q)) = %q, %v", a, b, out, err)
		}
		if out, err := b64.Render(s); err != nil || string(out) != a {
			t.Fatalf("base64 round trip of %q = %q, %v", a, out, err)
		}
		n, aerr := strconv.Atoi(a)
		out, err := atoi.Render(s)
		if (err != nil) != (aerr != nil) || (err == nil && string(out) != strconv.Itoa(n)) {
			t.Fatalf("atoi(%q) = %q, %v; strconv gives %d, %v", a, out, err, n, aerr)
		}
	})
}

// FuzzBase64Decode: any input decodes or fails like the standard library.
func FuzzBase64Decode(f *testing.F) {
	tp, err := Parse("b64.tmpl", []byte(`{{base64Decode (getv "/a")}}`), Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("c2hvcA==")
	f.Add("!!")
	f.Add("")
	f.Fuzz(func(t *testing.T, a string) {
		out, err := tp.Render(NewStore(map[string]string{"/a": a}))
		want, werr := base64.StdEncoding.DecodeString(a)
		if (err != nil) != (werr != nil) || (err == nil && string(out) != string(want)) {
			t.Fatalf("base64Decode(%q) = %q, %v; want %q, %v", a, out, err, want, werr)
		}
	})
}

// FuzzIncludeName: no include name, whatever it is, reads outside the
// template directory.
func FuzzIncludeName(f *testing.F) {
	root := f.TempDir()
	dir := filepath.Join(root, "templates")
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		f.Fatal(err)
	}
	for name, body := range map[string]string{
		filepath.Join(root, "secret"):       "SECRET",
		filepath.Join(dir, "ok.tmpl"):       "ok",
		filepath.Join(dir, "sub", "x.tmpl"): `{{include (getv "/n")}}`,
	} {
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(root, "secret"), filepath.Join(dir, "link")); err != nil {
		f.Fatal(err)
	}
	tp, err := Parse("main.tmpl", []byte(`{{include (getv "/n")}}`), Options{Dir: dir})
	if err != nil {
		f.Fatal(err)
	}
	f.Add("ok.tmpl")
	f.Add("../secret")
	f.Add("/etc/passwd")
	f.Add("link")
	f.Add("sub/../../secret")
	f.Add("sub/x.tmpl")
	f.Add("")
	f.Fuzz(func(t *testing.T, name string) {
		out, err := tp.Render(NewStore(map[string]string{"/n": name}))
		if strings.Contains(string(out), "SECRET") || (err != nil && strings.Contains(err.Error(), "SECRET")) {
			t.Fatalf("include %q read outside the directory", name)
		}
	})
}

// TestMalformedValues renders values that are binary, invalid UTF-8 or
// huge through the functions that take key values.
func TestMalformedValues(t *testing.T) {
	huge := strings.Repeat("10.0.0.1:80 ", 1<<20) // 12 MiB
	tp, err := Parse("m.tmpl", []byte(`{{range getvs "/v/*"}}{{len (split . " ")}} {{len (base64Encode .)}} {{len (toUpper .)}} {{len (snakecase .)}}
{{end}}`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := tp.Render(NewStore(map[string]string{"/v/bin": "\x00\x01\xff", "/v/utf8": "\xc3\x28\xe2\x82", "/v/huge": huge}))
	if err != nil {
		t.Fatal(err)
	}
	want := "1 4 5 5\n" + "1048577 16777216 12582912 12582911\n" + "1 8 10 10\n"
	if string(out) != want {
		t.Fatalf("got %q, want %q", out, want)
	}
}

// FuzzParse: any template text (and delimiters) parses or fails with an
// error naming the template; it never panics.
func FuzzParse(f *testing.F) {
	f.Add(`{{range getvs "/clusterstate/cruwe_de/*"}} server {{.}} check {{end}}`, "", "")
	f.Add("{{if}}", "", "")
	f.Add("[[getv \"/a\"]]", "[[", "]]")
	f.Add("{{define \"x\"}}{{template \"x\"}}{{end}}\xff", "", "")
	f.Fuzz(func(t *testing.T, text, left, right string) {
		tp, err := Parse("p.tmpl", []byte(text), Options{Delims: [2]string{left, right}})
		if err != nil {
			if !strings.HasPrefix(err.Error(), "parse template p.tmpl") {
				t.Fatalf("error does not name the template: %v", err)
			}
			return
		}
		tp.KeyRefs()
	})
}
