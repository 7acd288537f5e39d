// Package render_test runs render against a real etcd and a real haproxy and
// nginx started by the tests, with the example templates from examples/lb.
package render_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/render"
	"github.com/flotilla/flotilla/internal/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

const examples = "../../examples/lb"

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// backend is a small HTTP server on 127.0.0.x answering its name.
func backend(t *testing.T, ip, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Skipf("cannot listen on %s: %v", ip, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, name)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// names fetches url n times and returns the set of answers.
func names(url string, n int) map[string]int {
	c := &http.Client{Timeout: 2 * time.Second}
	out := map[string]int{}
	for range n {
		resp, err := c.Get(url)
		if err != nil {
			out["error"]++
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			out[fmt.Sprint(resp.StatusCode)]++
			continue
		}
		out[string(b)]++
	}
	return out
}

func read(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

// runRender runs render.Run (watch mode) until the test ends.
func runRender(t *testing.T, confdir string, srv *etcdtest.Server, logs *syncBuf) {
	t.Helper()
	src := render.NewEtcdSource(srv.Config())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- render.Run(ctx, render.Config{
			ConfDir: confdir, Source: src, RetryMin: 100 * time.Millisecond, RetryMax: time.Second,
			Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("render: %v", err)
		}
		src.Close()
		if t.Failed() {
			t.Logf("render log:\n%s", logs)
		}
	})
}

// proc starts a long-running command in its own process group, killed with
// the test.
func proc(t *testing.T, name string, args ...string) *syncBuf {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out := &syncBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	return out
}

func pidOf(t *testing.T, pidfile string) int {
	t.Helper()
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

func put(t *testing.T, c *store.Client, k, v string) {
	t.Helper()
	if _, err := c.Put(context.Background(), k, v, 0); err != nil {
		t.Fatal(err)
	}
}

// confdir copies one resource of the example confdir sub (under examples/lb)
// and its template, each replace pair applied to the resource.
func confdir(t *testing.T, sub, resource, tmpl string, replace ...string) (dir string) {
	t.Helper()
	dir = t.TempDir()
	os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755)
	os.MkdirAll(filepath.Join(dir, "templates"), 0o755)
	res := read(filepath.Join(examples, sub, "conf.d", resource))
	for i := 0; i+1 < len(replace); i += 2 {
		if !strings.Contains(res, replace[i]) {
			t.Fatalf("%s has no %q", resource, replace[i])
		}
		res = strings.Replace(res, replace[i], replace[i+1], 1)
	}
	os.WriteFile(filepath.Join(dir, "conf.d", resource), []byte(res), 0o644)
	os.WriteFile(filepath.Join(dir, "templates", tmpl), []byte(read(filepath.Join(examples, sub, "templates", tmpl))), 0o644)
	return dir
}

func TestHaproxy(t *testing.T) {
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Skip("no haproxy")
	}
	srv := etcdtest.New(t)
	c := srv.Client()
	b1 := backend(t, "127.0.0.2", "one")
	b2 := backend(t, "127.0.0.3", "two")
	b3 := backend(t, "127.0.0.4", "three")
	bind := freePort(t)
	t.Setenv("HAPROXY_BIND", bind)
	work := t.TempDir()
	cfg, pidfile := filepath.Join(work, "haproxy.cfg"), filepath.Join(work, "haproxy.pid")
	dir := confdir(t, ".", "haproxy.toml", "haproxy.cfg.tmpl",
		`dest = "/etc/haproxy/haproxy.cfg"`, fmt.Sprintf("dest = %q", cfg),
		`reload_cmd = "echo reloading && systemctl reload haproxy.service"`,
		// Nothing to reload before the test starts haproxy; then USR2 to its master.
		fmt.Sprintf(`reload_cmd = "test -s %[1]s || exit 0; echo reloading && kill -USR2 $(cat %[1]s)"`, pidfile))
	put(t, c, "/clusterstate/demo/nginx@1.service", "host1 "+b1)
	put(t, c, "/clusterstate/demo/nginx@2.service", "host2 "+b2)
	logs := &syncBuf{}
	runRender(t, dir, srv, logs)
	eventually(t, "haproxy.cfg rendered", func() bool { return strings.Contains(read(cfg), "server host2 "+b2+" check") })

	proc(t, "haproxy", "-W", "-db", "-f", cfg, "-p", pidfile)
	eventually(t, "haproxy serving both backends", func() bool {
		n := names("http://"+bind+"/", 6)
		return n["one"] > 0 && n["two"] > 0
	})
	master := pidOf(t, pidfile)
	mark := len(logs.String())

	// A bad announcement: haproxy -c rejects the staged file; the live file
	// and the running haproxy stay as they were.
	good := read(cfg)
	put(t, c, "/clusterstate/demo/nginx@9.service", "host9 not-an-address:xx")
	eventually(t, "check_cmd rejecting the bad config", func() bool { return strings.Contains(logs.String(), "render failed") })
	if read(cfg) != good {
		t.Fatal("a config haproxy rejected replaced the live file")
	}
	if n := names("http://"+bind+"/", 4); n["one"]+n["two"] != 4 {
		t.Fatalf("haproxy disturbed by a rejected config: %v", n)
	}
	if strings.Contains(logs.String()[mark:], "reloading") {
		t.Error("reload ran after a rejected config")
	}

	// Fixed, and a third backend: rendered, checked, reloaded; traffic reaches it.
	c.Delete(context.Background(), "/clusterstate/demo/nginx@9.service")
	start := time.Now()
	put(t, c, "/clusterstate/demo/nginx@3.service", "host3 "+b3)
	eventually(t, "third backend rendered", func() bool { return strings.Contains(read(cfg), "server host3 "+b3+" check") })
	t.Logf("put → file in %s (includes the delete's render)", time.Since(start))
	eventually(t, "haproxy reloaded onto the third backend", func() bool {
		n := names("http://"+bind+"/", 6)
		return n["three"] > 0
	})
	if pidOf(t, pidfile) != master {
		t.Error("haproxy's master changed: it was restarted, not reloaded")
	}
}

