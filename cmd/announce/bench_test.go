package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flotilla/flotilla/internal/etcdtest"
	"github.com/flotilla/flotilla/internal/store"
)

// benchEtcd starts etcd for a benchmark: Debian's server binary when present
// (a process of its own, as in production), else the embedded server.
func benchEtcd(b *testing.B) *etcdtest.Server {
	if etcdtest.ModeFromEnv() == etcdtest.Embedded && etcdtest.BinaryPath() != "" {
		return etcdtest.New(b, etcdtest.WithMode(etcdtest.Binary))
	}
	return etcdtest.New(b)
}

// BenchmarkStartToVisible measures the time from starting the announce
// process to its key being visible to a watcher, over at least 20 runs
// (each run: start, key seen, SIGTERM, key gone). It reports p50 and p99.
func BenchmarkStartToVisible(b *testing.B) {
	srv := benchEtcd(b)
	c := srv.Client()
	ctx := context.Background()
	runs := max(b.N, 20)
	samples := make([]time.Duration, 0, runs)
	b.ResetTimer()
	for i := 0; i < runs; i++ {
		key := fmt.Sprintf("/bench/start/%d", i)
		_, _, rev, err := c.Get(ctx, key)
		if err != nil {
			b.Fatal(err)
		}
		w := c.WatchPrefix(ctx, key, rev+1)
		cmd := exec.Command(binary(), "--endpoints", srv.Endpoint(), "--log-level", "error", key, "h 10.0.0.1:80")
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=")
		began := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		seen := false
		for batch := range w.C {
			if batch.Err != nil {
				b.Fatal(batch.Err)
			}
			for _, ev := range batch.Events {
				if ev.Type == store.EventPut {
					seen = true
				}
			}
			if seen {
				break
			}
		}
		samples = append(samples, time.Since(began))
		w.Close()
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			b.Fatalf("announce exit: %v", err)
		}
	}
	b.StopTimer()
	slices.Sort(samples)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(samples[len(samples)/2]), "p50-ms")
	b.ReportMetric(ms(samples[(len(samples)*99+99)/100-1]), "p99-ms")
	b.ReportMetric(float64(len(samples)), "runs")
}

// BenchmarkIdleProcess measures one announce process holding its key: resident
// memory at the end, and CPU use over, a 7s window with a 10s TTL (so the
// window holds two keepalives; the default 30s TTL sends one every 10s).
func BenchmarkIdleProcess(b *testing.B) { benchIdle(b) }

// BenchmarkIdleProcessCheckCmd is BenchmarkIdleProcess with a --check-cmd
// run every 5s (the default interval): its CPU includes the check
// processes it reaped (cutime+cstime).
func BenchmarkIdleProcessCheckCmd(b *testing.B) {
	benchIdle(b, "--check-cmd", "true", "--check-interval", "5s")
}

func benchIdle(b *testing.B, extra ...string) {
	srv := benchEtcd(b)
	c := srv.Client()
	args := append([]string{"--endpoints", srv.Endpoint(), "--ttl", "10s"}, extra...)
	cmd := exec.Command(binary(), append(args, "/bench/idle", "h 10.0.0.1:80")...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=")
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	for {
		if _, found, _, err := c.Get(context.Background(), "/bench/idle"); err == nil && found {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	pid := cmd.Process.Pid
	const window = 7 * time.Second
	b.ResetTimer()
	t0 := cpuTicks(b, pid)
	time.Sleep(window)
	t1 := cpuTicks(b, pid)
	b.StopTimer()
	const clkTck = 100 // USER_HZ on Linux
	cpuPct := float64(t1-t0) / clkTck / window.Seconds() * 100
	b.ReportMetric(float64(rssKB(b, pid))/1024, "RSS-MB")
	b.ReportMetric(cpuPct, "idle-CPU-%")
}

func rssKB(b *testing.B, pid int) int {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	b.Fatal("no VmRSS")
	return 0
}

// cpuTicks returns utime+stime of pid and of its reaped children, in clock
// ticks.
func cpuTicks(b *testing.B, pid int) int {
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the ")" that ends the command name: utime is the 12th,
	// stime the 13th, then the reaped children's cutime and cstime.
	f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+2:]))
	sum := 0
	for _, i := range []int{11, 12, 13, 14} {
		n, _ := strconv.Atoi(f[i])
		sum += n
	}
	return sum
}
