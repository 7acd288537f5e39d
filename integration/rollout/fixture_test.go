// Package rollout_test checks planned change end to end: `scheduler serve`
// machines (process executor) against a real etcd, units running this test
// binary as their HTTP backend and announcing themselves with the real
// announce, render writing a real haproxy's configuration, and lbtest.Hammer
// sending requests through haproxy for the whole of each test, which asserts
// that not one request failed while units were rolled to a new body, moved
// off a drained machine, moved, and destroyed.
package rollout_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/lbtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/testmain"
)

const (
	envRole = "FLOTILLA_ROLLOUT_ROLE"
	// announcePrefix is where the tests' units announce themselves.
	announcePrefix = "/clusterstate/roll/"
)

func TestMain(m *testing.M) {
	if os.Getenv(envRole) == "backend" {
		os.Exit(backendMain(os.Args[1:]))
	}
	testmain.Run(m, "scheduler", "announce", "render")
}

// backendMain serves "NAME VERSION on ADDR\n" on ADDR until SIGTERM, then
// finishes the requests in flight. args: NAME VERSION ADDR.
func backendMain(args []string) int {
	if len(args) != 3 {
		fmt.Fprintln(os.Stderr, "backend: want NAME VERSION ADDR")
		return 2
	}
	name, version, addr := args[0], args[1], args[2]
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var l net.Listener
	var err error
	for i := 0; i < 100; i++ { // the previous instance's port may linger a moment
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "backend:", err)
		return 1
	}
	// SIGUSR1 fails /health (announce's --check) while / keeps answering:
	// the unit's ExecStop uses it to have announce withdraw the key.
	var draining atomic.Bool
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			draining.Store(true)
		}
	}()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" && draining.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "%s %s on %s\n", name, version, addr)
	}), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	<-done
	return 0
}

// cluster is one test's etcd, machines, load balancer and hammer.
type cluster struct {
	t         *testing.T
	ctx       context.Context
	dir       string
	endpoint  string
	c         *store.Client
	reg       *registry.Registry
	port      int
	mu        sync.Mutex
	machines  map[string]*exec.Cmd
	ips       map[string]string
	hp        *lbtest.Haproxy
	render    *exec.Cmd
	renderLog string
	hammer    *lbtest.Hammer
}

func newCluster(t *testing.T) *cluster {
	lbtest.Need(t, "haproxy")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	srv := etcdtest.New(t)
	c := &cluster{t: t, ctx: ctx, dir: t.TempDir(), endpoint: srv.Endpoint(), c: srv.Client(),
		machines: map[string]*exec.Cmd{}, ips: map[string]string{}}
	c.reg = registry.New(c.c, "")
	c.port = freePort(t)
	t.Cleanup(c.stopAll)
	return c
}

// freePort finds a port free on 127.0.0.2–6 (the machines' public IPs).
func freePort(t *testing.T) int {
	for i := 0; i < 50; i++ {
		p := lbtest.FreePort(t, "127.0.0.2")
		ok := true
		for h := 3; h <= 6 && ok; h++ {
			l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.%d:%d", h, p))
			if err != nil {
				ok = false
				continue
			}
			l.Close()
		}
		if ok {
			return p
		}
	}
	t.Fatal("no port free on 127.0.0.2-6")
	return 0
}

