//go:build linux

package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// trimResident drops this program's own read-only code and data pages from
// its resident set, once start-up is over: package initialisation (gRPC,
// protobuf registries) touches a large part of the binary, and the kernel's
// fault-around maps neighbouring pages too. The pages stay in the page cache;
// the few still needed are faulted back one by one (MADV_RANDOM turns
// fault-around off for these mappings). Only clean, never-written private file
// mappings of the executable are touched, so no data can be lost. Errors are
// ignored: this is an optimisation.
func trimResident() {
	exe, err := os.Executable()
	if err != nil {
		return
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 00400000-00b0d000 r-xp 00000000 fe:00 10012426   /path/to/exe
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[5] != exe || strings.Contains(fields[1], "w") || !strings.HasSuffix(fields[1], "p") {
			continue
		}
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		for _, advice := range []uintptr{unix.MADV_RANDOM, unix.MADV_DONTNEED} {
			unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), advice)
		}
	}
}
