package resources_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/resources"
)

func TestParse(t *testing.T) {
	tests := map[string]struct {
		text    string
		opts    resources.LoadOptions
		check   func(t *testing.T, r *resources.Resource)
		wantErr string
	}{
		"seed": {
			text: "[template]\nsrc = \"haproxy.cfg.tmpl\"\ndest = \"/etc/haproxy/haproxy.cfg\"\nkeys = [ \"/clusterstate/demo\" ]\nreload_cmd = \"echo reloading && systemctl reload haproxy.service\"\n",
			check: func(t *testing.T, r *resources.Resource) {
				if r.Src != "/conf/templates/haproxy.cfg.tmpl" || r.Dest != "/etc/haproxy/haproxy.cfg" {
					t.Errorf("src/dest = %s %s", r.Src, r.Dest)
				}
				if r.Prefix != "/" || len(r.Keys) != 1 || r.Keys[0] != "/clusterstate/demo" {
					t.Errorf("prefix %q keys %q", r.Prefix, r.Keys)
				}
				if r.ModeSet || r.UID != -1 || r.GID != -1 {
					t.Errorf("mode/uid/gid defaults: %v %d %d %d", r.ModeSet, r.Mode, r.UID, r.GID)
				}
				if r.CheckTimeout != resources.DefaultCheckTimeout || r.ReloadTimeout != resources.DefaultReloadTimeout {
					t.Errorf("timeouts %s %s", r.CheckTimeout, r.ReloadTimeout)
				}
			},
		},
		"prefixes join": {
			text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nprefix = \"svc\"\nkeys = [\"/web\", \"db/\", \"/web\"]\n",
			opts: resources.LoadOptions{Prefix: "/prod/"},
			check: func(t *testing.T, r *resources.Resource) {
				if r.Prefix != "/prod/svc" || strings.Join(r.Keys, ",") != "/prod/svc/db,/prod/svc/web" {
					t.Errorf("prefix %q keys %q", r.Prefix, r.Keys)
				}
				if got := r.Relative("/prod/svc/web/a"); got != "/web/a" {
					t.Errorf("Relative = %q", got)
				}
			},
		},
		"fork and our fields": {
			text: `[template]
src = "a"
dest = "/x"
keys = ["/k"]
mode = "0640"
uid = 0
group = "0"
check_cmd_timeout = "3s"
reload_cmd_timeout = 7
output_format = "YML"
min_reload_interval = "2s"
debounce = "100ms"
backup = true
create_dest_dir = true
delims = ["<<", ">>"]
`,
			check: func(t *testing.T, r *resources.Resource) {
				if !r.ModeSet || r.Mode != 0o640 || r.UID != 0 || r.GID != 0 {
					t.Errorf("mode %o uid %d gid %d", r.Mode, r.UID, r.GID)
				}
				if r.CheckTimeout != 3*time.Second || r.ReloadTimeout != 7*time.Second || r.MinReloadInterval != 2*time.Second {
					t.Errorf("durations %s %s %s", r.CheckTimeout, r.ReloadTimeout, r.MinReloadInterval)
				}
				if r.OutputFormat != "yaml" || r.Wait != (resources.Wait{Min: 100 * time.Millisecond, Max: 400 * time.Millisecond}) {
					t.Errorf("format %q wait %v", r.OutputFormat, r.Wait)
				}
				if !r.Backup || !r.CreateDestDir || r.Delims != [2]string{"<<", ">>"} {
					t.Errorf("backup/create/delims %v %v %q", r.Backup, r.CreateDestDir, r.Delims)
				}
			},
		},
		"wait": {
			text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\nwait = \"50ms:2s\"\n",
			check: func(t *testing.T, r *resources.Resource) {
				if r.Wait != (resources.Wait{Min: 50 * time.Millisecond, Max: 2 * time.Second}) {
					t.Errorf("wait %v", r.Wait)
				}
			},
		},
		"unknown key warns": {
			text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\nreload_comd = \"x\"\n",
			check: func(t *testing.T, r *resources.Resource) {
				if len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], `/conf/conf.d/r.toml: unknown key "template.reload_comd"`) {
					t.Errorf("warnings %q", r.Warnings)
				}
			},
		},
		"unknown key strict":  {text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\nfoo = 1\n", opts: resources.LoadOptions{Strict: true}, wantErr: `r.toml: unknown key "template.foo"`},
		"syntax error line":   {text: "[template]\nsrc = \"a\"\ndest = \n", wantErr: "/conf/conf.d/r.toml:3:"},
		"no template table":   {text: "src = \"a\"\n", wantErr: "no [template] table"},
		"no src":              {text: "[template]\ndest = \"/x\"\nkeys = [\"/k\"]\n", wantErr: "template.src is required"},
		"no dest":             {text: "[template]\nsrc = \"a\"\nkeys = [\"/k\"]\n", wantErr: "template.dest is required"},
		"no keys":             {text: "[template]\nsrc = \"a\"\ndest = \"/x\"\n", wantErr: "template.keys is required"},
		"bad mode":            {text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\nmode = \"rw\"\n", wantErr: `template.mode "rw"`},
		"bad format":          {text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\noutput_format = \"ini\"\n", wantErr: `output_format "ini"`},
		"bad wait":            {text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\nwait = \"2s:1s\"\n", wantErr: "want 0 <= min <= max"},
		"wait and debounce":   {text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\nwait = \"1s\"\ndebounce = \"1s\"\n", wantErr: "exclusive"},
		"bad duration":        {text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\nmin_reload_interval = \"soon\"\n", wantErr: "min_reload_interval"},
		"unknown owner":       {text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\nowner = \"no-such-user-xyz\"\n", wantErr: `template.owner "no-such-user-xyz"`},
		"owner vs uid":        {text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\nowner = \"root\"\nuid = 5\n", wantErr: "disagree"},
		"bad check template":  {text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\ncheck_cmd = \"x {{.src\"\n", wantErr: "template.check_cmd"},
		"delims one":          {text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\ndelims = [\"<<\"]\n", wantErr: "template.delims"},
		"wrong type for keys": {text: "[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = \"/k\"\n", wantErr: "r.toml"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := resources.Parse("/conf/conf.d/r.toml", []byte(tc.text), tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, r)
		})
	}
}

