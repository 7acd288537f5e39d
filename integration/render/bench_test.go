package render_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/render"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/resources"
)

// The benchmark workload: n announcements "/bench/nginx@<i>.service" =
// "host<i> 10.x.y.z:8080" rendered by the seed's haproxy fragment.
const benchTmpl = "listen appname\n    {{range getvs \"/bench/*\"}}\n    server {{.}} check\n    {{end}}\n"

func benchKey(i int) string { return fmt.Sprintf("/bench/nginx@%06d.service", i) }

func benchVal(i int, tag string) string {
	return fmt.Sprintf("host%d%s 10.%d.%d.%d:8080", i, tag, i>>16&255, i>>8&255, i&255)
}

func loadKeys(b *testing.B, c *store.Client, n int) {
	b.Helper()
	ctx := context.Background()
	for i := 0; i < n; i += 100 {
		var ops []store.Op
		for j := i; j < min(n, i+100); j++ {
			ops = append(ops, store.OpPut(benchKey(j), benchVal(j, ""), 0))
		}
		if _, _, err := c.Txn(ctx, nil, ops, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// benchConfdir writes a confd directory for the workload; extra is added to
// the resource.
func benchConfdir(b *testing.B, extra string) (dir, dest string) {
	b.Helper()
	dir = b.TempDir()
	os.MkdirAll(filepath.Join(dir, "conf.d"), 0o755)
	os.MkdirAll(filepath.Join(dir, "templates"), 0o755)
	os.MkdirAll(filepath.Join(dir, "out"), 0o755)
	dest = filepath.Join(dir, "out", "haproxy.cfg")
	os.WriteFile(filepath.Join(dir, "templates", "haproxy.cfg.tmpl"), []byte(benchTmpl), 0o644)
	os.WriteFile(filepath.Join(dir, "conf.d", "haproxy.toml"), []byte(fmt.Sprintf(
		"[template]\nsrc = \"haproxy.cfg.tmpl\"\ndest = %q\nkeys = [\"/bench\"]\n%s\n", dest, extra)), 0o644)
	return dir, dest
}

var sizes = []int{1_000, 10_000, 100_000}

func sizeName(n int) string {
	if n >= 1000 {
		return fmt.Sprintf("keys=%dk", n/1000)
	}
	return fmt.Sprintf("keys=%d", n)
}

// BenchmarkOnetime is `render -onetime` in-process: read every key, render,
// compare with the file in place (and write it, the first time).
func BenchmarkOnetime(b *testing.B) {
	for _, n := range sizes {
		b.Run(sizeName(n), func(b *testing.B) {
			srv := etcdtest.New(b)
			loadKeys(b, srv.Client(), n)
			dir, _ := benchConfdir(b, "")
			src := render.NewEtcdSource(srv.Config())
			defer src.Close()
			cfg := render.Config{ConfDir: dir, Source: src, Logger: slog.New(slog.DiscardHandler)}
			for b.Loop() {
				if err := render.Onetime(context.Background(), cfg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// waitFile waits (via fsnotify on its directory) until dest holds want.
type fileWaiter struct {
	w    *fsnotify.Watcher
	dest string
}

func newFileWaiter(b *testing.B, dest string) *fileWaiter {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		b.Fatal(err)
	}
	if err := w.Add(filepath.Dir(dest)); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { w.Close() })
	return &fileWaiter{w: w, dest: dest}
}

func (fw *fileWaiter) wait(b *testing.B, want []byte) {
	deadline := time.After(30 * time.Second)
	for {
		if data, err := os.ReadFile(fw.dest); err == nil && bytes.Contains(data, want) {
			return
		}
		fw.next(b, deadline)
	}
}

// next waits for an event on dest itself (renamed over, or written): the
// staged files' events are skipped unread, so the waiter takes as little
// CPU as it can from the process measured.
func (fw *fileWaiter) next(b *testing.B, deadline <-chan time.Time) {
	for {
		select {
		case ev := <-fw.w.Events:
			if ev.Name == fw.dest {
				return
			}
		case <-deadline:
			b.Fatalf("timed out waiting for %s", fw.dest)
		}
	}
}

func percentile(d []time.Duration, p float64) float64 {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
}

func runBench(b *testing.B, cfg render.Config) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- render.Run(ctx, cfg) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
}

// BenchmarkPutToFile measures a watch: one put → the file rewritten with it
// in place (rename done), at 1k and 10k keys. Reports p50/p99 in ms.
func BenchmarkPutToFile(b *testing.B) {
	for _, n := range sizes[:2] {
		b.Run(sizeName(n), func(b *testing.B) {
			srv := etcdtest.New(b)
			c := srv.Client()
			loadKeys(b, c, n)
			dir, dest := benchConfdir(b, "")
			src := render.NewEtcdSource(srv.Config())
			b.Cleanup(func() { src.Close() })
			runBench(b, render.Config{ConfDir: dir, Source: src, Logger: slog.New(slog.DiscardHandler)})
			fw := newFileWaiter(b, dest)
			fw.wait(b, []byte(benchVal(0, "")))
			var lat []time.Duration
			i := 0
			for b.Loop() {
				i++
				v := benchVal(0, "-v"+strconv.Itoa(i))
				start := time.Now()
				if _, err := c.Put(context.Background(), benchKey(0), v, 0); err != nil {
					b.Fatal(err)
				}
				fw.wait(b, []byte(v+" check"))
				lat = append(lat, time.Since(start))
			}
			b.ReportMetric(percentile(lat, 0.50), "p50-ms")
			b.ReportMetric(percentile(lat, 0.99), "p99-ms")
		})
	}
}

// BenchmarkBurstReloads counts reloads caused by a burst of 200 puts, without
// and with -wait.
func BenchmarkBurstReloads(b *testing.B) {
	for _, w := range []string{"", "100ms:2s"} {
		name := "wait=none"
		if w != "" {
			name = "wait=" + w
		}
		b.Run(name, func(b *testing.B) {
			srv := etcdtest.New(b)
			c := srv.Client()
			loadKeys(b, c, 1000)
			dir, dest := benchConfdir(b, `reload_cmd = "echo r >> {{.dest}}.reloads"`)
			wait, _ := resources.ParseWait(w)
			src := render.NewEtcdSource(srv.Config())
			b.Cleanup(func() { src.Close() })
			runBench(b, render.Config{ConfDir: dir, Source: src, Wait: wait, Logger: slog.New(slog.DiscardHandler)})
			fw := newFileWaiter(b, dest)
			fw.wait(b, []byte(benchVal(0, "")))
			reloads := func() int { d, _ := os.ReadFile(dest + ".reloads"); return bytes.Count(d, []byte("\n")) }
			for reloads() < 1 {
				time.Sleep(time.Millisecond)
			}
			total, bursts := 0, 0
			for b.Loop() {
				bursts++
				before := reloads()
				putBurst(b, c, fw, fmt.Sprintf("-b%d-", bursts))
				for reloads() == before {
					time.Sleep(time.Millisecond)
				}
				time.Sleep(300 * time.Millisecond) // let stragglers show
				total += reloads() - before
			}
			b.ReportMetric(float64(total)/float64(bursts), "reloads/burst")
		})
	}
}

// putBurst puts 200 values into the first 100 keys (each key twice, its
// values tagged with tag) and waits until the last one is in the file.
func putBurst(b *testing.B, c *store.Client, fw *fileWaiter, tag string) {
	b.Helper()
	for i := range 200 {
		c.Put(context.Background(), benchKey(i%100), benchVal(i%100, tag+strconv.Itoa(i)), 0)
	}
	fw.wait(b, []byte(benchVal(99, tag+"199")))
}

// buildRender builds cmd/render into a temp dir.
func buildRender(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "render")
	cmd := exec.Command("go", "build", "-o", bin, "../../cmd/render")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func procStatus(pid int, field string) float64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, field+":") {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[1], 64)
			return v / 1024 // kB → MB
		}
	}
	return 0
}

// cpuTicks is utime+stime of pid in clock ticks.
func cpuTicks(pid int) float64 {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return u + st
}

func startRender(b *testing.B, bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	logs := &syncBuf{}
	cmd.Stdout, cmd.Stderr = io.Discard, logs
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if b.Failed() {
			b.Logf("render log:\n%s", logs)
		}
	})
	return cmd
}

