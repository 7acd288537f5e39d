package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/lbtest"
)

// haproxyTemplate renders the announced backends into a haproxy config that
// does nothing to hide a backend gone from under it: no health checks, no
// retries, no redispatch. Any request sent to a stopped backend fails.
const haproxyTemplate = `global
    log stderr format raw local0 notice
defaults
    mode http
    log global
    retries 0
    timeout connect 500ms
    timeout client 10s
    timeout server 10s
listen app
    bind %s
    balance roundrobin
{{range gets "/ns/*"}}    server {{base .Key}} {{index (split .Value " ") 1}}
{{end}}`

// TestAcknowledgedWithdrawalUnderHaproxy: three instances behind a real
// haproxy that render (-publish-status) reloads, traffic all along. One goes
// into maintenance and back (announce --maintenance on/off). One
// stops the ExecStop= way (announce --withdraw, then the process), one by
// SIGTERM to its foreground announce (which withdraws first, then exits,
// then the process stops): not one request fails. A backend killed while
// still announced does fail requests (the harness sees losses). With render
// stopped (SIGSTOP: its status stays until its lease expires), a withdrawal
// waits --drain-timeout, no longer, and says so.
func TestAcknowledgedWithdrawalUnderHaproxy(t *testing.T) {
	lbtest.Need(t, "haproxy")
	srv := etcdtest.New(t)
	c := srv.Client()
	ctx := ctxT(t, 120*time.Second)
	var backends []*lbtest.Backend
	for i := 1; i <= 3; i++ {
		backends = append(backends, lbtest.StartBackend(t, fmt.Sprintf("web%d", i), fmt.Sprintf("127.0.0.%d:0", i+2)))
	}
	key := func(i int) string { return fmt.Sprintf("/ns/web%d", i+1) }
	value := func(i int) string { return fmt.Sprintf("web%d %s", i+1, backends[i].Addr) }
	var anns []*proc
	for i := range backends {
		anns = append(anns, start(t, env(srv), "--ttl", "10s", key(i), value(i)))
		waitKey(t, c, key(i), true, 10*time.Second)
	}

	// haproxy on the three, then render owning its config.
	bind := lbtest.FreeAddr(t, "127.0.0.1")
	var servers []lbtest.HaproxyServer
	for i, b := range backends {
		servers = append(servers, lbtest.HaproxyServer{Name: fmt.Sprintf("web%d", i+1), Addr: b.Addr})
	}
	hp := lbtest.StartHaproxy(t, lbtest.WriteHaproxyConfig(t, bind, servers...), bind)
	dir := t.TempDir()
	for _, d := range []string{"conf.d", "templates"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	os.WriteFile(filepath.Join(dir, "templates", "haproxy.tmpl"), []byte(fmt.Sprintf(haproxyTemplate, bind)), 0o644)
	os.WriteFile(filepath.Join(dir, "conf.d", "haproxy.toml"), []byte(fmt.Sprintf(
		"[template]\nsrc = \"haproxy.tmpl\"\ndest = %q\nkeys = [\"/ns\"]\ncheck_cmd = %q\nreload_cmd = %q\n",
		hp.Config, hp.CheckCmd(), hp.ReloadCmd())), 0o644)
	renderLog := filepath.Join(t.TempDir(), "render.log")
	lf, err := os.Create(renderLog)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	rcmd := exec.Command(testBin("render"), "-node", srv.Endpoint(), "-confdir", dir, "-watch", "-publish-status", "-config-file", os.DevNull)
	rcmd.Stdout, rcmd.Stderr = lf, lf
	if err := rcmd.Start(); err != nil {
		t.Fatal(err)
	}
	rdone := make(chan struct{})
	go func() { rcmd.Wait(); close(rdone) }()
	t.Cleanup(func() {
		rcmd.Process.Signal(syscall.SIGCONT)
		rcmd.Process.Kill()
		<-rdone
		if t.Failed() {
			b, _ := os.ReadFile(renderLog)
			t.Logf("render log:\n%s\nhaproxy:\n%s", b, hp.Output())
		}
	})
	host, _ := os.Hostname()
	waitKey(t, c, "/flotilla/render/"+host+"/haproxy.toml", true, 20*time.Second)

	h := lbtest.Hammer{URL: "http://" + bind + "/", Interval: time.Millisecond}
	all := func(r lbtest.Result) bool { return r.Errors == 0 && len(r.By) == 3 }
	if res, ok := h.Until(ctx, 30, all); !ok {
		t.Fatalf("haproxy never served all three: %s", res)
	}

	run := h.Start(ctx)
	time.Sleep(300 * time.Millisecond)
	// Maintenance of web1 and back, its announce and backend running all along.
	m := start(t, env(srv), "--maintenance", "on", "--drain-timeout", "20s", key(0))
	if err := m.wait(t, 30*time.Second); err != nil {
		t.Fatalf("--maintenance on: %v", err)
	}
	if log := readLog(m); !strings.Contains(log, "renders applied the withdrawal") {
		t.Errorf("--maintenance on log:\n%s", log)
	}
	inMaint := run.Snapshot().By["web1"]
	time.Sleep(500 * time.Millisecond)
	if n := run.Snapshot().By["web1"]; n != inMaint {
		t.Errorf("web1 answered %d requests while in maintenance", n-inMaint)
	}
	m = start(t, env(srv), "--maintenance", "off", key(0))
	if err := m.wait(t, 30*time.Second); err != nil {
		t.Fatalf("--maintenance off: %v", err)
	}
	for deadline := time.Now().Add(20 * time.Second); run.Snapshot().By["web1"] == inMaint; {
		if time.Now().After(deadline) {
			t.Fatal("web1 never served again after --maintenance off")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if res := run.Snapshot(); res.Errors != 0 {
		t.Errorf("%d failed requests through maintenance on/off: %s", res.Errors, res)
	}
	// web1 the ExecStop= way: withdraw, then stop the service and its
	// announce (the unit's processes, signalled after ExecStop=).
	began := time.Now()
	w := start(t, env(srv), "--withdraw", "--drain-timeout", "20s", key(0), value(0))
	if err := w.wait(t, 30*time.Second); err != nil {
		t.Fatalf("--withdraw: %v", err)
	}
	withdrawTook := time.Since(began)
	if log := readLog(w); !strings.Contains(log, "renders applied the withdrawal") || !strings.Contains(log, host+"/haproxy.toml") {
		t.Errorf("--withdraw log does not name the render it waited for:\n%s", log)
	}
	backends[0].Close()
	anns[0].cmd.Process.Signal(syscall.SIGTERM)
	if err := anns[0].wait(t, 20*time.Second); err != nil {
		t.Fatalf("announce web1 after SIGTERM: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	// web2 by SIGTERM to its foreground announce, which withdraws first;
	// the service stops once announce has exited.
	began = time.Now()
	anns[1].cmd.Process.Signal(syscall.SIGTERM)
	if err := anns[1].wait(t, 30*time.Second); err != nil {
		t.Fatalf("announce web2 after SIGTERM: %v", err)
	}
	termTook := time.Since(began)
	if log := readLog(anns[1]); !strings.Contains(log, "renders applied the withdrawal") {
		t.Errorf("announce web2 log does not say the renders applied:\n%s", log)
	}
	backends[1].Close()
	time.Sleep(300 * time.Millisecond)
	res := run.Stop()
	t.Logf("maintenance on/off of one, then acknowledged withdrawal of 2 of 3 instances under traffic: %s (--withdraw took %s, SIGTERM drain %s)",
		res, withdrawTook.Round(time.Millisecond), termTook.Round(time.Millisecond))
	if res.Errors != 0 {
		t.Errorf("%d failed requests during the acknowledged withdrawals, want 0", res.Errors)
	}
	if res.By["web1"] == 0 || res.By["web2"] == 0 || res.By["web3"] == 0 || res.Total < 100 {
		t.Errorf("traffic did not reach every instance before its stop: %s", res)
	}

	// The harness sees losses: web3 killed while still announced.
	run = h.Start(ctx)
	time.Sleep(200 * time.Millisecond)
	backends[2].Close()
	time.Sleep(500 * time.Millisecond)
	control := run.Stop()
	t.Logf("control, web3 killed while announced: %s", control)
	if control.Errors == 0 {
		t.Errorf("no failed request with a backend killed in the pool: the check above could not fail")
	}

	// render stopped: its status stays (until its lease expires), so the
	// withdrawal waits for it, bounded by --drain-timeout.
	if err := rcmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	began = time.Now()
	w = start(t, env(srv), "--withdraw", "--drain-timeout", "2s", key(2), value(2))
	if err := w.wait(t, 30*time.Second); err != nil {
		t.Fatalf("--withdraw with render stopped: %v", err)
	}
	took := time.Since(began)
	t.Logf("--withdraw with render stopped returned after %s (--drain-timeout 2s)", took.Round(time.Millisecond))
	if took < 2*time.Second {
		t.Errorf("returned after %s, before the drain timeout", took)
	}
	if log := readLog(w); !strings.Contains(log, "drain timeout cut the wait short") || !strings.Contains(log, host+"/haproxy.toml") {
		t.Errorf("log does not say the timeout cut the wait, for whom:\n%s", log)
	}
	rcmd.Process.Signal(syscall.SIGCONT)
}

func testBin(name string) string { return filepath.Join(filepath.Dir(binary()), name) }
