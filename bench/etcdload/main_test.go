package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLabel(t *testing.T) {
	tests := []struct{ labels, key, want string }{
		{`{grpc_code="OK",grpc_method="Range",grpc_type="unary"}`, "grpc_method", "Range"},
		{`{grpc_method="LeaseKeepAlive"}`, "grpc_method", "LeaseKeepAlive"},
		{`{grpc_code="OK"}`, "grpc_method", ""},
		{``, "grpc_method", ""},
	}
	for _, tt := range tests {
		if got := label(tt.labels, tt.key); got != tt.want {
			t.Errorf("label(%q, %q) = %q, want %q", tt.labels, tt.key, got, tt.want)
		}
	}
}

// TestAnnounceLoad runs the announce group against Debian's etcd with a short
// TTL (a keepalive a second per process) and checks that the keepalives are
// counted, and nothing else.
func TestAnnounceLoad(t *testing.T) {
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("no etcd binary on PATH")
	}
	bin := t.TempDir()
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/announce").CombinedOutput(); err != nil {
		t.Fatalf("go build announce: %v\n%s", err, out)
	}
	var out bytes.Buffer
	err = run(context.Background(), []string{"-n", "2", "-window", "3s", "-warmup", "1s", "-announce-ttl", "3s",
		"-bin", bin, "-etcd", etcd, "-groups", "idle,announce"}, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var r result
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		got[r.Name+"|"+r.Unit] = r.Value
	}
	// Two processes, one keepalive each per TTL/3 = 1s: about 2 req/s.
	if v := got["etcdload/announce/n=2/method=LeaseKeepAlive|req/s"]; v < 0.5 || v > 6 {
		t.Errorf("keepalives = %v req/s, want about 2 (all: %v)", v, got)
	}
	if v := got["etcdload/announce/n=2|writes/s"]; v != 0 {
		t.Errorf("idle announcers write %v/s, want 0", v)
	}
}
