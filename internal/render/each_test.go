package render_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/render"
	"github.com/flotilla/flotilla/resources"
)

// eachResource writes a resource with one output per directory (perDir
// true) or per key below /svc into out/<name>/, checked (a file holding
// BAD is refused) and reloaded by appending to out/reloads.
func (f *fixture) eachResource(name, per, tmpl string) (dir, reloads string) {
	f.t.Helper()
	dir, reloads = filepath.Join(f.out, name), filepath.Join(f.out, "reloads")
	f.write(filepath.Join("templates", name+".tmpl"), tmpl)
	f.write(filepath.Join("conf.d", name+".toml"), fmt.Sprintf(`[template]
src = %q
keys = ["/svc"]
dest_dir = %q
%s = "/svc"
dest_name = "{name}.conf"
create_dest_dir = true
check_cmd = "! grep -q BAD {{.src}}"
reload_cmd = "echo r >> %s"
`, name+".tmpl", dir, per, reloads))
	return dir, reloads
}

// files returns the visible files below dir with their content.
func files(t *testing.T, dir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(d.Name(), ".") {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		got[rel] = read(p)
		return nil
	})
	return got
}

func sameFiles(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestSeveralOutputsFollowKeys: a resource with one output per directory
// under /svc, watched: the files appear, change and disappear with their
// keys, a burst over several of them gives one reload, a file that fails
// its check keeps the last good one, and keys that would lead outside the
// destination directory write nothing there.
func TestSeveralOutputsFollowKeys(t *testing.T) {
	f := newFixture(t)
	dir, reloads := f.eachResource("sites", "per_dir", `server {{.name}} at {{.key}}:{{range gets (printf "%s/*" .key)}} {{.Value}}{{end}}`+"\n")
	f.put("/svc/web/a", "1")
	f.put("/svc/api/a", "2")
	f.put("/svc/plain", "a key right below per_dir: no output")
	cfg := f.config()
	cfg.Wait = resources.Wait{Min: 300 * time.Millisecond, Max: 5 * time.Second}
	f.run(cfg)
	want := map[string]string{"web.conf": "server web at /svc/web: 1\n", "api.conf": "server api at /svc/api: 2\n"}
	f.eventually("the first outputs", func() bool { return sameFiles(files(t, dir), want) })
	f.eventually("the first reload", func() bool { return lines(reloads) >= 1 })
	time.Sleep(1500 * time.Millisecond) // a reload too many would show
	if n := lines(reloads); n != 1 {
		t.Fatalf("first render of two outputs: %d reloads, want 1", n)
	}

	// One burst: an output appears, one changes, one goes away.
	f.put("/svc/db/a", "3")
	f.put("/svc/web/b", "9")
	if _, err := f.c.Delete(f.ctx, "/svc/api/a"); err != nil {
		t.Fatal(err)
	}
	want = map[string]string{"web.conf": "server web at /svc/web: 1 9\n", "db.conf": "server db at /svc/db: 3\n"}
	f.eventually("the burst's outputs", func() bool { return sameFiles(files(t, dir), want) })
	f.eventually("the burst's reload", func() bool { return lines(reloads) >= 2 })
	time.Sleep(1500 * time.Millisecond)
	if n := lines(reloads); n != 2 {
		t.Fatalf("a burst over three outputs: %d reloads in all, want 2", n)
	}

	// An output whose check fails keeps its good file; the others go on.
	f.put("/svc/web/c", "BAD")
	f.put("/svc/db/a", "4")
	f.eventually("db.conf changed", func() bool { return read(filepath.Join(dir, "db.conf")) == "server db at /svc/db: 4\n" })
	f.eventually("the failed check logged", func() bool { return strings.Contains(f.logs.String(), "output web.conf (key /svc/web)") })
	if got := read(filepath.Join(dir, "web.conf")); got != want["web.conf"] {
		t.Errorf("web.conf after a failed check = %q, want the last good %q", got, want["web.conf"])
	}
	f.eventually("the reload for db.conf", func() bool { return lines(reloads) >= 3 })

	// Keys that would lead out of dest_dir are cleaned as confd cleans
	// them: /svc/../../x is /x, below no output.
	f.put("/svc/../../x/a", "escaped")
	f.put("/svc/../x/a", "escaped")
	f.put("/svc/zz/a", "last")
	f.eventually("zz.conf", func() bool { return read(filepath.Join(dir, "zz.conf")) != "" })
	for _, p := range []string{filepath.Join(f.out, "x.conf"), filepath.Join(f.dir, "x.conf"), filepath.Join(dir, "x.conf")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s exists", p)
		}
	}
}

