package faults

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"github.com/flotilla/flotilla/internal/lbtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/unit"
)

// announcePrefix is where the suite's instances announce themselves.
const announcePrefix = "/clusterstate/faults/"

// proc is a process started by a test, in its own process group, killed
// when the test ends (even when it fails).
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

// startProc starts argv with extra environment env; its output goes to a log
// file that is printed when the test fails.
func startProc(t testing.TB, name string, env []string, argv ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), strings.ReplaceAll(name, "/", "_")+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("--- %s output (last 4 KiB):\n%s", name, tail(p.Output(), 4096))
		}
	})
	return p
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// Pid returns the process id.
func (p *proc) Pid() int { return p.cmd.Process.Pid }

// Output returns what the process printed so far.
func (p *proc) Output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// Exited reports whether the process has exited.
func (p *proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill sends SIGKILL to the process alone (not its group: what dies with it
// is the program's business) and waits for it.
func (p *proc) Kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// Stop sends SIGTERM, waits up to 15 s, then kills the whole group. Safe to
// call twice.
func (p *proc) Stop() {
	if p.Exited() {
		syscall.Kill(-p.Pid(), syscall.SIGKILL) // leftovers of the group
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		syscall.Kill(-p.Pid(), syscall.SIGKILL)
		<-p.done
	}
	syscall.Kill(-p.Pid(), syscall.SIGKILL)
}

// cpuTicks returns utime+stime of pid in clock ticks (1/100 s on Linux).
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(s[i+1:])
	// After ")": state(0) ppid … utime is field 14 of stat, i.e. index 11 here.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad times", pid)
	}
	return u + st, nil
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && len(s) > i+2 && s[i+2] != 'Z'
}

