package lbtest_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/lbtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestFreeAddrOnLoopbackAlias(t *testing.T) {
	for _, ip := range []string{"", "127.0.0.1", "127.0.0.3"} {
		addr := lbtest.FreeAddr(t, ip)
		want := ip
		if want == "" {
			want = "127.0.0.1"
		}
		if !strings.HasPrefix(addr, want+":") {
			t.Errorf("FreeAddr(%q) = %s, want an address on %s", ip, addr, want)
		}
		if p := lbtest.FreePort(t, ip); p <= 0 {
			t.Errorf("FreePort(%q) = %d", ip, p)
		}
	}
}

func TestBackendAnswersItsName(t *testing.T) {
	b := lbtest.StartBackend(t, "nginx@1", "127.0.0.3:0")
	h := lbtest.Hammer{URL: "http://" + b.Addr + "/"}
	res := h.Send(ctxT(t), 5)
	if res.Errors != 0 || res.By["nginx@1"] != 5 {
		t.Fatalf("direct requests: %s", res)
	}
	if b.Hits() != 5 {
		t.Errorf("Hits = %d, want 5", b.Hits())
	}
	b.Close()
	res = h.Send(ctxT(t), 2)
	if res.Errors != 2 {
		t.Errorf("closed backend still answers: %s", res)
	}
}

// TestHaproxyBalancesAndReloads runs a real haproxy in front of two backends,
// then reloads it onto one backend, onto a broken config (which must leave
// the running workers serving) and back.
func TestHaproxyBalancesAndReloads(t *testing.T) {
	ctx := ctxT(t)
	b1 := lbtest.StartBackend(t, "nginx@1", "127.0.0.3:0")
	b2 := lbtest.StartBackend(t, "nginx@2", "127.0.0.4:0")
	bind := lbtest.FreeAddr(t, "127.0.0.1")
	cfg := lbtest.WriteHaproxyConfig(t, bind,
		lbtest.HaproxyServer{Name: "nginx@1", Addr: b1.Addr},
		lbtest.HaproxyServer{Name: "nginx@2", Addr: b2.Addr})
	if err := lbtest.CheckHaproxyConfig(cfg); err != nil {
		t.Fatal(err)
	}
	hp := lbtest.StartHaproxy(t, cfg, bind)
	h := lbtest.Hammer{URL: "http://" + bind + "/"}

	both := func(r lbtest.Result) bool { return r.Errors == 0 && r.By["nginx@1"] > 0 && r.By["nginx@2"] > 0 }
	if res, ok := h.Until(ctx, 10, both); !ok {
		t.Fatalf("haproxy never balanced across both backends: %s\n%s", res, hp.Output())
	}

	steps := []struct {
		name    string
		config  string
		viaCmd  bool // reload with ReloadCmd through sh, as render's reload_cmd would
		wantErr bool
		want    func(lbtest.Result) bool
	}{
		{name: "one backend", config: lbtest.HaproxyConfig(bind, lbtest.HaproxyServer{Name: "nginx@2", Addr: b2.Addr}),
			want: func(r lbtest.Result) bool { return r.Errors == 0 && r.By["nginx@1"] == 0 && r.By["nginx@2"] == 10 }},
		{name: "broken config keeps serving", config: "listen app\n    bind " + bind + "\n    server x 127.0.0.1:1 nonsense\n",
			wantErr: true, want: func(r lbtest.Result) bool { return r.Errors == 0 && r.By["nginx@2"] == 10 }},
		{name: "both again", config: lbtest.HaproxyConfig(bind, lbtest.HaproxyServer{Name: "a", Addr: b1.Addr}, lbtest.HaproxyServer{Name: "b", Addr: b2.Addr}),
			want: both},
		{name: "broken via command", config: "nonsense\n", viaCmd: true, wantErr: true, want: both},
		{name: "one via command", config: lbtest.HaproxyConfig(bind, lbtest.HaproxyServer{Name: "a", Addr: b1.Addr}), viaCmd: true,
			want: func(r lbtest.Result) bool { return r.Errors == 0 && r.By["nginx@1"] == 10 }},
	}
	for _, st := range steps {
		if err := os.WriteFile(cfg, []byte(st.config), 0o644); err != nil {
			t.Fatal(err)
		}
		var err error
		if st.viaCmd {
			var out []byte
			out, err = exec.Command("sh", "-c", hp.ReloadCmd()).CombinedOutput()
			if err != nil {
				err = fmt.Errorf("%s: %w: %s", hp.ReloadCmd(), err, out)
			}
		} else {
			err = hp.Reload()
		}
		if (err != nil) != st.wantErr {
			t.Fatalf("%s: reload error %v, want error: %v\n%s", st.name, err, st.wantErr, hp.Output())
		}
		if res, ok := h.Until(ctx, 10, st.want); !ok {
			t.Fatalf("%s: not reached: %s\n%s", st.name, res, hp.Output())
		}
		if hp.Exited() {
			t.Fatalf("%s: haproxy master exited\n%s", st.name, hp.Output())
		}
	}
	if err := lbtest.CheckHaproxyConfig(cfg); err != nil {
		t.Errorf("final config: %v", err)
	}
	os.WriteFile(cfg, []byte("nonsense\n"), 0o644)
	if err := lbtest.CheckHaproxyConfig(cfg); err == nil {
		t.Error("CheckHaproxyConfig accepted nonsense")
	}
}

