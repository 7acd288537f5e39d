package resources_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/resources"
)

func TestParseSeveralOutputs(t *testing.T) {
	const head = "[template]\nsrc = \"a\"\nkeys = [\"/svc\"]\n"
	tests := map[string]struct {
		text    string
		wantErr string
		per     resources.PerKind
		prefix  string
		name    string
	}{
		"per_dir":            {text: "dest_dir = \"/out\"\nper_dir = \"svc\"\ndest_name = \"{name}.conf\"", per: resources.PerDir, prefix: "/svc", name: "{name}.conf"},
		"per_key default":    {text: "dest_dir = \"/out\"\nper_key = \"/svc/x\"", per: resources.PerKey, prefix: "/svc/x", name: "{name}"},
		"both":               {text: "dest_dir = \"/out\"\nper_key = \"/svc\"\nper_dir = \"/svc\"", wantErr: "exactly one of per_key and per_dir"},
		"neither":            {text: "dest_dir = \"/out\"", wantErr: "exactly one of per_key and per_dir"},
		"dest too":           {text: "dest = \"/x\"\ndest_dir = \"/out\"\nper_key = \"/svc\"", wantErr: "exclusive"},
		"per without dir":    {text: "dest = \"/x\"\nper_key = \"/svc\"", wantErr: "need a dest_dir"},
		"outside keys":       {text: "dest_dir = \"/out\"\nper_key = \"/other\"", wantErr: "not below any of keys"},
		"relative dest_dir":  {text: "dest_dir = \"out\"\nper_key = \"/svc\"", wantErr: "absolute"},
		"no placeholder":     {text: "dest_dir = \"/out\"\nper_key = \"/svc\"\ndest_name = \"x.conf\"", wantErr: "{name} exactly once"},
		"dest_name with dir": {text: "dest_dir = \"/out\"\nper_key = \"/svc\"\ndest_name = \"../{name}\"", wantErr: "no directory"},
		"backup":             {text: "dest_dir = \"/out\"\nper_key = \"/svc\"\nbackup = true", wantErr: "backup is not supported"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := resources.Parse("/conf/conf.d/r.toml", []byte(head+tc.text+"\n"), resources.LoadOptions{Strict: true})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Per != tc.per || r.PerPrefix != tc.prefix || r.DestName != tc.name || r.Dest != "/out" || r.DestDir != "/out" {
				t.Errorf("per %q prefix %q name %q dest %q dest_dir %q", r.Per, r.PerPrefix, r.DestName, r.Dest, r.DestDir)
			}
		})
	}
}

func TestOutputs(t *testing.T) {
	keys := []string{"/svc", "/svc/.hidden/a", "/svc/a", "/svc/b/x", "/svc/b/y", "/svc/c/d/e", "/svcx/a", "/x"}
	get := func(k string) string { return "v" + k }
	tests := map[string]struct {
		per   string
		want  string // name:key:value:path …
		wantE string
	}{
		"per_key": {per: "per_key", want: "a:/svc/a:v/svc/a:a.conf b/x:/svc/b/x:v/svc/b/x:b/x.conf b/y:/svc/b/y:v/svc/b/y:b/y.conf c/d/e:/svc/c/d/e:v/svc/c/d/e:c/d/e.conf", wantE: `key "/svc/.hidden/a": output name ".hidden/a" has a hidden part`},
		"per_dir": {per: "per_dir", want: "b:/svc/b::b.conf c:/svc/c::c.conf", wantE: `key "/svc/.hidden/a": output name ".hidden" has a hidden part`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r, err := resources.Parse("/conf/conf.d/r.toml", []byte(fmt.Sprintf("[template]\nsrc = \"a\"\nkeys = [\"/svc\"]\ndest_dir = \"/out\"\n%s = \"/svc\"\ndest_name = \"{name}.conf\"\n", tc.per)), resources.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			outs, errs := r.Outputs(keys, get)
			var got []string
			for _, o := range outs {
				got = append(got, o.Name+":"+o.Key+":"+o.Value+":"+o.Path)
			}
			if strings.Join(got, " ") != tc.want {
				t.Errorf("outputs\n%s\nwant\n%s", strings.Join(got, " "), tc.want)
			}
			if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.wantE) {
				t.Errorf("errors %v, want one with %q", errs, tc.wantE)
			}
		})
	}
}

// FuzzOutputs: whatever the keys, every output is a visible file below
// dest_dir, and each key that is no output is either outside per_key or
// reported.
func FuzzOutputs(f *testing.F) {
	for _, k := range []string{"/svc/a", "/svc/../../x", "/svc/a/../../b", "/svc/.x", "/svc//a", "/svc/a/", "/svc/\x00", "/svc/..", "/svc/a/.."} {
		f.Add(k)
	}
	r, err := resources.Parse("/conf/conf.d/r.toml", []byte("[template]\nsrc = \"a\"\nkeys = [\"/svc\"]\ndest_dir = \"/out\"\nper_key = \"/svc\"\ndest_name = \"{name}.conf\"\n"), resources.LoadOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, key string) {
		outs, _ := r.Outputs([]string{key}, func(string) string { return "" })
		for _, o := range outs {
			if !filepath.IsLocal(o.Path) || filepath.Clean(o.Path) != o.Path {
				t.Errorf("key %q: output path %q leaves dest_dir", key, o.Path)
			}
			for _, part := range strings.Split(o.Path, "/") {
				if strings.HasPrefix(part, ".") {
					t.Errorf("key %q: output path %q has a hidden part", key, o.Path)
				}
			}
		}
	})
}

// TestApplyEachNoopNewDir: -noop over a dest_dir that does not exist yet
// shows every output as a new file and creates nothing.
func TestApplyEachNoopNewDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sites")
	r, err := resources.Parse("/conf/conf.d/r.toml", []byte(fmt.Sprintf("[template]\nsrc = \"a\"\nkeys = [\"/svc\"]\ndest_dir = %q\nper_key = \"/svc\"\ncreate_dest_dir = true\n", dir)), resources.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	outs, _ := r.Outputs([]string{"/svc/a", "/svc/b"}, func(k string) string { return k })
	var diff strings.Builder
	changed, err := r.ApplyEach(context.Background(), outs, func(o resources.Output) ([]byte, error) {
		return []byte(o.Name + "\n"), nil
	}, resources.ApplyOptions{Noop: true, Diff: &diff})
	if err != nil || !changed {
		t.Fatalf("ApplyEach noop = %v, %v; want changed", changed, err)
	}
	for _, want := range []string{"+++ " + filepath.Join(dir, "a"), "+a", "+++ " + filepath.Join(dir, "b")} {
		if !strings.Contains(diff.String(), want) {
			t.Errorf("diff lacks %q:\n%s", want, diff.String())
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("noop created %s: %v", dir, err)
	}
}
