package seed_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/integration/seed"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		goleak.IgnoreAnyFunction("google.golang.org/grpc/internal/grpcsync.(*CallbackSerializer).run"),
		goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
	)
}

// TestSeedDeployment runs examples/units' nginx@.service (real nginx on each
// machine's public IP) and prefetch.service through the whole scenario.
func TestSeedDeployment(t *testing.T) {
	seed.Run(t, seed.Options{UnitDir: "examples/units"})
}