func TestMatchKey(t *testing.T) {
	tests := map[string]struct {
		key, k string
		want   bool
	}{
		"same":            {"/app", "/app", true},
		"below":           {"/app", "/app/x", true},
		"deep":            {"/app", "/app/x/y", true},
		"spill-over":      {"/app", "/apple", false},
		"spill-over deep": {"/app", "/apple/x", false},
		"above":           {"/app/x", "/app", false},
		"root":            {"/", "/anything", true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := resources.MatchKey(tc.key, tc.k); got != tc.want {
				t.Errorf("MatchKey(%q, %q) = %v", tc.key, tc.k, got)
			}
		})
	}
}

func newRes(t *testing.T, extra string) (*resources.Resource, string) {
	t.Helper()
	dir := t.TempDir()
	dest := filepath.Join(dir, "out.cfg")
	r, err := resources.Parse(filepath.Join(dir, "r.toml"), []byte("[template]\nsrc = \"a\"\ndest = \""+dest+"\"\nkeys = [\"/k\"]\n"+extra), resources.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r, dest
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestApply(t *testing.T) {
	ctx := ctxT(t)
	r, dest := newRes(t, "mode = \"0600\"\ncheck_cmd = \"grep -q ok {{.src}} && test {{.dest}} = "+"DEST"+"\"\nbackup = true\n")
	// The check sees the staged file, and {{.dest}} the destination.
	r.CheckCmd = strings.Replace(r.CheckCmd, "DEST", dest, 1)

	changed, err := r.Apply(ctx, []byte("ok 1\n"), resources.ApplyOptions{})
	if err != nil || !changed {
		t.Fatalf("first Apply: %v %v", changed, err)
	}
	st, _ := os.Stat(dest)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	changed, err = r.Apply(ctx, []byte("ok 1\n"), resources.ApplyOptions{})
	if err != nil || changed {
		t.Fatalf("same content: changed=%v err=%v", changed, err)
	}
	// A failing check leaves dest and no staged file.
	_, err = r.Apply(ctx, []byte("bad\n"), resources.ApplyOptions{})
	if err == nil || !strings.Contains(err.Error(), "render r.toml: check_cmd") || !strings.Contains(err.Error(), "exited 1") {
		t.Fatalf("failing check: %v", err)
	}
	if b, _ := os.ReadFile(dest); string(b) != "ok 1\n" {
		t.Errorf("dest after failed check: %q", b)
	}
	// sync-only skips the check.
	if changed, err := r.Apply(ctx, []byte("bad but synced\n"), resources.ApplyOptions{SyncOnly: true}); err != nil || !changed {
		t.Fatalf("sync-only: %v %v", changed, err)
	}
	if b, _ := os.ReadFile(dest + ".bak"); string(b) != "ok 1\n" {
		t.Errorf("backup holds %q", b)
	}
	// Mode drift alone is a change.
	os.Chmod(dest, 0o644)
	if changed, err := r.Apply(ctx, []byte("bad but synced\n"), resources.ApplyOptions{SyncOnly: true}); err != nil || !changed {
		t.Fatalf("mode drift: %v %v", changed, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dest))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("staged file left: %s", e.Name())
		}
	}
}

