package template_test

import (
	"errors"
	"fmt"
	"os"

	"github.com/flotilla/flotilla/template"
)

// The seed's haproxy fragment, rendered as confd renders it: getvs sorts by
// value, and `*` stops at "/" so neither cruwe_de2 nor sub/ leak in.
func Example() {
	tp, err := template.Parse("haproxy.cfg.tmpl", []byte(
		`{{range getvs "/clusterstate/cruwe_de/*"}} server {{.}} check {{end}}`), template.Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	store := template.NewStore(map[string]string{
		"/clusterstate/cruwe_de/nginx@1.service":  "host1 10.0.0.1:8080",
		"/clusterstate/cruwe_de/nginx@2.service":  "host0 10.0.0.2:8080",
		"/clusterstate/cruwe_de/sub/x":            "nested",
		"/clusterstate/cruwe_de2/nginx@1.service": "other 10.0.9.9:8080",
	})
	out, err := tp.Render(store)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%q\n", out)
	// Output:
	// " server host0 10.0.0.2:8080 check  server host1 10.0.0.1:8080 check "
}

// A missing key is an error naming the template, the line and the key.
func ExampleTemplate_Render_missingKey() {
	tp, _ := template.Parse("haproxy.cfg.tmpl", []byte("global\n  maxconn {{getv \"/clusterstate/x\"}}\n"), template.Options{})
	_, err := tp.Render(template.NewStore(nil))
	fmt.Println(err)
	var ke *template.KeyError
	if errors.As(err, &ke) {
		fmt.Println("missing:", ke.Key, errors.Is(err, template.ErrKeyNotFound))
	}
	// Output:
	// render template haproxy.cfg.tmpl:2: getv: key "/clusterstate/x" not found
	// missing: /clusterstate/x true
}

// Store is meant to live long and take watch events; Clone hands a renderer
// a snapshot that later events do not change.
func ExampleStore_Clone() {
	live := template.NewStore(map[string]string{"/ns/a": "10.0.0.1:80"})
	snap := live.Clone()
	live.Set("/ns/b", "10.0.0.2:80")
	live.Delete("/ns/a")
	fmt.Println(snap.Keys(), live.Keys())
	// Output:
	// [/ns/a] [/ns/b]
}

// Delims, sprig and the sprig_ prefix for names confd already uses.
func ExampleOptions_delims() {
	tp, err := template.Parse("x.tmpl", []byte(
		`[[ join (getvs "/ns/*") "," ]] [[ sprig_join "+" (list 1 2) ]] [[ "sprig" | upper ]] {{untouched}}`),
		template.Options{Delims: [2]string{"[[", "]]"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	out, _ := tp.Render(template.NewStore(map[string]string{"/ns/a": "x", "/ns/b": "y"}))
	fmt.Println(string(out))
	// Output:
	// x,y 1+2 SPRIG {{untouched}}
}

// include renders another file of Options.Dir with the same keys.
func ExampleOptions_include() {
	dir, _ := os.MkdirTemp("", "tmpl")
	defer os.RemoveAll(dir)
	os.WriteFile(dir+"/upstream.tmpl", []byte(`{{range getvs "/ns/*"}}server {{.}};{{end}}`), 0o644)
	tp, _ := template.Parse("nginx.conf.tmpl", []byte(`upstream app { {{include "upstream.tmpl"}} }`), template.Options{Dir: dir})
	out, err := tp.Render(template.NewStore(map[string]string{"/ns/a": "10.0.0.1:80"}))
	fmt.Println(string(out), err)
	// Output:
	// upstream app { server 10.0.0.1:80; } <nil>
}
