// Package weighted_test renders the weighted haproxy example against a
// golden, checks it with haproxy -c, and sends traffic through a real
// haproxy to see the split follow the announced weights.
package weighted_test

import (
	"context"
	"flag"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/endpoint"
	"github.com/flotilla/flotilla/internal/lbtest"
	"github.com/flotilla/flotilla/internal/render"
	"github.com/flotilla/flotilla/resources"
	"github.com/flotilla/flotilla/template"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func loadResources(t *testing.T) []*resources.Resource {
	t.Helper()
	res, errs := resources.LoadDir("conf.d", resources.LoadOptions{Strict: true, TemplatesDir: "templates"})
	if len(errs) > 0 || len(res) != 2 {
		t.Fatalf("conf.d: %v (%d resources, want haproxy and nginx-zones)", errs, len(res))
	}
	return res
}

func haproxyResource(t *testing.T) *resources.Resource {
	for _, r := range loadResources(t) {
		if r.Name == "haproxy.toml" {
			return r
		}
	}
	t.Fatal("no haproxy.toml")
	return nil
}

func renderWith(t *testing.T, kvs map[string]string, bind string) []byte {
	t.Helper()
	return renderResource(t, haproxyResource(t), kvs, bind)
}

func renderResource(t *testing.T, r *resources.Resource, kvs map[string]string, bind string) []byte {
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
		Delims: r.Delims, Dir: "templates",
		Getenv: func(k string) string {
			if k == "HAPROXY_BIND" {
				return bind
			}
			return ""
		},
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

func TestWeightedGoldenAndHaproxyCheck(t *testing.T) {
	src := &render.FileSource{Files: []string{filepath.Join("testdata", "keys.yaml")}}
	cs, _, err := src.List(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	kvs := map[string]string{}
	for _, c := range cs {
		kvs[c.Key] = c.Value
	}
	for _, r := range loadResources(t) {
		got := renderResource(t, r, kvs, "")
		golden := filepath.Join("testdata", filepath.Base(r.Dest)+".golden")
		if *update {
			os.WriteFile(golden, got, 0o644)
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("rendered %s differs from %s (-update rewrites it):\n%s", r.Name, golden, got)
		}
	}
	got := renderWith(t, kvs, "")
	lbtest.Need(t, "haproxy")
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	os.WriteFile(cfg, got, 0o644)
	if err := lbtest.CheckHaproxyConfig(cfg); err != nil {
		t.Fatalf("haproxy -c: %v", err)
	}
}

// TestTrafficSplitsByWeight: instances announced with --weight 3 and 1,
// rendered by the example template into a real haproxy: the traffic splits
// 3:1 within 10 %.
func TestTrafficSplitsByWeight(t *testing.T) {
	lbtest.Need(t, "haproxy")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	kvs := map[string]string{}
	weights := map[string]int{"nginx@1": 3, "nginx@2": 1}
	for name, w := range weights {
		b := lbtest.StartBackend(t, name, "127.0.0.1:0")
		e := endpoint.Endpoint{Host: "h", Addr: b.Addr, Unit: name + ".service", Weight: &w}
		v, err := e.Encode(endpoint.JSON)
		if err != nil {
			t.Fatal(err)
		}
		kvs["/clusterstate/demo/"+name+".service"] = v
	}
	bind := lbtest.FreeAddr(t, "127.0.0.1")
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	os.WriteFile(cfg, renderWith(t, kvs, bind), 0o644)
	lbtest.StartHaproxy(t, cfg, bind)
	h := lbtest.Hammer{URL: "http://" + bind + "/"}
	res := h.Send(ctx, 800)
	if res.Errors != 0 {
		t.Fatalf("errors through haproxy: %s", res)
	}
	ratio := float64(res.By["nginx@1"]) / float64(res.By["nginx@2"])
	t.Logf("weights 3:1 → %s, ratio %.2f", res, ratio)
	if math.Abs(ratio-3)/3 > 0.10 {
		t.Errorf("split %s: ratio %.2f, want 3 within 10%%", res, ratio)
	}
}

// TestNginxZonesPassNginxT: the zone upstreams, included in a minimal
// nginx.conf, pass nginx -t.
func TestNginxZonesPassNginxT(t *testing.T) {
	bin := lbtest.Need(t, "nginx")
	frag, err := os.ReadFile(filepath.Join("testdata", "flotilla-zones.conf.golden"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "zones.conf"), frag, 0o644)
	conf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(conf, []byte("pid "+filepath.Join(dir, "nginx.pid")+";\nerror_log stderr;\nevents {}\nhttp {\n"+
		"    access_log off;\n    client_body_temp_path "+dir+"/body;\n    proxy_temp_path "+dir+"/proxy;\n"+
		"    include "+filepath.Join(dir, "zones.conf")+";\n"+
		"    server { listen 127.0.0.1:1; location /a { proxy_pass http://zone_a; } location /b { proxy_pass http://zone_b; } }\n}\n"), 0o644)
	out, err := exec.Command(bin, "-t", "-p", dir, "-e", "stderr", "-c", conf).CombinedOutput()
	if err != nil {
		t.Fatalf("nginx -t: %v\n%s", err, out)
	}
}
