package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"testing"

	"github.com/flotilla/flotilla/internal/cmdline"
)

// TestMain lets the test binary stand in for the program when the
// process-start measurement runs it again with -noop.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "-noop" {
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestRun(t *testing.T) {
	var out, errw bytes.Buffer
	if err := run(context.Background(), []string{"-runs", "3", "-mib", "4"}, &out, &errw); err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	dec := json.NewDecoder(&out)
	for dec.More() {
		var r struct {
			Name, Unit string
			Value      float64
		}
		if err := dec.Decode(&r); err != nil {
			t.Fatal(err)
		}
		got[r.Name+" "+r.Unit] = r.Value
	}
	for _, k := range []string{"machine.GoProcessStart ms", "machine.PageFault us/page"} {
		if v, ok := got[k]; !ok || v <= 0 {
			t.Errorf("%s = %v (present %v), want a positive figure; all: %v", k, v, ok, got)
		}
	}
}

func TestBadFlags(t *testing.T) {
	var out, errw bytes.Buffer
	err := run(context.Background(), []string{"-runs", "0"}, &out, &errw)
	var ue *cmdline.UsageError
	if !errors.As(err, &ue) {
		t.Fatalf("-runs 0: %v, want a usage error", err)
	}
}
