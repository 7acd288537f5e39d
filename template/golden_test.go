package template

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

// goldenDir holds one case per function (or small group): NAME.tmpl is the
// template, NAME.json the keys (a flat JSON object, which is also YAML for
// confd's file backend) and NAME.out the expected bytes.
//
// The confd_* goldens were cross-checked against real confd 0.17.0-dev
// (kelseyhightower/confd at 919444eb, built with go1.26.8, `-backend file`)
// by TestGoldenMatchesConfd; the fork_* goldens against abtreece/confd at
// b208352e (v0.41) by TestGoldenMatchesFork. Both run when CONFD_BIN /
// CONFD_FORK_BIN name those binaries.
const goldenDir = "testdata/golden"

// goldenEnv is the environment the goldens see through getenv; the confd
// cross-check passes the same variables to the real confd.
var goldenEnv = map[string]string{
	"FLOTILLA_TEST_HOME":  "/srv/app",
	"FLOTILLA_TEST_EMPTY": "",
}

// goldenOptions makes every outside fact fixed: environment, clock, host
// name, resolver and interfaces.
func goldenOptions() Options {
	return Options{
		Dir:      filepath.Join(goldenDir, "include"),
		Getenv:   func(k string) string { return goldenEnv[k] },
		Hostname: func() (string, error) { return "testhost", nil },
		Now:      func() time.Time { return time.Date(2026, 11, 25, 21, 30, 0, 0, time.UTC) },
		LookupIP: func(host string) ([]net.IP, error) {
			if host == "localhost" {
				return []net.IP{net.ParseIP("::1"), net.ParseIP("127.0.0.1")}, nil
			}
			return nil, errors.New("no such host")
		},
		LookupSRV: func(service, proto, name string) (string, []*net.SRV, error) {
			if name != "example.test" {
				return "", nil, errors.New("no such host")
			}
			return "", []*net.SRV{
				{Target: "b.example.test.", Port: 80, Priority: 10, Weight: 5},
				{Target: "a.example.test.", Port: 8080, Priority: 20, Weight: 1},
				{Target: "a.example.test.", Port: 80, Priority: 10, Weight: 1},
			}, nil
		},
		InterfaceAddrs: func(name string) ([]net.Addr, error) {
			cidr := func(s string) net.Addr {
				ip, n, err := net.ParseCIDR(s)
				if err != nil {
					panic(err)
				}
				n.IP = ip
				return n
			}
			switch name {
			case "lo":
				return []net.Addr{cidr("127.0.0.1/8"), cidr("::1/128")}, nil
			case "eth0":
				return []net.Addr{cidr("fe80::1/64"), cidr("192.0.2.10/24"), cidr("2001:db8::5/64")}, nil
			}
			return nil, errors.New("no such network interface")
		},
	}
}

type goldenCase struct {
	name string
	tmpl []byte
	keys map[string]string
}

func loadGoldenCases(t testing.TB) []goldenCase {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(goldenDir, "*.tmpl"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no golden cases in %s: %v", goldenDir, err)
	}
	var cases []goldenCase
	for _, p := range paths {
		name := strings.TrimSuffix(filepath.Base(p), ".tmpl")
		tmpl, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		keys := map[string]string{}
		if b, err := os.ReadFile(filepath.Join(goldenDir, name+".json")); err == nil {
			if err := json.Unmarshal(b, &keys); err != nil {
				t.Fatalf("%s.json: %v", name, err)
			}
		}
		cases = append(cases, goldenCase{name: name, tmpl: tmpl, keys: keys})
	}
	return cases
}

func TestGolden(t *testing.T) {
	for _, c := range loadGoldenCases(t) {
		t.Run(c.name, func(t *testing.T) {
			tp, err := Parse(c.name+".tmpl", c.tmpl, goldenOptions())
			if err != nil {
				t.Fatal(err)
			}
			got, err := tp.Render(NewStore(c.keys))
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(goldenDir, c.name+".out")
			if *update {
				if err := os.WriteFile(out, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("%v (run go test ./template -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s renders\n%s\nwant (%s)\n%s", c.name, got, out, want)
			}
		})
	}
}

// TestGoldenCoversEveryFunction fails when one of our functions (confd's,
// the fork's, or a sprig_ fallback) appears in no golden template.
func TestGoldenCoversEveryFunction(t *testing.T) {
	var all bytes.Buffer
	for _, c := range loadGoldenCases(t) {
		all.Write(c.tmpl)
	}
	incs, _ := filepath.Glob(filepath.Join(goldenDir, "include", "*", "*.tmpl"))
	incs2, _ := filepath.Glob(filepath.Join(goldenDir, "include", "*.tmpl"))
	for _, p := range append(incs, incs2...) {
		b, _ := os.ReadFile(p)
		all.Write(b)
	}
	own := ownFuncs(&Options{}, &binding{})
	for name := range own {
		if !regexp.MustCompile(`\b` + name + `\b`).Match(all.Bytes()) {
			t.Errorf("function %s has no golden case under %s", name, goldenDir)
		}
	}
}
