package main

import "runtime/debug"

// onetimeHeapLimit is the heap a -onetime render grows to before the
// garbage collector runs at all.
const onetimeHeapLimit = 256 << 20

// onetimeGC turns the collector's proportional pacing off for a -onetime
// run: it reads, renders and exits, and what it allocates (about 10 MB at
// 10k keys) is freed by its exit. Collecting on the way cost a quarter of
// its CPU time at 10k keys (docs/performance.md). The collector still runs
// should the heap reach onetimeHeapLimit (at about 400k keys). GOGC or
// GOMEMLIMIT in the environment leave the runtime as they set it. The
// returned function puts the previous settings back (run may be called
// more than once in a process, as tests do).
func onetimeGC(getenv func(string) string) (restore func()) {
	if getenv("GOGC") != "" || getenv("GOMEMLIMIT") != "" {
		return func() {}
	}
	limit := debug.SetMemoryLimit(onetimeHeapLimit)
	percent := debug.SetGCPercent(-1)
	return func() {
		debug.SetGCPercent(percent)
		debug.SetMemoryLimit(limit)
	}
}