// TestApplyDetectsChange: Apply compares the file in place with the new
// content without reading it whole; every kind of difference still counts,
// including one past the first chunk and a file that is a prefix of the
// content (or the other way round).
func TestApplyDetectsChange(t *testing.T) {
	big := bytes.Repeat([]byte("server web 10.0.0.1:8080 check\n"), 10_000) // 310 kB: several chunks
	flipped := bytes.Clone(big)
	flipped[len(flipped)-2] = 'X'
	for _, tc := range []struct {
		name     string
		old, new []byte
		changed  bool
	}{
		{"same", []byte("a\n"), []byte("a\n"), false},
		{"same size, other bytes", []byte("a\n"), []byte("b\n"), true},
		{"longer", []byte("a\n"), []byte("a\nb\n"), true},
		{"shorter", []byte("a\nb\n"), []byte("a\n"), true},
		{"both empty", []byte{}, []byte{}, false},
		{"emptied", []byte("a\n"), []byte{}, true},
		{"big, same", big, bytes.Clone(big), false},
		{"big, last chunk differs", big, flipped, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, dest := newRes(t, "")
			if err := os.WriteFile(dest, tc.old, 0o644); err != nil {
				t.Fatal(err)
			}
			changed, err := r.Apply(ctxT(t), tc.new, resources.ApplyOptions{})
			if err != nil || changed != tc.changed {
				t.Fatalf("Apply: changed=%v err=%v, want changed=%v", changed, err, tc.changed)
			}
			if b, _ := os.ReadFile(dest); !bytes.Equal(b, tc.new) {
				t.Fatalf("dest holds %d bytes, want the %d new ones", len(b), len(tc.new))
			}
		})
	}
}

func TestApplyKeepsModeOfExistingDest(t *testing.T) {
	r, dest := newRes(t, "")
	os.WriteFile(dest, []byte("old"), 0o640)
	os.Chmod(dest, 0o640)
	if _, err := r.Apply(ctxT(t), []byte("new"), resources.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(dest); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want the existing 0640", st.Mode().Perm())
	}
}

