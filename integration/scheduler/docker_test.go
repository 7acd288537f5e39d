package scheduler_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/embedetcd"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/store"
)

// dockerSuite runs machines as containers on a network of their own, each
// with its own address: the image is built locally FROM scratch with the
// static scheduler binary; the host's /usr is bind-mounted read-only for the
// shell and sleep the test units run.
type dockerSuite struct {
	t       *testing.T
	tag     string
	network string
	subnet  string // "172.29.N"
	shared  string
	names   []string
}

func docker(args ...string) (string, error) {
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func newDockerSuite(t *testing.T) *dockerSuite {
	t.Helper()
	if testing.Short() {
		t.Skip("multi-host suite: skipped with -short")
	}
	if _, err := exec.LookPath("docker"); err != nil {
		t.Skip("multi-host suite: no docker command")
	}
	if _, err := docker("info", "--format", "{{.ServerVersion}}"); err != nil {
		t.Skipf("multi-host suite: no Docker engine: %v", err)
	}
	id := os.Getpid()
	d := &dockerSuite{
		t:       t,
		tag:     fmt.Sprintf("flotilla-sched-test:%d", id),
		network: fmt.Sprintf("flt-sched-%d", id),
		subnet:  fmt.Sprintf("172.29.%d", id%250+1),
		shared:  t.TempDir(),
	}
	os.Chmod(d.shared, 0o777)

	// Image: FROM scratch, the static binary, and /bin, /lib… pointing into
	// the /usr the containers get from the host.
	ctxDir := t.TempDir()
	root := filepath.Join(ctxDir, "rootfs")
	os.MkdirAll(filepath.Join(root, "tmp"), 0o777)
	os.MkdirAll(filepath.Join(root, "sbin"), 0o755) // docker --init mounts its init there
	for _, l := range []string{"bin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-o", filepath.Join(root, "scheduler"), "github.com/flotilla/flotilla/cmd/scheduler")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("static build: %v: %s", err, out)
	}
	os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte("FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/scheduler\"]\n"), 0o644)
	if _, err := docker("build", "-q", "-t", d.tag, ctxDir); err != nil {
		t.Skipf("multi-host suite: cannot build an image here: %v", err)
	}
	t.Cleanup(func() { docker("rmi", "-f", d.tag) })
	if _, err := docker("network", "create", "--subnet", d.subnet+".0/24", "--gateway", d.subnet+".1", d.network); err != nil {
		t.Skipf("multi-host suite: cannot create a network: %v", err)
	}
	t.Cleanup(func() {
		for _, n := range d.names {
			if t.Failed() {
				out, _ := docker("logs", "--tail", "30", n)
				t.Logf("logs of %s:\n%s", n, out)
			}
			docker("rm", "-f", n)
		}
		docker("network", "rm", d.network)
	})
	return d
}

func (d *dockerSuite) container(id string) string { return fmt.Sprintf("flt-%d-%s", os.Getpid(), id) }

// machine starts a container running `scheduler serve` at <subnet>.<host>.
func (d *dockerSuite) machine(endpoint, id string, host int, metadata string) {
	d.t.Helper()
	name := d.container(id)
	ip := fmt.Sprintf("%s.%d", d.subnet, host)
	_, err := docker("run", "-d", "--init", "--name", name, "--network", d.network, "--ip", ip,
		"-v", "/usr:/usr:ro", "-v", d.shared+":/shared",
		d.tag, "serve", "--endpoints", endpoint, "--data-dir", "/shared/"+id, "--machine-id", id,
		"--public-ip", ip, "--metadata", metadata, "--executor", "process", "--ttl", ttl.String(),
		"--engine-period", "2s", "--dial-timeout", "2s")
	if err != nil {
		d.t.Fatal(err)
	}
	d.names = append(d.names, name)
}

// beatAt returns when a heartbeat file was last written (zero if never).
func beatAt(path string) time.Time {
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}

// fresh reports whether a heartbeat file (rewritten every 100ms while its
// unit runs) was written in the last 600ms.
func fresh(path string) bool {
	t := beatAt(path)
	return !t.IsZero() && time.Since(t) < 600*time.Millisecond
}

