package seed_test

import (
	"testing"

	"github.com/flotilla/flotilla/internal/testmain"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/integration/seed"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, testmain.LeakOptions()...)
}

// TestSeedDeployment runs examples/units' nginx@.service (real nginx on each
// machine's public IP) and prefetch.service through the whole scenario.
func TestSeedDeployment(t *testing.T) {
	seed.Run(t, seed.Options{UnitDir: "examples/units"})
}

// TestSeedDeploymentSystemd runs the same units through the systemd
// executor: each worker has its own real (user-mode) systemd, which parses
// and runs nginx@.service itself. The four machines share this host's
// systemd-visible host name (%H is expanded by systemd, outside their UTS
// namespaces), so the announcement names the machine by its metadata instead.
func TestSeedDeploymentSystemd(t *testing.T) {
	seed.Run(t, seed.Options{
		UnitDir:  "examples/units",
		Executor: "systemd",
		Replace:  []string{`"%H ${PUBLIC_IP}:8080"`, `"${FLOTILLA_METADATA_HOST} ${PUBLIC_IP}:8080"`},
	})
}