func TestApplyOutputFormat(t *testing.T) {
	tests := map[string]struct {
		format, content string
		ok              bool
	}{
		"json ok":   {"json", `{"a": [1, 2]}`, true},
		"json bad":  {"json", `{"a": `, false},
		"yaml ok":   {"yaml", "a:\n  - 1\n", true},
		"yaml bad":  {"yaml", "a: [1\n", false},
		"toml ok":   {"toml", "a = 1\n[b]\nc = \"x\"\n", true},
		"toml bad":  {"toml", "a = \n", false},
		"xml ok":    {"xml", "<a><b>1</b></a>", true},
		"xml bad":   {"xml", "<a><b>1</a>", false},
		"xml empty": {"xml", "just text", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, dest := newRes(t, "output_format = \""+tc.format+"\"\n")
			_, err := r.Apply(ctxT(t), []byte(tc.content), resources.ApplyOptions{})
			if tc.ok != (err == nil) {
				t.Fatalf("Apply err = %v, want ok=%v", err, tc.ok)
			}
			if _, serr := os.Stat(dest); tc.ok == (serr != nil) {
				t.Errorf("dest exists=%v, want %v", serr == nil, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "not valid "+tc.format) {
				t.Errorf("error %v does not say why", err)
			}
		})
	}
}

func TestNoopDiff(t *testing.T) {
	r, dest := newRes(t, "")
	var diff bytes.Buffer
	changed, err := r.Apply(ctxT(t), []byte("a\n"), resources.ApplyOptions{Noop: true, Diff: &diff})
	if err != nil || !changed {
		t.Fatal(changed, err)
	}
	if _, err := os.Stat(dest); err == nil {
		t.Error("noop created dest")
	}
	if want := "--- /dev/null\n+++ " + dest + "\n@@ -0,0 +1 @@\n+a\n"; diff.String() != want {
		t.Errorf("diff %q, want %q", diff.String(), want)
	}
}

