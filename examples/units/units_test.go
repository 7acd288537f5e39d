// Package units_test checks the example units: that they parse as the
// scheduler reads them, with the placement the seed wants, and that
// nginx@.service really runs — nginx answering on the machine's public IP and
// announce registering it in a real etcd — under the process executor.
package units_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/lbtest"
	"github.com/flotilla/flotilla/internal/process"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/systemdtest"
	"github.com/flotilla/flotilla/internal/unit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestUnitsParse parses every example unit as `scheduler submit` does and
// checks the placement each must have.
func TestUnitsParse(t *testing.T) {
	tests := map[string]struct {
		instance  string
		global    bool
		conflicts []string
		metadata  string
	}{
		"nginx@.service":          {instance: "1", conflicts: []string{"nginx@*.service"}, metadata: "role=worker"},
		"prefetch.service":        {global: true, metadata: "role=worker"},
		"docker/nginx@.service":   {instance: "2", conflicts: []string{"nginx@*.service"}, metadata: "role=worker"},
		"docker/prefetch.service": {global: true, metadata: "role=worker"},
	}
	files, _ := filepath.Glob("*.service")
	more, _ := filepath.Glob("docker/*.service")
	for _, f := range append(files, more...) {
		if _, ok := tests[f]; !ok {
			t.Errorf("%s has no entry in this test", f)
		}
	}
	for path, tc := range tests {
		t.Run(path, func(t *testing.T) {
			f, err := unit.Parse(filepath.Base(path), read(t, path))
			if err != nil {
				t.Fatal(err)
			}
			if tc.instance != "" {
				if f, err = f.Instantiate(tc.instance); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.CheckStartable(); err != nil {
				t.Fatal(err)
			}
			if f.Fleet.Global != tc.global {
				t.Errorf("Global = %v, want %v", f.Fleet.Global, tc.global)
			}
			if got := strings.Join(f.Fleet.Conflicts, " "); got != strings.Join(tc.conflicts, " ") {
				t.Errorf("Conflicts = %q, want %q", got, tc.conflicts)
			}
			var md []string
			for _, m := range f.Fleet.Metadata {
				md = append(md, m.String())
			}
			if got := strings.Join(md, " "); got != tc.metadata {
				t.Errorf("MachineMetadata = %q, want %q", got, tc.metadata)
			}
			if f.Fleet.MatchesMetadata(map[string]string{"role": "lb"}) {
				t.Errorf("unit may run on the role=lb machine")
			}
			if !f.Fleet.MatchesMetadata(map[string]string{"role": "worker"}) {
				t.Errorf("unit may not run on a role=worker machine")
			}
		})
	}
}

// buildAnnounce builds cmd/announce into dir.
func buildAnnounce(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "announce")
	cmd := exec.Command("go", "build", "-o", out, "github.com/flotilla/flotilla/cmd/announce")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build announce: %v\n%s", err, b)
	}
	return out
}

// freeIP returns a loopback address whose port 8080 is free.
func freeIP(t *testing.T) string {
	t.Helper()
	for i := 0; i < 50; i++ {
		ip := fmt.Sprintf("127.%d.%d.%d", 100+os.Getpid()%100, (time.Now().Nanosecond()/1000)%250, 2+i)
		l, err := net.Listen("tcp", ip+":8080")
		if err == nil {
			l.Close()
			return ip
		}
	}
	t.Fatal("no loopback address with port 8080 free")
	return ""
}

// localize rewrites a unit's installation paths into dir, as the demo does.
func localize(body []byte, announce, dir string) []byte {
	return []byte(strings.NewReplacer(
		"/usr/local/bin/announce", announce,
		"/etc/flotilla/etcd.env", filepath.Join(dir, "etcd.env"),
		"/run/", filepath.Join(dir, "run")+"/",
	).Replace(string(body)))
}

