// Package lb_test renders the example load-balancer configuration
// (conf.d + templates) against goldens, and checks the seed's fragment.
package lb_test

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/render"
	"github.com/flotilla/flotilla/resources"
	"github.com/flotilla/flotilla/template"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func keys(t *testing.T, dir string) map[string]string {
	t.Helper()
	src := &render.FileSource{Files: []string{filepath.Join(dir, "testdata", "keys.yaml")}}
	cs, _, err := src.List(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	kvs := map[string]string{}
	for _, c := range cs {
		kvs[c.Key] = c.Value
	}
	return kvs
}

func renderResource(t *testing.T, dir string, r *resources.Resource, kvs map[string]string, env map[string]string) []byte {
	t.Helper()
	m := map[string]string{}
	for k, v := range kvs {
		if r.Match(k) {
			m[r.Relative(k)] = v
		}
	}
	text, err := os.ReadFile(r.Src)
	if err != nil {
		t.Fatal(err)
	}
	tm, err := template.Parse(filepath.Base(r.Src), text, template.Options{
		Delims: r.Delims, Dir: filepath.Join(dir, "templates"), Getenv: func(k string) string { return env[k] },
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := tm.Render(template.NewStore(m))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestExamplesRenderGoldens renders each confdir: examples/lb (haproxy, the
// one deploy.md copies) and examples/lb/nginx (nginx instead), both reading
// the plain values the units announce under the prefix their resource sets.
func TestExamplesRenderGoldens(t *testing.T) {
	for _, tc := range []struct {
		dir  string
		want string // the one resource of the confdir
	}{
		{".", "haproxy.toml"},
		{"nginx", "nginx.toml"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			res, errs := resources.LoadDir(filepath.Join(tc.dir, "conf.d"), resources.LoadOptions{Strict: true, TemplatesDir: filepath.Join(tc.dir, "templates")})
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			if len(res) != 1 || res[0].Name != tc.want {
				t.Fatalf("%s/conf.d: want %s alone, got %d resources", tc.dir, tc.want, len(res))
			}
			r := res[0]
			if r.Prefix != "/clusterstate/demo" {
				t.Errorf("%s: prefix %q, want the units' namespace /clusterstate/demo", r.Name, r.Prefix)
			}
			got := renderResource(t, tc.dir, r, keys(t, tc.dir), nil)
			golden := filepath.Join(tc.dir, "testdata", filepath.Base(r.Dest)+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) {
				t.Errorf("%s renders differently from %s:\n%s", r.Name, golden, resources.UnifiedDiff(golden, "rendered", want, got))
			}
		})
	}
}

// TestHaproxyDebianSettings renders the haproxy template with the settings
// of Debian's own haproxy.cfg in render's environment (as deploy.md's
// render.service sets them): each lands in global, and haproxy accepts the
// file. Unset, they are left out (the golden above).
func TestHaproxyDebianSettings(t *testing.T) {
	res, errs := resources.LoadDir("conf.d", resources.LoadOptions{Strict: true, TemplatesDir: "templates"})
	if len(errs) > 0 || len(res) != 1 {
		t.Fatalf("conf.d: %d resources, %v", len(res), errs)
	}
	env := map[string]string{
		"HAPROXY_BIND":         "127.0.0.1:8080",
		"HAPROXY_USER":         "haproxy",
		"HAPROXY_CHROOT":       "/var/lib/haproxy",
		"HAPROXY_STATS_SOCKET": "/run/haproxy/admin.sock",
		"HAPROXY_LOG":          "/dev/log",
	}
	got := string(renderResource(t, ".", res[0], keys(t, "."), env))
	global, rest, _ := strings.Cut(got, "\ndefaults\n")
	for _, want := range []string{
		"\n    user haproxy\n", "\n    group haproxy\n", "\n    chroot /var/lib/haproxy\n",
		"\n    stats socket /run/haproxy/admin.sock mode 660 level admin\n", "\n    log /dev/log local0",
	} {
		if !strings.Contains(global+"\n", want) {
			t.Errorf("global lacks %q:\n%s", want, global)
		}
	}
	if !strings.HasPrefix(rest, "    mode http\n    log global\n") {
		t.Errorf("defaults do not start with mode http, log global:\n%s", rest)
	}
	if _, err := exec.LookPath("haproxy"); err != nil {
		return
	}
	f := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(f, []byte(got), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("haproxy", "-c", "-f", f).CombinedOutput(); err != nil {
		t.Errorf("haproxy -c refuses the file: %v\n%s\n%s", err, out, got)
	}
}

// TestSeedFragment renders the seed's fragment as confd does: getvs takes a
// path.Match pattern and returns the values sorted by value; the blank lines
// and indentation are text/template's, unchanged.
func TestSeedFragment(t *testing.T) {
	const fragment = "listen appname\n    {{range getvs \"/clusterstate/demo/*\"}}\n    server {{.}} check\n    {{end}}\n"
	tm, err := template.Parse("seed", []byte(fragment), template.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st := template.NewStore(map[string]string{
		"/clusterstate/demo/nginx@2.service": "host2 10.0.0.2:8080",
		"/clusterstate/demo/nginx@1.service": "host1 10.0.0.1:8080",
		"/clusterstate/demo/sub/deeper":      "not matched by *",
	})
	got, err := tm.Render(st)
	if err != nil {
		t.Fatal(err)
	}
	want := "listen appname\n    \n    server host1 10.0.0.1:8080 check\n    \n    server host2 10.0.0.2:8080 check\n    \n"
	if string(got) != want {
		t.Errorf("seed fragment:\n%q\nwant\n%q", got, want)
	}
}
