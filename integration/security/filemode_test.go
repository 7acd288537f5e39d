package security

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/fsnotify/fsnotify"
)

// TestRenderedFileModeFromFirstByte renders a resource asking for mode 0600
// under umask 000, many times with changing data, while a watcher stats
// every file created in the destination directory the moment it appears and
// check_cmd records the staged file's mode: no file there is ever readable
// by group or others, and the destination ends 0600.
func TestRenderedFileModeFromFirstByte(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"conf.d", "templates"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	destDir := t.TempDir()
	dest := filepath.Join(destDir, "secret.cfg")
	modes := filepath.Join(t.TempDir(), "modes")
	toml := fmt.Sprintf("[template]\nsrc = \"s.tmpl\"\ndest = %q\nkeys = [\"/s\"]\nmode = \"0600\"\n"+
		"check_cmd = \"stat -c %%a {{.src}} >> %s\"\n", dest, modes)
	os.WriteFile(filepath.Join(dir, "conf.d", "s.toml"), []byte(toml), 0o644)
	os.WriteFile(filepath.Join(dir, "templates", "s.tmpl"), []byte("password={{getv \"/s/password\"}}\n"), 0o644)

	w, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Add(destDir); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]os.FileMode{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ev := range w.Events {
			if ev.Op&(fsnotify.Create|fsnotify.Chmod|fsnotify.Write) == 0 {
				continue
			}
			if st, err := os.Lstat(ev.Name); err == nil {
				mu.Lock()
				if st.Mode().Perm()&0o077 != 0 || seen[ev.Name] == 0 {
					seen[ev.Name] |= st.Mode().Perm() | 0o1000 // 0o1000 marks "seen"
				}
				mu.Unlock()
			}
		}
	}()
	data := filepath.Join(t.TempDir(), "data.yaml")
	const rounds = 20
	for i := 0; i < rounds; i++ {
		os.WriteFile(data, []byte(fmt.Sprintf("s:\n  password: \"secret-%d\"\n", i)), 0o600)
		out, err := runWith(nil, "/bin/sh", "-c", `umask 000; exec "$@"`, "sh",
			bin("render"), "-backend", "file", "-file", data, "-confdir", dir, "-onetime")
		if err != nil {
			t.Fatalf("render round %d: %v\n%s", i, err, out)
		}
	}
	w.Close()
	wg.Wait()

	st, err := os.Stat(dest)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %o, want 600", dest, st.Mode().Perm())
	}
	b, _ := os.ReadFile(modes)
	staged := strings.Fields(string(b))
	if len(staged) != rounds {
		t.Errorf("check_cmd saw %d staged files, want %d", len(staged), rounds)
	}
	for _, m := range staged {
		if m != "600" {
			t.Errorf("a staged file had mode %s at check time", m)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 2 {
		t.Errorf("the watcher saw %d files; it did not watch the renders", len(seen))
	}
	for name, m := range seen {
		if m&0o077 != 0 {
			t.Errorf("%s was readable by group or others (mode %o) while being written", name, m&0o777)
		}
	}
	t.Logf("watched %d files created in the destination directory; staged modes: %v", len(seen), staged[:min(3, len(staged))])
}
