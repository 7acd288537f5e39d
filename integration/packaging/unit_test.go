package packaging_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/systemdtest"
	"github.com/flotilla/flotilla/internal/testmain"
)

// testRenderUnit runs the packaged flotilla-render.service under a real
// (user-mode) systemd, with only its paths moved: /usr/bin/render to the
// release's binary, /etc/confd and /etc/default/flotilla-render to the test's
// directory. It shows that the unit does not start while conf.d is empty,
// that Type=notify reaches active once render has rendered (READY=1), that
// ExecReload= works and that -watch follows etcd.
func testRenderUnit(t *testing.T, root, render string) {
	m := systemdtest.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := etcdtest.New(t)
	if _, err := srv.Admin().Put(ctx, "/pkgtest/greeting", "one"); err != nil {
		t.Fatal(err)
	}
	confdir, out := filepath.Join(m.Dir, "confd"), filepath.Join(m.Dir, "out")
	for _, d := range []string{filepath.Join(confdir, "conf.d"), filepath.Join(confdir, "templates"), out} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path, body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(confdir, "templates", "greeting.tmpl"), "greeting: {{getv \"/pkgtest/greeting\"}}\n")
	defaults, err := os.ReadFile(filepath.Join(root, "packaging/deb/flotilla-render/root/etc/default/flotilla-render"))
	if err != nil {
		t.Fatal(err)
	}
	envFile := filepath.Join(m.Dir, "flotilla-render")
	write(envFile, string(defaults)+"CONFD_NODE="+srv.Endpoint()+"\n")
	unit, err := os.ReadFile(filepath.Join(root, "packaging/deb/flotilla-render/root/lib/systemd/system/flotilla-render.service"))
	if err != nil {
		t.Fatal(err)
	}
	body := strings.NewReplacer("/usr/bin/render", render, "/etc/confd", confdir, "/etc/default/flotilla-render", envFile).Replace(string(unit))
	write(filepath.Join(m.UnitDir, "flotilla-render.service"), body)
	if o, err := m.Systemctl(ctx, "daemon-reload"); err != nil {
		t.Fatal(err, o)
	}
	show := func() string {
		o, _ := m.Systemctl(ctx, "show", "-p", "ActiveState", "-p", "SubState", "-p", "ConditionResult", "flotilla-render.service")
		return strings.Join(strings.Fields(o), " ")
	}
	status := func() string {
		o, _ := m.Systemctl(context.Background(), "status", "--lines=20", "flotilla-render.service")
		return o
	}

	// Not configured: conf.d is empty, the unit does not start.
	if o, err := m.Systemctl(ctx, "start", "flotilla-render.service"); err != nil {
		t.Fatalf("start with an empty conf.d: %v\n%s", err, o)
	}
	if got := show(); got != "ActiveState=inactive SubState=dead ConditionResult=no" {
		t.Errorf("with an empty conf.d: %s, want inactive by its condition\n%s", got, status())
	}

	// Configured: start returns once render has said READY=1, the file is there.
	write(filepath.Join(confdir, "conf.d", "greeting.toml"),
		"[template]\nsrc = \"greeting.tmpl\"\ndest = \""+filepath.Join(out, "greeting.conf")+"\"\nkeys = [\"/pkgtest\"]\n")
	if o, err := m.Systemctl(ctx, "start", "flotilla-render.service"); err != nil {
		t.Fatalf("start: %v\n%s\n%s", err, o, status())
	}
	if got := show(); got != "ActiveState=active SubState=running ConditionResult=yes" {
		t.Errorf("after start: %s\n%s", got, status())
	}
	rendered := func(want string) {
		t.Helper()
		testmain.Eventually(t, 30*time.Second, 100*time.Millisecond, "greeting.conf says "+want, func() error {
			b, err := os.ReadFile(filepath.Join(out, "greeting.conf"))
			if err != nil {
				return err
			}
			if string(b) != "greeting: "+want+"\n" {
				return os.ErrNotExist
			}
			return nil
		})
	}
	rendered("one")
	if o, err := m.Systemctl(ctx, "reload", "flotilla-render.service"); err != nil {
		t.Errorf("reload: %v\n%s\n%s", err, o, status())
	}
	if _, err := srv.Admin().Put(ctx, "/pkgtest/greeting", "two"); err != nil {
		t.Fatal(err)
	}
	rendered("two")
	if got := show(); got != "ActiveState=active SubState=running ConditionResult=yes" {
		t.Errorf("after reload and a change: %s\n%s", got, status())
	}
	if o, err := m.Systemctl(ctx, "stop", "flotilla-render.service"); err != nil {
		t.Errorf("stop: %v\n%s", err, o)
	}
}
