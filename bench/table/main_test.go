package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestRun(t *testing.T) {
	tests := []struct {
		name, in string
		all      bool
		want     []string // substrings of the output, one row each
		absent   []string
	}{
		{"goal met and ns as ms", `{"name":"cmd/announce.StartToVisible","unit":"p50-ms","value":30}
{"name":"x.Y","unit":"ns/op","value":2500000}`, false,
			[]string{"goal ≤ 50 #3: met", "2.5    ms/op"}, nil},
		{"goal not met, suffix ignored", `{"name":"integration/render.RSS100k/etcd=binary","unit":"rss-MB","value":120}`, false,
			[]string{"goal ≤ 100 #5: NOT MET"}, nil},
		{"at least", `{"name":"internal/announce.Hold10k","unit":"alive-after-ttl","value":9000}`, false,
			[]string{"goal ≥ 10000 #3: NOT MET"}, nil},
		{"last wins", `{"name":"a","unit":"u","value":1}
{"name":"a","unit":"u","value":7}`, false, []string{"a          7      u"}, []string{"a          1 "}},
		{"peer ratio", `{"name":"r.PeerOnetime/render/keys=10k","unit":"ns/op","value":1e7}
{"name":"r.PeerOnetime/confd/keys=10k","unit":"ns/op","value":2e8}`, false,
			[]string{"render 20× ahead of confd (goal ≥ 10× #4: met)"}, nil},
		{"floor ratio", `{"name":"r.PeerOnetime/render/keys=10k","unit":"ns/op","value":4e7}
{"name":"r.PeerOnetime/floor/keys=10k","unit":"ns/op","value":2.5e7}`, false,
			[]string{"render at 1.6× the floor (goal ≤ 1.3× #18: NOT MET)"}, []string{"ahead of floor", "behind floor"}},
		{"floor ratio met", `{"name":"r.PeerOnetime/render/keys=10k","unit":"ns/op","value":3e7}
{"name":"r.PeerOnetime/floor/keys=10k","unit":"ns/op","value":2.5e7}`, false,
			[]string{"render at 1.2× the floor (goal ≤ 1.3× #18: met)"}, nil},
		{"peer ratio without a size", `{"name":"r.PeerStart/render","unit":"ns/op","value":3e7}
{"name":"r.PeerStart/confd-fork","unit":"ns/op","value":4.5e7}`, false,
			[]string{"process start alone (--version); render 1.5× ahead of confd-fork"}, []string{"goal ≥ 10×"}},
		{"allocs hidden", `{"name":"a","unit":"allocs/op","value":3}`, false, nil, []string{"allocs/op"}},
		{"allocs shown", `{"name":"a","unit":"allocs/op","value":3}`, true, []string{"allocs/op"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := run(strings.NewReader(tt.in), &out, tt.all); err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("missing %q in\n%s", w, out.String())
				}
			}
			for _, a := range tt.absent {
				if strings.Contains(out.String(), a) {
					t.Errorf("unexpected %q in\n%s", a, out.String())
				}
			}
		})
	}
}
