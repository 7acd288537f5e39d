package main

import (
	"runtime/debug"
)

// onetimeHeapLimit is the heap a -onetime render grows to before the
// garbage collector runs at all.
const onetimeHeapLimit = 256 << 20

// onetimeGC turns the collector's proportional pacing off for a -onetime
// process: it reads, renders and exits, and what it allocates (about 10 MB
// at 10k keys) is freed by its exit. Collecting on the way cost a quarter
// of its CPU time at 10k keys (docs/performance.md). The collector still
// runs should the heap reach onetimeHeapLimit (at about 400k keys). GOGC or
// GOMEMLIMIT in the environment leave the runtime as they set it.
func onetimeGC(getenv func(string) string) {
	if getenv("GOGC") != "" || getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(onetimeHeapLimit)
	debug.SetGCPercent(-1)
}
