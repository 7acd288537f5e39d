package main

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/applied"
	"github.com/flotilla/flotilla/internal/cmdline"
	"github.com/flotilla/flotilla/internal/etcdtest"
)

func TestPublishStatusRefused(t *testing.T) {
	dir, _ := confdir(t)
	tests := map[string]struct {
		args []string
		want string
	}{
		"onetime":      {[]string{"-publish-status", "-onetime"}, "not with -onetime"},
		"noop":         {[]string{"-publish-status", "-noop"}, "not with -noop"},
		"sync-only":    {[]string{"-publish-status", "-sync-only"}, "not with -noop or -sync-only"},
		"file":         {[]string{"-publish-status", "-backend", "file", "-file", "/nonexistent.yaml"}, "needs the etcd backend"},
		"bad prefix":   {[]string{"-publish-status", "-status-prefix", "flotilla"}, "must start and end with '/'"},
		"check-config": {[]string{"-publish-status", "-check-config"}, "not with -check-config"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			args := append([]string{"-confdir", dir}, tc.args...)
			if name != "file" {
				args = append(args, "-node", "127.0.0.1:1")
			}
			_, _, err := runT(t, args...)
			var msg strings.Builder
			if code := cmdline.Exit("render", err, &msg); code != 2 || !strings.Contains(msg.String(), tc.want) {
				t.Errorf("exit %d %q, want 2 and %q", code, msg.String(), tc.want)
			}
		})
	}
}

// TestPublishStatusRuns: render -publish-status -watch publishes the
// resource's status under its host name and removes it when it stops.
func TestPublishStatusRuns(t *testing.T) {
	srv := etcdtest.New(t)
	c := srv.Client()
	dir, _ := confdir(t)
	rev, err := c.Put(context.Background(), "/clusterstate/ns/a", "h 10.0.0.1:80", 0)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	key := applied.Key(applied.DefaultPrefix, host, "lb.toml")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		var o, e strings.Builder
		done <- run(ctx, []string{"-node", srv.Endpoint(), "-confdir", dir, "-watch", "-publish-status", "-config-file", os.DevNull}, &o, &e)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		kv, found, _, err := c.Get(context.Background(), key)
		if err == nil && found {
			s, err := applied.Decode(kv.Value)
			if err != nil {
				t.Fatal(err)
			}
			if s.Revision >= rev && len(s.Prefixes) == 1 && s.Prefixes[0] == "/clusterstate/ns" && kv.Lease != 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no status at rev %d under %s", rev, key)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("render: %v", err)
	}
	if _, found, _, _ := c.Get(context.Background(), key); found {
		t.Error("status left after render stopped")
	}
}