// TestNoopDiffOptions: the context lines, the colours and the names-only
// report of -diff-context, -color and -diff=false.
func TestNoopDiffOptions(t *testing.T) {
	r, dest := newRes(t, "")
	if err := os.WriteFile(dest, []byte("1\n2\n3\n4\n5\n6\n7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	content := []byte("1\n2\n3\nX\n5\n6\n7\n")
	head := "--- " + dest + "\n+++ " + dest + "\n"
	tests := map[string]struct {
		opts resources.ApplyOptions
		want string
	}{
		"default context": {resources.ApplyOptions{}, head + "@@ -1,7 +1,7 @@\n 1\n 2\n 3\n-4\n+X\n 5\n 6\n 7\n"},
		"context 1":       {resources.ApplyOptions{DiffContext: 1}, head + "@@ -3,3 +3,3 @@\n 3\n-4\n+X\n 5\n"},
		"no context":      {resources.ApplyOptions{DiffContext: resources.NoDiffContext}, head + "@@ -4 +4 @@\n-4\n+X\n"},
		"colour": {resources.ApplyOptions{DiffContext: resources.NoDiffContext, DiffColor: true},
			"\x1b[1m--- " + dest + "\x1b[0m\n\x1b[1m+++ " + dest + "\x1b[0m\n\x1b[36m@@ -4 +4 @@\x1b[0m\n\x1b[31m-4\x1b[0m\n\x1b[32m+X\x1b[0m\n"},
		"names only": {resources.ApplyOptions{DiffNamesOnly: true}, "would change " + dest + "\n"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var diff bytes.Buffer
			tc.opts.Noop, tc.opts.Diff = true, &diff
			if changed, err := r.Apply(ctxT(t), content, tc.opts); err != nil || !changed {
				t.Fatal(changed, err)
			}
			if diff.String() != tc.want {
				t.Errorf("diff %q, want %q", diff.String(), tc.want)
			}
		})
	}
}

func TestReloadAndCommands(t *testing.T) {
	ctx := ctxT(t)
	r, dest := newRes(t, "reload_cmd = \"echo {{.dest}} > {{.dest}}.reloaded\"\nreload_cmd_timeout = \"300ms\"\n")
	if err := r.Reload(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dest + ".reloaded"); string(b) != dest+"\n" {
		t.Errorf("reload saw dest %q", b)
	}
	r.ReloadCmd = "sleep 30"
	start := time.Now()
	err := r.Reload(ctx, nil)
	if err == nil || !strings.Contains(err.Error(), "timed out after 300ms") {
		t.Fatalf("hung reload: %v", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("timeout did not stop the command")
	}
	r.ReloadCmd = "echo some output; exit 3"
	if err := r.Reload(ctx, nil); err == nil || !strings.Contains(err.Error(), "exited 3: some output") {
		t.Errorf("failing reload: %v", err)
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/etc/haproxy/.haproxy.cfg.0a1b": "/etc/haproxy/.haproxy.cfg.0a1b",
		"/a b/c":                         "'/a b/c'",
		"/it's":                          `'/it'\''s'`,
		"/$(reboot)":                     "'/$(reboot)'",
	} {
		if got := resources.ShellQuote(in); got != want {
			t.Errorf("ShellQuote(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestUnifiedDiffMatchesDiffU compares hunks with GNU diff -u.
func TestUnifiedDiffMatchesDiffU(t *testing.T) {
	if _, err := exec.LookPath("diff"); err != nil {
		t.Skip("no diff binary")
	}
	tests := map[string][2]string{
		"one line":       {"a\nb\nc\n", "a\nB\nc\n"},
		"add at end":     {"a\nb\n", "a\nb\nc\n"},
		"remove head":    {"a\nb\nc\nd\n", "c\nd\n"},
		"two hunks":      {"1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n14\n", "1\nX\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\nY\n14\n"},
		"close changes":  {"1\n2\n3\n4\n5\n6\n7\n8\n", "1\nX\n3\n4\n5\n6\nY\n8\n"},
		"from empty":     {"", "a\nb\n"},
		"to empty":       {"a\nb\n", ""},
		"no final nl":    {"a\nb", "a\nc"},
		"server list":    {"backend\n server a\n server b\n server c\nend\n", "backend\n server a\n server c\n server d\nend\n"},
		"replace middle": {"h\n1\n2\n3\nt\n", "h\n4\n5\nt\n"},
	}
	dir := t.TempDir()
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
			os.WriteFile(a, []byte(tc[0]), 0o644)
			os.WriteFile(b, []byte(tc[1]), 0o644)
			out, _ := exec.Command("diff", "-u", a, b).Output()
			want := string(out)
			if i := strings.Index(want, "@@"); i >= 0 {
				want = want[i:]
			}
			got := string(resources.UnifiedDiff("a", "b", []byte(tc[0]), []byte(tc[1])))
			if !strings.HasPrefix(got, "--- a\n+++ b\n") {
				t.Fatalf("header: %q", got)
			}
			got = strings.TrimPrefix(got, "--- a\n+++ b\n")
			if got != want {
				t.Errorf("diff:\n%s\nwant (diff -u):\n%s", got, want)
			}
		})
	}
	if d := resources.UnifiedDiff("a", "b", []byte("x\n"), []byte("x\n")); d != nil {
		t.Errorf("equal inputs gave %q", d)
	}
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a.toml"), []byte("[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "b.toml"), []byte("[template]\nsrc = "), 0o644)
	os.WriteFile(filepath.Join(dir, "c.txt"), []byte("ignored"), 0o644)
	res, errs := resources.LoadDir(dir, resources.LoadOptions{})
	if len(res) != 1 || res[0].Name != "a.toml" {
		t.Errorf("loaded %v", res)
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "b.toml:2") {
		t.Errorf("errors %v", errs)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\n"))
	f.Add([]byte("[template]\nsrc = \"a\"\ndest = \"/x\"\nkeys = [\"/k\"]\nwait = \"1s:2s\"\nmode = \"0644\"\ndelims = [\"[[\", \"]]\"]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := resources.Parse("/c/conf.d/f.toml", b, resources.LoadOptions{Prefix: "/p"})
		if err != nil {
			if !strings.Contains(err.Error(), "f.toml") {
				t.Errorf("error does not name the file: %v", err)
			}
			return
		}
		if r.Src == "" || r.Dest == "" || len(r.Keys) == 0 {
			t.Errorf("accepted an incomplete resource: %+v", r)
		}
		for _, k := range r.Keys {
			if !strings.HasPrefix(k, "/p") {
				t.Errorf("key %q lost the prefix", k)
			}
		}
		if r.Wait.Max < r.Wait.Min {
			t.Errorf("wait %v", r.Wait)
		}
	})
}