// BenchmarkRSS100k runs the render binary in -watch mode over 100k keys and
// reports its resident memory (and its peak) in the steady state: rendered
// once, then 20 updates applied and rendered (so the snapshot's getvs index
// has been built and kept current).
func BenchmarkRSS100k(b *testing.B) {
	srv := etcdtest.New(b)
	c := srv.Client()
	loadKeys(b, c, 100_000)
	dir, dest := benchConfdir(b, "")
	bin := buildRender(b)
	round := 0
	for b.Loop() {
		os.Remove(dest)
		fw := newFileWaiter(b, dest)
		cmd := startRender(b, bin, "-node", srv.Endpoint(), "-confdir", dir, "-watch")
		fw.wait(b, []byte(benchVal(99_999, "")))
		for i := range 20 {
			round++
			v := benchVal(i*4999, "-rss"+strconv.Itoa(round))
			if _, err := c.Put(context.Background(), benchKey(i*4999), v, 0); err != nil {
				b.Fatal(err)
			}
			fw.wait(b, []byte(v+" check"))
		}
		time.Sleep(200 * time.Millisecond)
		b.ReportMetric(procStatus(cmd.Process.Pid, "VmRSS"), "rss-MB")
		b.ReportMetric(procStatus(cmd.Process.Pid, "VmHWM"), "peak-rss-MB")
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
}

// BenchmarkCPUEtcdDown runs the render binary in -watch mode, kills etcd, and
// reports the CPU it uses over 3 s while etcd is down (percent of one core).
func BenchmarkCPUEtcdDown(b *testing.B) {
	srv := etcdtest.New(b, etcdtest.WithMode(etcdtest.Binary))
	loadKeys(b, srv.Client(), 1000)
	dir, dest := benchConfdir(b, "")
	bin := buildRender(b)
	fw := newFileWaiter(b, dest)
	cmd := startRender(b, bin, "-node", srv.Endpoint(), "-confdir", dir, "-watch")
	fw.wait(b, []byte(benchVal(999, "")))
	srv.Kill()
	time.Sleep(time.Second) // past the first reconnect attempts
	const window = 3 * time.Second
	hz := 100.0 // USER_HZ on Linux
	for b.Loop() {
		t0 := cpuTicks(cmd.Process.Pid)
		time.Sleep(window)
		used := (cpuTicks(cmd.Process.Pid) - t0) / hz
		b.ReportMetric(100*used/window.Seconds(), "cpu-%")
	}
	if cmd.ProcessState != nil {
		b.Fatal("render exited while etcd was down")
	}
}

// BenchmarkOnetimeResources is `render -onetime` in-process over many
// resources, each on its own prefix (one haproxy backend per service), more
// than etcd's default --max-txn-ops (128) allows in one transaction, against
// Debian's etcd binary with its defaults: 200 resources × 50 keys and 2,000
// resources × 5 keys. The files are in place after the first iteration: an
// iteration reads every prefix at one revision, renders and compares.
func BenchmarkOnetimeResources(b *testing.B) {
	for _, tc := range []struct{ res, keys int }{{200, 50}, {2000, 5}} {
		b.Run(fmt.Sprintf("res=%dx%d", tc.res, tc.keys), func(b *testing.B) {
			srv := etcdtest.New(b, etcdtest.WithMode(etcdtest.Binary))
			dir := manyResources(b, srv.Client(), tc.res, tc.keys)
			src := render.NewEtcdSource(srv.Config())
			defer src.Close()
			cfg := render.Config{ConfDir: dir, Source: src, Logger: slog.New(slog.DiscardHandler)}
			start := time.Now()
			if err := render.Onetime(context.Background(), cfg); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000, "first-ms")
			for b.Loop() {
				if err := render.Onetime(context.Background(), cfg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// manyResources writes a confdir of res resources, each on its own prefix
// /bench/svcNNNN with keys keys (written in transactions of 100), and
// returns it; each resource renders into dir/out/svcNNNN.cfg.
func manyResources(b *testing.B, c *store.Client, res, keys int) string {
	b.Helper()
	dir := b.TempDir()
	for _, d := range []string{"conf.d", "templates", "out"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	var ops []store.Op
	flush := func() {
		if _, _, err := c.Txn(context.Background(), nil, ops, nil); err != nil {
			b.Fatal(err)
		}
		ops = nil
	}
	for r := range res {
		svc := fmt.Sprintf("svc%04d", r)
		os.WriteFile(filepath.Join(dir, "templates", svc+".tmpl"), []byte(fmt.Sprintf(
			"backend %s\n{{range getvs \"/bench/%s/*\"}}    server {{.}} check\n{{end}}", svc, svc)), 0o644)
		os.WriteFile(filepath.Join(dir, "conf.d", svc+".toml"), []byte(fmt.Sprintf(
			"[template]\nsrc = %q\ndest = %q\nkeys = [\"/bench/%s\"]\n", svc+".tmpl", filepath.Join(dir, "out", svc+".cfg"), svc)), 0o644)
		for k := range keys {
			ops = append(ops, store.OpPut(fmt.Sprintf("/bench/%s/nginx@%d.service", svc, k), benchVal(r*keys+k, ""), 0))
			if len(ops) == 100 {
				flush()
			}
		}
	}
	if len(ops) > 0 {
		flush()
	}
	return dir
}
