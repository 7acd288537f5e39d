package faults

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/lbtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

// TestMalformedEtcdData writes hostile keys and values into etcd (binary,
// 1 MiB, invalid UTF-8, path traversal, broken JSON, jobs without bodies,
// garbage unit bodies) while render, machines and the engine run and
// requests flow through haproxy: nothing crashes, haproxy keeps its last good
// configuration, the good units keep running where they are, and both
// render and the engine keep working afterwards.
func TestMalformedEtcdData(t *testing.T) {
	srv := etcdtest.New(t, etcdtest.WithMode(etcdtest.Binary))
	eps := srv.Endpoints()
	c := openStore(t, eps)
	reg := registry.New(c, "")
	ctx := ctxFor(t, 3*time.Minute)
	const ttl = 2 * time.Second
	tok := token(t)

	l := startLB(t, eps)
	ips := []string{"127.0.0.2", "127.0.0.3"}
	var ms []*machine
	for i, ip := range ips {
		ms = append(ms, newMachine(t, eps, fmt.Sprintf("m%d", i+1), ip, ttl))
	}
	waitMachines(ctx, t, reg, len(ms))
	port := freePorts(t, 3, ips...)
	units := []string{"web-1.service", "web-2.service"}
	for i, u := range units {
		submitLaunched(ctx, t, reg, u, webUnit(t, tok, u, port+i, eps, ttl, spread))
	}
	eventually(t, 60*time.Second, "units running and announced", func() error { return checkInvariants(ctx, c, tok, units) })
	good := annAddrs(ctx, t, c)
	l.waitServers(t, 30*time.Second, good)
	goodFile, _ := os.ReadFile(l.dest)
	placed, _ := scheduled(ctx, reg)
	l.waitServing(ctx, t, len(units))
	run := l.hammer.Start(ctx)

	// 1. Hostile announcements that make an invalid haproxy config: render
	// renders them, haproxy's check rejects the result, the good file stays.
	huge := strings.Repeat("A", 1<<20)
	bad := map[string]string{
		"binary":      "\x00\x01\xff\xfe 127.0.0.9:1\x00",
		"invalid-utf": "\xc3\x28\xa0\xa1 127.0.0.9:3",
		"../../etc":   "dotdot 127.0.0.9:4 ../../etc/passwd",
		"\xff\xfe":    "x\xff 127.0.0.9:5",
	}
	off := len(l.render.Output())
	for k, v := range bad {
		if _, err := c.Put(ctx, announcePrefix+k, v, 0); err != nil {
			t.Fatalf("put %q: %v", k, err)
		}
	}
	// render must have tried (and refused) the new keys: its log says so.
	eventually(t, 30*time.Second, "render rejects the hostile values", func() error {
		if out := l.render.Output(); !strings.Contains(out[off:], "level=ERROR") {
			return fmt.Errorf("no failure logged yet")
		}
		return nil
	})
	time.Sleep(time.Second) // a moment for any (wrong) write to land
	if now, _ := os.ReadFile(l.dest); !bytes.Equal(now, goodFile) {
		t.Errorf("the good haproxy config (%d bytes) was replaced while hostile values were in etcd by %d bytes:\n%.2000q\nrender: %s",
			len(goodFile), len(now), now, tail(l.render.Output()[off:], 3000))
	}
	if l.render.Exited() || l.h.Exited() {
		t.Fatalf("render or haproxy exited: %s", tail(l.render.Output(), 3000))
	}
	for k := range bad {
		c.Delete(ctx, announcePrefix+k)
	}
	phase1 := run.Snapshot()
	// A 1 MiB value: haproxy 2.6 accepts a 1 MiB server name, so render may
	// install it; render must survive, and haproxy must keep serving.
	if _, err := c.Put(ctx, announcePrefix+"huge", huge+" 127.0.0.9:2", 0); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "render handles a 1 MiB value", func() error {
		b, _ := os.ReadFile(l.dest)
		if !bytes.Contains(b, []byte(huge)) && !strings.Contains(l.render.Output()[off:], "huge") {
			return fmt.Errorf("not rendered yet")
		}
		return nil
	})
	if err := lbtest.CheckHaproxyConfig(l.dest); err != nil {
		t.Errorf("render installed an invalid config: %v", err)
	}
	c.Delete(ctx, announcePrefix+"huge")
	l.waitServers(t, 30*time.Second, good)
	phase2 := run.Snapshot()
	figure(t, "malformed/requests-hostile", "errors %d / total %d while binary, invalid UTF-8 and traversal values were in etcd",
		phase1.Errors, phase1.Total)
	figure(t, "malformed/requests-huge", "errors %d / total %d while a 1 MiB value was in etcd (and in haproxy.cfg)",
		phase2.Errors-phase1.Errors, phase2.Total-phase1.Total)
	if !tolerable(phase1) {
		t.Errorf("requests failed while hostile values were in etcd: %s", phase1)
		l.logHaproxy(t)
	}
	if l.render.Exited() || l.h.Exited() {
		t.Fatalf("render or haproxy exited: %s", tail(l.render.Output(), 3000))
	}
	// Render recovers: a new good announcement reaches haproxy.
	extra := startAnnouncer(t, eps, "extra", "127.0.0.5", ttl)
	l.waitServers(t, 30*time.Second, append(good, extra.addr))
	extra.p.Stop()
	l.waitServers(t, 30*time.Second, good)

	// 2. Hostile scheduler state: the engine and the agents skip it.
	pfx := reg.Prefix()
	garbageBody := "\x00\xff[Service]\nExecStart=\xc3\x28\n" + huge
	goodBody := []byte("[Service]\nExecStart=/bin/sleep 1000\n")
	pwned := filepath.Join(t.TempDir(), "pwned")
	hostile := map[string]string{
		pfx + "jobs/\xff\xfe.service":                   `{"hash":"x","desired":"launched"}`,
		pfx + "jobs/broken.service":                     `{"hash":`,
		pfx + "jobs/binary.service":                     "\x00\x01\x02",
		pfx + "jobs/nobody.service":                     `{"hash":"0000000000000000000000000000000000000000","desired":"launched"}`,
		pfx + "jobs/garbage.service":                    registry.Encode(registry.Job{Hash: unit.Hash([]byte(garbageBody)), Desired: registry.Launched}),
		pfx + "units/" + unit.Hash([]byte(garbageBody)): garbageBody,
		pfx + "jobs/../../../escape.service":            registry.Encode(registry.Job{Hash: unit.Hash(goodBody), Desired: registry.Launched}),
		pfx + "units/" + unit.Hash(goodBody):            string(goodBody),
		pfx + "jobs/inj$(touch " + pwned + ").service":  registry.Encode(registry.Job{Hash: unit.Hash(goodBody), Desired: registry.Launched}),
		pfx + "machines/evil":                           `{"id":1}`,
		pfx + "machines/huge":                           huge,
		pfx + "schedule/m1/ghost.service":               "\xff\xff",
		pfx + "schedule/nomachine":                      `{}`,
		pfx + "states/web-1.service/evil":               "not json",
		pfx + "states/x":                                huge,
		pfx + "unplaced/\x00":                           "\x00",
	}
	for k, v := range hostile {
		if _, err := c.Put(ctx, k, v, 0); err != nil {
			t.Fatalf("put %q: %v", k, err)
		}
	}
	// Give the engine and agents several passes over it.
	deadline := time.Now().Add(3 * ttl)
	for time.Now().Before(deadline) {
		for _, m := range ms {
			if m.p.Exited() {
				t.Fatalf("machine %s exited on hostile scheduler state: %s", m.id, tail(m.p.Output(), 3000))
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err := checkInvariants(ctx, c, tok, units); err != nil {
		t.Errorf("good units after hostile scheduler state: %v", err)
	}
	now, _ := scheduled(ctx, reg)
	for _, u := range units {
		if now[u] != placed[u] {
			t.Errorf("%s moved from %s to %s because of hostile keys", u, placed[u], now[u])
		}
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Errorf("a unit name reached a shell: %s exists", pwned)
	}
	// Nothing was written outside the machines' directories.
	for _, m := range ms {
		for _, p := range []string{
			filepath.Join(m.dir, "logs", "../../../escape.service.log"),
			filepath.Join(m.dir, "logs", "../../../escape.service"),
			filepath.Join(m.dir, "../../../escape.service.log"),
		} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("a unit name escaped the machine's directory: %s", p)
			}
		}
		filepath.Walk(filepath.Dir(m.dir), func(p string, info os.FileInfo, err error) error {
			if err == nil && strings.Contains(info.Name(), "escape") && !strings.HasPrefix(p, m.dir+"/") {
				t.Errorf("a unit name escaped the machine's directory: %s", p)
			}
			return nil
		})
	}
	if kvs, _, err := c.GetPrefix(ctx, pfx+"unplaced/"); err == nil {
		for _, kv := range kvs {
			t.Logf("unplaced %q: %s", kv.Key, kv.Value)
		}
	}
	if kvs, _, err := c.GetPrefix(ctx, pfx+"schedule/"); err == nil {
		for _, kv := range kvs {
			t.Logf("scheduled %q", kv.Key)
		}
	}
	// The engine still works: a new good unit is placed and runs.
	units = append(units, "api-3.service")
	submitLaunched(ctx, t, reg, "api-3.service", webUnit(t, tok, "api-3.service", port+2, eps, ttl, ""))
	eventually(t, 30*time.Second, "a new unit runs next to hostile state", func() error {
		if kv, ok, _, _ := c.Get(ctx, pfx+"unplaced/api-3.service"); ok {
			return fmt.Errorf("api-3.service unplaced: %s", kv.Value)
		}
		return checkInvariants(ctx, c, tok, units)
	})
	res := run.Stop()
	figure(t, "malformed/requests", "errors %d / total %d over the whole test", res.Errors, res.Total)
	if after := res.Errors - phase2.Errors; after*100 > res.Total-phase2.Total {
		t.Errorf("requests failed while hostile scheduler keys were in etcd: %d (%s)", after, res)
		l.logHaproxy(t)
	}
}

