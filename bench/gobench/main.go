// Command gobench turns `go test -bench` output into JSON lines
// {"name","unit","value","runs"}, one per benchmark and metric, with the median
// over repeated runs (-count). Usage:
//
//	go test -bench . -count 5 ./pkg | gobench [-suffix tag] pkg
//
// Names are pkg.Name/sub[/suffix]: the suffix tells apart runs of the same
// benchmark under another setup (etcd=binary). Lines that are not benchmark
// results are passed to stderr, so a failure shows in the log.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

type result struct {
	Name  string  `json:"name"`
	Unit  string  `json:"unit"`
	Value float64 `json:"value"`
	Runs  int     `json:"runs"`
}

func main() {
	fs := flag.NewFlagSet("gobench", flag.ExitOnError)
	suffix := fs.String("suffix", "", "appended to every name as /suffix")
	fs.Parse(os.Args[1:])
	if err := run(os.Stdin, os.Stdout, os.Stderr, fs.Arg(0), *suffix); err != nil {
		fmt.Fprintln(os.Stderr, "gobench:", err)
		os.Exit(1)
	}
}

func run(r io.Reader, w, log io.Writer, pkg, suffix string) error {
	samples := map[[2]string][]float64{}
	var order [][2]string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			if len(f) > 0 && (f[0] == "FAIL" || f[0] == "---" || strings.HasPrefix(f[0], "panic") || strings.Contains(sc.Text(), "_test.go:")) {
				fmt.Fprintln(log, sc.Text())
			}
			continue
		}
		name := strings.TrimPrefix(f[0], "Benchmark")
		if i := strings.LastIndex(name, "-"); i > 0 {
			name = name[:i] // GOMAXPROCS suffix
		}
		if pkg != "" {
			name = pkg + "." + name
		}
		if suffix != "" {
			name += "/" + suffix
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			k := [2]string{name, f[i+1]}
			if _, ok := samples[k]; !ok {
				order = append(order, k)
			}
			samples[k] = append(samples[k], v)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	for _, k := range order {
		vs := samples[k]
		sort.Float64s(vs)
		med := vs[len(vs)/2]
		if len(vs)%2 == 0 {
			med = (vs[len(vs)/2-1] + vs[len(vs)/2]) / 2
		}
		if err := enc.Encode(result{Name: k[0], Unit: k[1], Value: med, Runs: len(vs)}); err != nil {
			return err
		}
	}
	return nil
}
