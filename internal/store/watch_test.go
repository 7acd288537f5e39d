package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/netcut"
	"github.com/flotilla/flotilla/internal/store"
)

// A watch from "now" whose stream breaks before its first event resumes from
// the revision it was created at: a put made while it was reconnecting is
// delivered, not skipped.
func TestWatchFromNowSurvivesBreakBeforeFirstEvent(t *testing.T) {
	srv := etcdtest.New(t)
	direct := srv.Client()
	proxy, err := netcut.New(strings.TrimPrefix(srv.Endpoint(), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	cfg := srv.Config()
	cfg.Endpoints = []string{"http://" + proxy.Addr()}
	c, err := store.Open(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxT(t)
	// Another key's put, outside the prefix, gives etcd a revision past 1.
	if _, err := direct.Put(ctx, "/other", "x", 0); err != nil {
		t.Fatal(err)
	}
	w := c.WatchPrefix(ctx, "/w/", 0)
	defer w.Close()
	time.Sleep(500 * time.Millisecond) // the watch is created
	proxy.Cut(true)
	if _, err := direct.Put(ctx, "/w/during-the-gap", "1", 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	proxy.Cut(false)
	select {
	case b := <-w.C:
		if b.Err != nil {
			t.Fatalf("watch ended: %v", b.Err)
		}
		if len(b.Events) == 0 || b.Events[0].KV.Key != "/w/during-the-gap" {
			t.Fatalf("first batch = %+v, want the put made during the gap", b)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the put made while the watch was reconnecting never came")
	}
}

// A watch from "now" ended by etcd itself before its first event (its member
// lost the leader: WithRequireLeader cancels the stream) is re-established
// from the revision it was created at, so a put made while it waited for a
// leader again is delivered.
func TestWatchFromNowSurvivesLeaderLossBeforeFirstEvent(t *testing.T) {
	cl := etcdtest.NewCluster(t, 3)
	cfg := cl.Members[0].Config()
	c, err := store.Open(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := ctxT(t)
	w := c.WatchPrefix(ctx, "/w/", 0)
	defer w.Close()
	time.Sleep(500 * time.Millisecond) // the watch is created
	cl.Members[1].Stop()
	cl.Members[2].Stop()
	time.Sleep(3 * time.Second) // member 0 notices it has no leader
	cl.Restart(1)
	cl.Restart(2)
	if _, err := cl.Members[1].Client().Put(ctx, "/w/after-the-loss", "1", 0); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case b := <-w.C:
			if b.Err != nil {
				t.Fatalf("watch ended: %v", b.Err)
			}
			if len(b.Events) == 0 {
				continue // progress
			}
			if b.Events[0].KV.Key != "/w/after-the-loss" {
				t.Fatalf("first event = %+v, want the put made after the leader came back", b.Events[0])
			}
			return
		case <-time.After(15 * time.Second):
			t.Fatal("the put made while the watch waited for a leader never came")
		}
	}
}

// The batch that ends a watch on cancellation always comes, even when the
// reader is slow to take it.
func TestWatchLastBatchOnCancel(t *testing.T) {
	c := etcdtest.New(t).Client()
	for range 20 {
		ctx, cancel := context.WithCancel(ctxT(t))
		w := c.WatchPrefix(ctx, "/w/", 0)
		cancel()
		time.Sleep(10 * time.Millisecond)
		var last store.WatchBatch
		for b := range w.C {
			last = b
		}
		if !errors.Is(last.Err, context.Canceled) {
			t.Fatalf("last batch = %+v, want the cancellation", last)
		}
		w.Close()
	}
}
