// Package seed runs the seed's deployment end to end, headless, as `make demo`
// shows it (Run; the tests of this package and of integration/docker call it): a real etcd, four `scheduler serve` machines (three role=worker,
// one role=lb, each with its own host name), the example units (nginx@1 and
// nginx@2 running real nginx and announcing themselves, the global prefetch
// oneshot), render writing haproxy.cfg from the announcements with
// examples/lb's resource and template, and a real haproxy reloaded by it.
// It asserts on HTTP answers through haproxy, kills a worker hosting an
// instance with -9, and asserts that traffic reaches both instances again
// from the new config; errors/total during the reschedule go to the test log.
package seed

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/lbtest"
	"github.com/flotilla/flotilla/internal/systemdtest"
)

// repoRoot is the module root (this package is integration/seed).
func repoRoot(t *testing.T) string {
	t.Helper()
	abs, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// build builds the three commands into dir.
func build(t *testing.T, dir string) {
	t.Helper()
	// The same flags as `make build`, so that the build cache answers.
	start := time.Now()
	cmd := exec.Command("go", "build", "-trimpath", "-o", dir+"/", "./cmd/scheduler", "./cmd/announce", "./cmd/render")
	cmd.Dir = repoRoot(t)
	defer func() {
		t.Logf("go build of scheduler, announce, render: %s", time.Since(start).Round(time.Millisecond))
	}()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}

// needRoot skips unless the test can give each machine its own host name.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("seed: needs root to give each simulated machine its own host name (unshare --uts), as `make test` runs in CI")
	}
	if out, err := exec.Command("unshare", "--uts", "true").CombinedOutput(); err != nil {
		t.Skipf("seed: unshare --uts not permitted here: %v %s", err, out)
	}
	lbtest.Need(t, "haproxy")
	lbtest.Need(t, "nginx")
}

// subnet returns a loopback /24 prefix ("127.R.S.") whose .2–.5 have port
// 8080 free, so that the test does not collide with a running demo.
func subnet(t *testing.T) string {
	t.Helper()
	for i := 0; i < 100; i++ {
		p := fmt.Sprintf("127.%d.%d.", 10+rand.IntN(200), rand.IntN(250))
		free := true
		for h := 2; h <= 5 && free; h++ {
			l, err := net.Listen("tcp", fmt.Sprintf("%s%d:8080", p, h))
			if err != nil {
				free = false
				continue
			}
			l.Close()
		}
		if free {
			return p
		}
	}
	t.Fatal("seed: no free loopback subnet")
	return ""
}

// cluster is the scenario's machines and tools.
type cluster struct {
	t        *testing.T
	dir, bin string
	endpoint string
	machines map[string]*machine
}

type machine struct {
	name, ip string
	cmd      *exec.Cmd
	exited   chan struct{}
	log      string
	sd       *systemdtest.Manager // the machine's systemd, with Options.Executor "systemd"
}

// start starts one `scheduler serve` in its own UTS namespace named name,
// running its units with executor ("process", or "systemd": a user-mode
// systemd of its own, started here).
func (c *cluster) start(name, ip, metadata, executor string) {
	t := c.t
	t.Helper()
	m := &machine{name: name, ip: ip, exited: make(chan struct{}), log: filepath.Join(c.dir, name+".log")}
	var env []string
	if executor == "systemd" {
		m.sd = systemdtest.New(t)
		env = m.sd.Env()
	}
	logf, err := os.Create(m.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	id := fmt.Sprintf("%016x%016x", rand.Uint64(), rand.Uint64())
	args := []string{"--uts", "sh", "-c", `hostname "$0" && exec "$@"`, name,
		filepath.Join(c.bin, "scheduler"), "serve", "--endpoints", c.endpoint,
		"--machine-id", id, "--public-ip", ip, "--metadata", metadata,
		"--executor", executor, "--data-dir", filepath.Join(c.dir, name), "--ttl", "2s"}
	if executor == "systemd" {
		args = append(args, "--systemd-user")
	}
	m.cmd = exec.Command("unshare", args...)
	m.cmd.Env = append(os.Environ(), env...)
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		m.cmd.Wait()
		close(m.exited)
	}()
	t.Cleanup(func() {
		m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
			<-m.exited
		}
	})
	c.machines[name] = m
}