// TestNginxUnitRunsAndAnnounces runs nginx@1.service with the process
// executor: nginx answers on PUBLIC_IP:8080 naming its instance and host,
// announce registers "<host> <ip>:8080" in a real etcd, and stopping the
// unit removes the key and the server.
func TestNginxUnitRunsAndAnnounces(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the process executor needs Linux")
	}
	lbtest.Need(t, "nginx")
	ctx := ctxT(t)
	srv := etcdtest.New(t)
	c := srv.Client()
	dir := t.TempDir()
	announce := buildAnnounce(t, dir)
	ip := freeIP(t)
	os.WriteFile(filepath.Join(dir, "etcd.env"), []byte("ETCDCTL_ENDPOINTS="+srv.Endpoint()+"\n"), 0o644)
	facts := filepath.Join(dir, "facts.env")
	env := map[string]string{"PUBLIC_IP": ip, "FLOTILLA_PUBLIC_IP": ip, "FLOTILLA_MACHINE_ID": "m-7", "FLOTILLA_METADATA_ROLE": "worker"}
	os.WriteFile(facts, process.WriteEnvFile([][2]string{{"PUBLIC_IP", ip}, {"FLOTILLA_PUBLIC_IP", ip}, {"FLOTILLA_MACHINE_ID", "m-7"}, {"FLOTILLA_METADATA_ROLE", "worker"}}), 0o644)

	ex, err := process.New(process.Options{Dir: filepath.Join(dir, "logs"), Hostname: "worker-7", DefaultTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ex.Close() })
	journal := func() string {
		l, _ := ex.Journal(ctx, "nginx@1.service", 50)
		return strings.Join(l, "\n")
	}
	body := localize(read(t, "nginx@.service"), announce, dir)
	spec := executor.Spec{Name: "nginx@1.service", Body: body, Hash: unit.Hash(body), EnvFile: facts, Env: env}
	if err := ex.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ex.Remove(context.Background(), spec.Name) })

	h := lbtest.Hammer{URL: "http://" + ip + ":8080/", Interval: 20 * time.Millisecond,
		Identify: func(_ *http.Response, b []byte) string { return string(b) }}
	want := "nginx@1 on worker-7 " + ip + ":8080\n"
	if res, ok := h.Until(ctx, 1, func(r lbtest.Result) bool { return r.By[want] == 1 }); !ok {
		t.Fatalf("nginx@1 never answered %q: %s\n%s", want, res, journal())
	}
	key := "/clusterstate/demo/nginx@1.service"
	waitKey(t, ctx, func() (string, bool) {
		kv, found, _, err := c.Get(ctx, key)
		return string(kv.Value), found && err == nil
	}, "worker-7 "+ip+":8080", journal)

	if err := ex.Stop(ctx, spec.Name); err != nil {
		t.Fatal(err)
	}
	waitKey(t, ctx, func() (string, bool) {
		_, found, _, err := c.Get(ctx, key)
		return "", !found && err == nil
	}, "", journal)
	if _, err := h.One(ctx); err == nil {
		t.Errorf("nginx@1 still answers after stop\n%s", journal())
	}
	if _, err := os.Stat(filepath.Join(dir, "run", "nginx-1")); !os.IsNotExist(err) {
		t.Errorf("runtime dir left behind after stop: %v", err)
	}
}

