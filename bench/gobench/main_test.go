package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	const in = `goos: linux
BenchmarkOnetime/keys=1k-2         	     100	  2000000 ns/op	  512 B/op	  7 allocs/op
BenchmarkOnetime/keys=1k-2         	     100	  4000000 ns/op	  512 B/op	  7 allocs/op
BenchmarkOnetime/keys=1k-2         	     100	  3000000 ns/op	  512 B/op	  9 allocs/op
BenchmarkPutToFile/keys=1k-2       	      50	  1000000 ns/op	 1.5 p50-ms	 4.0 p99-ms
BenchmarkPutToFile/keys=1k-2       	      50	  3000000 ns/op	 2.5 p50-ms	 6.0 p99-ms
--- FAIL: BenchmarkBroken
    x_test.go:12: etcd did not start
FAIL
`
	tests := []struct {
		name, suffix string
		want         map[string]float64 // name|unit → median
	}{
		{"no suffix", "", map[string]float64{
			"pkg.Onetime/keys=1k|ns/op":     3e6,
			"pkg.Onetime/keys=1k|allocs/op": 7,
			"pkg.PutToFile/keys=1k|p50-ms":  2, // even count: mean of the middle two
			"pkg.PutToFile/keys=1k|p99-ms":  5,
		}},
		{"suffix", "etcd=binary", map[string]float64{
			"pkg.Onetime/keys=1k/etcd=binary|ns/op": 3e6,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, log bytes.Buffer
			if err := run(strings.NewReader(in), &out, &log, "pkg", tt.suffix); err != nil {
				t.Fatal(err)
			}
			got := map[string]float64{}
			for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
				var r result
				if err := json.Unmarshal([]byte(l), &r); err != nil {
					t.Fatalf("line %q: %v", l, err)
				}
				got[r.Name+"|"+r.Unit] = r.Value
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %v, want %v (all: %v)", k, got[k], v, got)
				}
			}
			if !strings.Contains(log.String(), "etcd did not start") {
				t.Errorf("failure not passed to the log: %q", log.String())
			}
		})
	}
}
