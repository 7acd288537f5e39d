// Command machine measures two costs of the machine that every process-level
// figure of `make bench` pays before doing any work of its own:
//
//   - starting a bare Go process (this program, run again with -noop): the
//     floor under any "onetime" or "start → visible" figure;
//   - a minor page fault: the first touch of a fresh page of anonymous memory,
//     which every new heap page of every process costs. Virtual machines
//     without hardware-assisted paging pay many times what bare metal does.
//
// It prints JSON lines {"name","unit","value"} (medians) on stdout.
//
//	machine [-runs 21] [-mib 64]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"time"

	"github.com/flotilla/flotilla/internal/cmdline"
)

func main() { cmdline.Main("machine", run) }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("machine", flag.ContinueOnError)
	runs := fs.Int("runs", 21, "repetitions of each measurement (the median is printed)")
	mib := fs.Int("mib", 64, "fresh memory touched per page-fault run, in MiB")
	noop := fs.Bool("noop", false, "exit at once (the process-start measurement runs this)")
	if err := cmdline.Parse(fs, args, stdout, "usage: machine [-runs N] [-mib N]\n\nMeasures a bare Go process start and a minor page fault; prints JSON lines.\n"); err != nil {
		return err
	}
	if *noop {
		return nil
	}
	if *runs < 1 || *mib < 1 {
		return cmdline.Usagef("-runs and -mib must be at least 1")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	start := make([]float64, 0, *runs)
	for range *runs {
		t := time.Now()
		if out, err := exec.CommandContext(ctx, self, "-noop").CombinedOutput(); err != nil {
			return fmt.Errorf("run %s -noop: %w: %s", self, err, out)
		}
		start = append(start, float64(time.Since(t).Microseconds())/1000)
	}
	fault := make([]float64, 0, *runs)
	for range *runs {
		us, err := touchFresh(*mib << 20)
		if err != nil {
			return err
		}
		fault = append(fault, us)
	}
	enc := json.NewEncoder(stdout)
	for _, r := range []struct {
		name, unit string
		v          []float64
	}{
		{"machine.GoProcessStart", "ms", start},
		{"machine.PageFault", "us/page", fault},
	} {
		if err := enc.Encode(map[string]any{"name": r.name, "unit": r.unit, "value": median(r.v)}); err != nil {
			return err
		}
	}
	return nil
}

// touchFresh maps n bytes of anonymous memory, writes one byte per page and
// returns the time per page in microseconds.
func touchFresh(n int) (float64, error) {
	page := os.Getpagesize()
	b, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return 0, fmt.Errorf("mmap %d bytes: %w", n, err)
	}
	defer syscall.Munmap(b)
	t := time.Now()
	for i := 0; i < n; i += page {
		b[i] = 1
	}
	return float64(time.Since(t).Nanoseconds()) / 1000 / float64(n/page), nil
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
