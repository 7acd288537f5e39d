// Package testmain holds what flotilla's test packages share at their edges:
// the goroutines etcd leaves behind on purpose (for goleak), building the
// project's commands once for tests that run them as real processes, a log
// sink safe for concurrent writers, and a bounded wait for a condition.
// It is imported by tests only.
package testmain

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// LeakOptions are the goleak options every package that talks to etcd needs:
// the etcd server and gRPC keep a few process-wide goroutines. extra are
// appended.
func LeakOptions(extra ...goleak.Option) []goleak.Option {
	return append([]goleak.Option{
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
	}, extra...)
}

// EnvBinDir names the directory Run built the commands into; subprocesses of
// the test binary (which re-run it in another role) find it there too.
const EnvBinDir = "FLOTILLA_TEST_BIN_DIR"

// Run builds the named commands of this module (e.g. "announce" for
// ./cmd/announce) into a temporary directory, runs the tests, checks that no
// goroutine leaked (LeakOptions), removes the directory and exits with the
// tests' status. Use Bin to find a built command.
func Run(m *testing.M, cmds ...string) {
	os.Exit(run(m, cmds))
}

func run(m *testing.M, cmds []string) int {
	dir, err := os.MkdirTemp("", "flotilla-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testmain:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if len(cmds) > 0 {
		args := []string{"build", "-o", dir + string(filepath.Separator)}
		for _, c := range cmds {
			args = append(args, "github.com/flotilla/flotilla/cmd/"+c)
		}
		build := exec.Command("go", args...)
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "testmain: build %v: %v\n", cmds, err)
			return 1
		}
	}
	os.Setenv(EnvBinDir, dir)
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(LeakOptions()...); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

// Bin returns the path of a command built by Run.
func Bin(name string) string { return filepath.Join(os.Getenv(EnvBinDir), name) }

// SyncBuffer is a bytes.Buffer safe for concurrent writers (a process's
// stdout and stderr, slog, an embedded server's logger) and readers.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns everything written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Eventually polls cond, which says why it does not hold yet, every interval
// until it returns nil, and fails the test when limit passes first. limit
// only detects a hang: tests never assert on speed.
func Eventually(t testing.TB, limit, interval time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, limit, err)
		}
		time.Sleep(interval)
	}
}
