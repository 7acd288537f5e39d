package main

import (
	"runtime/debug"
	"testing"
)

// TestOnetimeGC: -onetime turns proportional GC off (a heap limit
// instead) unless GOGC or GOMEMLIMIT are set, and puts it back after.
func TestOnetimeGC(t *testing.T) {
	tests := map[string]struct {
		env     map[string]string
		wantOff bool
	}{
		"default":    {nil, true},
		"GOGC":       {map[string]string{"GOGC": "100"}, false},
		"GOMEMLIMIT": {map[string]string{"GOMEMLIMIT": "1GiB"}, false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			before := debug.SetGCPercent(100)
			defer debug.SetGCPercent(before)
			restore := onetimeGC(func(k string) string { return tc.env[k] })
			during := debug.SetGCPercent(-1)
			debug.SetGCPercent(during)
			limit := debug.SetMemoryLimit(-1)
			if off := during < 0 && limit == onetimeHeapLimit; off != tc.wantOff {
				t.Errorf("GC percent %d, memory limit %d: off = %v, want %v", during, limit, off, tc.wantOff)
			}
			restore()
			if after := debug.SetGCPercent(-1); after != 100 {
				t.Errorf("GC percent after restore = %d, want 100", after)
			}
			debug.SetGCPercent(100)
		})
	}
}
