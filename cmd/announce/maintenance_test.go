package main

import (
	"bytes"
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
)

// TestMaintenance: --maintenance on withdraws a running keeper's key (the
// render covering it acknowledges) while the keeper keeps its lease and
// runs; the state survives a restart of announce and shows in --list; off
// brings the key back.
func TestMaintenance(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	const key, value = "/mt/web1", "web1 10.0.0.1:80"
	r := newFakeRender(t, c, "lb1", "/mt", 1)
	k := start(t, env(srv), "--detach", "--ttl", "2s", key, value)
	if err := k.wait(t, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	kv, _ := waitKey(t, c, key, true, 5*time.Second)
	m := start(t, env(srv), "--maintenance", "on", "--drain-timeout", "20s", key)
	appliedAt := r.applyDeletion(t, key, 500*time.Millisecond)
	if err := m.wait(t, 20*time.Second); err != nil {
		t.Fatalf("--maintenance on: %v", err)
	}
	if time.Now().Before(appliedAt) {
		t.Fatal("--maintenance on returned before the render applied the withdrawal")
	}
	if log := readLog(m); !strings.Contains(log, "renders applied the withdrawal") {
		t.Errorf("--maintenance on log:\n%s", log)
	}
	time.Sleep(3 * time.Second) // past the TTL: only a live keeper keeps the lease
	if _, found, _, _ := c.Get(ctxT(t, 5*time.Second), key); found {
		t.Fatal("key back while in maintenance")
	}
	if alive, _ := (leaseProbe{c}).alive(t, kv.Lease); !alive {
		t.Fatal("the keeper's lease is gone during maintenance")
	}
	// Restart announce: still in maintenance.
	syscall.Kill(-k.cmd.Process.Pid, syscall.SIGTERM)
	k2 := start(t, env(srv), "--detach", "--detach-timeout", "1s", "--ttl", "2s", key, value)
	if err := k2.wait(t, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-k2.cmd.Process.Pid, syscall.SIGTERM) })
	time.Sleep(time.Second)
	if _, found, _, _ := c.Get(ctxT(t, 5*time.Second), key); found {
		t.Fatal("a restarted announce wrote a key in maintenance")
	}
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := runEnv(ctx, []string{"--endpoints", srv.Endpoint(), "--list", "/mt/"}, &out, &errb, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "/mt/web1  maintenance") {
		t.Errorf("--list does not show the maintenance:\n%s", out.String())
	}
	off := start(t, env(srv), "--maintenance", "off", key)
	if err := off.wait(t, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	_, took := waitKey(t, c, key, true, 10*time.Second)
	t.Logf("key back %s after --maintenance off", took.Round(time.Millisecond))
	// And on/off with the same keeper running.
	m = start(t, env(srv), "--maintenance", "on", "--drain-timeout", "1s", key)
	if err := m.wait(t, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	waitKey(t, c, key, false, 5*time.Second)
	off = start(t, env(srv), "--maintenance", "off", key)
	off.wait(t, 15*time.Second)
	waitKey(t, c, key, true, 10*time.Second)
}
