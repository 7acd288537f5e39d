// Package announce_test checks the announce example units: that they parse as
// the scheduler reads them, with the dependencies and placement a sidekick
// needs, and that their announce command lines really work — run as written
// (specifiers and ${PUBLIC_IP} expanded) against a real etcd.
package announce_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/testmain"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/unit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

func parse(t *testing.T, file, instance string) *unit.File {
	t.Helper()
	body, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	f, err := unit.Parse(file, body)
	if err != nil {
		t.Fatal(err)
	}
	if f, err = f.Instantiate(instance); err != nil {
		t.Fatal(err)
	}
	if err := f.CheckStartable(); err != nil {
		t.Fatal(err)
	}
	return f
}

// command returns the argv of the first value of key in [Service], expanded
// as systemd would on a machine named host with env.
func command(t *testing.T, f *unit.File, name, key, host string, env []string) []string {
	t.Helper()
	vals := f.Values("Service", key)
	if len(vals) == 0 {
		t.Fatalf("%s has no %s=", name, key)
	}
	n, err := unit.ParseName(name)
	if err != nil {
		t.Fatal(err)
	}
	raw := unit.ExpandSpecifiers(vals[0], unit.Specifiers{Name: n, Hostname: host})
	execs, err := unit.ParseExec(raw, 0)
	if err != nil || len(execs) != 1 {
		t.Fatalf("%s %s=%s: %v", name, key, raw, err)
	}
	return unit.ExpandEnv(execs[0].Argv, env)
}

func TestSidekickUnit(t *testing.T) {
	f := parse(t, "nginx-announce@.service", "1")
	if got := f.Fleet.MachineOf; !slices.Equal(got, []string{"nginx@1.service"}) {
		t.Errorf("MachineOf = %q, want nginx@1.service", got)
	}
	n, err := unit.ParseName("nginx-announce@1.service")
	if err != nil {
		t.Fatal(err)
	}
	expand := func(vals []string) []string {
		for i, v := range vals {
			vals[i] = unit.ExpandSpecifiers(v, unit.Specifiers{Name: n})
		}
		return vals
	}
	for _, dep := range []string{"Requires", "PartOf"} {
		if got := expand(f.Values("Unit", dep)); !slices.Equal(got, []string{"nginx@1.service"}) {
			t.Errorf("%s = %q", dep, got)
		}
	}
	if got := f.Values("Unit", "BindsTo"); len(got) > 0 {
		t.Errorf("BindsTo = %q: would stop the sidekick for good when nginx restarts on its own", got)
	}
	if got := expand(f.Values("Unit", "After")); !slices.Contains(got, "nginx@1.service") {
		t.Errorf("After = %q", got)
	}
	if got := f.Values("Service", "Type"); !slices.Equal(got, []string{"notify"}) {
		t.Errorf("Type = %q, want notify", got)
	}
}

func TestSeedWebUnit(t *testing.T) {
	f := parse(t, "seed-web@.service", "1")
	post := f.Values("Service", "ExecStartPost")
	if len(post) != 1 || !strings.Contains(post[0], "announce --detach") {
		t.Errorf("ExecStartPost = %q, want the one announce --detach line", post)
	}
}

// build builds cmd/announce.
func build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "announce")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/flotilla/flotilla/cmd/announce").CombinedOutput(); err != nil {
		t.Fatalf("go build announce: %v\n%s", err, out)
	}
	return bin
}

// freeIP returns a loopback address whose port 8080 is free.
func freeIP(t *testing.T) string {
	t.Helper()
	for i := 2; i < 250; i++ {
		ip := fmt.Sprintf("127.0.%d.%d", 33+os.Getpid()%100, i)
		l, err := net.Listen("tcp", ip+":8080")
		if err == nil {
			l.Close()
			return ip
		}
	}
	t.Fatal("no loopback address with port 8080 free")
	return ""
}