func TestNginx(t *testing.T) {
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Skip("no nginx")
	}
	srv := etcdtest.New(t)
	c := srv.Client()
	b1 := backend(t, "127.0.0.5", "alpha")
	b2 := backend(t, "127.0.0.6", "beta")
	listen := freePort(t)
	t.Setenv("NGINX_LISTEN", listen)
	work := t.TempDir()
	upstream := filepath.Join(work, "upstream.conf")
	main := filepath.Join(work, "nginx.conf")
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;\n"
	}
	os.WriteFile(main, []byte(fmt.Sprintf(`%spid %[2]s/nginx.pid;
error_log %[2]s/error.log;
events {}
http {
    access_log off;
    client_body_temp_path %[2]s/body;
    proxy_temp_path %[2]s/proxy;
    fastcgi_temp_path %[2]s/fastcgi;
    uwsgi_temp_path %[2]s/uwsgi;
    scgi_temp_path %[2]s/scgi;
    include %[3]s;
}
`, user, work, upstream)), 0o644)
	dir := confdir(t, "nginx", "nginx.toml", "nginx-upstream.conf.tmpl",
		`dest = "/etc/nginx/conf.d/upstream.conf"`, fmt.Sprintf("dest = %q", upstream),
		`reload_cmd = "nginx -s reload"`, fmt.Sprintf(`reload_cmd = "nginx -s reload -c %s"`, main))
	announce := func(n int, addr, host string) {
		put(t, c, fmt.Sprintf("/clusterstate/demo/nginx@%d.service", n), host+" "+addr)
	}
	announce(1, b1, "Worker-1")
	logs := &syncBuf{}
	runRender(t, dir, srv, logs)
	eventually(t, "upstream rendered", func() bool { return strings.Contains(read(upstream), "server "+b1+";") })
	proc(t, "nginx", "-c", main, "-g", "daemon off;")
	eventually(t, "nginx serving alpha", func() bool { return names("http://"+listen+"/", 2)["alpha"] == 2 })

	// Second backend announced: nginx -t passes, nginx -s reload, traffic to both.
	announce(2, b2, "worker-2")
	eventually(t, "upstream with beta", func() bool { return strings.Contains(read(upstream), "server "+b2+";") })
	eventually(t, "traffic reaches both", func() bool {
		n := names("http://"+listen+"/", 6)
		return n["alpha"] > 0 && n["beta"] > 0
	})

	// An announcement nginx rejects (bad address) leaves the live upstream.
	good := read(upstream)
	put(t, c, "/clusterstate/demo/nginx@3.service", "bad bad-address:80x")
	eventually(t, "nginx -t rejecting", func() bool { return strings.Contains(logs.String(), "render failed") })
	if read(upstream) != good {
		t.Fatal("a fragment nginx -t rejected replaced the live upstream")
	}
	if n := names("http://"+listen+"/", 4); n["alpha"]+n["beta"] != 4 {
		t.Fatalf("nginx disturbed: %v", n)
	}
}