// machine starts `scheduler serve` as machine id on 127.0.0.<n>, with
// serve's extra flags.
func (c *cluster) machine(id string, n int, extra ...string) {
	c.t.Helper()
	c.ips[id] = fmt.Sprintf("127.0.0.%d", n)
	logf, err := os.OpenFile(filepath.Join(c.dir, id+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(testmain.Bin("scheduler"), "serve", "--endpoints", c.endpoint,
		"--data-dir", filepath.Join(c.dir, id), "--machine-id", id, "--public-ip", c.ips[id],
		"--executor", "process", "--ttl", "2s", "--engine-period", "2s")
	cmd.Args = append(cmd.Args, extra...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.machines[id] = cmd
	c.mu.Unlock()
	testmain.Eventually(c.t, 30*time.Second, 50*time.Millisecond, "machine "+id+" registered", func() error {
		ms, err := c.reg.Machines(c.ctx)
		if err != nil {
			return err
		}
		if _, ok := ms[id]; !ok {
			return fmt.Errorf("machines %v", ms)
		}
		return nil
	})
}

// stop stops a machine's serve with SIGTERM (its units stop first).
func (c *cluster) stop(id string) {
	c.mu.Lock()
	cmd := c.machines[id]
	delete(c.machines, id)
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		c.t.Errorf("machine %s did not stop on SIGTERM; killing it", id)
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// kill kills a machine's serve (SIGKILL, its process group: no unit of its
// may run), as a crash would.
func (c *cluster) kill(id string) {
	c.mu.Lock()
	cmd := c.machines[id]
	delete(c.machines, id)
	c.mu.Unlock()
	if cmd != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}
}

func (c *cluster) stopAll() {
	c.mu.Lock()
	var ids []string
	for id := range c.machines {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Add(1)
		go func() { defer wg.Done(); c.stop(id) }()
	}
	wg.Wait()
	if c.render != nil {
		c.render.Process.Signal(syscall.SIGTERM)
		c.render.Wait()
	}
	if c.t.Failed() {
		for _, id := range ids {
			b, _ := os.ReadFile(filepath.Join(c.dir, id+".log"))
			c.t.Logf("log of %s:\n%s", id, tail(string(b), 30))
		}
		b, _ := os.ReadFile(c.renderLog)
		c.t.Logf("render log:\n%s", tail(string(b), 30))
		if c.hp != nil {
			c.t.Logf("haproxy:\n%s", tail(c.hp.Output(), 30))
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// sched runs a scheduler client verb; it returns stdout and the error with
// stderr.
func (c *cluster) sched(args ...string) (string, error) {
	cmd := exec.CommandContext(c.ctx, testmain.Bin("scheduler"), args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "FLOTILLA_ENDPOINTS="+c.endpoint)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("scheduler %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func (c *cluster) mustSched(args ...string) string {
	c.t.Helper()
	out, err := c.sched(args...)
	if err != nil {
		c.t.Fatalf("%v\n%s", err, out)
	}
	c.t.Logf("scheduler %s:\n%s", strings.Join(args, " "), strings.TrimRight(out, "\n"))
	return out
}

// lbTemplate: haproxy over every announced instance, with health checks
// (a backend gone between two renders is marked down, not hammered), and
// retries on another server (redispatch) of a request whose connection was
// refused or closed without an answer: what carries the requests over a
// restart when render is not there to take the instance out first.
const lbTemplate = `global
    log stderr format raw local0 info
defaults
    mode http
    log global
    option httplog
    option redispatch 1
    retries 3
    retry-on all-retryable-errors
    timeout connect 500ms
    timeout client 10s
    timeout server 10s
    timeout check 2s
listen app
    bind %s
    balance roundrobin
{{range getvs "/clusterstate/roll/*"}}    server {{.}} check inter 300ms fall 3 rise 1
{{end}}`

// startLB starts haproxy and render -watch over the announcements, with
// render's extra flags (e.g. -wait).
func (c *cluster) startLB(extra ...string) {
	t := c.t
	t.Helper()
	confdir := filepath.Join(c.dir, "confd")
	dest := filepath.Join(c.dir, "haproxy.cfg")
	bind := lbtest.FreeAddr(t, "127.0.0.1")
	for _, d := range []string{"conf.d", "templates"} {
		os.MkdirAll(filepath.Join(confdir, d), 0o755)
	}
	os.WriteFile(dest, []byte(lbtest.HaproxyConfig(bind)), 0o644)
	c.hp = lbtest.StartHaproxy(t, dest, bind)
	toml := fmt.Sprintf("[template]\nsrc = \"haproxy.cfg.tmpl\"\ndest = %q\nkeys = [\"/clusterstate/roll\"]\n"+
		"check_cmd = %q\nreload_cmd = '''%s'''\n", dest, c.hp.CheckCmd(), c.hp.ReloadCmd())
	os.WriteFile(filepath.Join(confdir, "conf.d", "haproxy.toml"), []byte(toml), 0o644)
	os.WriteFile(filepath.Join(confdir, "templates", "haproxy.cfg.tmpl"), []byte(fmt.Sprintf(lbTemplate, bind)), 0o644)
	c.renderLog = filepath.Join(c.dir, "render.log")
	logf, _ := os.Create(c.renderLog)
	defer logf.Close()
	c.render = exec.Command(testmain.Bin("render"), append([]string{"-backend", "etcdv3", "-node", c.endpoint, "-confdir", confdir, "-watch", "-publish-status"}, extra...)...)
	c.render.Env = append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
	c.render.Stdout, c.render.Stderr = logf, logf
	if err := c.render.Start(); err != nil {
		t.Fatal(err)
	}
	c.hammer = &lbtest.Hammer{URL: "http://" + bind + "/", Timeout: 5 * time.Second, Identify: identify}
}

// identify names an answer "NAME VERSION" ("web@1 v2").
func identify(_ *http.Response, body []byte) string {
	f := strings.Fields(string(body))
	if len(f) < 2 {
		return string(body)
	}
	return f[0] + " " + f[1]
}

// waitServing waits until haproxy answers from exactly the backends named.
func (c *cluster) waitServing(names ...string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(c.ctx, 60*time.Second)
	defer cancel()
	res, ok := c.hammer.Until(ctx, 6*len(names), func(r lbtest.Result) bool {
		if r.Errors > 0 || len(r.By) != len(names) {
			return false
		}
		for _, n := range names {
			if r.By[n] == 0 {
				return false
			}
		}
		return true
	})
	if !ok {
		c.t.Fatalf("haproxy never served exactly %v: %s", names, res)
	}
}

// unitFile is a backend unit answering "%p@%i VERSION"; xfleet is appended.
// ExecStop withdraws the announcement and waits for render and haproxy to
// take it out before the backend is signalled. Until announce --withdraw
// lands, it fails the backend's health check (announce's keeper then revokes
// the key and does not write it again, which `announce --delete` cannot
// ensure: the keeper restores a deleted key) and sleeps long enough for the
// keeper's check (3 × 200ms), render and haproxy's reload.
func (c *cluster) unitFile(version, xfleet string) []byte {
	return c.unitFileAt(version, xfleet, c.port)
}

// unitFileAt is unitFile listening on port.
func (c *cluster) unitFileAt(version, xfleet string, port int) []byte {
	self, err := os.Executable()
	if err != nil {
		c.t.Fatal(err)
	}
	ann := testmain.Bin("announce")
	return []byte(fmt.Sprintf(`[Unit]
Description=rollout test backend %%n %[1]s

[Service]
ExecStart=/usr/bin/env FLOTILLA_ROLLOUT_ROLE=backend %[2]s %%p@%%i %[1]s ${PUBLIC_IP}:%[3]d
ExecStartPost=%[4]s --detach --ttl 5s --endpoints %[5]s --check http://${PUBLIC_IP}:%[3]d/health --check-interval 200ms --host %%p-%%i --addr ${PUBLIC_IP}:%[3]d %[6]s%%n
ExecStop=%[4]s --withdraw --endpoints %[5]s --drain-delay 500ms --host %%p-%%i --addr ${PUBLIC_IP}:%[3]d %[6]s%%n
TimeoutStopSec=20
%[7]s`, version, self, port, ann, c.endpoint, announcePrefix, xfleet))
}

// writeUnit writes a unit file into the test directory and returns its path.
func (c *cluster) writeUnit(name string, body []byte) string {
	p := filepath.Join(c.dir, "units", name)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, body, 0o644); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// where returns the machine each launched unit is targeted at (non-global).
func (c *cluster) where(units ...string) map[string]string {
	c.t.Helper()
	s, err := c.reg.Snapshot(c.ctx)
	if err != nil {
		c.t.Fatal(err)
	}
	out := map[string]string{}
	for _, u := range units {
		for _, m := range s.Targets(u) {
			out[u] = m
		}
	}
	return out
}

// checkZero asserts that the hammer saw no failed request, and logs the count.
func checkZero(t *testing.T, hp *lbtest.Haproxy, what string, res lbtest.Result) {
	t.Helper()
	t.Logf("%s: failed requests %d of %d (%s)", what, res.Errors, res.Total, res)
	if res.Errors != 0 {
		t.Errorf("%s: %d failed requests, want 0", what, res.Errors)
		if hp != nil {
			for _, l := range strings.Split(hp.Output(), "\n") {
				if strings.Contains(l, " 502 ") || strings.Contains(l, " 503 ") || strings.Contains(l, "DOWN") {
					t.Logf("haproxy: %s", l)
				}
			}
		}
	}
}
