package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/registry"
	"github.com/flotilla/flotilla/internal/unit"
)

// TestStartMany: start, stop and submit of many unit files in one command
// (batched transactions): a file that does not parse stops the command
// before anything is written; otherwise every unit reaches its state, and a
// conflicting body is reported by unit.
func TestStartMany(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	const n = 300 // several transactions, every job read at once
	var files, names []string
	for i := range n {
		name := fmt.Sprintf("web-%03d.service", i)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, fmt.Appendf(nil, "[Service]\nExecStart=/bin/sleep %d\n", 1000+i%5), 0o644); err != nil {
			t.Fatal(err)
		}
		files, names = append(files, p), append(names, name)
	}
	bad := filepath.Join(dir, "bad.service")
	if err := os.WriteFile(bad, []byte("[Service]\nExecStart=/bin/true\n[X-Fleet]\nBogus=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	jobs := func() map[string]registry.Job {
		t.Helper()
		s, err := e.reg.Snapshot(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s.Jobs
	}

	if _, _, err := e.run(append([]string{"start", "--no-block"}, append(files, bad)...)...); err == nil || !strings.Contains(err.Error(), bad+":4:") {
		t.Fatalf("start with a bad file: %v, want %s:4:", err, bad)
	}
	if js := jobs(); len(js) != 0 {
		t.Fatalf("a bad file among %d: %d jobs written, want none", n, len(js))
	}

	if _, _, err := e.run(append([]string{"start", "--no-block"}, files...)...); err != nil {
		t.Fatal(err)
	}
	js := jobs()
	for i, name := range names {
		body, _ := os.ReadFile(files[i])
		if j := js[name]; j.Desired != registry.Launched || j.Hash != unit.Hash(body) {
			t.Errorf("%s: job %+v after start", name, j)
		}
		if _, err := e.reg.Body(e.ctx, js[name].Hash); err != nil {
			t.Errorf("%s: body: %v", name, err)
		}
	}

	if _, _, err := e.run(append([]string{"stop", "--no-block"}, names...)...); err != nil {
		t.Fatal(err)
	}
	for name, j := range jobs() {
		if j.Desired != registry.Loaded {
			t.Errorf("%s: job %+v after stop", name, j)
		}
	}

	// One changed body among unchanged ones: that unit is named.
	if err := os.WriteFile(files[7], []byte("[Service]\nExecStart=/bin/sleep 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, _, err := e.run(append([]string{"submit"}, files...)...)
	if !errors.Is(err, registry.ErrConflict) || !strings.Contains(err.Error(), names[7]) {
		t.Errorf("submit with one changed body: %v, want a conflict naming %s", err, names[7])
	}
}
