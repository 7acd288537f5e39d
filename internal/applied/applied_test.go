package applied

import (
	"reflect"
	"testing"
)

func TestCovers(t *testing.T) {
	tests := map[string]struct {
		prefixes []string
		key      string
		want     bool
	}{
		"below":          {[]string{"/clusterstate/demo"}, "/clusterstate/demo/nginx@1.service", true},
		"itself":         {[]string{"/clusterstate/demo/a"}, "/clusterstate/demo/a", true},
		"sibling name":   {[]string{"/clusterstate/demo"}, "/clusterstate/demo2/a", false},
		"root":           {[]string{"/"}, "/x/y", true},
		"trailing slash": {[]string{"/clusterstate/demo/"}, "/clusterstate/demo/a", true},
		"elsewhere":      {[]string{"/a", "/b"}, "/c/d", false},
		"second prefix":  {[]string{"/a", "/b"}, "/b/d", true},
		"none":           {nil, "/a", false},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if got := (Status{Prefixes: tc.prefixes}).Covers(tc.key); got != tc.want {
				t.Errorf("Covers(%q) with %q = %v, want %v", tc.key, tc.prefixes, got, tc.want)
			}
		})
	}
}

func TestRoundTrip(t *testing.T) {
	s := Status{Host: "lb1", Resource: "haproxy.toml", Prefixes: []string{"/clusterstate/demo"}, Revision: 42}
	v := s.Encode()
	if want := `{"host":"lb1","resource":"haproxy.toml","prefixes":["/clusterstate/demo"],"revision":42}`; v != want {
		t.Errorf("Encode = %s, want %s", v, want)
	}
	got, err := Decode([]byte(v))
	if err != nil || !reflect.DeepEqual(got, s) {
		t.Errorf("Decode = %+v, %v", got, err)
	}
	for _, bad := range []string{"", "{", `{"resource":"x"}`, `{"host":"h"}`} {
		if _, err := Decode([]byte(bad)); err == nil {
			t.Errorf("Decode(%q) accepted", bad)
		}
	}
	if Key(DefaultPrefix, "lb1", "haproxy.toml") != "/flotilla/render/lb1/haproxy.toml" {
		t.Error("Key")
	}
}
