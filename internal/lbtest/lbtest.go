// Package lbtest runs real load balancers and backends on loopback for tests:
// a master-worker haproxy started from a config file, an nginx started from a
// generated configuration, tiny Go HTTP backends that answer with their own
// name, and a Hammer that sends requests through a load balancer and counts
// errors and which backend answered.
//
// Every process is started by the test itself and stopped at t.Cleanup; all
// addresses are in 127.0.0.0/8. It is test infrastructure: no production code
// imports it.
package lbtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// FreeAddr returns "ip:port" on the loopback address ip (e.g. "127.0.0.3")
// where nothing listened a moment ago. An empty ip means 127.0.0.1.
func FreeAddr(t testing.TB, ip string) string {
	t.Helper()
	if ip == "" {
		ip = "127.0.0.1"
	}
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("lbtest: free port on %s: %v", ip, err)
	}
	defer l.Close()
	return l.Addr().String()
}

// FreePort returns a TCP port free a moment ago on the loopback address ip.
func FreePort(t testing.TB, ip string) int {
	t.Helper()
	_, p, _ := net.SplitHostPort(FreeAddr(t, ip))
	n, _ := strconv.Atoi(p)
	return n
}

// Need skips t with a clear message when the program is not installed
// (e.g. Need(t, "haproxy")). It returns the program's path.
func Need(t testing.TB, program string) string {
	t.Helper()
	for _, dir := range []string{"", "/usr/sbin/", "/usr/local/sbin/", "/sbin/"} {
		name := program
		if dir != "" {
			name = dir + program
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skipf("lbtest: %s is not installed (make deps installs it)", program)
	return ""
}

// waitListening polls addr; exited, when non-nil, reports an early process exit.
func waitListening(addr string, limit time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(limit)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("process exited before listening on %s", addr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listening on %s after %s: %w", addr, limit, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writeFile writes data to path or fails t.
func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatalf("lbtest: %v", err)
	}
}
