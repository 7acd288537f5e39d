package render_test

import (
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/render"
)

// A confd template that tests an absent field of a json value keeps confd's
// meaning (false), unless the resource opts into missingkey = "error".
func TestMissingKeyKeepsConfdMeaning(t *testing.T) {
	f := newFixture(t)
	tmpl := `{{range getvs "/svc/*"}}{{$m := json .}}{{$m.host}} {{if $m.tls}}tls{{else}}plain{{end}}
{{end}}`
	confd := f.resource("confd", `"/svc"`, tmpl, "")
	strict := f.resource("strict", `"/svc"`, tmpl, `missingkey = "error"`)
	f.put("/svc/a", `{"host":"a"}`)
	cfg := f.config()
	err := render.Onetime(f.ctx, cfg)
	if got := read(confd); got != "a plain\n" {
		t.Errorf("confd-style render = %q, want %q", got, "a plain\n")
	}
	if err == nil || !strings.Contains(err.Error(), "render strict.toml") {
		t.Errorf("Onetime error = %v, want the strict resource to fail", err)
	}
	if read(strict) != "" {
		t.Errorf("strict resource was written: %q", read(strict))
	}
	f.resource("bad", `"/svc"`, tmpl, `missingkey = "sometimes"`)
	if err := render.Onetime(f.ctx, cfg); err == nil || !strings.Contains(err.Error(), "missingkey") {
		t.Errorf("a bad missingkey value: %v", err)
	}
}
