package atomicfile_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flotilla/flotilla/internal/atomicfile"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "f.conf")
	for _, tc := range []struct {
		content string
		mode    os.FileMode
	}{{"one\n", 0o644}, {"two\n", 0o600}} {
		if err := atomicfile.Write(path, []byte(tc.content), tc.mode); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil || string(b) != tc.content {
			t.Fatalf("content = %q, %v; want %q", b, err, tc.content)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != tc.mode {
			t.Errorf("mode = %v, want %v", fi.Mode().Perm(), tc.mode)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "sub", ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestWriteFailsWithoutTouchingTheFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	os.WriteFile(path, []byte("old"), 0o644)
	// A directory where the file should go cannot be renamed over.
	target := filepath.Join(dir, "d")
	os.Mkdir(target, 0o755)
	os.WriteFile(filepath.Join(target, "x"), nil, 0o644)
	err := atomicfile.Write(target, []byte("new"), 0o644)
	if err == nil || !strings.Contains(err.Error(), target) {
		t.Fatalf("Write over a non-empty directory: %v; want an error naming %s", err, target)
	}
	if b, _ := os.ReadFile(path); string(b) != "old" {
		t.Errorf("other file changed: %q", b)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
