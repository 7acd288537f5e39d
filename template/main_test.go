package template

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaves a goroutine behind (the concurrent
// render test starts some; rendering itself starts none).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
