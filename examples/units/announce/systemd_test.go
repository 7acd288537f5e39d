package announce_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
	"github.com/flotilla/flotilla/internal/systemdtest"
)

// TestSidekickUnderSystemd starts nginx@1 and the nginx-announce@1 sidekick
// under a real (user-mode) systemd, started by systemdtest in its own cgroup,
// mount and PID namespaces: the key appears once nginx answers and the
// sidekick reported READY=1; stopping nginx@1 stops the sidekick through
// Requires=/PartOf=, which revokes the lease — the key goes at once, not
// after --ttl. In between: kill -9 of the sidekick: systemd restarts it, and
// it announces again with a new lease; a restart of nginx@1 restarts the
// sidekick with it; nginx@1 crashing and restarting on its own (Restart=)
// leaves the sidekick running, and the key is there again afterwards.
func TestSidekickUnderSystemd(t *testing.T) {
	if _, err := os.Stat("/usr/sbin/nginx"); err != nil {
		t.Skip("/usr/sbin/nginx not installed")
	}
	m := systemdtest.New(t)
	srv := etcdtest.New(t)
	bin := build(t)
	ip := freeIP(t)
	ep := srv.Endpoint()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	systemctl := func(t *testing.T, args ...string) string {
		t.Helper()
		out, err := m.Systemctl(ctx, args...)
		if err != nil {
			t.Fatalf("%v\nmanager log:\n%s", err, m.Log())
		}
		return strings.TrimSpace(out)
	}
	runtime, dir := m.RuntimeDir, m.UnitDir
	// nginx@.service, reduced to what the sidekick needs: nginx answering on
	// ${PUBLIC_IP}:8080.
	nginx := `[Unit]
Description=nginx@%i stand-in
[Service]
ExecStartPre=/bin/mkdir -p ${XDG_RUNTIME_DIR}/nginx-%i
ExecStartPre=/bin/sh -c "printf 'pid %%s/nginx.pid; error_log stderr warn; events {} http { access_log off; client_body_temp_path %%s/b; proxy_temp_path %%s/p; server { listen %%s:8080; location / { return 200 ok; } } }' ${XDG_RUNTIME_DIR}/nginx-%i ${XDG_RUNTIME_DIR}/nginx-%i ${XDG_RUNTIME_DIR}/nginx-%i ${PUBLIC_IP} >${XDG_RUNTIME_DIR}/nginx-%i/nginx.conf"
ExecStart=/usr/sbin/nginx -p ${XDG_RUNTIME_DIR}/nginx-%i -e stderr -c ${XDG_RUNTIME_DIR}/nginx-%i/nginx.conf -g "daemon off;"
Restart=on-failure
RestartSec=200ms
`
	sidekick, err := os.ReadFile("nginx-announce@.service")
	if err != nil {
		t.Fatal(err)
	}
	sidekick = []byte(strings.ReplaceAll(string(sidekick), "/usr/local/bin/announce", bin))
	if err := os.WriteFile(filepath.Join(dir, "nginx@.service"), []byte(nginx), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nginx-announce@.service"), sidekick, 0o644); err != nil {
		t.Fatal(err)
	}
	systemctl(t, "set-environment", "PUBLIC_IP="+ip, "ANNOUNCE_ENDPOINTS="+ep, "XDG_RUNTIME_DIR="+runtime)
	systemctl(t, "daemon-reload")

	cfg := store.Default()
	cfg.Endpoints = []string{ep}
	c, err := store.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const key = "/clusterstate/demo/nginx@1.service"

	// systemctl start of a Type=notify unit returns once READY=1 arrived:
	// the key is there without polling.
	systemctl(t, "start", "nginx@1.service")
	systemctl(t, "start", "nginx-announce@1.service")
	kv, found, _, err := c.Get(context.Background(), key)
	host, _ := os.Hostname()
	if err != nil || !found || string(kv.Value) != fmt.Sprintf("%s %s:8080", host, ip) {
		t.Fatalf("after start: %q found=%v err=%v", kv.Value, found, err)
	}
	t.Logf("announced by the sidekick: %s = %q", key, kv.Value)
	if st := systemctl(t, "show", "-p", "ActiveState,StatusText", "nginx-announce@1.service"); !strings.Contains(st, "ActiveState=active") || !strings.Contains(st, "announced") {
		t.Errorf("sidekick state: %s", st)
	}

	// kill -9 of the sidekick: Restart=on-failure brings it back, and it
	// writes the key with a new lease (the old one just runs out).
	systemctl(t, "kill", "-s", "KILL", "nginx-announce@1.service")
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, found, _, err := c.Get(context.Background(), key)
		if err == nil && found && got.Lease != kv.Lease {
			t.Logf("after kill -9: restarted, lease %x → %x", kv.Lease, got.Lease)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidekick not back 20s after kill -9 (found=%v err=%v)", found, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for systemctl(t, "show", "-p", "ActiveState", "nginx-announce@1.service") != "ActiveState=active" {
		if time.Now().After(deadline) {
			t.Fatal("restarted sidekick never active")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A restart of nginx@1 (by hand, or the scheduler's) restarts the
	// sidekick with it (PartOf=): a new invocation, the key written again.
	inv := systemctl(t, "show", "-p", "InvocationID", "nginx-announce@1.service")
	systemctl(t, "restart", "nginx@1.service")
	waitActive := func(what string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for systemctl(t, "show", "-p", "ActiveState", "nginx-announce@1.service") != "ActiveState=active" {
			if time.Now().After(deadline) {
				t.Fatalf("sidekick not active %s: %s", what, systemctl(t, "status", "--lines=20", "nginx-announce@1.service"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitActive("after nginx@1 restarted")
	if now := systemctl(t, "show", "-p", "InvocationID", "nginx-announce@1.service"); now == inv {
		t.Errorf("sidekick not restarted with nginx@1 (%s)", now)
	}
	waitKey(t, c, key, true)

	// nginx@1 crashes and systemd restarts it (Restart=on-failure): the
	// sidekick is not stopped for good (as BindsTo= would), and the key is
	// there once nginx answers again.
	nginxRestarts := systemctl(t, "show", "-p", "NRestarts", "nginx@1.service")
	systemctl(t, "kill", "-s", "KILL", "--kill-whom=main", "nginx@1.service")
	deadline = time.Now().Add(30 * time.Second)
	for systemctl(t, "show", "-p", "NRestarts", "nginx@1.service") == nginxRestarts {
		if time.Now().After(deadline) {
			t.Fatalf("nginx@1 not restarted by systemd after kill -9")
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitActive("after nginx@1 crashed and restarted")
	waitKey(t, c, key, true)

	// Requires=/PartOf=: stopping nginx stops the sidekick, which revokes the lease.
	began := time.Now()
	systemctl(t, "stop", "nginx@1.service")
	for {
		if _, found, _, err := c.Get(context.Background(), key); err == nil && !found {
			break
		}
		if time.Since(began) > 8*time.Second { // --ttl is 10s: absent sooner means revoked
			t.Fatalf("key still there %s after nginx@1 stopped", time.Since(began))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("key gone %s after systemctl stop nginx@1.service", time.Since(began))
	if st := systemctl(t, "show", "-p", "ActiveState", "nginx-announce@1.service"); st != "ActiveState=inactive" {
		t.Errorf("sidekick after nginx stopped: %s", st)
	}
}