// waitKey polls get until it reports ok with value want.
func waitKey(t *testing.T, ctx context.Context, get func() (string, bool), want string, journal func() string) {
	t.Helper()
	var last string
	for ctx.Err() == nil {
		v, ok := get()
		if ok && v == want {
			return
		}
		last = v
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("key never reached %q (last %q)\n%s", want, last, journal())
}

// TestNginxUnitUnderSystemd runs nginx@1.service under a real (user-mode)
// systemd, which parses and expands the unit itself: the per-instance config
// written by ExecStartPre, nginx on PUBLIC_IP:8080 and the announcement must
// come out exactly as under the process executor. PUBLIC_IP comes from a
// drop-in here (the scheduler's systemd executor gives it the machine facts).
func TestNginxUnitUnderSystemd(t *testing.T) {
	lbtest.Need(t, "nginx")
	m := systemdtest.New(t)
	ctx := ctxT(t)
	srv := etcdtest.New(t)
	c := srv.Client()
	announce := buildAnnounce(t, m.Dir)
	ip := freeIP(t)
	envFile := filepath.Join(m.Dir, "etcd.env")
	os.WriteFile(envFile, []byte("ETCDCTL_ENDPOINTS="+srv.Endpoint()+"\n"), 0o644)
	// /run is the namespace's own tmpfs: only announce and the env file move.
	body := strings.NewReplacer("/usr/local/bin/announce", announce, "/etc/flotilla/etcd.env", envFile).Replace(string(read(t, "nginx@.service")))
	if err := os.WriteFile(filepath.Join(m.UnitDir, "nginx@.service"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	dropin := filepath.Join(m.UnitDir, "nginx@1.service.d")
	os.MkdirAll(dropin, 0o755)
	os.WriteFile(filepath.Join(dropin, "facts.conf"), []byte("[Service]\nEnvironment=PUBLIC_IP="+ip+"\n"), 0o644)
	// prefetch.service, which nginx@ Wants=, is there too.
	os.WriteFile(filepath.Join(m.UnitDir, "prefetch.service"), read(t, "prefetch.service"), 0o644)
	if out, err := m.Systemctl(ctx, "daemon-reload"); err != nil {
		t.Fatal(err, out)
	}
	status := func() string {
		out, _ := m.Systemctl(context.Background(), "status", "--lines=30", "nginx@1.service")
		return out
	}
	if out, err := m.Systemctl(ctx, "start", "nginx@1.service"); err != nil {
		t.Fatalf("%v\n%s\n%s", err, out, status())
	}
	host, err := m.Command(ctx, "hostname")
	if err != nil {
		t.Fatal(err)
	}
	hb, _ := host.Output()
	hostname := strings.TrimSpace(string(hb))

	h := lbtest.Hammer{URL: "http://" + ip + ":8080/", Interval: 20 * time.Millisecond,
		Identify: func(_ *http.Response, b []byte) string { return string(b) }}
	want := "nginx@1 on " + hostname + " " + ip + ":8080\n"
	if res, ok := h.Until(ctx, 1, func(r lbtest.Result) bool { return r.By[want] == 1 }); !ok {
		t.Fatalf("nginx@1 never answered %q: %s\n%s", want, res, status())
	}
	key := "/clusterstate/demo/nginx@1.service"
	waitKey(t, ctx, func() (string, bool) {
		kv, found, _, err := c.Get(ctx, key)
		return string(kv.Value), found && err == nil
	}, hostname+" "+ip+":8080", status)
	if out, err := m.Systemctl(ctx, "is-active", "prefetch.service"); err != nil || strings.TrimSpace(out) != "active" {
		t.Errorf("prefetch.service (Wants= of nginx@) not active: %q %v", out, err)
	}

	// The graceful stop, in order: the key is withdrawn (ExecStop= announce
	// --withdraw) while nginx still answers, and only then nginx quits.
	after := stopInOrder(ctx, t, c, key, h, func() {
		if out, err := m.Systemctl(ctx, "stop", "nginx@1.service"); err != nil {
			t.Fatal(err, out)
		}
	})
	if after == 0 {
		t.Errorf("stop order: nginx never answered once the key was gone: want the withdrawal first, nginx quitting after\n%s", status())
	}
	t.Logf("nginx answered %d times after the key was withdrawn", after)
	if _, found, _, err := c.Get(ctx, key); found || err != nil {
		t.Errorf("key still there after stop (%v)", err)
	}
	if _, err := h.One(ctx); err == nil {
		t.Errorf("nginx@1 still answers after stop\n%s", status())
	}
	if out, _ := m.Systemctl(ctx, "show", "-p", "Result", "nginx@1.service"); strings.TrimSpace(out) != "Result=success" {
		t.Errorf("nginx@1 stop: %s (a stop past TimeoutStopSec, or a kill, is not success)\n%s", out, status())
	}
}

// stopInOrder runs stop while asking, again and again, first etcd for key
// and then nginx (h); it returns how many times nginx answered 200 after a
// read had found the key gone — each one an answer after the withdrawal,
// whatever the clocks and delays.
func stopInOrder(ctx context.Context, t *testing.T, c *store.Client, key string, h lbtest.Hammer, stop func()) (after int) {
	t.Helper()
	done := make(chan struct{})
	var ask sync.WaitGroup
	ask.Add(1)
	go func() {
		defer ask.Done()
		client := &http.Client{Timeout: 2 * time.Second}
		for {
			select {
			case <-done:
				return
			default:
			}
			_, found, _, err := c.Get(ctx, key)
			if err != nil || found {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			resp, err := client.Get(h.URL)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					after++
				}
			}
		}
	}()
	stop()
	close(done)
	ask.Wait()
	return after
}
