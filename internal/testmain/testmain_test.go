package testmain_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/flotilla/flotilla/internal/testmain"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, testmain.LeakOptions()...) }

func TestSyncBuffer(t *testing.T) {
	var b testmain.SyncBuffer
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fmt.Fprintf(&b, "%d\n", i)
		}()
	}
	wg.Wait()
	if n := len(b.String()); n != 20 {
		t.Errorf("wrote %d bytes, want 20", n)
	}
}

func TestEventually(t *testing.T) {
	calls := 0
	testmain.Eventually(t, time.Second, time.Millisecond, "third call", func() error {
		if calls++; calls < 3 {
			return errors.New("not yet")
		}
		return nil
	})
	if calls != 3 {
		t.Errorf("cond called %d times, want 3", calls)
	}
}
