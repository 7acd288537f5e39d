package render_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/render"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/resources"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

// syncBuf is a log sink tests can read while render writes.
type syncBuf = testmain.SyncBuffer

// fixture is a confdir, an output dir and a real etcd.
type fixture struct {
	t       *testing.T
	dir     string // confdir
	out     string // where dest files go
	srv     *etcdtest.Server
	c       *store.Client
	logs    *syncBuf
	metrics *render.Metrics
	ctx     context.Context
}

func newFixture(t *testing.T, opts ...etcdtest.Option) *fixture {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"conf.d", "templates", "out"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	srv := etcdtest.New(t, opts...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return &fixture{t: t, dir: dir, out: filepath.Join(dir, "out"), srv: srv, c: srv.Client(), logs: &syncBuf{}, ctx: ctx}
}

// resource writes conf.d/<name>.toml and templates/<name>.tmpl; dest is
// out/<name>. extra is more [template] lines.
func (f *fixture) resource(name, keys, tmpl, extra string) string {
	f.t.Helper()
	dest := filepath.Join(f.out, name)
	toml := fmt.Sprintf("[template]\nsrc = %q\ndest = %q\nkeys = [%s]\n%s\n", name+".tmpl", dest, keys, extra)
	f.write(filepath.Join("templates", name+".tmpl"), tmpl)
	f.write(filepath.Join("conf.d", name+".toml"), toml)
	return dest
}

func (f *fixture) write(rel, content string) {
	f.t.Helper()
	p := filepath.Join(f.dir, rel)
	tmp := filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) put(k, v string) {
	f.t.Helper()
	if _, err := f.c.Put(f.ctx, k, v, 0); err != nil {
		f.t.Fatal(err)
	}
}

// source returns an etcd source closed when the test ends.
func (f *fixture) source() *render.EtcdSource {
	src := render.NewEtcdSource(f.srv.Config())
	f.t.Cleanup(func() { src.Close() })
	return src
}

func (f *fixture) config() render.Config {
	f.metrics = render.NewMetrics()
	return render.Config{
		ConfDir: f.dir, Source: f.source(),
		RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond,
		PingInterval: 200 * time.Millisecond, ConfigDebounce: 20 * time.Millisecond,
		Logger:  slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Metrics: f.metrics,
	}
}

// run runs render.Run until the test ends.
func (f *fixture) run(cfg render.Config) {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- render.Run(ctx, cfg) }()
	f.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				f.t.Errorf("Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			f.t.Error("Run did not return after cancel")
		}
		if f.t.Failed() {
			f.t.Logf("render log:\n%s", f.logs.String())
		}
	})
}

