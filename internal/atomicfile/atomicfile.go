// Package atomicfile replaces a file in one step: readers see the old content
// or the new, never a part, and after a crash the file is one of the two.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// Write puts content at path with mode: it writes a temporary file beside
// path (creating the directory if needed), syncs it, renames it over path
// and syncs the directory. On error path is untouched and the temporary
// file is gone.
func Write(path string, content []byte, mode os.FileMode) error {
	if err := write(path, content, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func write(path string, content []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = f.Chmod(mode) // CreateTemp's 0600, and the umask, undone
	if err == nil {
		_, err = f.Write(content)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // the rename itself survives a crash; best effort
		d.Close()
	}
	return nil
}