func TestHammerStartCountsInBackground(t *testing.T) {
	b := lbtest.StartBackend(t, "solo", "127.0.0.1:0")
	h := lbtest.Hammer{URL: "http://" + b.Addr + "/", Interval: time.Millisecond}
	run := h.Start(ctxT(t))
	deadline := time.Now().Add(10 * time.Second)
	for run.Snapshot().Total < 20 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	b.Close() // from here on, requests fail
	n := run.Snapshot().Total
	for run.Snapshot().Total < n+3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	res := run.Stop()
	if res.By["solo"] < 20 || res.Errors < 3 || res.Total != res.By["solo"]+res.Errors {
		t.Fatalf("background counts wrong: %s", res)
	}
	if again := run.Stop(); again.Total != res.Total {
		t.Errorf("second Stop changed counts: %d vs %d", again.Total, res.Total)
	}
}

// TestNginxBackendAndBalancer runs two real nginx backends and a third nginx
// balancing across them, reloaded onto one of them.
func TestNginxBackendAndBalancer(t *testing.T) {
	ctx := ctxT(t)
	a1, a2 := lbtest.FreeAddr(t, "127.0.0.3"), lbtest.FreeAddr(t, "127.0.0.4")
	lbtest.StartNginxBackend(t, "nginx@1", a1)
	lbtest.StartNginxBackend(t, "nginx@2", a2)
	direct := lbtest.Hammer{URL: "http://" + a1 + "/"}
	if res := direct.Send(ctx, 3); res.By["nginx@1"] != 3 {
		t.Fatalf("nginx backend: %s", res)
	}

	bind := lbtest.FreeAddr(t, "127.0.0.1")
	lb := func(addrs ...string) string {
		s := "    upstream app {\n"
		for _, a := range addrs {
			s += "        server " + a + ";\n"
		}
		return s + "    }\n    server { listen " + bind + "; location / { proxy_pass http://app; } }\n"
	}
	n := lbtest.StartNginx(t, lb(a1, a2), bind)
	h := lbtest.Hammer{URL: "http://" + bind + "/"}
	if res, ok := h.Until(ctx, 10, func(r lbtest.Result) bool { return r.Errors == 0 && len(r.By) == 2 }); !ok {
		t.Fatalf("nginx did not balance: %s\n%s", res, n.ErrorLog())
	}
	if err := os.WriteFile(n.Config, []byte(lbtest.NginxConfig(n.Dir, lb(a2))), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.Reload(); err != nil {
		t.Fatal(err)
	}
	if res, ok := h.Until(ctx, 10, func(r lbtest.Result) bool { return r.Errors == 0 && r.By["nginx@2"] == 10 }); !ok {
		t.Fatalf("nginx reload not applied: %s\n%s", res, n.ErrorLog())
	}
	if !strings.Contains(n.CheckCmd(), "{{.src}}") || !strings.Contains(n.ReloadCmd(), "kill -HUP") {
		t.Errorf("commands: %q %q", n.CheckCmd(), n.ReloadCmd())
	}
}
