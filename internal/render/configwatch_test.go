package render_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A template included from a subdirectory of templates/ is watched too:
// editing it re-renders, with no key change. So is a subdirectory created
// while render runs.
func TestIncludedTemplateInSubdirectoryWatched(t *testing.T) {
	f := newFixture(t)
	if err := os.MkdirAll(filepath.Join(f.dir, "templates", "partials"), 0o755); err != nil {
		t.Fatal(err)
	}
	f.write("templates/partials/head.tmpl", "# v1\n")
	dest := f.resource("inc", `"/i"`, `{{include "partials/head.tmpl"}}i={{getv "/i"}}`+"\n", "")
	f.put("/i", "1")
	f.run(f.config())
	f.eventually("first render", func() bool { return read(dest) == "# v1\ni=1\n" })
	f.write("templates/partials/head.tmpl", "# v2\n")
	f.eventually("re-render after the included file changed", func() bool { return read(dest) == "# v2\ni=1\n" })

	if err := os.MkdirAll(filepath.Join(f.dir, "templates", "later"), 0o755); err != nil {
		t.Fatal(err)
	}
	f.write("templates/later/tail.tmpl", "# tail\n")
	f.write("templates/inc.tmpl", `{{include "partials/head.tmpl"}}{{include "later/tail.tmpl"}}i={{getv "/i"}}`+"\n")
	f.eventually("render with the new directory", func() bool { return read(dest) == "# v2\n# tail\ni=1\n" })
	f.write("templates/later/tail.tmpl", "# tail 2\n")
	f.eventually("re-render after a file in the new directory changed", func() bool { return read(dest) == "# v2\n# tail 2\ni=1\n" })
}

// Files in the confdir outside conf.d and templates (a log, what a
// reload_cmd writes, a rendered file) do not count as configuration: writing
// them re-renders nothing. A render whose own output (or log) lands in the
// confdir would otherwise re-render forever.
func TestOtherFilesInConfdirIgnored(t *testing.T) {
	f := newFixture(t)
	dest := f.resource("app", `"/a"`, `a={{getv "/a"}}`+"\n", "")
	f.put("/a", "1")
	f.run(f.config())
	f.eventually("first render", func() bool { return read(dest) == "a=1\n" })
	log, err := os.OpenFile(filepath.Join(f.dir, "render.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	for range 10 { // each write farther apart than the config debounce
		log.WriteString("a line\n")
		time.Sleep(40 * time.Millisecond)
	}
	// An edit that does count: once it is rendered, any render the log
	// writes caused has happened before it.
	f.write("templates/app.tmpl", `a2={{getv "/a"}}`+"\n")
	f.eventually("render after the template edit", func() bool { return read(dest) == "a2=1\n" })
	// The file is in place a moment before the loop counts its render.
	f.eventually("the render counted", func() bool {
		return metricValue(t, f.metrics, "render_renders_total", "app.toml", "changed") >= 2
	})
	if n := metricValue(t, f.metrics, "render_renders_total", "app.toml", "unchanged"); n != 0 {
		t.Errorf("%v renders with nothing changed: writes outside conf.d and templates were taken for config changes", n)
	}
	if n := metricValue(t, f.metrics, "render_renders_total", "app.toml", "changed"); n != 2 {
		t.Errorf("%v renders that changed the file, want 2 (the first, the template edit)", n)
	}
}