// kill kills a machine's scheduler with SIGKILL, as a host dying would, and
// its systemd (the whole namespace) if it has one.
func (c *cluster) kill(name string) {
	m := c.machines[name]
	m.cmd.Process.Signal(syscall.SIGKILL)
	if m.sd != nil {
		if pid, err := m.sd.PID(); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	<-m.exited
}

// scheduler runs a scheduler client verb and returns its stdout.
func (c *cluster) scheduler(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "scheduler"), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "FLOTILLA_ENDPOINTS="+c.endpoint)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("scheduler %s: %w: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// unitIPs returns, for each unit, the IPs of the machines where it is active.
func (c *cluster) unitIPs(ctx context.Context) map[string][]string {
	out, err := c.scheduler(ctx, c.dir, "list-units", "--no-legend", "--full", "--fields", "unit,machine,active,sub")
	if err != nil {
		return nil
	}
	res := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || f[2] != "active" {
			continue
		}
		_, ip, _ := strings.Cut(f[1], "/")
		res[f[0]] = append(res[f[0]], ip)
	}
	return res
}

// waitUnits polls list-units until cond holds, or fails the test.
func (c *cluster) waitUnits(ctx context.Context, what string, cond func(map[string][]string) bool) map[string][]string {
	c.t.Helper()
	var last map[string][]string
	for ctx.Err() == nil {
		if last = c.unitIPs(ctx); cond(last) {
			return last
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("never reached: %s; last list-units: %v\n%s", what, last, c.logs())
	return nil
}

// logs returns the tail of every machine's log.
func (c *cluster) logs() string {
	var b strings.Builder
	for name, m := range c.machines {
		data, _ := os.ReadFile(m.log)
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if len(lines) > 15 {
			lines = lines[len(lines)-15:]
		}
		fmt.Fprintf(&b, "--- %s (%s):\n%s\n", name, m.ip, strings.Join(lines, "\n"))
	}
	return b.String()
}

// localize copies an example unit into dir with its install paths pointing
// into the test's directories, as the demo does.
func localize(t *testing.T, src, dst, bin, dir string, extra []string) {
	t.Helper()
	body, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.NewReplacer(
		"/usr/local/bin/announce", filepath.Join(bin, "announce"),
		"/etc/flotilla/etcd.env", filepath.Join(dir, "etcd.env"),
		"/run/", filepath.Join(dir, "run")+"/",
	).Replace(string(body))
	if len(extra) > 0 {
		s = strings.NewReplacer(extra...).Replace(s)
	}
	if err := os.WriteFile(dst, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// identify names an answer by instance and address: "nginx@1 127.x.y.3:8080".
func identify(_ *http.Response, body []byte) string {
	f := strings.Fields(string(body))
	if len(f) == 0 {
		return ""
	}
	return f[0] + " " + f[len(f)-1]
}

// instances returns the instance names in a result's answers.
func instances(r lbtest.Result) map[string]bool {
	m := map[string]bool{}
	for k := range r.By {
		name, _, _ := strings.Cut(k, " ")
		m[name] = true
	}
	return m
}

// Options says which units Run deploys.
type Options struct {
	// UnitDir holds nginx@.service and prefetch.service, relative to the
	// repository root (e.g. "examples/units").
	UnitDir string
	// Replace holds extra old, new pairs applied to the units' text, after
	// the install paths (announce, etcd.env, /run/) are pointed into the
	// test's directory.
	Replace []string
	// Executor runs the workers' units: "process" (default) or "systemd"
	// (each worker gets its own user-mode systemd; the lb machine, which
	// runs no unit, keeps the process executor). Machines have the
	// metadata host=<their name> besides role.
	Executor string
}

// Run deploys the seed's scenario with opts' units and checks it through
// haproxy; it skips (with the reason) where it cannot run: not root, no
// unshare, no haproxy or nginx.
func Run(t *testing.T, opts Options) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tStart := time.Now()
	root := repoRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	build(t, bin)
	srv := etcdtest.New(t)
	c := &cluster{t: t, dir: dir, bin: bin, endpoint: srv.Endpoint(), machines: map[string]*machine{}}
	ipOf, nameOf := c.startMachines(subnet(t), opts.Executor)
	placed := c.startUnits(ctx, root, opts)
	t.Logf("placed after %s: %v", time.Since(tStart).Round(time.Millisecond), placed)
	ip1, ip2 := placed["nginx@1.service"][0], placed["nginx@2.service"][0]
	if ip1 == ip2 {
		t.Fatalf("nginx@1 and nginx@2 share machine %s despite Conflicts", ip1)
	}
	for u, ips := range placed {
		for _, ip := range ips {
			if ip == ipOf["lb-1"] {
				t.Errorf("%s runs on the role=lb machine", u)
			}
		}
	}
	lb := c.startLB(ctx, root, srv.Endpoint(), ip1, ip2)
	before := lb.h.Send(ctx, 20)
	t.Logf("through haproxy before: %s", before)
	if !lb.both(before) {
		t.Errorf("before the loss: %s", before)
	}
	lb.refuseBadAnnouncement(ctx, t, srv)

	// A worker hosting an instance dies.
	if nameOf[ip1] == "" || nameOf[ip1] == "lb-1" {
		t.Fatalf("nginx@1 on unknown machine %s", ip1)
	}
	c.killAndMove(ctx, lb, "nginx@1.service", ip1, nameOf[ip1], ipOf["lb-1"])
}

// startMachines starts the four machines (three role=worker with executor,
// the lb with the process executor) on addresses of subnet sub; it returns
// their addresses by name and their names by address.
func (c *cluster) startMachines(sub, executor string) (ipOf, nameOf map[string]string) {
	ipOf, nameOf = map[string]string{}, map[string]string{}
	for i, name := range []string{"worker-1", "worker-2", "worker-3", "lb-1"} {
		md, ex := "role=worker", executor
		if ex == "" {
			ex = "process"
		}
		if name == "lb-1" {
			md, ex = "role=lb", "process"
		}
		ipOf[name] = fmt.Sprintf("%s%d", sub, i+2)
		nameOf[ipOf[name]] = name
		c.start(name, ipOf[name], md+",host="+name, ex)
	}
	return ipOf, nameOf
}

// startUnits starts the seed's units once the four machines are listed and
// returns where they run once they all are active.
func (c *cluster) startUnits(ctx context.Context, root string, opts Options) map[string][]string {
	t := c.t
	units := filepath.Join(c.dir, "units")
	os.MkdirAll(units, 0o755)
	os.WriteFile(filepath.Join(c.dir, "etcd.env"), []byte("ETCDCTL_ENDPOINTS="+c.endpoint+"\n"), 0o644)
	for _, f := range []string{"nginx@.service", "prefetch.service"} {
		localize(t, filepath.Join(root, opts.UnitDir, f), filepath.Join(units, f), c.bin, c.dir, opts.Replace)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := c.scheduler(ctx, units, "list-machines", "--no-legend")
		if err == nil && strings.Count(strings.TrimSpace(out), "\n") == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("four machines never listed: %q %v\n%s", out, err, c.logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := c.scheduler(ctx, units, "start", "prefetch.service", "nginx@1.service", "nginx@2.service"); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, c.logs())
	}
	placed := c.waitUnits(ctx, "nginx@1, nginx@2 active; prefetch active on three machines", func(m map[string][]string) bool {
		return len(m["nginx@1.service"]) == 1 && len(m["nginx@2.service"]) == 1 && len(m["prefetch.service"]) == 3
	})
	if os.Getenv("SEED_DEBUG") != "" {
		for _, u := range []string{"prefetch.service", "nginx@1.service"} {
			out, _ := c.scheduler(ctx, c.dir, "journal", "-n", "40", u)
			t.Logf("journal %s:\n%s", u, out)
		}
	}
	return placed
}

// loadBalancer is haproxy, configured by a render that watches the
// announcements, and a client that sends requests through it.
type loadBalancer struct {
	cfg       string // haproxy.cfg
	hp        *lbtest.Haproxy
	h         lbtest.Hammer
	renderLog func() string
}

// both reports whether r was answered by both instances without errors.
func (lb *loadBalancer) both(r lbtest.Result) bool {
	i := instances(r)
	return r.Errors == 0 && i["nginx@1"] && i["nginx@2"]
}

// startLB renders haproxy.cfg with examples/lb's resource and template (for
// this namespace) once both instances are announced at ip1 and ip2, starts
// haproxy on it, then render -watch (stopped when the test ends), and waits
// until traffic reaches both instances.
func (c *cluster) startLB(ctx context.Context, root, endpoint, ip1, ip2 string) *loadBalancer {
	t := c.t
	dir := filepath.Join(c.dir, "lb")
	os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755)
	os.MkdirAll(filepath.Join(dir, "templates"), 0o755)
	tmpl, err := os.ReadFile(filepath.Join(root, "examples/lb/templates/haproxy.cfg.tmpl"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "templates", "haproxy.cfg.tmpl"), tmpl, 0o644)
	example, err := os.ReadFile(filepath.Join(root, "examples/lb/conf.d/haproxy.toml"))
	if err != nil {
		t.Fatal(err)
	}
	lb := &loadBalancer{cfg: filepath.Join(dir, "haproxy.cfg")}
	bind := lbtest.FreeAddr(t, "127.0.0.1")
	resource := func(reload string) {
		var toml []string
		for _, line := range strings.Split(string(example), "\n") {
			switch {
			case strings.HasPrefix(line, "dest = "):
				line = fmt.Sprintf("dest = %q", lb.cfg)
			case strings.HasPrefix(line, "reload_cmd = "):
				line = fmt.Sprintf("reload_cmd = %q", reload)
			}
			toml = append(toml, line)
		}
		os.WriteFile(filepath.Join(dir, "conf.d", "haproxy.toml"), []byte(strings.Join(toml, "\n")), 0o644)
	}
	renderCmd := func(ctx context.Context, extra ...string) *exec.Cmd {
		args := append([]string{"-backend", "etcdv3", "-node", endpoint, "-confdir", dir}, extra...)
		cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "render"), args...)
		cmd.Env = append(os.Environ(), "HAPROXY_BIND="+bind, "PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
		return cmd
	}
	// Wait until both announcements are in, then render once and start haproxy.
	resource("true")
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := renderCmd(ctx, "-onetime").CombinedOutput()
		data, _ := os.ReadFile(lb.cfg)
		if err == nil && bytes.Contains(data, []byte(ip1+":8080")) && bytes.Contains(data, []byte(ip2+":8080")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("render never wrote both instances: %v\n%s\n%s\n%s", err, out, data, c.logs())
		}
		time.Sleep(200 * time.Millisecond)
	}
	lb.hp = lbtest.StartHaproxy(t, lb.cfg, bind)
	resource(lb.hp.ReloadCmd())
	rctx, rcancel := context.WithCancel(ctx)
	render := renderCmd(rctx, "-watch")
	renderLogPath := filepath.Join(c.dir, "render.log")
	renderLogFile, err := os.Create(renderLogPath)
	if err != nil {
		t.Fatal(err)
	}
	render.Stdout, render.Stderr = renderLogFile, renderLogFile
	lb.renderLog = func() string { b, _ := os.ReadFile(renderLogPath); return string(b) }
	render.Cancel = func() error { return render.Process.Signal(syscall.SIGTERM) }
	if err := render.Start(); err != nil {
		renderLogFile.Close()
		rcancel()
		t.Fatal(err)
	}
	renderDone := make(chan struct{})
	go func() {
		render.Wait()
		close(renderDone)
	}()
	t.Cleanup(func() {
		rcancel()
		<-renderDone
		renderLogFile.Close()
	})
	lb.h = lbtest.Hammer{URL: "http://" + bind + "/", Identify: identify}
	if res, ok := lb.h.Until(ctx, 10, lb.both); !ok {
		t.Fatalf("traffic never reached both instances: %s\n%s", res, lb.hp.Output())
	}
	return lb
}

