package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
)

// TestServeRefusesDuplicateMachineID starts two `scheduler serve` with one
// --machine-id (cloned VM images do that): the second refuses to start,
// naming the id and the first machine's IP, and a unit started once runs
// once.
func TestServeRefusesDuplicateMachineID(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	addr := etcdtest.FreeAddr(t)
	noEnv := func(string) string { return "" }
	firstLog := serveInBackground(ctx, t, "--data-dir", t.TempDir(), "--etcd-listen", addr, "--public-ip", "127.0.0.7",
		"--machine-id", "twin", "--executor", "process", "--ttl", "2s")
	client := func(args ...string) (string, error) { return cli(ctx, addr, args...) }
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := client("list-machines", "--no-legend")
		if strings.Contains(out, "127.0.0.7") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("first machine never registered; log:\n%s", firstLog.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	pidFile := filepath.Join(t.TempDir(), "pids")
	unitFile := filepath.Join(t.TempDir(), "once.service")
	os.WriteFile(unitFile, []byte("[Service]\nExecStart=/bin/sh -c 'echo $$$$ >> "+pidFile+"; exec sleep 1000'\n"), 0o644)
	if out, err := client("start", "--block-attempts", "60", unitFile); err != nil || !strings.Contains(out, "launched on") {
		t.Fatalf("start = %q, %v", out, err)
	}

	secondLog := &syncBuffer{}
	start := time.Now()
	err := runEnv(ctx, []string{"serve", "--data-dir", t.TempDir(), "--endpoints", "http://" + addr, "--public-ip", "127.0.0.8",
		"--machine-id", "twin", "--executor", "process", "--ttl", "2s"}, noEnv, &bytes.Buffer{}, secondLog)
	if err == nil {
		t.Fatalf("second serve with the same machine id returned nil; log:\n%s", secondLog.String())
	}
	t.Logf("FIGURE duplicate-id: second serve refused after %s: %v", time.Since(start).Round(time.Millisecond), err)
	for _, want := range []string{"twin", "127.0.0.7", "--machine-id"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	time.Sleep(time.Second)
	b, _ := os.ReadFile(pidFile)
	if n := len(strings.Fields(string(b))); n != 1 {
		t.Errorf("the unit started %d times, want once: %q", n, b)
	}
	if out, _ := client("list-machines", "--no-legend"); !strings.Contains(out, "127.0.0.7") || strings.Contains(out, "127.0.0.8") {
		t.Errorf("list-machines after the refusal = %q", out)
	}
}