// TestMultiHostPartition runs three machines as containers with their own
// addresses; one is disconnected from the network: its fenced unit
// ([X-Flotilla] OnDisconnect=stop) is killed there before it starts on
// another machine; reconnected, the machine rejoins cleanly.
func TestMultiHostPartition(t *testing.T) {
	d := newDockerSuite(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Plain http on the test's own docker network, which holds only its containers.
	srv, err := embedetcd.Start(ctx, embedetcd.Options{ClientAddr: d.subnet + ".1:0", Fast: true, Insecure: true})
	if err != nil {
		t.Skipf("multi-host suite: cannot listen on the docker network's gateway: %v", err)
	}
	defer srv.Close()
	cfg := store.Default()
	cfg.Endpoints = []string{srv.Endpoint()}
	c, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl := &cluster{t: t, ctx: ctx, dir: d.shared, endpoint: srv.Endpoint(), c: c, procs: nil}
	cl.reg = registry.New(c, registry.DefaultPrefix)
	mon := cl.monitor(nil)

	for i, id := range []string{"m1", "m2", "m3"} {
		d.machine(srv.Endpoint(), id, 11+i, "role=worker")
	}
	cl.until("three containers registered", func(s *registry.Snapshot) bool { return len(s.Machines) == 3 })
	s, _ := cl.reg.Snapshot(ctx)
	if ip := s.Machines["m2"].IP; ip != d.subnet+".12" {
		t.Errorf("m2 registered with IP %s", ip)
	}

	hb := "/shared/hb"
	os.MkdirAll(filepath.Join(d.shared, "hb"), 0o777)
	body := `[Service]
ExecStart=/bin/sh -c 'while :; do date +%%s.%%N > ` + hb + `/%n.$FLOTILLA_MACHINE_ID; sleep 0.1; done'
[X-Fleet]
Conflicts=web@*.service
[X-Flotilla]
OnDisconnect=stop
`
	units := filepath.Join(d.shared, "units")
	os.MkdirAll(units, 0o755)
	os.WriteFile(filepath.Join(units, "web@.service"), []byte(body), 0o644)
	cl.mustCLI("start", "--block-attempts", "120", filepath.Join(units, "web@1.service"), filepath.Join(units, "web@2.service"))
	s = cl.until("web@1 and web@2 running", func(s *registry.Snapshot) bool {
		return len(running(s, "web@1.service")) == 1 && len(running(s, "web@2.service")) == 1
	})
	from := running(s, "web@1.service")[0]
	beat := func(m string) string { return filepath.Join(d.shared, "hb", "web@1.service."+m) }
	deadline := time.Now().Add(30 * time.Second)
	for !fresh(beat(from)) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !fresh(beat(from)) {
		t.Fatalf("no heartbeat from web@1 on %s", from)
	}

	cutAt := time.Now()
	if _, err := docker("network", "disconnect", d.network, d.container(from)); err != nil {
		t.Fatal(err)
	}
	var stopped, started time.Time
	var to string
	deadline = time.Now().Add(60 * time.Second)
	for (stopped.IsZero() || started.IsZero()) && time.Now().Before(deadline) {
		if stopped.IsZero() && !fresh(beat(from)) {
			stopped = beatAt(beat(from)) // its last heartbeat
		}
		for _, m := range []string{"m1", "m2", "m3"} {
			if m != from && started.IsZero() && fresh(beat(m)) {
				started, to = beatAt(beat(m)), m // within 100ms of its first
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if stopped.IsZero() || started.IsZero() {
		t.Fatalf("after disconnecting %s: stopped there %v, started elsewhere %v", from, !stopped.IsZero(), !started.IsZero())
	}
	t.Logf("%s disconnected: web@1 stopped there after %s, running on %s after %s (TTL %s)",
		from, stopped.Sub(cutAt).Round(time.Millisecond), to, started.Sub(cutAt).Round(time.Millisecond), ttl)
	// Fenced (OnDisconnect=stop): the cut copy is gone before the new one
	// starts. (Unfenced units keep running when cut off: TestPartitionKeepsRunning.)
	if overlap := stopped.Sub(started); overlap > 0 {
		t.Errorf("fenced web@1 alive on %s and %s together for %s", from, to, overlap)
	}

	// Reconnect with the same address: the machine rejoins, web@1 stays put.
	if _, err := docker("network", "connect", "--ip", s.Machines[from].IP, d.network, d.container(from)); err != nil {
		t.Fatal(err)
	}
	cl.until(from+" rejoined", func(s *registry.Snapshot) bool { _, ok := s.Machines[from]; return ok })
	time.Sleep(2 * ttl)
	if fresh(beat(from)) {
		t.Errorf("web@1 runs again on %s after it rejoined", from)
	}
	s, _ = cl.reg.Snapshot(ctx)
	if got := strings.Join(running(s, "web@1.service"), ","); got != to {
		t.Errorf("after rejoin web@1 runs on %q, want %s", got, to)
	}
	if dbl := mon.stop(); len(dbl) > 0 {
		t.Errorf("units reported running on two machines at once:\n%s", strings.Join(dbl, "\n"))
	}
}