// refuseBadAnnouncement: a bad announcement (a value that makes haproxy.cfg
// invalid) must not reach haproxy: render's check_cmd refuses it, the live
// file stays, and traffic goes on; removing it lets the next good render
// through.
func (lb *loadBalancer) refuseBadAnnouncement(ctx context.Context, t *testing.T, srv *etcdtest.Server) {
	good, _ := os.ReadFile(lb.cfg)
	bogus := "/clusterstate/demo/bogus.service"
	kv := srv.Client()
	if _, err := kv.Put(ctx, bogus, "oops 127.0.0.9:8080 nonsense", 0); err != nil {
		t.Fatal(err)
	}
	refused := func() bool {
		return strings.Contains(lb.renderLog(), "check_cmd") && strings.Contains(lb.renderLog(), "exited 1")
	}
	for wait := time.Now().Add(20 * time.Second); !refused(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(wait) {
			t.Fatalf("render never ran check_cmd on the bad announcement:\n%s", lb.renderLog())
		}
	}
	if live, _ := os.ReadFile(lb.cfg); !bytes.Equal(live, good) {
		t.Errorf("a bad announcement changed the live haproxy.cfg:\n%s", live)
	}
	if res := lb.h.Send(ctx, 20); !lb.both(res) {
		t.Errorf("traffic with a bad announcement pending: %s", res)
	}
	if _, err := kv.Delete(ctx, bogus); err != nil {
		t.Fatal(err)
	}
	t.Logf("a bad announcement was refused by check_cmd; haproxy.cfg and traffic untouched")
}

