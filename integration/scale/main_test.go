package scale

import (
	"os"
	"testing"

	"github.com/flotilla/flotilla/internal/hollow"
)

// TestMain runs the tests, or, in a process that hollow.Start re-executed
// this test binary as, an engine candidate or a share of the hollow
// machines until SIGTERM or the end of its stdin.
func TestMain(m *testing.M) {
	if code, child := hollow.ChildMain(); child {
		os.Exit(code)
	}
	os.Exit(m.Run())
}
