package main

import (
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/netcut"
)

// TestCutOffKeyExpires: a machine cut off from etcd (etcd up, the path to
// it gone) keeps running its announce, and its key expires with the lease,
// so load balancers stop sending to it.
func TestCutOffKeyExpires(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	u := srv.Endpoint()
	host := u[len("http://"):]
	p, err := netcut.New(host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	const ttl = 2 * time.Second
	a := start(t, []string{"ANNOUNCE_ENDPOINTS=http://" + p.Addr(), "NOTIFY_SOCKET=", "WATCHDOG_USEC="},
		"--ttl", ttl.String(), "/cut/web1", "h 10.0.0.1:80")
	waitKey(t, c, "/cut/web1", true, 10*time.Second)
	p.Cut(true)
	_, took := waitKey(t, c, "/cut/web1", false, 10*time.Second)
	t.Logf("key of the cut-off announce gone %s after the cut (ttl %s)", took.Round(time.Millisecond), ttl)
	if took > ttl+2*time.Second {
		t.Errorf("key outlived the cut by %s, want within TTL (+2s)", took)
	}
	if !a.running() {
		t.Error("announce exited while cut off; it must keep trying")
	}
}
