package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/etcdtest"
)

func TestMain(m *testing.M) {
	// A test re-runs this binary as render itself (e.g. in a private mount
	// namespace with its own resolv.conf): the arguments come as JSON.
	if a := os.Getenv(envRunAsRender); a != "" {
		var args []string
		if err := json.Unmarshal([]byte(a), &args); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		os.Args = append([]string{"render"}, args...)
		main()
		return
	}
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

// envRunAsRender makes the test binary run render's main with these
// arguments (a JSON list).
const envRunAsRender = "FLOTILLA_TEST_RUN_AS_RENDER"

// confdir makes a confd directory whose one resource writes out/lb.cfg.
func confdir(t *testing.T) (dir, dest string) {
	t.Helper()
	dir = t.TempDir()
	for _, d := range []string{"conf.d", "templates", "out"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	dest = filepath.Join(dir, "out", "lb.cfg")
	os.WriteFile(filepath.Join(dir, "templates", "lb.tmpl"), []byte("listen appname\n    {{range getvs \"/ns/*\"}}\n    server {{.}} check\n    {{end}}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "conf.d", "lb.toml"), []byte(fmt.Sprintf("[template]\nsrc = \"lb.tmpl\"\ndest = %q\nkeys = [\"/ns\"]\nprefix = \"/clusterstate\"\n", dest)), 0o644)
	return dir, dest
}

func runT(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var o, e bytes.Buffer
	err = run(ctx, args, &o, &e)
	return o.String(), e.String(), err
}

func TestForkFormRendersSameBytes(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	ctx := context.Background()
	for i, v := range []string{"h2 10.0.0.2:80", "h1 10.0.0.1:80", "h3 10.0.0.3:80"} {
		if _, err := c.Put(ctx, fmt.Sprintf("/clusterstate/ns/nginx@%d.service", i), v, 0); err != nil {
			t.Fatal(err)
		}
	}
	c.Put(ctx, "/clusterstate/ns2/x", "spill", 0)
	ep := srv.Endpoint()

	d1, out1 := confdir(t)
	if _, stderr, err := runT(t, "-backend", "etcdv3", "-node", ep, "-confdir", d1, "-onetime"); err != nil {
		t.Fatalf("confd form: %v\n%s", err, stderr)
	}
	d2, out2 := confdir(t)
	if _, stderr, err := runT(t, "etcd", "--node", ep, "--confdir", d2, "--onetime", "--log-level", "debug"); err != nil {
		t.Fatalf("fork form: %v\n%s", err, stderr)
	}
	d4, out4 := confdir(t)
	// A unit file written for the fork, with its other flags.
	if _, stderr, err := runT(t, "etcd", "-n", ep, "--confdir", d4, "--onetime", "--log-format", "json",
		"--failure-mode", "best-effort", "--check-cmd-timeout", "5s", "--debounce", "1s",
		"--backend-timeout", "30s", "--retry-base-delay", "100ms"); err != nil {
		t.Fatalf("fork flags: %v\n%s", err, stderr)
	}
	d3, out3 := confdir(t)
	t.Setenv("CONFD_NODE", ep)
	t.Setenv("CONFD_CONFDIR", d3)
	t.Setenv("CONFD_ONETIME", "true")
	if _, stderr, err := runT(t, "etcdv3"); err != nil {
		t.Fatalf("fork form from CONFD_* env: %v\n%s", err, stderr)
	}
	want := "listen appname\n    \n    server h1 10.0.0.1:80 check\n    \n    server h2 10.0.0.2:80 check\n    \n    server h3 10.0.0.3:80 check\n    \n"
	for _, p := range []string{out1, out2, out3, out4} {
		if b, _ := os.ReadFile(p); string(b) != want {
			t.Errorf("%s = %q, want %q", p, b, want)
		}
	}
}

func TestConfigFileAndFlagsOverride(t *testing.T) {
	srv := etcdtest.New(t)
	srv.Client().Put(context.Background(), "/clusterstate/ns/a", "ha 1.2.3.4:5", 0)
	dir, dest := confdir(t)
	cf := filepath.Join(t.TempDir(), "confd.toml")
	os.WriteFile(cf, []byte(fmt.Sprintf("backend = \"etcd\"\nnodes = [%q]\nconfdir = %q\nlog-level = \"warn\"\nnoop = true\nfrobnicate = \"ignored\"\n", srv.Endpoint(), dir)), 0o644)
	// noop from the file: a diff, nothing written; an unknown key warns.
	stdout, stderr, err := runT(t, "-config-file", cf, "-onetime")
	if err != nil {
		t.Fatal(err, stderr)
	}
	if !strings.Contains(stdout, "+    server ha 1.2.3.4:5 check") {
		t.Errorf("noop diff missing: %q", stdout)
	}
	if !strings.Contains(stderr, "frobnicate") {
		t.Errorf("unknown config key not reported: %q", stderr)
	}
	if _, err := os.Stat(dest); err == nil {
		t.Error("noop from the config file wrote dest")
	}
	// -strict makes it an error.
	if _, _, err := runT(t, "-config-file", cf, "-onetime", "-strict"); err == nil || !strings.Contains(err.Error(), "frobnicate") {
		t.Errorf("strict: %v", err)
	}
	// A flag overrides the file.
	if _, stderr, err := runT(t, "-config-file", cf, "-onetime", "-noop=false"); err != nil {
		t.Fatal(err, stderr)
	}
	if b, _ := os.ReadFile(dest); !strings.Contains(string(b), "server ha 1.2.3.4:5 check") {
		t.Errorf("dest = %q", b)
	}
}

func TestOnetimeFailsPerResource(t *testing.T) {
	srv := etcdtest.New(t)
	dir, _ := confdir(t)
	os.WriteFile(filepath.Join(dir, "templates", "bad.tmpl"), []byte(`{{getv "/missing"}}`), 0o644)
	os.WriteFile(filepath.Join(dir, "conf.d", "bad.toml"), []byte("[template]\nsrc = \"bad.tmpl\"\ndest = \"/tmp/never-written\"\nkeys = [\"/missing\"]\n"), 0o644)
	_, stderr, err := runT(t, "-node", srv.Endpoint(), "-confdir", dir, "-onetime")
	if err == nil || !strings.Contains(err.Error(), "render bad.toml") || !strings.Contains(err.Error(), "/missing") {
		t.Fatalf("onetime error = %v", err)
	}
	if cmdline.Exit("render", err, &bytes.Buffer{}) != 1 {
		t.Error("exit code is not 1")
	}
	if !strings.Contains(stderr, "bad.toml") {
		t.Errorf("log does not name the failing resource: %s", stderr)
	}
	// -check-config reports the same without writing.
	if _, _, err := runT(t, "-node", srv.Endpoint(), "-confdir", dir, "-check-config"); err == nil || !strings.Contains(err.Error(), "bad.toml") {
		t.Errorf("check-config: %v", err)
	}
}

func TestFileBackend(t *testing.T) {
	dir, dest := confdir(t)
	data := filepath.Join(t.TempDir(), "keys.yaml")
	os.WriteFile(data, []byte("clusterstate:\n  ns:\n    a: \"h 1.1.1.1:1\"\n"), 0o644)
	if _, stderr, err := runT(t, "file", "-file", data, "-confdir", dir, "-onetime"); err != nil {
		t.Fatal(err, stderr)
	}
	if b, _ := os.ReadFile(dest); !strings.Contains(string(b), "server h 1.1.1.1:1 check") {
		t.Errorf("dest = %q", b)
	}
}

func TestUsageErrors(t *testing.T) {
	tests := map[string][]string{
		"unknown backend":    {"consul", "-onetime"},
		"bad wait":           {"-wait", "2s:1s", "-onetime"},
		"bad log level":      {"-log-level", "loud", "-onetime"},
		"bad log format":     {"-log-format", "xml", "-onetime"},
		"file without -file": {"-backend", "file", "-onetime"},
		"extra argument":     {"etcd", "stray", "-onetime"},
		"unknown flag":       {"-bogus"},
	}
	for name, args := range tests {
		t.Run(name, func(t *testing.T) {
			_, _, err := runT(t, args...)
			var ue *cmdline.UsageError
			if !errors.As(err, &ue) {
				t.Fatalf("error %v is not a usage error", err)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	stdout, _, err := runT(t, "--help")
	if !errors.Is(err, cmdline.ErrHelp) || !strings.Contains(stdout, "-client-ca-keys") || !strings.Contains(stdout, "render etcd --node") {
		t.Errorf("help: %v %q", err, stdout)
	}
}

func TestTLSAndAuthFlags(t *testing.T) {
	certs := etcdtest.NewCerts(t)
	srv := etcdtest.New(t, etcdtest.WithTLS(certs))
	srv.Client().Put(context.Background(), "/clusterstate/ns/a", "tls 1.1.1.1:1", 0)
	dir, dest := confdir(t)
	_, stderr, err := runT(t, "-node", srv.Endpoint(), "-confdir", dir, "-onetime",
		"-client-cert", certs.ClientCert, "-client-key", certs.ClientKey, "-client-ca-keys", certs.CA)
	if err != nil {
		t.Fatal(err, stderr)
	}
	if b, _ := os.ReadFile(dest); !strings.Contains(string(b), "server tls 1.1.1.1:1 check") {
		t.Errorf("dest = %q", b)
	}
	// The wrong CA is refused with a message that says so.
	_, _, err = runT(t, "-node", srv.Endpoint(), "-confdir", dir, "-onetime", "-dial-timeout", "1s",
		"-client-cert", certs.ClientCert, "-client-key", certs.ClientKey, "-client-ca-keys", certs.OtherCA)
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong CA: %v", err)
	}
}
