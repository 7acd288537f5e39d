package render_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/render"
	"github.com/flotilla/flotilla/resources"
)

// exampleConfdir copies examples/lb with every dest moved into out.
func exampleConfdir(t *testing.T) (dir, out string) {
	t.Helper()
	dir = t.TempDir()
	out = filepath.Join(dir, "out")
	for _, d := range []string{"conf.d", "templates", "out"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	var tmpls, ress []string
	for _, sub := range []string{".", "nginx"} { // the haproxy confdir and the nginx one
		t, _ := filepath.Glob(filepath.Join(examples, sub, "templates", "*"))
		r, _ := filepath.Glob(filepath.Join(examples, sub, "conf.d", "*.toml"))
		tmpls, ress = append(tmpls, t...), append(ress, r...)
	}
	for _, p := range tmpls {
		os.WriteFile(filepath.Join(dir, "templates", filepath.Base(p)), []byte(read(p)), 0o644)
	}
	for _, p := range ress {
		r, err := resources.Load(p, resources.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		text := strings.Replace(read(p), fmt.Sprintf("dest = %q", r.Dest), fmt.Sprintf("dest = %q", filepath.Join(out, filepath.Base(r.Dest))), 1)
		os.WriteFile(filepath.Join(dir, "conf.d", filepath.Base(p)), []byte(text), 0o644)
	}
	return dir, out
}

// TestSameBytesAsConfd renders examples/lb (the seed's haproxy template and
// the nginx upstream) with render and with confd (and the fork) from the same
// etcd, and compares the files byte for byte.
func TestSameBytesAsConfd(t *testing.T) {
	type run struct {
		name string
		args func(ep, dir string) (string, []string)
	}
	runs := []run{
		{"confd", func(ep, dir string) (string, []string) {
			return os.Getenv("CONFD"), []string{"-backend", "etcdv3", "-node", ep, "-confdir", dir, "-onetime", "-sync-only", "-log-level", "error"}
		}},
		{"confd-fork", func(ep, dir string) (string, []string) {
			return os.Getenv("CONFD_FORK"), []string{"etcd", "--node", ep, "--confdir", dir, "--onetime", "--sync-only", "--log-level", "error"}
		}},
	}
	if os.Getenv("CONFD") == "" && os.Getenv("CONFD_FORK") == "" {
		t.Skip("neither CONFD nor CONFD_FORK is set: no peer binary to compare with")
	}
	srv := etcdtest.New(t)
	c := srv.Client()
	for i, v := range []string{"host2 10.0.0.2:8080", "host1 10.0.0.1:8080", "host10 10.0.0.10:8080"} {
		put(t, c, fmt.Sprintf("/clusterstate/demo/nginx@%d.service", i+1), v)
	}
	put(t, c, "/clusterstate/demo/sub/deeper", "not a server")
	put(t, c, "/clusterstate/demo2/nginx@9.service", "spill 10.9.9.9:8080")

	ours, oursOut := exampleConfdir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := render.NewEtcdSource(srv.Config())
	defer src.Close()
	if err := render.Onetime(ctx, render.Config{ConfDir: ours, Source: src, SyncOnly: true, Logger: slog.New(slog.DiscardHandler)}); err != nil {
		t.Fatal(err)
	}
	for _, r := range runs {
		t.Run(r.name, func(t *testing.T) {
			dir, out := exampleConfdir(t)
			bin, args := r.args(srv.Endpoint(), dir)
			if bin == "" {
				t.Skip("binary not given")
			}
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Env = append(os.Environ(), "HAPROXY_BIND=", "NGINX_LISTEN=")
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Logf("%s: %v\n%s", r.name, err, b)
			}
			files, _ := filepath.Glob(filepath.Join(oursOut, "*"))
			if len(files) != 2 {
				t.Fatalf("render wrote %v", files)
			}
			for _, f := range files {
				want := read(filepath.Join(out, filepath.Base(f)))
				if want == "" {
					// A template that uses functions the original confd lacks
					// renders nothing there: only the haproxy file must match.
					t.Logf("%s did not render %s", r.name, filepath.Base(f))
					if strings.HasPrefix(filepath.Base(f), "haproxy") {
						t.Errorf("%s did not render the seed's haproxy.cfg", r.name)
					}
					continue
				}
				if got := read(f); got != want {
					t.Errorf("%s differs from %s's:\n%s", filepath.Base(f), r.name, resources.UnifiedDiff(r.name, "render", []byte(want), []byte(got)))
				}
			}
		})
	}
}