func waitKey(t *testing.T, c *store.Client, key string, want bool) store.KV {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		kv, found, _, err := c.Get(ctx, key)
		cancel()
		if err == nil && found == want {
			return kv
		}
		if time.Now().After(deadline) {
			t.Fatalf("key %s present=%v not reached within 20s (%v)", key, want, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSidekickCommandRuns runs the sidekick's ExecStart= as systemd would:
// with the machine's PUBLIC_IP, NOTIFY_SOCKET and WATCHDOG_USEC, nginx
// stood in for by an HTTP server on PUBLIC_IP:8080.
func TestSidekickCommandRuns(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	bin := build(t)
	ip := freeIP(t)
	l, err := net.Listen("tcp", ip+":8080")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go hs.Serve(l)
	defer hs.Close()

	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	f := parse(t, "nginx-announce@.service", "1")
	argv := command(t, f, "nginx-announce@1.service", "ExecStart", "web1", []string{"PUBLIC_IP=" + ip})
	if argv[0] != "/usr/local/bin/announce" {
		t.Fatalf("ExecStart runs %s", argv[0])
	}
	cmd := exec.Command(bin, argv[1:]...)
	cmd.Env = append(os.Environ(), "ANNOUNCE_ENDPOINTS="+srv.Endpoint(), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=30000000")
	logs := &testmain.SyncBuffer{}
	cmd.Stderr = logs
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("announce's log:\n%s", logs)
		}
	})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()

	conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 4096)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no READY=1 from the sidekick: %v", err)
		}
		if strings.Contains(string(buf[:n]), "READY=1") {
			break
		}
	}
	kv := waitKey(t, c, "/clusterstate/demo/nginx@1.service", true)
	if want := "web1 " + ip + ":8080"; string(kv.Value) != want {
		t.Fatalf("announced %q, want %q", kv.Value, want)
	}
	// Requires=/PartOf=: systemd stops the sidekick with SIGTERM when nginx@1 is stopped.
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("sidekick exit after SIGTERM: %v", err)
	}
	if _, found, _, _ := c.Get(context.Background(), "/clusterstate/demo/nginx@1.service"); found {
		t.Fatal("key left after the sidekick stopped")
	}
}

// TestSeedWebCommandRuns runs seed-web@'s ExecStartPost= and ExecStopPost=
// lines as systemd would, in a process group standing for the unit's cgroup.
func TestSeedWebCommandRuns(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	bin := build(t)
	f := parse(t, "seed-web@.service", "1")
	argv := command(t, f, "seed-web@1.service", "ExecStartPost", "web1", nil)
	cmd := exec.Command(bin, argv[1:]...)
	cmd.Env = append(os.Environ(), "ANNOUNCE_ENDPOINTS="+srv.Endpoint(), "NOTIFY_SOCKET=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if out, err := cmd.CombinedOutput(); err != nil {
		if strings.Contains(string(out), "no IPv4 default route") {
			t.Skipf("--ip route needs a default route: %s", out)
		}
		t.Fatalf("ExecStartPost: %v\n%s", err, out)
	}
	pgid := cmd.Process.Pid
	defer syscall.Kill(-pgid, syscall.SIGKILL)
	kv := waitKey(t, c, "/clusterstate/demo/seed-web@1.service", true)
	hostname, _ := os.Hostname()
	if host, addr, ok := strings.Cut(string(kv.Value), " "); !ok || host != hostname || !strings.HasSuffix(addr, ":8080") {
		t.Fatalf("announced %q, want \"%s <route ip>:8080\"", kv.Value, hostname)
	}
	// Unit stop: SIGTERM to the cgroup (here the process group), then ExecStopPost.
	syscall.Kill(-pgid, syscall.SIGTERM)
	waitKey(t, c, "/clusterstate/demo/seed-web@1.service", false)
	stop := command(t, f, "seed-web@1.service", "ExecStopPost", "web1", nil)
	del := exec.Command(bin, stop[1:]...)
	del.Env = append(os.Environ(), "ANNOUNCE_ENDPOINTS="+srv.Endpoint())
	out, err := del.CombinedOutput()
	if err != nil {
		t.Fatalf("ExecStopPost: %v\n%s", err, out)
	}
}
