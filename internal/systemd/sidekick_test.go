package systemd_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/executor"
	"github.com/flotilla/flotilla/internal/systemd"
)

// TestExecStartPostStopPost: the seed's registration pattern with plain shell
// commands — ExecStartPost writes, ExecStopPost removes.
func TestExecStartPostStopPost(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	reg := en.path("registered")
	en.start(en.e, "web.service", "[Service]\nExecStart=/bin/sleep 1000\n"+
		"ExecStartPost=/bin/sh -c 'echo \"%n ${PUBLIC_IP}:8080\" > "+reg+"'\n"+
		"ExecStopPost=/bin/rm -f "+reg+"\n")
	// Start returns when the start job is done, i.e. after ExecStartPost.
	if b, err := os.ReadFile(reg); err != nil || strings.TrimSpace(string(b)) != "web.service 127.0.0.7:8080" {
		t.Fatalf("ExecStartPost did not register before Start returned: %q %v", b, err)
	}
	if err := en.e.Stop(en.ctx, "web.service"); err != nil {
		t.Fatal(err)
	}
	if exists(reg) {
		t.Error("ExecStopPost did not run before Stop returned")
	}
}

// TestAnnounceSidekick: the seed's units with flotilla's own announce
// binary against a real etcd: `announce --detach` in ExecStartPost leaves a
// keeper in the unit's cgroup holding the lease; stopping the unit ends the
// keeper and ExecStopPost's `announce --delete` removes the key.
func TestAnnounceSidekick(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	bin := filepath.Join(en.m.Dir, "announce")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/flotilla/flotilla/cmd/announce").CombinedOutput(); err != nil {
		t.Fatalf("build cmd/announce: %v\n%s", err, out)
	}
	srv := etcdtest.New(t)
	c := srv.Client()
	key := "/clusterstate/test/nginx@1.service"
	ann := bin + " --endpoints " + srv.Endpoint() + " --ttl 5s"
	body := "[Service]\nExecStart=/bin/sleep 1000\n" +
		"ExecStartPost=" + ann + " --detach /clusterstate/test/%n \"%H ${PUBLIC_IP}:8080\"\n" +
		"ExecStopPost=" + bin + " --endpoints " + srv.Endpoint() + " --delete /clusterstate/test/%n \"%H ${PUBLIC_IP}:8080\"\n"
	en.start(en.e, "nginx@1.service", body)

	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	kv, found, _, err := c.Get(en.ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if !found || string(kv.Value) != host+" 127.0.0.7:8080" {
		t.Fatalf("after Start, %s = %q (found %v), want %q\n%s", key, kv.Value, found, host+" 127.0.0.7:8080", strings.Join(journal(t, en, "nginx@1.service"), "\n"))
	}
	if kv.Lease == 0 {
		t.Error("the announcement is not bound to a lease")
	}

	if err := en.e.Stop(en.ctx, "nginx@1.service"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(hang)
	for {
		_, found, _, err := c.Get(en.ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if !found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still present after Stop", key)
		}
		time.Sleep(20 * time.Millisecond)
	}
	en.waitState(en.e, "nginx@1.service", is("inactive", "dead"))

	// Without ExecStopPost: stopping the unit ends the keeper (it is in
	// the unit's cgroup), which revokes the lease, so the key goes too.
	en.start(en.e, "nginx@2.service", "[Service]\nExecStart=/bin/sleep 1000\n"+
		"ExecStartPost="+ann+" --detach /clusterstate/test/%n \"%H ${PUBLIC_IP}:8080\"\n")
	key2 := "/clusterstate/test/nginx@2.service"
	if _, found, _, err := c.Get(en.ctx, key2); err != nil || !found {
		t.Fatalf("after Start, %s missing: %v", key2, err)
	}
	if n := en.countProcs(bin + " --endpoints"); n != 1 {
		t.Errorf("%d announce keepers running, want 1", n)
	}
	if err := en.e.Stop(en.ctx, "nginx@2.service"); err != nil {
		t.Fatal(err)
	}
	if n := en.countProcs(bin + " --endpoints"); n != 0 {
		t.Errorf("%d announce keepers still running after Stop", n)
	}
	deadline = time.Now().Add(hang)
	for {
		kv, found, _, err := c.Get(en.ctx, key2)
		if err != nil {
			t.Fatal(err)
		}
		if !found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still present after Stop: %q", key2, kv.Value)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// countProcs counts the processes inside the manager's namespace whose
// command line contains s.
func (en *env) countProcs(s string) int {
	en.t.Helper()
	cmd, err := en.m.Command(en.ctx, "ps", "-eo", "args=")
	if err != nil {
		en.t.Fatal(err)
	}
	out, err := cmd.Output()
	if err != nil {
		en.t.Fatalf("ps in the namespace: %v", err)
	}
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

func journal(t *testing.T, en *env, name string) []string {
	lines, err := en.e.Journal(en.ctx, name, 20)
	if err != nil {
		t.Logf("journal %s: %v", name, err)
	}
	return lines
}

// TestEnvWithoutFile: without an environment file, the facts go into the
// drop-in as Environment= lines, quoted so that systemd hands the unit the
// exact values.
func TestEnvWithoutFile(t *testing.T) {
	en := newEnv(t, systemd.Options{})
	out := en.path("meta")
	val := `a "b" 100% \ $x 'q'`
	err := en.e.Start(en.ctx, executor.Spec{
		Name: "env.service",
		Body: []byte("[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'echo \"$META\" > " + out + "'\n"),
		Env:  map[string]string{"META": val, "PUBLIC_IP": "10.1.1.1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != val+"\n" {
		t.Errorf("unit saw META=%q (%v), want %q", b, err, val)
	}
	err = en.e.Start(en.ctx, executor.Spec{Name: "bad.service", Body: []byte("[Service]\nExecStart=/bin/true\n"), EnvFile: "relative.env"})
	if err == nil || !strings.Contains(err.Error(), "relative.env") {
		t.Errorf("relative environment file: %v", err)
	}
}
