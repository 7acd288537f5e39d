package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// TestValueFormatsGolden: the value each form of the command line writes.
// The plain format stays the seed's, byte for byte, whatever else is given.
func TestValueFormatsGolden(t *testing.T) {
	getenv := func(k string) string {
		if k == "FLOTILLA_MACHINE_ID" {
			return "m-1"
		}
		return ""
	}
	cases := [][]string{
		{"--host", "web1", "--addr", "10.0.0.1:8080", "/k"},
		{"/k", "web1 10.0.0.1:8080"},
		{"--format", "json", "--host", "web1", "--unit", "nginx@1.service", "--addr", "10.0.0.1:8080", "/k"},
		{"--format", "json", "--host", "web1", "--unit", "u", "--addr", "10.0.0.1:8080", "--tag", "canary", "--tag", "v2", "/k"},
		{"--format", "json", "--host", "web1", "--unit", "u", "--addr", "10.0.0.1:8080", "--meta", "zone=b", "--meta", "role=web", "/k"},
		{"--format", "json", "--host", "web1", "--unit", "u", "--addr", "10.0.0.1:8080", "--weight", "3", "/k"},
		{"--format", "json", "--host", "web1", "--unit", "u", "--addr", "10.0.0.1:8080", "--weight", "0", "--tag", "drain", "--meta", "zone=a=b", "/k"},
		{"--format", "json", "--host", "web1", "--unit", "u", "--addr", "[fd00::1]:80", "--meta", "note=ünïcode <ok>", "/k"},
	}
	var b strings.Builder
	for _, args := range cases {
		o, err := parse(args, io.Discard, getenv)
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		b.WriteString("announce " + strings.Join(args, " ") + "\n\t" + o.cfg.Value + "\n")
	}
	golden := filepath.Join("testdata", "values.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if b.String() != string(want) {
		t.Errorf("values differ from %s (go test -update rewrites it):\n%s", golden, b.String())
	}
}