// TestTemplateErrorNamesResourceLineAndKey checks that a template error, as
// render reports it, names the resource file, the template line and the key.
func TestTemplateErrorNamesResourceLineAndKey(t *testing.T) {
	srv := etcdtest.New(t)
	dir := t.TempDir()
	for _, d := range []string{"conf.d", "templates"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	dest := filepath.Join(dir, "out.cfg")
	os.WriteFile(filepath.Join(dir, "conf.d", "lb.toml"), []byte(fmt.Sprintf(
		"[template]\nsrc = \"lb.tmpl\"\ndest = %q\nkeys = [\"/clusterstate\"]\n", dest)), 0o644)
	os.WriteFile(filepath.Join(dir, "templates", "lb.tmpl"), []byte(
		"listen app\n    bind :80\n    server a {{getv \"/clusterstate/faults/missing\"}}\n"), 0o644)
	out, err := exec.Command(bin("render"), "-backend", "etcdv3", "-node", srv.Endpoint(), "-confdir", dir, "-onetime").CombinedOutput()
	if err == nil {
		t.Fatalf("render -onetime succeeded on a template with a missing key:\n%s", out)
	}
	for _, want := range []string{"lb.toml", "lb.tmpl:3", "/clusterstate/faults/missing"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("render's error does not name %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(dest); err == nil {
		t.Errorf("a failed render wrote %s", dest)
	}
}