// killAndMove kills (-9) machine victim, which runs victimUnit at victimIP,
// under traffic through lb, and checks that the unit moves to another worker
// (not lbIP, not beside the other instance), that haproxy.cfg follows and that
// traffic reaches both instances again.
func (c *cluster) killAndMove(ctx context.Context, lb *loadBalancer, victimUnit, victimIP, victim, lbIP string) {
	t := c.t
	other := "nginx@2.service"
	bg := lb.h.Start(ctx)
	time.Sleep(300 * time.Millisecond)
	t.Logf("kill -9 %s (%s), which runs %s", victim, victimIP, victimUnit)
	start := time.Now()
	c.kill(victim)
	moved := c.waitUnits(ctx, victimUnit+" active on another machine", func(m map[string][]string) bool {
		return len(m[victimUnit]) == 1 && m[victimUnit][0] != victimIP
	})
	tMoved := time.Since(start)
	newIP := moved[victimUnit][0]
	if newIP == lbIP || newIP == moved[other][0] {
		t.Errorf("%s moved to %s: the lb machine or beside %s", victimUnit, newIP, other)
	}
	for ctx.Err() == nil {
		data, _ := os.ReadFile(lb.cfg)
		if bytes.Contains(data, []byte(newIP+":8080")) && !bytes.Contains(data, []byte(victimIP+":8080")) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	tCfg := time.Since(start)
	want := "nginx@1 " + newIP + ":8080"
	if res, ok := lb.h.Until(ctx, 10, func(r lbtest.Result) bool { return lb.both(r) && r.By[want] > 0 }); !ok {
		t.Fatalf("traffic never reached %s through haproxy: %s\n%s\n%s", want, res, lb.hp.Output(), lb.renderLog())
	}
	tBack := time.Since(start)
	during := bg.Stop()
	t.Logf("during the reschedule: errors/total = %d/%d (%s)", during.Errors, during.Total, during)
	t.Logf("kill -9 → %s active on %s: %s; → haproxy.cfg updated: %s; → both answering: %s",
		victimUnit, newIP, tMoved.Round(time.Millisecond), tCfg.Round(time.Millisecond), tBack.Round(time.Millisecond))
	after := lb.h.Send(ctx, 20)
	t.Logf("through haproxy after: %s", after)
	if !lb.both(after) || after.By[want] == 0 {
		t.Errorf("after the reschedule: %s", after)
	}
	if during.Total == during.Errors {
		t.Errorf("no request answered during the reschedule: %s", during)
	}
	if strings.Contains(lb.hp.Output(), "Loading failure") {
		t.Errorf("haproxy was reloaded onto a config that failed to load:\n%s", lb.hp.Output())
	}
	if err := lbtest.CheckHaproxyConfig(lb.cfg); err != nil {
		t.Errorf("live haproxy.cfg: %v", err)
	}
}
