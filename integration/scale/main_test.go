package scale

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/flotilla/flotilla/internal/hollow"
)

// TestMain runs the tests, or, in a process that hollow.Start re-executed
// this test binary as (hollow.EnvProcess set), an engine candidate or a
// share of the hollow machines until SIGTERM or the end of its stdin.
func TestMain(m *testing.M) {
	if role := os.Getenv(hollow.EnvProcess); role != "" {
		os.Exit(processMain(role))
	}
	os.Exit(m.Run())
}

func processMain(role string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := hollow.RunProcess(ctx, role, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