// eventually polls cond (which says why it does not hold yet) until it
// returns nil or limit passes; limit only detects a hang.
func eventually(t testing.TB, limit time.Duration, what string, cond func() error) {
	t.Helper()
	testmain.Eventually(t, limit, 100*time.Millisecond, what, cond)
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func openStore(t testing.TB, endpoints []string) *store.Client {
	t.Helper()
	cfg := store.Default()
	cfg.Endpoints = endpoints
	cfg.DialTimeout = 3 * time.Second
	c, err := store.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// announced returns the suite's announcements: unit (key base) → value.
func announced(ctx context.Context, c *store.Client) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	kvs, _, err := c.GetPrefix(ctx, announcePrefix)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, kv := range kvs {
		m[strings.TrimPrefix(kv.Key, announcePrefix)] = string(kv.Value)
	}
	return m, nil
}

// lb is a real haproxy whose configuration render writes from the suite's
// announcements, reloading it through haproxy's master.
type lb struct {
	h       *lbtest.Haproxy
	render  *proc
	confdir string
	dest    string
	bind    string
	hammer  *lbtest.Hammer
}

// lbTemplate is the seed's haproxy template with fast health checks. A
// dead backend (connection refused) is down after three checks (600 ms); a
// live one must miss three checks of 2 s: on a loaded 2-core machine a
// 200 ms timeout with fall 1 marked live backends down together when their
// process stalled (503s that were the test's, not flotilla's).
const lbTemplate = `global
    log stderr format raw local0 notice
defaults
    mode http
    log global
    option redispatch
    retries 3
    timeout connect 500ms
    timeout client 10s
    timeout server 10s
    timeout check 2s
listen app
    bind %s
    balance roundrobin
{{range getvs "/clusterstate/faults/*"}}    server {{.}} check inter 200ms fall 3 rise 1
{{end}}`

// startLB starts haproxy on an empty configuration, then render -watch over
// endpoints, which rewrites and reloads it.
func startLB(t testing.TB, endpoints []string, extraFlags ...string) *lb {
	t.Helper()
	lbtest.Need(t, "haproxy")
	dir := t.TempDir()
	l := &lb{confdir: filepath.Join(dir, "confd"), dest: filepath.Join(dir, "haproxy.cfg"), bind: lbtest.FreeAddr(t, "127.0.0.1")}
	for _, d := range []string{"conf.d", "templates"} {
		if err := os.MkdirAll(filepath.Join(l.confdir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(l.dest, []byte(lbtest.HaproxyConfig(l.bind)), 0o644); err != nil {
		t.Fatal(err)
	}
	l.h = lbtest.StartHaproxy(t, l.dest, l.bind)
	toml := fmt.Sprintf("[template]\nsrc = \"haproxy.cfg.tmpl\"\ndest = %q\nkeys = [\"/clusterstate/faults\"]\n"+
		"check_cmd = %q\nreload_cmd = '''%s'''\n", l.dest, l.h.CheckCmd(), l.h.ReloadCmd())
	if err := os.WriteFile(filepath.Join(l.confdir, "conf.d", "haproxy.toml"), []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(l.confdir, "templates", "haproxy.cfg.tmpl"), []byte(fmt.Sprintf(lbTemplate, l.bind)), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{bin("render"), "-backend", "etcdv3", "-confdir", l.confdir, "-watch", "-log-level", "info"}
	for _, ep := range endpoints {
		args = append(args, "-node", ep)
	}
	args = append(args, extraFlags...)
	l.render = startProc(t, "render", nil, args...)
	l.hammer = &lbtest.Hammer{URL: "http://" + l.bind + "/", Timeout: 2 * time.Second}
	return l
}

// logHaproxy logs haproxy's server state changes (for a failed test).
func (l *lb) logHaproxy(t testing.TB) {
	t.Helper()
	for _, line := range strings.Split(l.h.Output(), "\n") {
		if strings.Contains(line, " is DOWN") || strings.Contains(line, " is UP") || strings.Contains(line, "no server available") {
			t.Log("haproxy: " + line)
		}
	}
}

// servers returns the addresses of the server lines of the rendered file.
func (l *lb) servers() []string {
	b, _ := os.ReadFile(l.dest)
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == "server" {
			out = append(out, f[2])
		}
	}
	sort.Strings(out)
	return out
}

// waitServers waits until the rendered file lists exactly addrs.
func (l *lb) waitServers(t testing.TB, limit time.Duration, addrs []string) {
	t.Helper()
	want := append([]string(nil), addrs...)
	sort.Strings(want)
	eventually(t, limit, "rendered haproxy servers", func() error {
		if got := l.servers(); strings.Join(got, " ") != strings.Join(want, " ") {
			return fmt.Errorf("servers %v, want %v", got, want)
		}
		return nil
	})
}

// tolerable reports whether the errors of res are within the bound the
// suite allows where no backend dies: none is the promise; up to 1% is
// allowed for a shared, loaded test machine whose stalls can fail health
// checks of every backend at once (the figure is logged either way).
func tolerable(res lbtest.Result) bool { return res.Total > 0 && res.Errors*100 <= res.Total }

// waitServing waits until haproxy itself (not just the rendered file)
// serves n backends without errors: render writes the file before its
// reload_cmd has finished, and haproxy starts on a config with no servers,
// which answers 503.
func (l *lb) waitServing(ctx context.Context, t testing.TB, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if r, ok := l.hammer.Until(ctx, 4*n, func(r lbtest.Result) bool { return len(r.By) == n && r.Errors == 0 }); !ok {
		t.Fatalf("haproxy does not serve %d backends: %s", n, r)
	}
}

// announcer is a standalone `announce` in the foreground with its backend.
type announcer struct {
	name, key, addr string
	p               *proc
	b               *lbtest.Backend
}

func startAnnouncer(t testing.TB, endpoints []string, name, ip string, ttl time.Duration) *announcer {
	t.Helper()
	b := lbtest.StartBackend(t, name, ip+":0")
	a := &announcer{name: name, key: announcePrefix + name, addr: b.Addr, b: b}
	a.p = startProc(t, "announce-"+name, nil, bin("announce"), "--endpoints", strings.Join(endpoints, ","),
		"--ttl", ttl.String(), "--host", name, "--addr", b.Addr, a.key)
	return a
}

// --- scheduler machines ---------------------------------------------------

// machine is one scheduler machine process (agent + engine candidate).
type machine struct {
	id, ip, dir string
	endpoints   []string
	ttl         time.Duration
	p           *proc
	wrap        []string // command prefix, e.g. ip netns exec NAME
}

func newMachine(t testing.TB, endpoints []string, id, ip string, ttl time.Duration, wrap ...string) *machine {
	t.Helper()
	m := &machine{id: id, ip: ip, dir: t.TempDir(), endpoints: endpoints, ttl: ttl, wrap: wrap}
	m.start(t)
	return m
}

func (m *machine) start(t testing.TB) {
	t.Helper()
	argv := append(append([]string(nil), m.wrap...), self(t), "-test.run=^$")
	m.p = startProc(t, "machine-"+m.id, []string{
		envRole + "=machine", envEndpoints + "=" + strings.Join(m.endpoints, ","), envMachineID + "=" + m.id,
		envMachineIP + "=" + m.ip, envDir + "=" + m.dir, envTTL + "=" + m.ttl.String(), envGrace + "=" + moveGrace.String(),
	}, argv...)
}

// webUnit is the body of the suite's unit NAME: a backend on ip:port from
// the machine facts, announced by `announce --detach` under a TTL of ttl.
// xfleet, if not empty, is the unit's [X-Fleet] section.
func webUnit(t testing.TB, token, name string, port int, endpoints []string, ttl time.Duration, xfleet string) []byte {
	host := strings.TrimSuffix(name, ".service")
	return []byte(fmt.Sprintf(`[Unit]
Description=fault-suite backend %[2]s

[Service]
Environment=%[7]s=backend
ExecStart=%[1]s %[3]s %[2]s ${PUBLIC_IP}:%[4]d
ExecStartPost=%[5]s --detach --ttl %[8]s --endpoints %[6]s --check http://${PUBLIC_IP}:%[4]d/ --check-interval 500ms --host %[9]s --addr ${PUBLIC_IP}:%[4]d %[10]s%[2]s
%[11]s`, self(t), name, token, port, bin("announce"), strings.Join(endpoints, ","), envRole, ttl, host, announcePrefix, xfleet))
}

// spread keeps the suite's instances on different machines, as the seed's
// Conflicts=nginx@*.service does.
const spread = "\n[X-Fleet]\nConflicts=web-*.service\n"

// waitMachines waits until n machines are present, so that units submitted
// next are spread over all of them.
func waitMachines(ctx context.Context, t testing.TB, reg *registry.Registry, n int) {
	t.Helper()
	eventually(t, 30*time.Second, "machines registered", func() error {
		ms, err := reg.Machines(ctx)
		if err != nil {
			return err
		}
		if len(ms) != n {
			return fmt.Errorf("%d machines present, want %d", len(ms), n)
		}
		return nil
	})
}

// submitLaunched submits body as name and sets it launched.
func submitLaunched(ctx context.Context, t testing.TB, reg *registry.Registry, name string, body []byte) {
	t.Helper()
	if _, err := reg.Submit(ctx, name, unit.Hash(body), body, registry.KeepExisting); err != nil {
		t.Fatalf("submit %s: %v", name, err)
	}
	if err := reg.SetDesired(ctx, name, registry.Launched); err != nil {
		t.Fatalf("launch %s: %v", name, err)
	}
}

// backendProc is one live backend process of a test (found in /proc).
type backendProc struct {
	pid  int
	addr string
}

// backends scans /proc for live backend processes started with token, by
// unit name. This is the ground truth of "what runs", independent of what
// agents report.
func backends(token string) map[string][]backendProc {
	out := map[string][]backendProc{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) != 4 || args[1] != token || !alive(pid) {
			continue
		}
		out[args[2]] = append(out[args[2]], backendProc{pid: pid, addr: args[3]})
	}
	return out
}

// checkInvariants checks the scheduler invariants once: every unit runs as
// exactly one process; every running instance is announced with its
// address; nothing else is announced; every announced address answers with
// the unit's name.
func checkInvariants(ctx context.Context, c *store.Client, token string, units []string) error {
	run := backends(token)
	ann, err := announced(ctx, c)
	if err != nil {
		return err
	}
	var problems []string
	for _, u := range units {
		ps := run[u]
		switch {
		case len(ps) == 0:
			problems = append(problems, u+" runs nowhere")
		case len(ps) > 1:
			problems = append(problems, fmt.Sprintf("%s runs %d times (%v)", u, len(ps), ps))
		default:
			v, ok := ann[u]
			if !ok {
				problems = append(problems, u+" runs but is not announced")
			} else if !strings.HasSuffix(v, " "+ps[0].addr) {
				problems = append(problems, fmt.Sprintf("%s runs on %s but is announced as %q", u, ps[0].addr, v))
			}
		}
	}
	for k, v := range ann {
		if len(run[k]) == 0 {
			problems = append(problems, fmt.Sprintf("%s announced (%q) but not running", k, v))
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 {
			problems = append(problems, fmt.Sprintf("%s: bad value %q", k, v))
			continue
		}
		if name, err := ask(ctx, f[1]); err != nil || name != k {
			problems = append(problems, fmt.Sprintf("%s announced at %s, which answers %q (%v)", k, f[1], name, err))
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

// ask sends one request to addr and returns the name the backend gives.
func ask(ctx context.Context, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/", nil)
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	f := bytes.Fields(b)
	if len(f) == 0 {
		return "", fmt.Errorf("empty answer")
	}
	return string(f[0]), nil
}

// monitor samples the ground truth every 100 ms while faults happen and
// records the longest time a unit ran twice and the longest time a key was
// announced without a live process at its address.
type monitor struct {
	units  map[string]bool // the keys watched (others belong to other fixtures)
	cancel context.CancelFunc
	done   chan struct{}

	mu         sync.Mutex
	maxDup     time.Duration
	maxDup1    string
	maxDead    time.Duration
	maxDeadKey string
	samples    int
	dupSince   map[string]time.Time
	deadSince  map[string]time.Time
}

func startMonitor(ctx context.Context, c *store.Client, token string, units []string) *monitor {
	ctx, cancel := context.WithCancel(ctx)
	m := &monitor{units: map[string]bool{}, cancel: cancel, done: make(chan struct{}), dupSince: map[string]time.Time{}, deadSince: map[string]time.Time{}}
	for _, u := range units {
		m.units[u] = true
	}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			m.sample(ctx, c, token)
		}
	}()
	return m
}

func (m *monitor) sample(ctx context.Context, c *store.Client, token string) {
	now := time.Now()
	run := backends(token)
	ann, err := announced(ctx, c)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.samples++
	for u, ps := range run {
		if len(ps) > 1 {
			if _, ok := m.dupSince[u]; !ok {
				m.dupSince[u] = now
			}
		} else {
			delete(m.dupSince, u)
		}
	}
	for u, since := range m.dupSince {
		if len(run[u]) <= 1 {
			delete(m.dupSince, u)
		} else if d := now.Sub(since); d > m.maxDup {
			m.maxDup, m.maxDup1 = d, u
		}
	}
	if err != nil { // etcd unreachable: announcements unknown this sample
		return
	}
	for k, v := range ann {
		if !m.units[k] {
			continue
		}
		liveThere := false
		for _, p := range run[k] {
			if strings.HasSuffix(v, " "+p.addr) {
				liveThere = true
			}
		}
		if liveThere {
			delete(m.deadSince, k+"="+v)
			continue
		}
		if _, ok := m.deadSince[k+"="+v]; !ok {
			m.deadSince[k+"="+v] = now
		}
	}
	for kv, since := range m.deadSince {
		k, v, _ := strings.Cut(kv, "=")
		if ann[k] != v {
			delete(m.deadSince, kv)
		} else if d := now.Sub(since); d > m.maxDead {
			m.maxDead, m.maxDeadKey = d, k
		}
	}
}

// Stop stops sampling and returns the figures.
func (m *monitor) Stop() (maxDup, maxDead time.Duration, samples int) {
	m.cancel()
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.maxDup, m.maxDead, m.samples
}
