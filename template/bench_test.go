package template

import (
	"fmt"
	"io"
	"runtime"
	"testing"
)

// benchKeys is an announce-style key set: n instances under one namespace
// plus n/10 keys elsewhere, values as the seed writes them.
func benchKeys(n int) map[string]string {
	m := make(map[string]string, n+n/10)
	for i := range n {
		m[fmt.Sprintf("/clusterstate/ns/nginx@%d.service", i)] = fmt.Sprintf("host%d 10.%d.%d.%d:8080", i, i>>16&255, i>>8&255, i&255)
	}
	for i := range 10 {
		m[fmt.Sprintf("/clusterstate/small/nginx@%d.service", i)] = fmt.Sprintf("host%d 10.1.0.%d:8080", i, i)
	}
	for i := range n / 10 {
		m[fmt.Sprintf("/other/app%d/config", i)] = "x"
	}
	return m
}

const (
	benchHaproxy = `global
    daemon
listen appname
    bind 0.0.0.0:80
{{range getvs "/clusterstate/ns/*"}}    server {{.}} check
{{end}}`
	benchGets = `{{range gets "/clusterstate/ns/*"}}server {{base .Key}} {{.Value}}
{{end}}`
	// a small upstream out of a large store: the prefix scan touches 10 keys
	benchNarrow = `{{range getvs "/clusterstate/small/*"}}server {{.}}
{{end}}{{getv "/other/app1/config"}}`
)

func BenchmarkRender(b *testing.B) {
	for _, tc := range []struct{ name, src string }{
		{"haproxy-getvs", benchHaproxy},
		{"range-gets", benchGets},
		{"narrow-prefix", benchNarrow},
	} {
		for _, n := range []int{1_000, 10_000, 100_000} {
			b.Run(fmt.Sprintf("%s/keys=%d", tc.name, n), func(b *testing.B) {
				tp, err := Parse("bench.tmpl", []byte(tc.src), Options{})
				if err != nil {
					b.Fatal(err)
				}
				s := NewStore(benchKeys(n))
				b.ReportAllocs()
				for b.Loop() {
					if err := tp.Execute(io.Discard, s); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkRenderWatch is render's watch path: one key of a long-lived
// store changes, a clone is taken and rendered into the buffer of the last
// output. With index=yes getvs reads the value index the store keeps
// current; with index=no (every render the first of its store, as in
// BenchmarkRender) it collects and sorts. Values are not in key order here,
// as announced "host ip:port" values seldom are.
func BenchmarkRenderWatch(b *testing.B) {
	for _, indexed := range []bool{true, false} {
		for _, n := range []int{1_000, 10_000, 100_000} {
			name := fmt.Sprintf("haproxy-getvs/index=no/keys=%d", n)
			if indexed {
				name = fmt.Sprintf("haproxy-getvs/index=yes/keys=%d", n)
			}
			b.Run(name, func(b *testing.B) {
				tp, err := Parse("bench.tmpl", []byte(benchHaproxy), Options{})
				if err != nil {
					b.Fatal(err)
				}
				s := NewStore(nil)
				for i := range n {
					j := i * 7919 % n // a permutation: value order is not key order
					s.Set(fmt.Sprintf("/clusterstate/ns/nginx@%d.service", i), fmt.Sprintf("host%d 10.%d.%d.%d:8080", j, j>>16&255, j>>8&255, j&255))
				}
				snapshot := func() *Store {
					if indexed {
						return s.Clone()
					}
					return &Store{t: s.t.Clone(), unclean: s.unclean} // a clone that never asks for an index
				}
				if _, err := tp.Render(snapshot()); err != nil { // asks for the index
					b.Fatal(err)
				}
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					i++
					s.Set(fmt.Sprintf("/clusterstate/ns/nginx@%d.service", i%n), fmt.Sprintf("host%d-v%d 10.0.0.1:8080", i%n, i))
					out, err := tp.Render(snapshot())
					if err != nil {
						b.Fatal(err)
					}
					tp.Recycle(out)
				}
			})
		}
	}
}

// BenchmarkMemkvGetvs is the full-scan getvs confd's memkv does, on the same
// key sets, for comparison with BenchmarkRender/haproxy-getvs.
func BenchmarkMemkvGetvs(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			r := refStore(benchKeys(n))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.getvs("/clusterstate/ns/*"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStoreSet is watch-event churn on a 100k-key store: value updates
// of existing keys, and instances coming and going (insert + delete).
func BenchmarkStoreSet(b *testing.B) {
	const n = 100_000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("/clusterstate/ns/nginx@%d.service", i)
	}
	b.Run("update", func(b *testing.B) {
		s := NewStore(benchKeys(n))
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			s.Set(keys[i%n], "host 10.0.0.1:8080")
			i++
		}
	})
	b.Run("insert+delete", func(b *testing.B) {
		s := NewStore(benchKeys(n))
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			k := keys[i%n] + ".new"
			s.Set(k, "host 10.0.0.1:8080")
			s.Delete(k)
			i++
		}
	})
	b.Run("clone+set", func(b *testing.B) {
		s := NewStore(benchKeys(n))
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			c := s.Clone()
			c.Set(keys[i%n], "host 10.0.0.2:8080")
			i++
		}
	})
}

// BenchmarkStoreMemory reports the heap a store of n announce keys holds
// (bytes/store), keys and values included.
func BenchmarkStoreMemory(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			kvs := benchKeys(n)
			var before, after runtime.MemStats
			var keep *Store
			for b.Loop() {
				runtime.GC()
				runtime.ReadMemStats(&before)
				keep = NewStore(nil)
				for k, v := range kvs {
					// copies, so the store's strings are its own
					keep.Set(string([]byte(k)), string([]byte(v)))
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
			}
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc), "bytes/store")
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(keep.Len()), "bytes/key")
			runtime.KeepAlive(keep)
		})
	}
}

// BenchmarkParse is the cost of Parse (function map with sprig included).
func BenchmarkParse(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("bench.tmpl", []byte(benchHaproxy), Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNewStore is a full resync: building the store from a map.
func BenchmarkNewStore(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			kvs := benchKeys(n)
			b.ReportAllocs()
			for b.Loop() {
				NewStore(kvs)
			}
		})
	}
}
