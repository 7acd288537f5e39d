package etcdtest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Cluster is a multi-member etcd made of server processes (the etcd binary),
// so that members can be killed and restarted like real machines.
type Cluster struct {
	t       testing.TB
	Members []*Server
}

// NewCluster starts n members of the etcd binary on loopback and waits for a
// leader. It skips the test when no etcd binary is installed.
func NewCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	if BinaryPath() == "" {
		t.Skipf("etcdtest: a cluster needs the etcd binary (set %s or install etcd-server)", EnvBinary)
	}
	root := t.TempDir()
	c := &Cluster{t: t}
	var parts []string
	addrs := freeAddrs(t, 2*n) // distinct: every member's client and peer port
	for i := 0; i < n; i++ {
		s := &Server{t: t, mode: Binary, name: fmt.Sprintf("m%d", i),
			dataDir: fmt.Sprintf("%s/m%d", root, i), client: addrs[2*i], peer: addrs[2*i+1]}
		s.logPath = fmt.Sprintf("%s/m%d.log", root, i)
		parts = append(parts, s.name+"=http://"+s.peer)
		c.Members = append(c.Members, s)
	}
	for _, s := range c.Members {
		s.cluster = strings.Join(parts, ",")
		s.startBinary()
		t.Cleanup(s.Stop)
	}
	for _, s := range c.Members {
		s.waitReady(15 * time.Second)
	}
	return c
}

// Endpoints returns every member's client URL.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, s := range c.Members {
		eps = append(eps, s.Endpoints()...)
	}
	return eps
}

// Leader returns the index of the current leader, waiting up to 10 s for one.
func (c *Cluster) Leader() int {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for i, s := range c.Members {
			if !s.Running() {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := s.Admin().Status(ctx, s.Endpoint())
			cancel()
			if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
				return i
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatal("etcdtest: no leader within 10s")
	return -1
}

// Restart starts member i again on its data dir.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	c.Members[i].startBinary()
	c.Members[i].waitReady(15 * time.Second)
}
