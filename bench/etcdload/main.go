// Command etcdload measures the load that idle flotilla processes put on etcd:
// requests per second received by one etcd server (Debian's binary, on
// loopback) from N announce processes holding their key, N render -watch
// processes with nothing changing, and N scheduler serve machines with no
// units. Each group runs alone against a fresh etcd; the count is read from
// etcd's own /metrics (grpc_server_msg_received_total summed over every
// method: one unary call = one message, each message on a stream — a lease
// keepalive, a watch request — counts as one), minus what etcd counts with no
// client at all, over a window after a warm-up that is excluded.
//
// It prints JSON lines {"name","unit","value"} on stdout, logs on stderr.
//
//	etcdload [-n 10] [-window 30s] [-warmup 5s] [-bin bin] [-etcd /usr/bin/etcd]
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/flotilla/flotilla/internal/cmdline"
)

func main() { cmdline.Main("etcdload", run) }

// config is what one run measures.
type config struct {
	n      int
	window time.Duration
	warmup time.Duration
	bin    string
	etcd   string
	ttl    time.Duration // announce --ttl
	groups []string
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("etcdload", flag.ContinueOnError)
	var cfg config
	var groups string
	fs.IntVar(&cfg.n, "n", 10, "processes per group")
	fs.DurationVar(&cfg.window, "window", 30*time.Second, "measurement window per group (at least one announce keepalive period: TTL/3)")
	fs.DurationVar(&cfg.warmup, "warmup", 5*time.Second, "time after every process is up, excluded from the count")
	fs.StringVar(&cfg.bin, "bin", "bin", "directory holding announce, render and scheduler")
	fs.StringVar(&cfg.etcd, "etcd", "/usr/bin/etcd", "etcd server binary")
	fs.DurationVar(&cfg.ttl, "announce-ttl", 30*time.Second, "announce --ttl (its default: 30s)")
	fs.StringVar(&groups, "groups", "idle,announce,render,agent", "groups to measure, in order")
	if err := cmdline.Parse(fs, args, stdout, "usage: etcdload [flags]\n\nRequests/s that idle flotilla processes cause on one etcd."); err != nil {
		return err
	}
	if cfg.n < 1 || cfg.window <= 0 {
		return cmdline.Usagef("-n must be ≥ 1 and -window > 0")
	}
	cfg.groups = strings.Split(groups, ",")
	tmp, err := os.MkdirTemp("", "etcdload-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	enc := json.NewEncoder(stdout)
	var idle float64
	for _, g := range cfg.groups {
		rate, puts, byMethod, err := measure(ctx, cfg, g, filepath.Join(tmp, g), stderr)
		if err != nil {
			return fmt.Errorf("etcdload %s: %w", g, err)
		}
		if g == "idle" {
			idle = rate
			enc.Encode(result{Name: "etcdload/no-client", Unit: "req/s", Value: round(rate)})
			continue
		}
		rate -= idle
		name := fmt.Sprintf("etcdload/%s/n=%d", g, cfg.n)
		enc.Encode(result{Name: name, Unit: "req/s", Value: round(rate)})
		enc.Encode(result{Name: name + "/per-process", Unit: "req/s", Value: round(rate / float64(cfg.n))})
		enc.Encode(result{Name: name, Unit: "writes/s", Value: round(puts)})
		methods := make([]string, 0, len(byMethod))
		for m := range byMethod {
			methods = append(methods, m)
		}
		sort.Strings(methods)
		for _, m := range methods {
			enc.Encode(result{Name: name + "/method=" + m, Unit: "req/s", Value: round(byMethod[m])})
		}
	}
	return nil
}

type result struct {
	Name  string  `json:"name"`
	Unit  string  `json:"unit"`
	Value float64 `json:"value"`
	Note  string  `json:"note,omitempty"`
}

func round(v float64) float64 { return float64(int64(v*100+0.5)) / 100 }

// measure starts a fresh etcd and the group's n processes, waits for them to be
// up, warms up, and returns requests/s and writes/s over the window.
func measure(ctx context.Context, cfg config, group, dir string, stderr io.Writer) (rate, writes float64, byMethod map[string]float64, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, 0, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pg := &procGroup{ctx: ctx, bin: cfg.bin, dir: dir}
	defer pg.stop()
	ep, etcd, err := startEtcd(ctx, cfg.etcd, filepath.Join(dir, "etcd"))
	if err != nil {
		return 0, 0, nil, err
	}
	pg.procs = append(pg.procs, etcd)
	ready, err := startGroup(ctx, pg, cfg, group, ep)
	if err != nil {
		return 0, 0, nil, err
	}
	if err := pg.waitReady(ready); err != nil {
		return 0, 0, nil, fmt.Errorf("%d %s processes: %w", cfg.n, group, err)
	}
	fmt.Fprintf(stderr, "etcdload: %s ×%d up; warm-up %s, window %s\n", group, cfg.n, cfg.warmup, cfg.window)
	if err := sleep(ctx, cfg.warmup); err != nil {
		return 0, 0, nil, err
	}
	return window(ctx, ep, cfg.window)
}

// procGroup is the processes of one measurement (etcd first), stopped
// together.
type procGroup struct {
	ctx   context.Context
	bin   string // where the flotilla binaries are
	dir   string // their logs
	procs []*exec.Cmd
}

// start starts the flotilla binary name, its output into a log file in dir.
func (pg *procGroup) start(name string, args ...string) error {
	cmd := exec.CommandContext(pg.ctx, filepath.Join(pg.bin, name), args...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=")
	logf, err := os.Create(filepath.Join(pg.dir, fmt.Sprintf("%s-%d.log", name, len(pg.procs))))
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	pg.procs = append(pg.procs, cmd)
	return nil
}

// stop sends every process SIGTERM and waits for them.
func (pg *procGroup) stop() {
	for _, p := range pg.procs {
		p.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range pg.procs {
		p.Wait()
	}
}

// waitReady polls ready for at most 2 minutes; a process of the group (not
// etcd) that exits meanwhile is an error.
func (pg *procGroup) waitReady(ready func() bool) error {
	deadline := time.Now().Add(2 * time.Minute)
	for !ready() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not up after 2m (logs in %s)", pg.dir)
		}
		for _, p := range pg.procs[1:] {
			if p.ProcessState != nil {
				return fmt.Errorf("%s exited early", p.Path)
			}
		}
		select {
		case <-pg.ctx.Done():
			return pg.ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// startGroup starts cfg.n processes of group against etcd at ep; ready
// reports whether they have all done their first work.
func startGroup(ctx context.Context, pg *procGroup, cfg config, group, ep string) (ready func() bool, err error) {
	switch group {
	case "idle":
		return func() bool { return true }, nil
	case "announce":
		for i := range cfg.n {
			if err := pg.start("announce", "--endpoints", ep, "--log-level", "error", "--ttl", cfg.ttl.String(),
				fmt.Sprintf("/bench/load/a%d", i), fmt.Sprintf("h%d 127.0.0.1:%d", i, 8000+i)); err != nil {
				return nil, err
			}
		}
		return func() bool { v, _ := metric(ep, "etcd_debugging_mvcc_keys_total"); return int(v) >= cfg.n }, nil
	case "render":
		// Something to render: n announcement-like keys, written before the
		// renderers start (those writes end long before the window).
		if err := putKeys(ctx, ep, cfg.n); err != nil {
			return nil, err
		}
		var dests []string
		for i := range cfg.n {
			cd := filepath.Join(pg.dir, fmt.Sprintf("confd%d", i))
			dest, err := writeConfdir(cd)
			if err != nil {
				return nil, err
			}
			dests = append(dests, dest)
			if err := pg.start("render", "-backend", "etcdv3", "-node", ep, "-confdir", cd, "-watch", "-log-level", "error"); err != nil {
				return nil, err
			}
		}
		return func() bool {
			for _, d := range dests {
				if _, err := os.Stat(d); err != nil {
					return false
				}
			}
			return true
		}, nil
	case "agent":
		for i := range cfg.n {
			md := filepath.Join(pg.dir, fmt.Sprintf("m%d", i))
			if err := pg.start("scheduler", "serve", "--endpoints", ep, "--machine-id", fmt.Sprintf("%032x", i+1),
				"--data-dir", md, "--executor", "process", "--public-ip", "127.0.0.1", "--log-level", "error"); err != nil {
				return nil, err
			}
		}
		// n presence keys plus the engine leader's election key.
		return func() bool { v, _ := metric(ep, "etcd_debugging_mvcc_keys_total"); return int(v) >= cfg.n+1 }, nil
	}
	return nil, cmdline.Usagef("unknown group %q (idle, announce, render, agent)", group)
}

// window measures etcd's gRPC messages and writes per second over d, in all
// and by method.
func window(ctx context.Context, ep string, d time.Duration) (rate, writes float64, byMethod map[string]float64, err error) {
	m0, err := counters(ep)
	if err != nil {
		return 0, 0, nil, err
	}
	t0 := time.Now()
	if err := sleep(ctx, d); err != nil {
		return 0, 0, nil, err
	}
	m1, err := counters(ep)
	if err != nil {
		return 0, 0, nil, err
	}
	secs := time.Since(t0).Seconds()
	// The two /metrics scrapes are plain HTTP, not gRPC: they are not counted.
	byMethod = map[string]float64{}
	for m, v := range m1.byMethod {
		if d := v - m0.byMethod[m]; d > 0 {
			byMethod[m] = d / secs
		}
	}
	return (m1.msgs - m0.msgs) / secs, (m1.writes - m0.writes) / secs, byMethod, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// startEtcd runs the etcd binary on two free loopback ports with its data in dir.
func startEtcd(ctx context.Context, bin, dir string) (endpoint string, cmd *exec.Cmd, err error) {
	client, peer := freePort(), freePort()
	if client == "" || peer == "" {
		return "", nil, errors.New("no free loopback port")
	}
	endpoint = "http://" + client
	cmd = exec.CommandContext(ctx, bin, "--name", "load", "--data-dir", dir,
		"--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "load=http://"+peer, "--log-level", "error", "--logger", "zap")
	logf, err := os.Create(dir + ".log")
	if err != nil {
		return "", nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start etcd %s: %w", bin, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if v, err := metric(endpoint, "etcd_server_has_leader"); err == nil && v == 1 {
			return endpoint, cmd, nil
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			return "", nil, fmt.Errorf("etcd %s not ready after 30s (log %s.log)", bin, dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return ""
	}
	defer l.Close()
	return l.Addr().String()
}

// snapshot holds the counters measure compares.
type snapshot struct {
	msgs, writes float64
	byMethod     map[string]float64 // gRPC messages received per method
}

// counters scrapes etcd's /metrics: every gRPC message received, and the
// writes applied (puts, deletes and transactions of the MVCC store).
func counters(ep string) (snapshot, error) {
	s := snapshot{byMethod: map[string]float64{}}
	err := scrape(ep, func(name, labels string, v float64) {
		switch name {
		case "grpc_server_msg_received_total":
			s.msgs += v
			s.byMethod[label(labels, "grpc_method")] += v
		case "etcd_debugging_mvcc_put_total", "etcd_debugging_mvcc_delete_total":
			s.writes += v
		}
	})
	return s, err
}

// metric returns the value of one unlabelled metric.
func metric(ep, want string) (float64, error) {
	found, val := false, 0.0
	err := scrape(ep, func(name, _ string, v float64) {
		if name == want {
			found, val = true, v
		}
	})
	if err == nil && !found {
		err = fmt.Errorf("metric %s not served by %s", want, ep)
	}
	return val, err
}

// httpClient is a client that keeps no connection (and so no goroutine)
// once a request is done.
func httpClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

// label returns one label's value from a {k="v",…} label set.
func label(labels, key string) string {
	i := strings.Index(labels, key+"=\"")
	if i < 0 {
		return ""
	}
	rest := labels[i+len(key)+2:]
	if j := strings.IndexByte(rest, '"'); j >= 0 {
		return rest[:j]
	}
	return rest
}

// scrape reads the Prometheus text exposition of ep/metrics and calls fn with
// each sample's metric name, label set ({…} or "") and value.
func scrape(ep string, fn func(name, labels string, v float64)) error {
	cl := httpClient()
	resp, err := cl.Get(ep + "/metrics")
	if err != nil {
		return fmt.Errorf("scrape %s/metrics: %w", ep, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("scrape %s/metrics: %s", ep, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		name, labels := line[:sp], ""
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name, labels = name[:i], name[i:]
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		fn(name, labels, v)
	}
	return sc.Err()
}

// putKeys writes n announcement-like keys through etcd's JSON gateway (the
// v3 HTTP API, keys base64-encoded), so this program needs no etcd client.
func putKeys(ctx context.Context, ep string, n int) error {
	cl := httpClient()
	for i := range n {
		body := fmt.Sprintf(`{"key":%q,"value":%q}`,
			b64(fmt.Sprintf("/bench/load/a%d", i)), b64(fmt.Sprintf("h%d 127.0.0.1:%d", i, 8000+i)))
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep+"/v3/kv/put", strings.NewReader(body))
		if err != nil {
			return err
		}
		resp, err := cl.Do(req)
		if err != nil {
			return fmt.Errorf("put /bench/load/a%d: %w", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("put /bench/load/a%d: %s", i, resp.Status)
		}
	}
	return nil
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// writeConfdir writes a confd directory rendering the seed's haproxy fragment
// from /bench/load and returns its dest.
func writeConfdir(dir string) (string, error) {
	for _, d := range []string{"conf.d", "templates"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return "", err
		}
	}
	dest := filepath.Join(dir, "haproxy.cfg")
	tmpl := "listen app\n{{range getvs \"/bench/load/*\"}}    server {{.}} check\n{{end}}"
	res := fmt.Sprintf("[template]\nsrc = \"haproxy.cfg.tmpl\"\ndest = %q\nkeys = [\"/bench/load\"]\n", dest)
	if err := os.WriteFile(filepath.Join(dir, "templates", "haproxy.cfg.tmpl"), []byte(tmpl), 0o644); err != nil {
		return "", err
	}
	return dest, os.WriteFile(filepath.Join(dir, "conf.d", "haproxy.toml"), []byte(res), 0o644)
}
