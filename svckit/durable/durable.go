// Package durable is the filesystem svckit keeps its state in, reduced to
// the calls that decide what survives a power loss: writes, fsync of a file,
// fsync of a directory, create, rename and remove.
//
// Everything svckit persists (retained log segments, the owner's snapshot
// and published watermark, a tracker's checkpoint) goes through an FS, so
// tests can put it on a filesystem that forgets what was never fsynced
// (package crashfs) and cut the power at every step. OS is the real one.
//
// The rules every writer here follows, the ones that make a power loss safe
// (Pillai et al., "All File Systems Are Not Created Equal", OSDI 2014):
//   - fsync a file before anything that depends on its contents is made durable;
//   - fsync the directory after a create, rename or remove that must survive;
//   - never make metadata durable ahead of the data it describes.
package durable

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// File is an open file of an FS.
type File interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	// Sync makes the file's contents durable (fsync).
	Sync() error
	Stat() (fs.FileInfo, error)
	Close() error
}

// FS is a filesystem. Paths are OS paths (filepath).
type FS interface {
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	ReadDir(name string) ([]fs.DirEntry, error)
	Stat(name string) (fs.FileInfo, error)
	Mkdir(name string, perm fs.FileMode) error
	Remove(name string) error
	Rename(oldpath, newpath string) error
	// SyncDir makes the directory's entries durable: the creates, renames
	// and removes done in it so far.
	SyncDir(name string) error
}

// OS is the operating system's filesystem.
func OS() FS { return osFS{} }

type osFS struct{}

func (osFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err // *os.File in an interface would be non-nil
	}
	return f, nil
}
func (osFS) ReadDir(name string) ([]fs.DirEntry, error) { return os.ReadDir(name) }
func (osFS) Stat(name string) (fs.FileInfo, error)      { return os.Stat(name) }
func (osFS) Mkdir(name string, perm fs.FileMode) error  { return os.Mkdir(name, perm) }
func (osFS) Remove(name string) error                   { return os.Remove(name) }
func (osFS) Rename(oldpath, newpath string) error       { return os.Rename(oldpath, newpath) }
func (osFS) SyncDir(name string) error {
	d, err := os.Open(name)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Or returns fsys, or OS when it is nil (the zero value of an Options
// field).
func Or(fsys FS) FS {
	if fsys == nil {
		return OS()
	}
	return fsys
}

// MkdirAll creates dir and any missing parents, and fsyncs the parent of
// every directory it creates, so that the directory survives a power loss.
func MkdirAll(fsys FS, dir string) error {
	dir = filepath.Clean(dir)
	fi, err := fsys.Stat(dir)
	if err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", dir)
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := MkdirAll(fsys, parent); err != nil {
			return err
		}
	}
	if err := fsys.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := fsys.SyncDir(parent); err != nil {
		return fmt.Errorf("fsync directory %s: %w", parent, err)
	}
	return nil
}

// SyncParents fsyncs dir's parent and every directory above it, so that
// dir's own entry, and theirs, are durable: a directory created by a
// program that did not fsync its parent can vanish in a power loss with
// everything in it.
func SyncParents(fsys FS, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for {
		parent := filepath.Dir(dir)
		if parent == dir {
			return nil
		}
		if err := fsys.SyncDir(parent); err != nil {
			return fmt.Errorf("fsync directory %s: %w", parent, err)
		}
		dir = parent
	}
}

// ReadFile reads the whole file.
func ReadFile(fsys FS, name string) ([]byte, error) {
	f, err := fsys.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	b := make([]byte, fi.Size())
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:n], nil
}

// WriteFileAtomic replaces path's contents with b so that a crash or power
// loss at any point leaves either the old or the new contents: it writes a
// temporary file, fsyncs it, renames it over path and fsyncs the directory.
// When it returns nil the new contents are durable.
func WriteFileAtomic(fsys FS, path string, b []byte) error {
	dir := filepath.Dir(path)
	if err := MkdirAll(fsys, dir); err != nil {
		return fmt.Errorf("creating directory for %s: %w", path, err)
	}
	tmp := path + ".tmp"
	f, err := fsys.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	_, err = f.WriteAt(b, 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, path)
	}
	if err != nil {
		_ = fsys.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := fsys.SyncDir(dir); err != nil {
		return fmt.Errorf("writing %s: fsync directory %s: %w", path, dir, err)
	}
	return nil
}

// IsTemp reports whether name is a temporary file WriteFileAtomic may leave
// behind after a crash.
func IsTemp(name string) bool { return strings.HasSuffix(name, ".tmp") }

// ReadOrCreateID returns the id kept in the file at path, creating the file
// durably with a new random id when there is none: an identity that travels
// with a directory (a stream's log, say) when it is moved or copied.
func ReadOrCreateID(fsys FS, path string) (string, error) {
	b, err := ReadFile(fsys, path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if id == "" {
			return "", fmt.Errorf("%s is empty (delete it to make a new id)", path)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("making an id for %s: %w", path, err)
	}
	id := hex.EncodeToString(raw[:])
	if err := WriteFileAtomic(fsys, path, []byte(id+"\n")); err != nil {
		return "", err
	}
	return id, nil
}
