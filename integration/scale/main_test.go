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
// this test binary as (hollow.EnvEngine set), an engine candidate until
// SIGTERM or the end of its stdin.
func TestMain(m *testing.M) {
	if spec := os.Getenv(hollow.EnvEngine); spec != "" {
		os.Exit(engineMain(spec))
	}
	os.Exit(m.Run())
}

func engineMain(spec string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := hollow.RunEngineProcess(ctx, spec, os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
