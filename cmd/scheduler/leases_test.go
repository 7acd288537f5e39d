package main

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/rollout"
)

// TestServeLeases runs one `scheduler serve` against an etcd of its own:
// once it is registered and leads both elections, the whole process holds
// one lease: its presence lease, to which both leader keys are bound.
func TestServeLeases(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := etcdtest.New(t)
	admin := srv.Admin()
	before, err := admin.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	log := serveInBackground(ctx, t, "--endpoints", srv.Endpoint(), "--data-dir", t.TempDir(), "--machine-id", "m1",
		"--public-ip", "127.0.0.9", "--executor", "process", "--ttl", "5s")
	reg := registry.New(srv.Client(), registry.DefaultPrefix)
	leaderLease := func(prefix string) clientv3.LeaseID {
		resp, err := admin.Get(ctx, prefix+"/", clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) == 0 {
			return 0
		}
		return clientv3.LeaseID(resp.Kvs[0].Lease)
	}
	var engine, driver, presence clientv3.LeaseID
	for {
		engine, driver = leaderLease(reg.ElectionPrefix()), leaderLease(rollout.ElectionPrefix(reg))
		if resp, err := admin.Get(ctx, reg.MachineKey("m1")); err == nil && len(resp.Kvs) == 1 {
			presence = clientv3.LeaseID(resp.Kvs[0].Lease)
		}
		if engine != 0 && driver != 0 && presence != 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("serve never registered and led both elections (engine lease %x, driver lease %x, presence lease %x); log:\n%s",
				engine, driver, presence, log.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if engine != presence || driver != presence {
		t.Errorf("engine leader key on lease %x, rollout driver's on %x: want both on the presence lease %x", engine, driver, presence)
	}
	after, err := admin.Leases(ctx)
	if err != nil {
		t.Fatal(err)
	}
	held := map[clientv3.LeaseID]bool{}
	for _, l := range after.Leases {
		held[l.ID] = true
	}
	for _, l := range before.Leases {
		delete(held, l.ID)
	}
	if len(held) != 1 || !held[presence] {
		t.Errorf("serve holds leases %v, want only its presence lease %x", held, presence)
	}
}
