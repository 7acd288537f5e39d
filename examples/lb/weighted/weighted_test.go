// Package weighted_test renders the weighted haproxy example against a
// golden, checks it with haproxy -c, and sends traffic through a real
// haproxy to see the split follow the announced weights.
package weighted_test

import (
	"context"
	"flag"
	"math"
	"os"
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

func renderWith(t *testing.T, kvs map[string]string, bind string) []byte {
	t.Helper()
	res, errs := resources.LoadDir("conf.d", resources.LoadOptions{Strict: true, TemplatesDir: "templates"})
	if len(errs) > 0 || len(res) != 1 {
		t.Fatalf("conf.d: %v (%d resources)", errs, len(res))
	}
	r := res[0]
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
	got := renderWith(t, kvs, "")
	golden := filepath.Join("testdata", "haproxy.cfg.golden")
	if *update {
		os.WriteFile(golden, got, 0o644)
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("rendered config differs from %s (-update rewrites it):\n%s", golden, got)
	}
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
