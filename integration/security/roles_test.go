package security

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

// TestLeastPrivilegeRoles creates the roles on Debian's etcd with auth on and
// runs each part under its own user: what it needs works, what it must not
// do is refused.
func TestLeastPrivilegeRoles(t *testing.T) {
	srv := etcdtest.New(t, etcdtest.WithMode(etcdtest.Binary))
	srv.EnableAuth("rootpw-7", "flot", "flotpw-7")
	ep := srv.Endpoint()
	ctx := ctxFor(t, 3*time.Minute)
	pw := t.TempDir()
	rootPW := filepath.Join(t.TempDir(), "root")
	os.WriteFile(rootPW, []byte("rootpw-7\n"), 0o600)

	out, err := exec.Command(bin("scheduler"), "roles", "--endpoints", ep, "--user", "root", "--password-file", rootPW,
		"--machines", "m1,m2", "--password-dir", pw).CombinedOutput()
	if err != nil {
		t.Fatalf("roles: %v\n%s", err, out)
	}
	if st, err := os.Stat(filepath.Join(pw, "flotilla-operator")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("operator password file: %v %v", st, err)
	}
	// A second run keeps the users and their passwords.
	if out, err := exec.Command(bin("scheduler"), "roles", "--endpoints", ep, "--user", "root", "--password-file", rootPW,
		"--machines", "m1,m2", "--password-dir", pw).CombinedOutput(); err != nil || !strings.Contains(string(out), "password unchanged") {
		t.Fatalf("roles again: %v\n%s", err, out)
	}

	as := func(user string) *store.Client {
		t.Helper()
		cfg := store.Default()
		cfg.Endpoints, cfg.Username, cfg.PasswordFile = []string{ep}, user, filepath.Join(pw, user)
		c, err := store.Open(ctx, cfg)
		if err != nil {
			t.Fatalf("open as %s: %v", user, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	creds := func(user string) []string {
		return []string{"--endpoints", ep, "--user", user, "--password-file", filepath.Join(pw, user)}
	}
	check := func(c *store.Client, user, key string, allowed bool) {
		t.Helper()
		_, err := c.Put(ctx, key, "x", 0)
		switch {
		case allowed && err != nil:
			t.Errorf("%s: write %s refused: %v", user, key, err)
		case !allowed && err == nil:
			t.Errorf("%s: write %s allowed", user, key)
		case !allowed && !strings.Contains(err.Error(), "permission denied"):
			t.Errorf("%s: write %s: %v, want permission denied", user, key, err)
		}
	}
	read := func(c *store.Client, user, prefix string, allowed bool) {
		t.Helper()
		_, _, err := c.GetPrefix(ctx, prefix)
		if allowed != (err == nil) {
			t.Errorf("%s: read %s: err %v, want allowed=%v", user, prefix, err, allowed)
		}
	}

	ann, ren, op, eng, m1 := as("flotilla-announce"), as("flotilla-render"), as("flotilla-operator"), as("flotilla-engine"), as("flotilla-machine-m1")
	check(ann, "announce", "/clusterstate/web/a", true)
	check(ann, "announce", "/flotilla/jobs/evil.service", false)
	check(ann, "announce", "/flotilla/machines/m1", false)
	check(ann, "announce", "/flotilla/announce/maintenance/clusterstate/web/a", true)
	check(ann, "announce", "/flotilla/render/host1/app.toml", false)
	read(ann, "announce", "/flotilla/render/", true)
	read(ann, "announce", "/flotilla/", false)

	check(ren, "render", "/clusterstate/web/a", false)
	check(ren, "render", "/flotilla/jobs/evil.service", false)
	check(ren, "render", "/flotilla/render/host1/app.toml", true)
	read(ren, "render", "/clusterstate/", true)
	read(ren, "render", "/flotilla/jobs/", false)

	check(op, "operator", "/flotilla/jobs/x.service", true)
	check(op, "operator", "/flotilla/schedule/m1/x.service", false)
	check(op, "operator", "/flotilla/machines/m1", false)
	check(op, "operator", "/clusterstate/web/a", false)
	check(op, "operator", "/flotilla/drain/m1", true)
	check(op, "operator", "/flotilla/rollouts/x", true)
	op.Delete(ctx, "/flotilla/rollouts/x")
	op.Delete(ctx, "/flotilla/drain/m1")
	op.Delete(ctx, "/flotilla/jobs/x.service")

	check(eng, "engine", "/flotilla/schedule/m1/x.service", true)
	check(eng, "engine", "/flotilla/jobs/x.service", false)
	check(eng, "engine", "/flotilla/machines/m1", false)
	eng.Delete(ctx, "/flotilla/schedule/m1/x.service")

	check(m1, "machine m1", "/flotilla/machines/m2", false)
	check(m1, "machine m1", "/flotilla/machines/m10", false)
	check(m1, "machine m1", "/flotilla/units/0123456789abcdef", false)
	check(m1, "machine m1", "/flotilla/rollouts/x", true) // the rollout driver
	m1.Delete(ctx, "/flotilla/rollouts/x")
	check(m1, "machine m1", "/clusterstate/web/a", false)

	// The binaries under their users.
	start(t, nil, append(append([]string{bin("announce")}, creds("flotilla-announce")...), "--ttl", "2s", "/clusterstate/web/h1", "h1 127.0.0.1:80")...)
	waitValue(ctx, t, ren, "/clusterstate/web/h1", "h1 127.0.0.1:80")
	dir, dest := confdir(t, "/clusterstate/web", "")
	rout, err := exec.Command(bin("render"), "-backend", "etcdv3", "-node", ep, "-username", "flotilla-render",
		"-password", mustRead(t, filepath.Join(pw, "flotilla-render"))[0], "-confdir", dir, "-onetime").CombinedOutput()
	if b, _ := os.ReadFile(dest); err != nil || !strings.Contains(string(b), "/clusterstate/web/h1=h1 127.0.0.1:80") {
		t.Errorf("render as flotilla-render: %v, wrote %q\n%s", err, b, rout)
	}

	start(t, nil, append(append([]string{bin("scheduler"), "serve"}, creds("flotilla-machine-m1")...),
		"--data-dir", t.TempDir(), "--machine-id", "m1", "--executor", "process", "--public-ip", "127.0.0.1")...)
	unit := filepath.Join(t.TempDir(), "roles.service")
	os.WriteFile(unit, []byte("[Service]\nExecStart=/bin/sleep 1000\n"), 0o644)
	eventually(t, 60*time.Second, "operator starts a unit that m1 runs", func() error {
		cmd := exec.Command(bin("scheduler"), append(append([]string{"start", "--block-attempts", "4"}, creds("flotilla-operator")...), unit)...)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("start: %v: %s", err, b)
		}
		lcmd := exec.Command(bin("scheduler"), append([]string{"list-units", "--no-legend"}, creds("flotilla-operator")...)...)
		lb, err := lcmd.CombinedOutput()
		if err != nil || !strings.Contains(string(lb), "running") {
			return fmt.Errorf("list-units: %v: %s", err, lb)
		}
		return nil
	})
	// A roll: the operator stores the record and the new body, m1's serve
	// (the rollout driver, which may write no body) carries it out.
	os.WriteFile(unit, []byte("[Unit]\nDescription=v2\n[Service]\nExecStart=/bin/sleep 1000\n"), 0o644)
	rcmd := exec.Command(bin("scheduler"), append(append([]string{"roll", "--announce-prefix", "-", "--status-prefix", "-"}, creds("flotilla-operator")...), unit)...)
	if b, err := rcmd.CombinedOutput(); err != nil || !strings.Contains(string(b), "Rolled 1 unit(s)") {
		t.Errorf("roll as flotilla-operator, driven by flotilla-machine-m1: %v\n%s", err, b)
	}
}
