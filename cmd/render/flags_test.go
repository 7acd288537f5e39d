package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/testmain"
)

const walkValue = "h1 10.0.0.1:80"

// dir makes a confdir (lb.toml → out/lb.cfg, keys under /clusterstate/ns)
// with extra lines in lb.toml's [template].
func lbDir(t *testing.T, extra string) (dir, dest string) {
	t.Helper()
	dir, dest = confdir(t)
	toml := fmt.Sprintf("[template]\nsrc = \"lb.tmpl\"\ndest = %q\nkeys = [\"/ns\"]\nprefix = \"/clusterstate\"\n%s\n", dest, extra)
	if err := os.WriteFile(filepath.Join(dir, "conf.d", "lb.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, dest
}

func rendered(dest string) bool {
	b, _ := os.ReadFile(dest)
	return strings.Contains(string(b), "server "+walkValue+" check")
}

// running runs render (not onetime) until stop, which returns run's error.
func running(t *testing.T, args ...string) (stderr *testmain.SyncBuffer, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out testmain.SyncBuffer
	errc := make(chan error, 1)
	go func() { errc <- run(ctx, args, &out, &out) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(30 * time.Second):
				err = errors.New("run did not return after cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return &out, stop
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// blackhole is a TCP address that accepts connections and never answers.
func blackhole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return "http://" + ln.Addr().String()
}

// closedAddr is an address where nothing listens (connections are refused).
func closedAddr(t *testing.T) string { return "http://" + etcdtest.FreeAddr(t) }

// notifySocket listens where NOTIFY_SOCKET points and returns what arrives.
func notifySocket(t *testing.T) func() string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "notify.sock")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", p)
	var mu sync.Mutex
	var got strings.Builder
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			mu.Lock()
			got.Write(buf[:n])
			got.WriteByte('\n')
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		return got.String()
	}
}

func isUsage(err error) bool {
	var ue *cmdline.UsageError
	return errors.As(err, &ue)
}

// TestEveryFlag walks every flag render declares: each one either changes
// what render does (asserted here, or by the named test) or is refused with
// exit 2 and a line that names it.
func TestEveryFlag(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	if _, err := c.Put(context.Background(), "/clusterstate/ns/a", walkValue, 0); err != nil {
		t.Fatal(err)
	}
	ep := srv.Endpoint()
	put := func(k, v string) {
		t.Helper()
		if _, err := c.Put(context.Background(), k, v, 0); err != nil {
			t.Fatal(err)
		}
	}
	refused := func(t *testing.T, name string, args ...string) {
		t.Helper()
		_, _, err := runT(t, args...)
		if !isUsage(err) || !strings.Contains(err.Error(), "-"+name) {
			t.Fatalf("render %q: %v; want a usage error (exit 2) naming -%s", args, err, name)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("refusal is more than one line: %q", err)
		}
	}
	onetime := func(t *testing.T, dir string, args ...string) (stdout, stderr string, err error) {
		t.Helper()
		return runT(t, append([]string{"-node", ep, "-confdir", dir, "-onetime"}, args...)...)
	}
	mustRender := func(t *testing.T, dest string, args ...string) {
		t.Helper()
		if _, stderr, err := runT(t, args...); err != nil || !rendered(dest) {
			t.Fatalf("render %q: %v, rendered=%v\n%s", args, err, rendered(dest), stderr)
		}
	}
	// A change after the first render shows within the test's patience
	// only when render follows etcd (watch, or a short poll).
	followsChange := func(t *testing.T, key string, args ...string) {
		t.Helper()
		dir, dest := lbDir(t, "")
		_, stop := running(t, append([]string{"-node", ep, "-confdir", dir}, args...)...)
		eventually(t, "first render", func() bool { return rendered(dest) })
		put("/clusterstate/ns/"+key, "h-"+key+" 10.0.0.9:80")
		eventually(t, "the change", func() bool { b, _ := os.ReadFile(dest); return strings.Contains(string(b), "h-"+key) })
		if err := stop(); err != nil {
			t.Fatal(err)
		}
	}
	waitHolds := func(t *testing.T, key string, args ...string) {
		t.Helper()
		dir, dest := lbDir(t, "")
		_, stop := running(t, append([]string{"-node", ep, "-confdir", dir, "-watch"}, args...)...)
		eventually(t, "first render", func() bool { return rendered(dest) })
		start := time.Now()
		put("/clusterstate/ns/"+key, "h-"+key+" 10.0.0.9:80")
		eventually(t, "the change", func() bool { b, _ := os.ReadFile(dest); return strings.Contains(string(b), "h-"+key) })
		if d := time.Since(start); d < time.Second {
			t.Errorf("rendered %v after the change, before the quiescence minimum (1s)", d)
		}
		stop()
	}
	timeoutBound := func(t *testing.T, what string, limit time.Duration, args ...string) {
		t.Helper()
		start := time.Now()
		_, _, err := runT(t, args...)
		if err == nil {
			t.Fatalf("%s: render %q succeeded", what, args)
		}
		if d := time.Since(start); d > limit {
			t.Errorf("%s: gave up after %v, want well within %v", what, d, limit)
		}
	}

	checks := map[string]func(t *testing.T){
		"backend": func(t *testing.T) {
			dir, dest := lbDir(t, "")
			data := filepath.Join(t.TempDir(), "keys.yaml")
			os.WriteFile(data, []byte("clusterstate:\n  ns:\n    a: \""+walkValue+"\"\n"), 0o644)
			mustRender(t, dest, "-backend", "file", "-file", data, "-confdir", dir, "-onetime")
		},
		"node": func(t *testing.T) {
			dir, dest := lbDir(t, "")
			mustRender(t, dest, "-node", ep, "-confdir", dir, "-onetime")
			if _, _, err := runT(t, "-node", closedAddr(t), "-confdir", dir, "-onetime", "-dial-timeout", "500ms"); err == nil {
				t.Error("render with -node where nothing listens succeeded")
			}
		},
		"n": func(t *testing.T) {
			dir, dest := lbDir(t, "")
			mustRender(t, dest, "etcd", "-n", ep, "-confdir", dir, "-onetime")
		},
		"confdir": func(t *testing.T) {
			dir, dest := lbDir(t, "")
			mustRender(t, dest, "-node", ep, "-confdir", dir, "-onetime")
		},
		"config-file": nil, // TestConfigFileAndFlagsOverride
		"strict":      nil, // TestConfigFileAndFlagsOverride
		"onetime": func(t *testing.T) {
			dir, dest := lbDir(t, "")
			mustRender(t, dest, "-node", ep, "-confdir", dir, "-onetime") // returns by itself
		},
		"watch": func(t *testing.T) { followsChange(t, "watch", "-watch") },
		"interval": func(t *testing.T) {
			followsChange(t, "interval", "-interval", "1")
			refused(t, "interval", "-node", ep, "-watch", "-interval", "1")
			refused(t, "interval", "-node", ep, "-onetime", "-interval", "1")
		},
		"prefix": func(t *testing.T) {
			put("/pre/clusterstate/ns/a", "pre 10.0.0.7:80")
			dir, dest := lbDir(t, "")
			if _, stderr, err := onetime(t, dir, "-prefix", "/pre"); err != nil {
				t.Fatal(err, stderr)
			}
			if b, _ := os.ReadFile(dest); !strings.Contains(string(b), "server pre 10.0.0.7:80 check") || rendered(dest) {
				t.Errorf("-prefix /pre: dest = %q", b)
			}
		},
		"noop": func(t *testing.T) {
			dir, dest := lbDir(t, "")
			stdout, _, err := onetime(t, dir, "-noop")
			if err != nil || !strings.Contains(stdout, "+    server "+walkValue) {
				t.Fatalf("noop: %v %q", err, stdout)
			}
			if _, err := os.Stat(dest); err == nil {
				t.Error("noop wrote dest")
			}
		},
		"diff": func(t *testing.T) {
			dir, dest := lbDir(t, "")
			stdout, _, err := onetime(t, dir, "-noop", "-diff=false")
			if err != nil || stdout != "would change "+dest+"\n" {
				t.Fatalf("-diff=false: %v %q", err, stdout)
			}
			refused(t, "diff", "-node", ep, "-confdir", dir, "-onetime", "-diff")
		},
		"diff-context": func(t *testing.T) {
			dir, dest := lbDir(t, "")
			os.WriteFile(dest, []byte("listen appname\n    \n    server old check\n    \n"), 0o644)
			stdout, _, err := onetime(t, dir, "-noop", "-diff-context", "0")
			if err != nil || strings.Contains(stdout, " listen appname") || !strings.Contains(stdout, "-    server old check") {
				t.Fatalf("-diff-context 0: %v %q", err, stdout)
			}
			stdout, _, _ = onetime(t, dir, "-noop")
			if !strings.Contains(stdout, " listen appname") {
				t.Fatalf("default context: %q", stdout)
			}
		},
		"color": func(t *testing.T) {
			dir, _ := lbDir(t, "")
			stdout, _, err := onetime(t, dir, "-noop", "-color")
			if err != nil || !strings.Contains(stdout, "\x1b[32m+") {
				t.Fatalf("-color: %v %q", err, stdout)
			}
		},
		"sync-only": func(t *testing.T) {
			dir, dest := lbDir(t, `reload_cmd = "touch {{.dest}}.reloaded"`)
			if _, stderr, err := onetime(t, dir, "-sync-only"); err != nil || !rendered(dest) {
				t.Fatal(err, stderr)
			}
			if _, err := os.Stat(dest + ".reloaded"); err == nil {
				t.Error("-sync-only ran reload_cmd")
			}
		},
		"keep-stage-file": func(t *testing.T) {
			// A staged file that fails its check stays for inspection.
			for _, keep := range []bool{false, true} {
				dir, dest := lbDir(t, `check_cmd = "false"`)
				if _, _, err := onetime(t, dir, fmt.Sprintf("-keep-stage-file=%v", keep)); err == nil {
					t.Fatal("a failing check_cmd did not fail onetime")
				}
				ents, _ := os.ReadDir(filepath.Dir(dest))
				if got := len(ents) == 1; got != keep {
					t.Errorf("-keep-stage-file=%v: %d files left in %s", keep, len(ents), filepath.Dir(dest))
				}
			}
		},
		"log-level": func(t *testing.T) {
			dir, _ := lbDir(t, "")
			_, stderr, _ := onetime(t, dir, "-log-level", "debug")
			_, quiet, _ := onetime(t, dir)
			if !strings.Contains(stderr, "level=DEBUG") || strings.Contains(quiet, "level=DEBUG") {
				t.Errorf("-log-level debug: %q / default: %q", stderr, quiet)
			}
		},
		"log-format": func(t *testing.T) {
			dir, _ := lbDir(t, "")
			_, stderr, _ := onetime(t, dir, "-log-format", "json", "-log-level", "debug")
			if !strings.HasPrefix(stderr, "{") {
				t.Errorf("-log-format json: %q", stderr)
			}
		},
		"client-cert":    nil, // TestTLSAndAuthFlags
		"client-key":     nil, // TestTLSAndAuthFlags
		"client-ca-keys": nil, // TestTLSAndAuthFlags
		"client-insecure": func(t *testing.T) {
			certs := etcdtest.NewCerts(t)
			ts := etcdtest.New(t, etcdtest.WithTLS(certs))
			ts.Client().Put(context.Background(), "/clusterstate/ns/a", walkValue, 0)
			dir, dest := lbDir(t, "")
			args := []string{"-node", ts.Endpoint(), "-confdir", dir, "-onetime", "-dial-timeout", "2s", "-client-cert", certs.ClientCert, "-client-key", certs.ClientKey}
			if _, _, err := runT(t, args...); err == nil {
				t.Fatal("TLS without the CA and without -client-insecure succeeded")
			}
			mustRender(t, dest, append(args, "-client-insecure")...)
		},
		"username": func(t *testing.T) {
			as := etcdtest.New(t)
			as.Client().Put(context.Background(), "/clusterstate/ns/a", walkValue, 0)
			as.EnableAuth("rootpw", "render", "secret")
			dir, dest := lbDir(t, "")
			// bcrypt under -race on a busy machine: a generous timeout
			args := []string{"-node", as.Endpoint(), "-confdir", dir, "-onetime", "-dial-timeout", "15s"}
			if _, _, err := runT(t, append(args, "-username", "render", "-password", "wrong")...); err == nil {
				t.Fatal("a wrong -password was accepted")
			}
			mustRender(t, dest, append(args, "-username", "render", "-password", "secret", "-basic-auth")...)
		},
		"password":   nil, // the username check
		"basic-auth": func(t *testing.T) { refused(t, "basic-auth", "-node", ep, "-onetime", "-basic-auth") },
		"scheme": func(t *testing.T) {
			dir, dest := lbDir(t, "")
			bare := strings.TrimPrefix(ep, "http://")
			if _, _, err := runT(t, "-node", bare, "-scheme", "https", "-confdir", dir, "-onetime", "-dial-timeout", "1s"); err == nil {
				t.Fatal("-scheme https against a plain etcd succeeded")
			}
			mustRender(t, dest, "-node", bare, "-scheme", "http", "-confdir", dir, "-onetime")
		},
		"exec": func(t *testing.T) {
			refused(t, "exec", "-node", ep, "-onetime", "-exec", "true")
		},
		"exec-reload-signal": func(t *testing.T) {
			refused(t, "exec-reload-signal", "-node", ep, "-exec-reload-signal", "USR2")
		},
		"exec-kill-timeout": func(t *testing.T) {
			refused(t, "exec-kill-timeout", "-node", ep, "-exec-kill-timeout", "1s")
		},
		"srv-domain":     nil, // TestSRVDiscovery
		"publish-status": nil, // TestPublishStatusRuns
		"status-prefix":  nil, // TestPublishStatusRefused ("bad prefix") and TestPublishStatusRuns
		"srv-record":     nil, // TestSRVDiscovery
		"dial-timeout": func(t *testing.T) {
			timeoutBound(t, "dial-timeout", 4*time.Second, "-node", blackhole(t), "-preflight", "-dial-timeout", "300ms")
		},
		"backend-timeout": func(t *testing.T) {
			timeoutBound(t, "backend-timeout", 4*time.Second, "-node", blackhole(t), "-preflight", "-backend-timeout", "300ms")
		},
		"read-timeout": func(t *testing.T) {
			dir, _ := lbDir(t, "")
			if _, _, err := onetime(t, dir, "-read-timeout", "1ns"); err == nil || !strings.Contains(err.Error(), "deadline") {
				t.Fatalf("-read-timeout 1ns: %v", err)
			}
		},
		"file": func(t *testing.T) {
			refused(t, "file", "-node", ep, "-file", "x.yaml", "-onetime")
		},
		"wait":           func(t *testing.T) { waitHolds(t, "wait", "-wait", "1s:5s") },
		"debounce":       func(t *testing.T) { waitHolds(t, "debounce", "-debounce", "1s") },
		"batch-interval": func(t *testing.T) { waitHolds(t, "batch", "-batch-interval", "1s") },
		"metrics-addr": func(t *testing.T) {
			dir, dest := lbDir(t, "")
			addr := etcdtest.FreeAddr(t)
			_, stop := running(t, "-node", ep, "-confdir", dir, "-watch", "-metrics-addr", addr)
			eventually(t, "first render", func() bool { return rendered(dest) })
			eventually(t, "/metrics", func() bool {
				resp, err := http.Get("http://" + addr + "/metrics")
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == 200
			})
			stop()
		},
		"check-config": func(t *testing.T) {
			dir, dest := lbDir(t, "")
			stdout, _, err := runT(t, "-node", ep, "-confdir", dir, "-check-config")
			if err != nil || !strings.Contains(stdout, "ok lb.toml") {
				t.Fatalf("-check-config: %v %q", err, stdout)
			}
			if _, err := os.Stat(dest); err == nil {
				t.Error("-check-config wrote dest")
			}
		},
		"validate": func(t *testing.T) {
			dir, _ := lbDir(t, "")
			if stdout, _, err := runT(t, "-node", ep, "-confdir", dir, "-validate"); err != nil || !strings.Contains(stdout, "ok lb.toml") {
				t.Fatalf("-validate: %v %q", err, stdout)
			}
		},
		"mock-data": func(t *testing.T) {
			dir, _ := lbDir(t, "")
			os.WriteFile(filepath.Join(dir, "templates", "lb.tmpl"), []byte(`{{getv "/ns/only-in-mock"}}`), 0o644)
			mock := filepath.Join(t.TempDir(), "mock.yaml")
			os.WriteFile(mock, []byte("clusterstate:\n  ns:\n    only-in-mock: x\n"), 0o644)
			if _, _, err := runT(t, "-node", ep, "-confdir", dir, "-check-config"); err == nil {
				t.Fatal("-check-config against etcd found a key only the mock has")
			}
			if stdout, _, err := runT(t, "-node", closedAddr(t), "-confdir", dir, "-check-config", "-mock-data", mock); err != nil || !strings.Contains(stdout, "ok lb.toml") {
				t.Fatalf("-mock-data: %v %q", err, stdout)
			}
			refused(t, "mock-data", "-node", ep, "-confdir", dir, "-onetime", "-mock-data", mock)
		},
		"preflight": func(t *testing.T) {
			if stdout, _, err := runT(t, "-node", ep, "-preflight"); err != nil || !strings.Contains(stdout, "backend answers") {
				t.Fatalf("-preflight: %v %q", err, stdout)
			}
		},
		"preflight-timeout": func(t *testing.T) {
			timeoutBound(t, "preflight-timeout", 4*time.Second, "-node", blackhole(t), "-preflight", "-dial-timeout", "30s", "-preflight-timeout", "300ms")
			refused(t, "preflight-timeout", "-node", ep, "-onetime", "-preflight-timeout", "1s")
		},
		"watchdog-interval": func(t *testing.T) {
			refused(t, "watchdog-interval", "-node", ep, "-watchdog-interval", "1s")
			got := notifySocket(t)
			dir, _ := lbDir(t, "")
			_, stop := running(t, "-node", ep, "-confdir", dir, "-watch", "-watchdog-interval", "50ms")
			eventually(t, "WATCHDOG=1", func() bool { return strings.Count(got(), "WATCHDOG=1") >= 2 })
			stop()
		},
		"systemd-notify": func(t *testing.T) {
			refused(t, "systemd-notify", "-node", ep, "-systemd-notify")
			got := notifySocket(t)
			dir, dest := lbDir(t, "")
			_, stop := running(t, "-node", ep, "-confdir", dir, "-watch", "-systemd-notify=false")
			eventually(t, "first render", func() bool { return rendered(dest) })
			time.Sleep(300 * time.Millisecond)
			stop()
			if got() != "" {
				t.Fatalf("-systemd-notify=false sent %q", got())
			}
			dir2, _ := lbDir(t, "")
			_, stop = running(t, "-node", ep, "-confdir", dir2, "-watch", "-systemd-notify")
			eventually(t, "READY=1", func() bool { return strings.Contains(got(), "READY=1") })
			stop()
		},
		"check-cmd-timeout": func(t *testing.T) {
			dir, _ := lbDir(t, `check_cmd = "sleep 20"`)
			timeoutBound(t, "check-cmd-timeout", 10*time.Second, "-node", ep, "-confdir", dir, "-onetime", "-check-cmd-timeout", "200ms")
		},
		"reload-cmd-timeout": func(t *testing.T) {
			dir, _ := lbDir(t, `reload_cmd = "sleep 20"`)
			timeoutBound(t, "reload-cmd-timeout", 10*time.Second, "-node", ep, "-confdir", dir, "-onetime", "-reload-cmd-timeout", "200ms")
		},
		"retry-max-attempts": func(t *testing.T) {
			dir, _ := lbDir(t, "")
			start := time.Now()
			_, _, err := runT(t, "-node", closedAddr(t), "-confdir", dir, "-onetime", "-dial-timeout", "200ms", "-retry-max-attempts", "3", "-retry-base-delay", "300ms")
			if err == nil || !strings.Contains(err.Error(), "3 attempts") {
				t.Fatalf("-retry-max-attempts 3: %v", err)
			}
			if d := time.Since(start); d < 900*time.Millisecond {
				t.Errorf("3 attempts 300ms+600ms apart took only %v", d)
			}
		},
		"retry-base-delay": nil, // the retry-max-attempts check (the lower bound)
		"retry-max-delay": func(t *testing.T) {
			// 5 attempts 400ms apart (1.6s); doubling, they would take 6s.
			dir, _ := lbDir(t, "")
			timeoutBound(t, "retry-max-delay", 5*time.Second, "-node", closedAddr(t), "-confdir", dir, "-onetime", "-dial-timeout", "200ms",
				"-retry-max-attempts", "5", "-retry-base-delay", "400ms", "-retry-max-delay", "400ms")
		},
		"resource": func(t *testing.T) {
			dir, dest := lbDir(t, "")
			other := filepath.Join(dir, "out", "other.cfg")
			os.WriteFile(filepath.Join(dir, "conf.d", "other.toml"), []byte(fmt.Sprintf("[template]\nsrc = \"lb.tmpl\"\ndest = %q\nkeys = [\"/ns\"]\nprefix = \"/clusterstate\"\n", other)), 0o644)
			if _, stderr, err := onetime(t, dir, "-resource", "lb"); err != nil || !rendered(dest) {
				t.Fatal(err, stderr)
			}
			if _, err := os.Stat(other); err == nil {
				t.Error("-resource lb rendered other.toml too")
			}
			if _, _, err := onetime(t, dir, "-resource", "nope"); err == nil || !strings.Contains(err.Error(), "nope") {
				t.Errorf("-resource nope: %v", err)
			}
		},
		"failure-mode": func(t *testing.T) {
			for _, mode := range []string{"best-effort", "fail-fast"} {
				dir, dest := lbDir(t, "")
				os.WriteFile(filepath.Join(dir, "templates", "bad.tmpl"), []byte(`{{getv "/missing"}}`), 0o644)
				os.WriteFile(filepath.Join(dir, "conf.d", "a-bad.toml"), []byte("[template]\nsrc = \"bad.tmpl\"\ndest = \""+filepath.Join(dir, "out", "bad")+"\"\nkeys = [\"/missing\"]\n"), 0o644)
				if _, _, err := onetime(t, dir, "-failure-mode", mode); err == nil {
					t.Fatalf("%s: a failing resource did not fail onetime", mode)
				}
				if want := mode == "best-effort"; rendered(dest) != want {
					t.Errorf("-failure-mode %s: lb.toml (after the failing a-bad.toml) rendered=%v, want %v", mode, rendered(dest), want)
				}
			}
			refused(t, "failure-mode", "-node", ep, "-failure-mode", "fail-fast")
		},
		"shutdown-timeout": func(t *testing.T) {
			refused(t, "shutdown-timeout", "-node", ep, "-onetime", "-shutdown-timeout", "1s")
			dir, dest := lbDir(t, `reload_cmd = "touch {{.dest}}.reloading; sleep 30"`)
			_, stop := running(t, "-node", ep, "-confdir", dir, "-watch", "-shutdown-timeout", "300ms")
			eventually(t, "the reload running", func() bool { _, err := os.Stat(dest + ".reloading"); return err == nil })
			start := time.Now()
			err := stop()
			if err == nil || !strings.Contains(err.Error(), "shutdown") {
				t.Errorf("stop with a reload running: %v, want a shutdown error", err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("stop took %v with -shutdown-timeout 300ms", d)
			}
		},
		"watch-error-backoff": func(t *testing.T) {
			// The backoff itself: internal/render TestWatchErrorBackoff.
			refused(t, "watch-error-backoff", "-node", ep, "-watch-error-backoff", "1s")
		},
		"version": func(t *testing.T) {
			if stdout, _, err := runT(t, "-version"); !errors.Is(err, cmdline.ErrHelp) || !strings.HasPrefix(stdout, "render ") {
				t.Fatalf("-version: %v %q", err, stdout)
			}
		},
	}
	for _, r := range refusedFlags() {
		args := []string{"-node", ep, "-onetime", "-" + r.name}
		if !r.bool {
			args = append(args, "x")
		}
		checks[r.name] = func(t *testing.T) { refused(t, r.name, args...) }
	}

	// Flags checked elsewhere: the test must exist.
	var src bytes.Buffer
	for _, f := range []string{"run_test.go", "srv_test.go", "exec_test.go", "status_test.go"} {
		b, _ := os.ReadFile(f)
		src.Write(b)
	}
	elsewhere := map[string]string{
		"config-file": "TestConfigFileAndFlagsOverride", "strict": "TestConfigFileAndFlagsOverride",
		"client-cert": "TestTLSAndAuthFlags", "client-key": "TestTLSAndAuthFlags", "client-ca-keys": "TestTLSAndAuthFlags",
		"srv-domain": "TestSRVDiscovery", "srv-record": "TestSRVDiscovery",
		"exec": "TestExecHaproxy", "exec-reload-signal": "TestExecHaproxy", "exec-kill-timeout": "TestExecRestartAndKillTimeout",
		"publish-status": "TestPublishStatusRuns", "status-prefix": "TestPublishStatusRefused",
	}
	var o options
	fs := newFlagSet(&o)
	cmdline.Parse(fs, []string{}, &bytes.Buffer{}, "") // declares -version
	fs.VisitAll(func(f *flag.Flag) {
		t.Run(f.Name, func(t *testing.T) {
			check, ok := checks[f.Name]
			if !ok {
				t.Fatalf("flag -%s: no check says what it does (or that it is refused)", f.Name)
			}
			if check != nil {
				check(t)
				return
			}
			if name := elsewhere[f.Name]; name != "" {
				if !regexp.MustCompile(`func ` + name + `\(t \*testing\.T\)`).Match(src.Bytes()) {
					t.Fatalf("flag -%s: %s does not exist", f.Name, name)
				}
			}
		})
	})
}