// eventually waits (generously: it only detects hangs) for cond.
func (f *fixture) eventually(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func read(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func lines(p string) int {
	return strings.Count(read(p), "\n")
}

func TestWatchRendersAndReloads(t *testing.T) {
	f := newFixture(t)
	f.put("/app/a", "1")
	dest := f.resource("app.conf", `"/app"`, `a={{getv "/app/a"}}`+"\n", `reload_cmd = "echo reloaded >> {{.dest}}.reloads"`)
	f.run(f.config())
	f.eventually("first render", func() bool { return read(dest) == "a=1\n" })
	f.eventually("first reload", func() bool { return lines(dest+".reloads") == 1 })
	f.put("/app/a", "2")
	f.eventually("second render", func() bool { return read(dest) == "a=2\n" })
	f.eventually("second reload", func() bool { return lines(dest+".reloads") == 2 })
	// The same value again changes nothing: no render of a new file, no reload.
	f.put("/app/a", "2")
	f.put("/app/b", "x") // a change that the template does not show
	f.eventually("render of /app/b", func() bool {
		return metricValue(t, f.metrics, "render_renders_total", "app.conf.toml", "unchanged") >= 1
	})
	if n := lines(dest + ".reloads"); n != 2 {
		t.Errorf("reloads = %d after an unchanged render, want 2", n)
	}
}

func TestBurstGivesOneReload(t *testing.T) {
	f := newFixture(t)
	dest := f.resource("burst", `"/burst"`, `{{range gets "/burst/*"}}{{.Key}}={{.Value}}
{{end}}`, `reload_cmd = "echo r >> {{.dest}}.reloads"`)
	f.put("/burst/seed", "0")
	cfg := f.config()
	cfg.Wait = resources.Wait{Min: time.Second, Max: 30 * time.Second}
	f.run(cfg)
	f.eventually("first render", func() bool { return lines(dest+".reloads") == 1 })
	for i := range 200 {
		f.put(fmt.Sprintf("/burst/k%03d", i%50), fmt.Sprint(i))
	}
	f.eventually("burst rendered", func() bool { return strings.Contains(read(dest), "/k049=199\n") })
	f.eventually("reload after the burst", func() bool { return lines(dest+".reloads") >= 2 })
	time.Sleep(1500 * time.Millisecond) // more than a wait window: a straggling render would show
	if n := lines(dest+".reloads") - 1; n != 1 {
		t.Fatalf("a 200-put burst caused %d reloads, want exactly 1", n)
	}
}

func TestThrottledReloadRunsLater(t *testing.T) {
	f := newFixture(t)
	dest := f.resource("thr", `"/thr"`, `v={{getv "/thr/v"}}`+"\n",
		"reload_cmd = \"cat {{.dest}} >> {{.dest}}.reloads\"\nmin_reload_interval = \"1500ms\"")
	f.put("/thr/v", "1")
	f.run(f.config())
	f.eventually("first reload", func() bool { return read(dest+".reloads") == "v=1\n" })
	f.put("/thr/v", "2")
	f.eventually("second render", func() bool { return read(dest) == "v=2\n" })
	if got := read(dest + ".reloads"); got != "v=1\n" {
		t.Fatalf("reload ran inside min_reload_interval: reloads = %q", got)
	}
	// Deferred, not dropped: it runs when the interval ends, with no further change.
	f.eventually("deferred reload", func() bool { return read(dest+".reloads") == "v=1\nv=2\n" })
	if !strings.Contains(f.logs.String(), "reload deferred by min_reload_interval") {
		t.Error("the deferral was not logged")
	}
}

// TestDeferredReloadSurvivesResourceEdit: a reload deferred by
// min_reload_interval still runs when the resource file is edited meanwhile
// (the edit replaces the resource; the file in place was rendered by the old
// one and the service has not been told).
func TestDeferredReloadSurvivesResourceEdit(t *testing.T) {
	f := newFixture(t)
	extra := "reload_cmd = \"cat {{.dest}} >> {{.dest}}.reloads\"\nmin_reload_interval = \"1500ms\""
	dest := f.resource("thr", `"/thr"`, `v={{getv "/thr/v"}}`+"\n", extra)
	f.put("/thr/v", "1")
	f.run(f.config())
	f.eventually("first reload", func() bool { return read(dest+".reloads") == "v=1\n" })
	f.put("/thr/v", "2")
	f.eventually("deferral", func() bool { return strings.Contains(f.logs.String(), "reload deferred by min_reload_interval") })
	// An edit that changes the resource but not its output.
	f.write("conf.d/thr.toml", fmt.Sprintf("[template]\nsrc = \"thr.tmpl\"\ndest = %q\nkeys = [\"/thr\"]\n%s\nmode = \"0644\"\n", dest, extra))
	f.eventually("configuration reloaded", func() bool { return strings.Contains(f.logs.String(), "configuration reloaded") })
	f.eventually("the deferred reload, after the edit", func() bool { return read(dest+".reloads") == "v=1\nv=2\n" })
}

func TestFailedCheckIsRetried(t *testing.T) {
	f := newFixture(t)
	gate := filepath.Join(f.dir, "gate")
	dest := f.resource("chk", `"/chk"`, `v={{getv "/chk/v"}}`+"\n",
		fmt.Sprintf("check_cmd = \"test -e %s && ! grep -q bad {{.src}}\"", gate))
	if err := os.WriteFile(dest, []byte("old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.put("/chk/v", "1")
	f.run(f.config())
	// The check fails: the live file stays, and render keeps retrying.
	f.eventually("retries", func() bool {
		return metricValue(t, f.metrics, "render_failures_total", "chk.toml") >= 3
	})
	if got := read(dest); got != "old\n" {
		t.Fatalf("dest replaced after a failed check: %q", got)
	}
	// The cause goes away: rendered with no further key change.
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	f.eventually("render after the retry", func() bool { return read(dest) == "v=1\n" })
	// A bad value is refused, a fixed one goes through.
	f.put("/chk/v", "bad")
	f.eventually("failure on bad", func() bool { return strings.Contains(f.logs.String(), `exited 1`) })
	f.put("/chk/v", "good")
	f.eventually("render of the fixed value", func() bool { return read(dest) == "v=good\n" })
	if entries, _ := os.ReadDir(f.out); len(entries) != 1 {
		t.Errorf("staged files left behind: %v", entries)
	}
}

func TestNoPrefixSpillOver(t *testing.T) {
	f := newFixture(t)
	dest := f.resource("app", `"/app"`, `{{range gets "/app/*"}}{{.Key}}
{{end}}`, "")
	f.put("/app/x", "1")
	f.run(f.config())
	f.eventually("first render", func() bool { return read(dest) == "/app/x\n" })
	renders := func() float64 {
		return metricValue(t, f.metrics, "render_renders_total", "app.toml", "changed") +
			metricValue(t, f.metrics, "render_renders_total", "app.toml", "unchanged")
	}
	// The file is in place before the runner counts its render: wait for the
	// count too, or the first render lands in the difference below.
	f.eventually("first render counted", func() bool { return renders() >= 1 })
	before := renders()
	for i := range 20 {
		f.put(fmt.Sprintf("/apple/%d", i), "no")
		f.put("/apple", "no")
	}
	f.put("/app/y", "1") // ordered after the /apple puts in the one watch
	f.eventually("render of /app/y", func() bool { return read(dest) == "/app/x\n/app/y\n" })
	// Renders of one resource run one at a time, in order, so any render an
	// /apple put caused is counted before the /app/y one.
	f.eventually("the /app/y render counted", func() bool { return renders()-before >= 1 })
	if got := renders() - before; got != 1 {
		t.Fatalf("%v renders after 40 /apple puts and one /app put, want 1", got)
	}
}

func TestTemplateAddedWhileRunning(t *testing.T) {
	f := newFixture(t)
	a := f.resource("a", `"/a"`, `a={{getv "/a"}}`+"\n", "")
	f.put("/a", "1")
	f.put("/b/v", "2")
	f.run(f.config())
	f.eventually("a", func() bool { return read(a) == "a=1\n" })
	b := f.resource("b", `"/b"`, `b={{getv "/b/v"}}`+"\n", "")
	f.eventually("b added while running", func() bool { return read(b) == "b=2\n" })
	// An edited template is picked up too.
	f.write("templates/b.tmpl", `B={{getv "/b/v"}}`+"\n")
	f.eventually("b edited", func() bool { return read(b) == "B=2\n" })
	// A broken edit keeps the last good version running.
	f.write("templates/b.tmpl", `B={{getv "/b/v"`)
	f.eventually("broken edit reported", func() bool { return strings.Contains(f.logs.String(), "keeping its last good version") })
	f.put("/b/v", "3")
	f.eventually("b still renders", func() bool { return read(b) == "B=3\n" })
}

func TestBrokenResourceNextToGoodOnes(t *testing.T) {
	f := newFixture(t)
	good := f.resource("good", `"/g"`, `g={{getv "/g"}}`+"\n", "")
	f.write("conf.d/broken.toml", "[template]\nsrc = \"x.tmpl\"\ndest = ")
	f.write("conf.d/nokeys.toml", "[template]\nsrc = \"good.tmpl\"\ndest = \"/tmp/never\"\n")
	badTmpl := f.resource("badtmpl", `"/g"`, `{{getv "/g"`, "")
	f.put("/g", "1")
	cfg := f.config()
	err := render.Onetime(f.ctx, cfg)
	if err == nil {
		t.Fatal("Onetime succeeded with broken resources")
	}
	for _, want := range []string{"broken.toml:3", "nokeys.toml: template.keys is required", "badtmpl.toml"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Onetime error does not name %q: %v", want, err)
		}
	}
	if read(good) != "g=1\n" {
		t.Errorf("good resource not rendered next to broken ones: %q", read(good))
	}
	if _, err := os.Stat(badTmpl); err == nil {
		t.Error("a broken template wrote its dest")
	}
	// Running: the good one keeps following etcd.
	f.run(f.config())
	f.put("/g", "2")
	f.eventually("good renders while broken ones are reported", func() bool { return read(good) == "g=2\n" })
}

func TestEtcdKilledAndRestarted(t *testing.T) {
	f := newFixture(t, etcdtest.WithMode(etcdtest.Binary))
	dest := f.resource("e", `"/e"`, `e={{getv "/e"}}`+"\n", "")
	f.put("/e", "1")
	f.c.Close()
	cfg := f.config()
	f.run(cfg)
	f.eventually("first render", func() bool { return read(dest) == "e=1\n" })
	st1, _ := os.Stat(dest)
	f.srv.Kill()
	f.eventually("etcd seen down", func() bool { return metricValue(t, f.metrics, "render_etcd_connected") == 0 })
	time.Sleep(500 * time.Millisecond) // several ping/retry rounds while down
	st2, err := os.Stat(dest)
	if err != nil || read(dest) != "e=1\n" || !st2.ModTime().Equal(st1.ModTime()) {
		t.Fatalf("dest touched while etcd was down: %v %q", err, read(dest))
	}
	f.srv.Start()
	c := f.srv.Client()
	if _, err := c.Put(f.ctx, "/e", "2", 0); err != nil {
		t.Fatal(err)
	}
	f.eventually("render after etcd is back", func() bool { return read(dest) == "e=2\n" })
	f.eventually("connected again", func() bool { return metricValue(t, f.metrics, "render_etcd_connected") == 1 })
}

func TestStartsWhileEtcdIsDown(t *testing.T) {
	f := newFixture(t, etcdtest.WithMode(etcdtest.Binary))
	dest := f.resource("d", `"/d"`, `d={{getv "/d"}}`+"\n", "")
	f.put("/d", "1")
	f.c.Close()
	if err := os.WriteFile(dest, []byte("last good\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.srv.Kill()
	f.run(f.config())
	f.eventually("retry logged", func() bool { return strings.Count(f.logs.String(), "cannot read keys") >= 2 })
	if read(dest) != "last good\n" {
		t.Fatalf("dest changed while etcd was down: %q", read(dest))
	}
	f.srv.Start()
	f.eventually("render once etcd is up", func() bool { return read(dest) == "d=1\n" })
}

func TestCompactionResyncs(t *testing.T) {
	f := newFixture(t)
	dest := f.resource("c", `"/c"`, `{{range gets "/c/*"}}{{.Value}}{{end}}`+"\n", "")
	f.put("/c/a", "1")
	var rev int64
	for i := range 5 {
		r, err := f.c.Put(f.ctx, "/other", fmt.Sprint(i), 0)
		if err != nil {
			t.Fatal(err)
		}
		rev = r
	}
	src := &gatedSource{Source: f.source(), compactAt: rev, c: f.c}
	cfg := f.config()
	cfg.Source = src
	f.run(cfg)
	f.eventually("first render", func() bool { return read(dest) == "1\n" })
	// The watch the runner opens asks for an old, compacted revision: it must
	// resync and carry on.
	f.put("/c/b", "2")
	f.eventually("render after compaction", func() bool { return read(dest) == "12\n" })
	if !strings.Contains(f.logs.String(), "compacted") {
		t.Error("the compaction was not seen")
	}
}

// gatedSource compacts etcd past the watch's start revision the first time
// a watch is opened: the runner sees a CompactedError.
type gatedSource struct {
	render.Source
	c         *store.Client
	compactAt int64
	once      sync.Once
}

func (g *gatedSource) Watch(ctx context.Context, prefix string, fromRev int64) render.Watcher {
	first := false
	g.once.Do(func() { first = true })
	if first {
		rev, _ := g.c.Put(ctx, "/other", "x", 0)
		g.c.Put(ctx, "/other", "y", 0)
		g.c.Compact(ctx, rev+1)
		return g.Source.Watch(ctx, prefix, rev-1)
	}
	return g.Source.Watch(ctx, prefix, fromRev)
}

func TestNoopPrintsDiffWritesNothing(t *testing.T) {
	f := newFixture(t)
	dest := f.resource("n", `"/n"`, `n={{getv "/n"}}`+"\nsame\n", `reload_cmd = "touch {{.dest}}.reloaded"`)
	if err := os.WriteFile(dest, []byte("n=0\nsame\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.put("/n", "1")
	cfg := f.config()
	var diff bytes.Buffer
	cfg.Noop, cfg.Diff = true, &diff
	if err := render.Onetime(f.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("--- %s\n+++ %s\n@@ -1,2 +1,2 @@\n-n=0\n+n=1\n same\n", dest, dest)
	if diff.String() != want {
		t.Errorf("diff:\n%s\nwant:\n%s", diff.String(), want)
	}
	if read(dest) != "n=0\nsame\n" {
		t.Error("noop wrote dest")
	}
	if _, err := os.Stat(dest + ".reloaded"); err == nil {
		t.Error("noop ran reload_cmd")
	}
}

func TestOnetimeAndCheckConfig(t *testing.T) {
	f := newFixture(t)
	ok := f.resource("ok", `"/k"`, `{{getv "/k/v"}}`+"\n", `reload_cmd = "touch {{.dest}}.reloaded"`)
	f.resource("missing", `"/k"`, `{{getv "/k/nope"}}`+"\n", "")
	f.put("/k/v", "x")
	cfg := f.config()
	var out bytes.Buffer
	err := render.CheckConfig(f.ctx, cfg, &out)
	if err == nil || !strings.Contains(err.Error(), "render missing.toml") || !strings.Contains(err.Error(), "/k/nope") {
		t.Errorf("CheckConfig error = %v, want it to name missing.toml and /k/nope", err)
	}
	if !strings.Contains(out.String(), "ok ok.toml") {
		t.Errorf("CheckConfig output %q does not list ok.toml", out.String())
	}
	if _, err := os.Stat(ok); err == nil {
		t.Error("CheckConfig wrote a file")
	}
	err = render.Onetime(f.ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "render missing.toml") {
		t.Errorf("Onetime error = %v, want it to name missing.toml", err)
	}
	if read(ok) != "x\n" {
		t.Errorf("ok not rendered: %q", read(ok))
	}
	if _, err := os.Stat(ok + ".reloaded"); err != nil {
		t.Error("onetime did not run reload_cmd")
	}
}

func TestPrefixes(t *testing.T) {
	f := newFixture(t)
	// Global prefix /prod joins the resource prefix /svc; the template sees
	// keys without them.
	dest := f.resource("p", `"/web"`, `{{range gets "/web/*"}}{{.Key}}={{.Value}}
{{end}}`, `prefix = "/svc"`)
	f.put("/prod/svc/web/a", "1")
	f.put("/prod/svc/web/b", "2")
	f.put("/prod/svc/webby/c", "3")
	cfg := f.config()
	cfg.Prefix = "/prod"
	if err := render.Onetime(f.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if got, want := read(dest), "/web/a=1\n/web/b=2\n"; got != want {
		t.Errorf("rendered %q, want %q", got, want)
	}
}

// metricValue reads a counter or gauge from m's registry (0 when absent).
func metricValue(t *testing.T, m *render.Metrics, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, mt := range mf.GetMetric() {
			for i, lp := range mt.GetLabel() {
				if i >= len(labels) || lp.GetValue() != labels[i] {
					continue next
				}
			}
			if c := mt.GetCounter(); c != nil {
				return c.GetValue()
			}
			return mt.GetGauge().GetValue()
		}
	}
	return 0
}

func TestNotifyMetricsAndHealth(t *testing.T) {
	f := newFixture(t)
	dest := f.resource("m", `"/m"`, `m={{getv "/m"}}`+"\n", "")
	f.put("/m", "1")
	var mu sync.Mutex
	var states []string
	cfg := f.config()
	cfg.Notify = func(s string) {
		mu.Lock()
		defer mu.Unlock()
		states = append(states, strings.SplitN(s, "\n", 2)[0])
	}
	got := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(states, " ")
	}
	reload := make(chan struct{})
	cfg.Reload = reload
	srv := httptest.NewServer(f.metrics.Handler())
	defer srv.Close()
	status := func(path string) int {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if status("/ready") != http.StatusServiceUnavailable {
		t.Error("/ready before the first render is not 503")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- render.Run(ctx, cfg) }()
	f.eventually("READY=1", func() bool { return got() == "READY=1" })
	if read(dest) != "m=1\n" {
		t.Errorf("READY before the first render: %q", read(dest))
	}
	f.eventually("/ready", func() bool { return status("/ready") == 200 })
	if status("/health") != 200 {
		t.Error("/health is not 200")
	}
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`render_renders_total{resource="m.toml",result="changed"} 1`, "render_etcd_connected 1", "render_last_success_timestamp_seconds"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	reload <- struct{}{}
	f.eventually("RELOADING then READY", func() bool { return got() == "READY=1 RELOADING=1 READY=1" })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got() != "READY=1 RELOADING=1 READY=1 STOPPING=1" {
		t.Errorf("states %q", got())
	}
}

func TestPollMode(t *testing.T) {
	f := newFixture(t)
	dest := f.resource("poll", `"/poll"`, `p={{getv "/poll/v"}}`+"\n", "")
	f.put("/poll/v", "1")
	cfg := f.config()
	cfg.Mode, cfg.Interval = render.Poll, 100*time.Millisecond
	f.run(cfg)
	f.eventually("first render", func() bool { return read(dest) == "p=1\n" })
	f.put("/poll/v", "2")
	f.eventually("render at the next poll", func() bool { return read(dest) == "p=2\n" })
}

func TestFileBackendWatch(t *testing.T) {
	f := newFixture(t)
	dest := f.resource("fb", `"/svc"`, `{{range gets "/svc/*"}}{{.Key}}={{.Value}}
{{end}}`, "")
	f.write("data.yaml", "svc:\n  a: 1\n  b: [x, y]\n")
	data := filepath.Join(f.dir, "data.yaml")
	cfg := f.config()
	cfg.Source = &render.FileSource{Files: []string{data}}
	f.run(cfg)
	f.eventually("render from the file", func() bool { return read(dest) == "/svc/a=1\n" })
	f.write("data.yaml", "svc:\n  a: 2\n  c: {d: e}\n")
	f.eventually("render after the file changed", func() bool { return read(dest) == "/svc/a=2\n" })
}

func TestSlowCheckDoesNotHoldBackOthers(t *testing.T) {
	f := newFixture(t)
	gate := filepath.Join(f.dir, "gate")
	slow := f.resource("slow", `"/s"`, `s={{getv "/s"}}`+"\n",
		fmt.Sprintf("check_cmd = \"while [ ! -e %s ]; do sleep 0.01; done\"\ncheck_cmd_timeout = \"20s\"", gate))
	fast := f.resource("fast", `"/f"`, `f={{getv "/f"}}`+"\n", "")
	f.put("/s", "1")
	f.put("/f", "1")
	f.run(f.config())
	f.eventually("fast rendered", func() bool { return read(fast) == "f=1\n" })
	f.put("/f", "2")
	f.eventually("fast rendered again while slow is checking", func() bool { return read(fast) == "f=2\n" })
	if _, err := os.Stat(slow); err == nil {
		t.Fatal("slow rendered before its check passed")
	}
	os.WriteFile(gate, nil, 0o644)
	f.eventually("slow rendered once its check passes", func() bool { return read(slow) == "s=1\n" })
}

// TestFileSourceWatchCatchesUp: a data file changed after List but before
// the watch started (render starts its watch after the first full read) is
// not lost: the watch begins with a resync. An unchanged file starts quiet.
func TestFileSourceWatchCatchesUp(t *testing.T) {
	ctx := context.Background()
	data := filepath.Join(t.TempDir(), "data.yaml")
	if err := os.WriteFile(data, []byte("a: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	src := &render.FileSource{Files: []string{data}}
	if _, _, err := src.List(ctx, nil); err != nil {
		t.Fatal(err)
	}
	w := src.Watch(ctx, "", 0)
	select {
	case b := <-w.C():
		t.Fatalf("batch %+v from a file unchanged since List", b)
	case <-time.After(200 * time.Millisecond):
	}
	w.Close()

	tmp := data + ".new"
	if err := os.WriteFile(tmp, []byte("a: 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, data); err != nil {
		t.Fatal(err)
	}
	w = src.Watch(ctx, "", 0)
	defer w.Close()
	select {
	case b := <-w.C():
		if !b.Resync {
			t.Fatalf("first batch %+v, want a resync", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no resync for a change made between List and the watch")
	}
}

// TestFileSourceWatchFollowsSymlinkTarget: a data file that is a symlink into
// another directory (as mounted configuration often is) changes without an
// event in the watched directory; the watch's periodic comparison finds it.
func TestFileSourceWatchFollowsSymlinkTarget(t *testing.T) {
	ctx := context.Background()
	dir, other := t.TempDir(), t.TempDir()
	real := filepath.Join(other, "real.yaml")
	if err := os.WriteFile(real, []byte("a: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data.yaml")
	if err := os.Symlink(real, data); err != nil {
		t.Fatal(err)
	}
	src := &render.FileSource{Files: []string{data}}
	if _, _, err := src.List(ctx, nil); err != nil {
		t.Fatal(err)
	}
	w := src.Watch(ctx, "", 0)
	defer w.Close()
	if err := os.WriteFile(real, []byte("a: 22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-w.C():
		if !b.Resync {
			t.Fatalf("batch %+v, want a resync", b)
		}
	case <-time.After(5*render.FilePollInterval + 5*time.Second):
		t.Fatal("no resync after the symlink's target changed")
	}
}
