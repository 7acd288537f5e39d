// Package atomicfile replaces a file in one step: readers see the old content
// or the new, never a part, and after a crash the file is one of the two.
//
// Write does it in one call. Stage and Commit split it for a caller that
// checks the new file before it goes in place (render's check_cmd): the
// staged file has its final mode and owner from its first byte, and lives
// beside the destination inside an os.Root, so that nothing outside the
// root is written.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
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
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer root.Close()
	s, err := Stage(root, filepath.Base(path), content, Owner{Mode: mode, UID: -1, GID: -1})
	if err != nil {
		return err
	}
	if err := s.Commit(); err != nil {
		s.Discard()
		return err
	}
	return nil
}

// Owner is a staged file's mode and owner. UID and GID -1 keep the
// process's own.
type Owner struct {
	Mode     os.FileMode
	UID, GID int
}

// Staged is a file written and synced beside its destination, not yet in
// place. Commit or Discard it.
type Staged struct {
	root       *os.Root
	name, dest string // relative to root
}

// Stage writes content to a new hidden file beside dest (a path relative
// to root; its directory must exist), with o's mode and owner set before
// the first byte (the umask undone), and syncs it. Nothing outside root is
// touched: a dest that leads out of it through ".." or a symbolic link is
// an error.
func Stage(root *os.Root, dest string, content []byte, o Owner) (*Staged, error) {
	var rnd [6]byte
	var f *os.File
	var name string
	for range 10 {
		rand.Read(rnd[:])
		name = filepath.Join(filepath.Dir(dest), "."+filepath.Base(dest)+"."+hex.EncodeToString(rnd[:]))
		var err error
		f, err = root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, o.Mode.Perm())
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrExist) {
			return nil, err
		}
	}
	if f == nil {
		return nil, fmt.Errorf("no free staging name beside %s", dest)
	}
	err := SetOwner(f, o)
	if err == nil {
		_, err = f.Write(content)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		root.Remove(name)
		return nil, err
	}
	return &Staged{root: root, name: name, dest: dest}, nil
}

// Name is the staged file's path relative to the root.
func (s *Staged) Name() string { return s.name }

// Commit renames the staged file over its destination and syncs the
// directory. On error (say syscall.EBUSY for a bind-mounted destination)
// the staged file is still there: Discard it.
func (s *Staged) Commit() error {
	if err := s.root.Rename(s.name, s.dest); err != nil {
		return err
	}
	if d, err := s.root.Open(filepath.Dir(s.dest)); err == nil {
		d.Sync() // the rename itself survives a crash; best effort
		d.Close()
	}
	return nil
}

// Discard removes the staged file if it is still there.
func (s *Staged) Discard() { s.root.Remove(s.name) }

// SetOwner gives f o's mode and owner. Only a chown to oneself refused
// (EPERM, as for an unprivileged user whose uid is already the file's) is
// not an error.
func SetOwner(f *os.File, o Owner) error {
	if err := f.Chmod(o.Mode.Perm()); err != nil {
		return err
	}
	if o.UID < 0 && o.GID < 0 {
		return nil
	}
	if err := f.Chown(o.UID, o.GID); err != nil && !(errors.Is(err, syscall.EPERM) && (o.UID < 0 || o.UID == os.Geteuid())) {
		return err
	}
	return nil
}
