package endpoint_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/endpoint"
)

func TestEncode(t *testing.T) {
	full := endpoint.Endpoint{Host: "web1", Addr: "10.0.0.1:8080", Unit: "nginx@1.service", Machine: "fe64b5d8"}
	tests := map[string]struct {
		e       endpoint.Endpoint
		f       endpoint.Format
		want    string
		wantErr string
	}{
		"plain seed":            {e: endpoint.Endpoint{Host: "host1", Addr: "10.0.0.1:8080"}, f: endpoint.Plain, want: "host1 10.0.0.1:8080"},
		"plain ignores unit":    {e: full, f: endpoint.Plain, want: "web1 10.0.0.1:8080"},
		"json full":             {e: full, f: endpoint.JSON, want: `{"host":"web1","addr":"10.0.0.1:8080","unit":"nginx@1.service","machine":"fe64b5d8"}`},
		"json minimal":          {e: endpoint.Endpoint{Host: "h", Addr: "[fd00::1]:80"}, f: endpoint.JSON, want: `{"host":"h","addr":"[fd00::1]:80"}`},
		"json no html escaping": {e: endpoint.Endpoint{Host: "a<b>&", Addr: "10.0.0.1:1"}, f: endpoint.JSON, want: `{"host":"a<b>&","addr":"10.0.0.1:1"}`},
		"empty host":            {e: endpoint.Endpoint{Addr: "10.0.0.1:8080"}, f: endpoint.Plain, wantErr: "empty host"},
		"space in host":         {e: endpoint.Endpoint{Host: "a b", Addr: "10.0.0.1:8080"}, f: endpoint.Plain, wantErr: "space"},
		"no port":               {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1"}, f: endpoint.Plain, wantErr: "want ip:port"},
		"port 0":                {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1:0"}, f: endpoint.Plain, wantErr: "port 0"},
		"hostname addr":         {e: endpoint.Endpoint{Host: "h", Addr: "example.com:80"}, f: endpoint.Plain, wantErr: "want ip:port"},
		"zone":                  {e: endpoint.Endpoint{Host: "h", Addr: "[fe80::1%eth0]:80"}, f: endpoint.Plain, wantErr: "zone"},
		"newline unit":          {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1:80", Unit: "a\nb"}, f: endpoint.JSON, wantErr: "control"},
		"bad format":            {e: full, f: endpoint.Format("xml"), wantErr: "unknown format"},
		"json metadata": {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1:80", Tags: []string{"canary", "v2"}, Meta: map[string]string{"zone": "b", "role": "web"}, Weight: ptr(3)},
			f: endpoint.JSON, want: `{"host":"h","addr":"10.0.0.1:80","tags":["canary","v2"],"meta":{"role":"web","zone":"b"},"weight":3}`},
		"json weight 0":   {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1:80", Weight: ptr(0)}, f: endpoint.JSON, want: `{"host":"h","addr":"10.0.0.1:80","weight":0}`},
		"plain metadata":  {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1:80", Tags: []string{"x"}}, f: endpoint.Plain, wantErr: "need the json format"},
		"weight too big":  {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1:80", Weight: ptr(257)}, f: endpoint.JSON, wantErr: "weight 257"},
		"negative weight": {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1:80", Weight: ptr(-1)}, f: endpoint.JSON, wantErr: "weight -1"},
		"tag with space":  {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1:80", Tags: []string{"a b"}}, f: endpoint.JSON, wantErr: "tag"},
		"empty tag":       {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1:80", Tags: []string{""}}, f: endpoint.JSON, wantErr: "tag"},
		"meta bad key":    {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1:80", Meta: map[string]string{"a b": "x"}}, f: endpoint.JSON, wantErr: "meta key"},
		"meta control":    {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1:80", Meta: map[string]string{"k": "a\x01"}}, f: endpoint.JSON, wantErr: "control"},
		"meta value long": {e: endpoint.Endpoint{Host: "h", Addr: "10.0.0.1:80", Meta: map[string]string{"k": strings.Repeat("x", 257)}}, f: endpoint.JSON, wantErr: "at most 256"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := tc.e.Encode(tc.f)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Encode = %q, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if got != tc.want {
				t.Fatalf("Encode = %s\nwant     %s", got, tc.want)
			}
		})
	}
}

func TestParse(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    endpoint.Endpoint
		wantErr string
	}{
		"plain":                    {in: "host1 10.0.0.1:8080", want: endpoint.Endpoint{Host: "host1", Addr: "10.0.0.1:8080"}},
		"plain spaces":             {in: "  host1   10.0.0.1:8080\n", want: endpoint.Endpoint{Host: "host1", Addr: "10.0.0.1:8080"}},
		"plain ipv6":               {in: "h [::1]:443", want: endpoint.Endpoint{Host: "h", Addr: "[::1]:443"}},
		"json":                     {in: `{"host":"h","addr":"10.0.0.2:80","unit":"u.service","machine":"m"}`, want: endpoint.Endpoint{Host: "h", Addr: "10.0.0.2:80", Unit: "u.service", Machine: "m"}},
		"json extra field ignored": {in: `{"host":"h","addr":"10.0.0.2:80","shiny":3}`, want: endpoint.Endpoint{Host: "h", Addr: "10.0.0.2:80"}},
		"json metadata":            {in: `{"host":"h","addr":"10.0.0.2:80","tags":["a"],"meta":{"zone":"b"},"weight":3}`, want: endpoint.Endpoint{Host: "h", Addr: "10.0.0.2:80", Tags: []string{"a"}, Meta: map[string]string{"zone": "b"}, Weight: ptr(3)}},
		"empty":                    {in: "", wantErr: "want"},
		"one word":                 {in: "10.0.0.1:8080", wantErr: "want"},
		"three words":              {in: "h 10.0.0.1:80 x", wantErr: "want ip:port"},
		"json no addr":             {in: `{"host":"h"}`, wantErr: "want ip:port"},
		"json no host":             {in: `{"addr":"10.0.0.1:1"}`, wantErr: "empty host"},
		"json trailing":            {in: `{"host":"h","addr":"10.0.0.1:1"} {}`, wantErr: "trailing"},
		"json broken":              {in: `{"host":`, wantErr: "json value"},
		"json wrong type":          {in: `{"host":1,"addr":"10.0.0.1:1"}`, wantErr: "json value"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := endpoint.Parse(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Parse = %+v, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("Parse = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestParseFormat(t *testing.T) {
	for in, ok := range map[string]bool{"plain": true, "json": true, "": false, "JSON": false, "yaml": false} {
		f, err := endpoint.ParseFormat(in)
		if ok != (err == nil) || (ok && string(f) != in) {
			t.Errorf("ParseFormat(%q) = %q, %v", in, f, err)
		}
	}
}

func TestIPPort(t *testing.T) {
	e := endpoint.Endpoint{Host: "h", Addr: "[fd00::7]:8443"}
	if e.IP().String() != "fd00::7" || e.Port() != 8443 {
		t.Fatalf("IP, Port = %s, %d", e.IP(), e.Port())
	}
	if bad := (endpoint.Endpoint{Addr: "x"}); bad.IP().IsValid() || bad.Port() != 0 {
		t.Fatalf("invalid addr gave %s, %d", bad.IP(), bad.Port())
	}
}

// FuzzParse checks that Parse never panics and that whatever it accepts
// survives a round trip through both formats.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"host1 10.0.0.1:8080", `{"host":"h","addr":"[::1]:80","unit":"u","machine":"m"}`, "", "{", "h [fe80::1%25x]:1"} {
		f.Add(s)
	}
	f.Add(`{"host":"h","addr":"10.0.0.1:80","tags":["canary"],"meta":{"zone":"a"},"weight":0}`)
	f.Fuzz(func(t *testing.T, in string) {
		e, err := endpoint.Parse(in)
		if err != nil || len(in) > endpoint.MaxValueLen {
			return
		}
		for _, format := range []endpoint.Format{endpoint.Plain, endpoint.JSON} {
			v, err := e.Encode(format)
			if format == endpoint.Plain && e.HasMetadata() {
				if err == nil {
					t.Fatalf("plain Encode of %+v kept no metadata and did not refuse", e)
				}
				continue
			}
			if err != nil {
				t.Fatalf("Parse(%q) accepted %+v but Encode(%s) refused it: %v", in, e, format, err)
			}
			back, err := endpoint.Parse(v)
			if err != nil {
				t.Fatalf("Parse(Encode(%s)) of %+v = %v", format, e, err)
			}
			want := e
			if format == endpoint.Plain {
				want.Unit, want.Machine = "", ""
			}
			if !reflect.DeepEqual(back, want) {
				t.Fatalf("round trip through %s: %+v became %+v", format, want, back)
			}
		}
	})
}

func Example() {
	e := endpoint.Endpoint{Host: "web1", Addr: "10.0.0.1:8080", Unit: "nginx@1.service"}
	plain, _ := e.Encode(endpoint.Plain)
	js, _ := e.Encode(endpoint.JSON)
	fmt.Println(plain)
	fmt.Println(js)
	back, _ := endpoint.Parse(js)
	fmt.Println(back.IP(), back.Port())
	// Output:
	// web1 10.0.0.1:8080
	// {"host":"web1","addr":"10.0.0.1:8080","unit":"nginx@1.service"}
	// 10.0.0.1 8080
}

func ptr(n int) *int { return &n }
