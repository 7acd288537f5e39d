package main

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/applied"
	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

// fakeRender publishes a render status covering prefix, bound to its own
// lease, as render -publish-status does; set moves its revision.
type fakeRender struct {
	c     *store.Client
	lease *store.Lease
	st    applied.Status
}

func newFakeRender(t *testing.T, c *store.Client, host, prefix string, rev int64) *fakeRender {
	t.Helper()
	l, err := c.GrantLease(ctxT(t, 5*time.Second), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	f := &fakeRender{c: c, lease: l, st: applied.Status{Host: host, Resource: "haproxy.toml", Prefixes: []string{prefix}}}
	f.set(t, rev)
	return f
}

func (f *fakeRender) set(t *testing.T, rev int64) {
	t.Helper()
	f.st.Revision = rev
	if _, err := f.lease.Put(ctxT(t, 5*time.Second), applied.Key(applied.DefaultPrefix, f.st.Host, f.st.Resource), f.st.Encode()); err != nil {
		t.Fatal(err)
	}
}

// applyDeletion waits for key to be deleted and reports the deletion's
// revision applied, as a render would once haproxy has reloaded.
func (f *fakeRender) applyDeletion(t *testing.T, key string, delay time.Duration) time.Time {
	t.Helper()
	waitKey(t, f.c, key, false, 15*time.Second)
	_, _, rev, err := f.c.Get(ctxT(t, 5*time.Second), key)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(delay)
	f.set(t, rev)
	return time.Now()
}

func readLog(p *proc) string {
	b, _ := os.ReadFile(p.stderr.Name())
	return string(b)
}

// TestWithdrawWaitsForRenders: `announce --withdraw` (ExecStop=) deletes the
// key of a running keeper, which leaves it deleted, and returns only once
// the render covering the key has applied the deletion.
func TestWithdrawWaitsForRenders(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	const key, value = "/clusterstate/ns/web@1.service", "h 10.0.0.1:80"
	r := newFakeRender(t, c, "lb1", "/clusterstate/ns", 1)
	// An unrelated render (other prefix) is not waited for.
	newFakeRender(t, c, "lb2", "/elsewhere", 1)
	k := start(t, env(srv), "--detach", "--ttl", "2s", key, value)
	if err := k.wait(t, 15*time.Second); err != nil {
		t.Fatalf("--detach: %v", err)
	}
	waitKey(t, c, key, true, 5*time.Second)

	began := time.Now()
	w := start(t, env(srv), "--withdraw", "--drain-timeout", "30s", key, value)
	const renderLag = 1500 * time.Millisecond
	appliedAt := r.applyDeletion(t, key, renderLag)
	if err := w.wait(t, 20*time.Second); err != nil {
		t.Fatalf("--withdraw: %v", err)
	}
	exited := time.Now()
	if exited.Before(appliedAt) {
		t.Fatalf("--withdraw returned %s before the render applied the deletion", appliedAt.Sub(exited))
	}
	t.Logf("--withdraw returned %s after it started (render lag %s)", exited.Sub(began).Round(time.Millisecond), renderLag)
	log := readLog(w)
	if !strings.Contains(log, "renders applied the withdrawal") || !strings.Contains(log, "lb1/haproxy.toml") || strings.Contains(log, "lb2") {
		t.Errorf("--withdraw log does not say for whom it waited:\n%s", log)
	}
	// The keeper still runs and holds its lease past two TTLs, yet leaves
	// the key withdrawn.
	time.Sleep(4 * time.Second)
	if _, found, _, _ := c.Get(ctxT(t, 5*time.Second), key); found {
		t.Fatal("the keeper wrote a withdrawn key again")
	}
	if err := syscall.Kill(-k.cmd.Process.Pid, 0); err != nil {
		t.Fatalf("keeper gone after --withdraw: %v", err)
	}
	marker, found, _, _ := c.Get(ctxT(t, 5*time.Second), "/flotilla/announce/withdrawn"+key)
	if !found || marker.Lease == 0 {
		t.Fatal("no withdrawn marker bound to the keeper's lease")
	}
	syscall.Kill(-k.cmd.Process.Pid, syscall.SIGTERM)
	waitKey(t, c, "/flotilla/announce/withdrawn"+key, false, 10*time.Second)
}

// TestWithdrawDrainTimeout: a render that never applies (stopped, stuck)
// holds the withdrawal for --drain-timeout only, and the log says so.
func TestWithdrawDrainTimeout(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	const key, value = "/clusterstate/ns/web@2.service", "h 10.0.0.2:80"
	newFakeRender(t, c, "lb1", "/clusterstate", 1)
	if _, err := c.Put(ctxT(t, 5*time.Second), key, value, 0); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	w := start(t, env(srv), "--withdraw", "--drain-timeout", "1s", "--drain-delay", "500ms", key, value)
	if err := w.wait(t, 20*time.Second); err != nil {
		t.Fatalf("--withdraw: %v", err)
	}
	took := time.Since(began)
	t.Logf("--withdraw with a stuck render returned after %s (timeout 1s, delay 500ms)", took.Round(time.Millisecond))
	if took < 1500*time.Millisecond {
		t.Errorf("returned after %s, before timeout + delay", took)
	}
	log := readLog(w)
	for _, want := range []string{"drain timeout cut the wait short", "lb1/haproxy.toml@1", "drain delay"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
}

// TestSIGTERMDrainsFirst: a foreground announce stopped by SIGTERM deletes
// its key at once, keeps its lease while the render applies, then exits.
// A render that goes away meanwhile is not waited for.
func TestSIGTERMDrainsFirst(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	const key = "/clusterstate/ns/web@3.service"
	r := newFakeRender(t, c, "lb1", "/clusterstate/ns", 1)
	gone := newFakeRender(t, c, "lb-gone", "/clusterstate/ns", 1)
	p := start(t, env(srv), "--drain-timeout", "30s", key, "h 10.0.0.3:80")
	kv, _ := waitKey(t, c, key, true, 10*time.Second)
	// The key can be visible before announce has its put's answer: the
	// stop this test is about comes once announce knows it is announced.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(readLog(p), "msg=announced") {
		if time.Now().After(deadline) {
			t.Fatalf("announce never logged its registration:\n%s", readLog(p))
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	waitKey(t, c, key, false, 10*time.Second)
	if !p.running() {
		t.Fatal("exited before the renders applied the deletion")
	}
	if alive, _ := (leaseProbe{c}).alive(t, kv.Lease); !alive {
		t.Fatal("lease revoked before the renders applied the deletion")
	}
	gone.lease.Close() // its status goes with its lease
	r.applyDeletion(t, key, 0)
	if err := p.wait(t, 15*time.Second); err != nil {
		t.Fatalf("exit: %v", err)
	}
	if alive, _ := (leaseProbe{c}).alive(t, kv.Lease); alive {
		t.Fatal("lease still alive after exit")
	}
	log := readLog(p)
	for _, want := range []string{"render gone", "lb-gone", "renders applied the withdrawal"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
}

type leaseProbe struct{ c *store.Client }

func (p leaseProbe) alive(t *testing.T, id store.LeaseID) (bool, error) {
	// A key put with the lease succeeds only while it lives.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := p.c.Put(ctx, "/probe/lease", "x", id)
	return err == nil, err
}

// TestDetachTimeoutStartsAnyway: with etcd down, --detach returns after
// --detach-timeout (the unit starts), and the keeper writes the key once
// etcd is back.
func TestDetachTimeoutStartsAnyway(t *testing.T) {
	srv := processEtcd(t)
	c := srv.Client()
	srv.Stop()
	began := time.Now()
	p := start(t, env(srv), "--detach", "--detach-timeout", "1s", "/late", "h 10.0.0.1:1")
	if err := p.wait(t, 15*time.Second); err != nil {
		t.Fatalf("--detach with etcd down: %v, want exit 0", err)
	}
	t.Logf("--detach returned after %s with etcd down", time.Since(began).Round(time.Millisecond))
	if log := readLog(p); !strings.Contains(log, "starting anyway") {
		t.Errorf("log does not say it started without the key:\n%s", log)
	}
	srv.Start()
	_, took := waitKey(t, c, "/late", true, 30*time.Second)
	t.Logf("key written %s after etcd was started again", took.Round(time.Millisecond))
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	waitKey(t, c, "/late", false, 10*time.Second)
}

// TestAbandonedLeaseRevoked: etcd down longer than the TTL ends the
// keepalive, yet etcd restores the old lease for a TTL when it restarts; the
// lease announce gave up on is revoked once the key is written with a new
// one, so nothing lingers on it.
func TestAbandonedLeaseRevoked(t *testing.T) {
	srv := processEtcd(t)
	c := srv.Client()
	const ttl = 5 * time.Second
	p := start(t, env(srv), "--ttl", ttl.String(), "/ab", "h 10.0.0.1:1")
	before, _ := waitKey(t, c, "/ab", true, 10*time.Second)
	srv.Stop()
	time.Sleep(ttl + 2*time.Second)
	srv.Start()
	var now store.KV
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		kv, found, _, err := c.Get(ctx, "/ab")
		cancel()
		if err == nil && found && kv.Lease != before.Lease {
			now = kv
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("key not written with a new lease within 20s (found=%v err=%v)", found, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	rewritten := time.Now()
	// Well before the old lease could expire by itself (a TTL after the
	// restart), it is gone: revoked.
	for {
		alive, _ := (leaseProbe{c}).alive(t, before.Lease)
		if !alive {
			break
		}
		if time.Since(rewritten) > ttl/2 {
			t.Fatalf("old lease %x still alive %s after the key was written with %x", int64(before.Lease), time.Since(rewritten), int64(now.Lease))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("old lease %x gone %s after the key was written with lease %x", int64(before.Lease), time.Since(rewritten).Round(time.Millisecond), int64(now.Lease))
	if !strings.Contains(readLog(p), "revoked an abandoned lease") {
		t.Errorf("log does not say the abandoned lease was revoked:\n%s", readLog(p))
	}
}
