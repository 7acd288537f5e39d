package render_test

import (
	"os"
	"path/filepath"
	"testing"
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