// TestSeveralOutputsOnetime: one output per key in -onetime: files appear
// with the key's value, a file of the operator's in the directory stays,
// a key that went away takes its file along at the next run, one reload
// per run, and -noop says what would go.
func TestSeveralOutputsOnetime(t *testing.T) {
	f := newFixture(t)
	dir, reloads := f.eachResource("keys", "per_key", `{{.name}}={{.value}}`+"\n")
	f.put("/svc/a", "1")
	f.put("/svc/b", "2")
	f.put("/svc/sub/c", "3")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "mine.conf"), []byte("the operator's\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := render.Onetime(f.ctx, f.config()); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"a.conf": "a=1\n", "b.conf": "b=2\n", "sub/c.conf": "sub/c=3\n", "mine.conf": "the operator's\n"}
	if got := files(t, dir); !sameFiles(got, want) {
		t.Fatalf("outputs %v, want %v", got, want)
	}
	if n := lines(reloads); n != 1 {
		t.Fatalf("%d reloads after one onetime run, want 1", n)
	}
	if _, err := f.c.Delete(f.ctx, "/svc/b"); err != nil {
		t.Fatal(err)
	}
	var diff strings.Builder
	cfg := f.config()
	cfg.Noop, cfg.Diff = true, &diff
	if err := render.Onetime(f.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if w := "would remove " + filepath.Join(dir, "b.conf"); !strings.Contains(diff.String(), w) {
		t.Errorf("noop diff %q, want %q", diff.String(), w)
	}
	if got := files(t, dir); !sameFiles(got, want) {
		t.Fatalf("noop changed the outputs: %v", got)
	}
	if err := render.Onetime(f.ctx, f.config()); err != nil {
		t.Fatal(err)
	}
	delete(want, "b.conf")
	if got := files(t, dir); !sameFiles(got, want) {
		t.Fatalf("outputs after /svc/b went: %v, want %v", got, want)
	}
	if n := lines(reloads); n != 2 {
		t.Fatalf("%d reloads after two runs that changed files, want 2", n)
	}
	// Nothing changed: no reload.
	if err := render.Onetime(f.ctx, f.config()); err != nil {
		t.Fatal(err)
	}
	if n := lines(reloads); n != 2 {
		t.Fatalf("%d reloads after a run that changed nothing, want 2", n)
	}
	// A check that fails fails the run and leaves the good file.
	f.put("/svc/a", "BAD")
	err := render.Onetime(f.ctx, f.config())
	if err == nil || !strings.Contains(err.Error(), "keys.toml") {
		t.Fatalf("onetime with a failing check: %v, want an error naming keys.toml", err)
	}
	if got := read(filepath.Join(dir, "a.conf")); got != "a=1\n" {
		t.Errorf("a.conf after a failed check = %q", got)
	}
	f.put("/svc/a", "1")

	// A link inside dest_dir that points out of it: the output below it
	// fails, naming its key, and nothing is written outside.
	outside := filepath.Join(f.out, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "evil")); err != nil {
		t.Fatal(err)
	}
	f.put("/svc/evil/x", "escaped")
	err = render.Onetime(f.ctx, f.config())
	if err == nil || !strings.Contains(f.logs.String(), "key /svc/evil/x") {
		t.Fatalf("onetime with an output through a link out of dest_dir: %v, want an error naming the key in the log", err)
	}
	if got, _ := os.ReadDir(outside); len(got) != 0 {
		t.Errorf("a key wrote outside dest_dir: %v", got)
	}
	if got := read(filepath.Join(dir, "a.conf")); got != "a=1\n" {
		t.Errorf("a.conf beside a failed output = %q", got)
	}
}
