package unit

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaves a goroutine behind (the systemd
// conformance test runs processes).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
