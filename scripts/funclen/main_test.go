package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// body returns a function of n lines in all.
func body(decl string, n int) string {
	return decl + " {\n" + strings.Repeat("\t_ = 0\n", n-2) + "}\n"
}

func TestLongFuncs(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"a/a.go":               "package a\n\n" + body("func Short()", maxLines) + body("func Long()", maxLines+1),
		"a/m.go":               "package a\n\ntype T[X any] struct{}\n\n" + body("func (t *T[X]) Method()", maxLines+5),
		"a/a_test.go":          "package a\n\n" + body("func TestLong()", maxLines+50),
		"a/testdata/x.go":      "package x\n\n" + body("func InTestdata()", maxLines+50),
		".hidden/h.go":         "package h\n\n" + body("func Hidden()", maxLines+50),
		"cmd/scheduler/s.go":   "package main\n\n" + body("func other()", 3),
		"internal/ok/ok.go":    "package ok\n\n" + body("func F()", 10),
		"internal/ok/empty.go": "package ok\n",
	}
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := longFuncs(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []longFunc{{"a/a.go:Long", maxLines + 1}, {"a/m.go:T.Method", maxLines + 5}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("longFuncs = %v, want %v", got, want)
	}
	err = run(context.Background(), []string{dir}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "a/a.go:Long: 121 lines") || !strings.Contains(err.Error(), "a/m.go:T.Method") {
		t.Errorf("run = %v, want both long functions named", err)
	}
}
