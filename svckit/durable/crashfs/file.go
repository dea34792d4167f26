package crashfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"syscall"
	"time"
)

// An open file: reads and writes on the programs' image of its inode,
// Sync copies that image to the durable one. A handle opened before a
// PowerCut answers ErrStopped. Then the FileInfo values Stat and ReadDir
// return, copied under the lock.

type file struct {
	c      *FS
	n      *inode
	name   string
	gen    int
	write  bool
	append bool  // O_APPEND: Write goes to the end, WriteAt is refused (as os.File does)
	off    int64 // where the next Write goes when not appending
	shut   bool
}

// check says whether the file may be used. Caller holds c.mu.
func (f *file) check(op string) error {
	switch {
	case f.shut:
		return &fs.PathError{Op: op, Path: f.name, Err: fs.ErrClosed}
	case f.gen != f.c.gen:
		return &fs.PathError{Op: op, Path: f.name, Err: ErrStopped}
	}
	return nil
}

func (f *file) ReadAt(p []byte, off int64) (int, error) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	if err := f.check("read"); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, &fs.PathError{Op: "read", Path: f.name, Err: syscall.EINVAL}
	}
	if off >= int64(len(f.n.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.n.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// errAppendWriteAt is os.File's answer to WriteAt on an O_APPEND file,
// whose writes must go to the end whatever the offset.
var errAppendWriteAt = errors.New("invalid use of WriteAt on file opened with O_APPEND")

func (f *file) WriteAt(p []byte, off int64) (int, error) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	if f.append {
		return 0, &fs.PathError{Op: "writeat", Path: f.name, Err: errAppendWriteAt}
	}
	return f.writeLocked(p, off)
}

// Write writes p at the end of the file when it was opened with O_APPEND
// (the end as it is now, under the lock, so appends from several handles
// do not overwrite each other), and otherwise where the previous Write
// ended (the start at first), as os.File's Write does.
func (f *file) Write(p []byte) (int, error) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	off := f.off
	if f.append {
		off = int64(len(f.n.data))
	}
	n, err := f.writeLocked(p, off)
	// A short write (no space for the rest) moves the offset too, as
	// write(2)'s does.
	f.off = off + int64(n)
	return n, err
}

// writeLocked writes p at off. Caller holds c.mu.
func (f *file) writeLocked(p []byte, off int64) (int, error) {
	if err := f.check("write"); err != nil {
		return 0, err
	}
	if !f.write {
		return 0, &fs.PathError{Op: "write", Path: f.name, Err: errors.New("not open for writing")}
	}
	if off < 0 {
		return 0, &fs.PathError{Op: "write", Path: f.name, Err: syscall.EINVAL}
	}
	if err := f.c.mutate(fmt.Sprintf("write %s %d+%d", f.name, off, len(p))); err != nil {
		return 0, err
	}
	// Without room for all of p, write what fits (possibly nothing) and
	// say ENOSPC, as Linux does on a full tmpfs.
	k := int64(len(p))
	var err error
	if size, room := int64(len(f.n.data)), f.c.room(); off+k-size > room {
		k = max(size+room-off, 0) // room < off+k-size: no overflow
		err = f.c.noSpace("write", f.name)
	}
	if k == 0 {
		return 0, err
	}
	if end := off + k; end > int64(len(f.n.data)) {
		f.c.resize(f.n, end) // fits: k was cut to the room
	}
	copy(f.n.data[off:], p[:k])
	f.n.mtime = time.Now()
	return int(k), err
}

func (f *file) Truncate(size int64) error {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	if err := f.check("truncate"); err != nil {
		return err
	}
	if size < 0 {
		return &fs.PathError{Op: "truncate", Path: f.name, Err: syscall.EINVAL}
	}
	if err := f.c.mutate(fmt.Sprintf("truncate %s %d", f.name, size)); err != nil {
		return err
	}
	if !f.c.resize(f.n, size) {
		return f.c.noSpace("truncate", f.name)
	}
	return nil
}

func (f *file) Sync() error {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	if err := f.check("fsync"); err != nil {
		return err
	}
	if err := f.c.mutate("fsync " + f.name); err != nil {
		return err
	}
	f.n.durable = slices.Clone(f.n.data)
	return nil
}

func (f *file) Stat() (fs.FileInfo, error) {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	if err := f.check("stat"); err != nil {
		return nil, err
	}
	return infoOf(filepath.Base(f.name), f.n), nil
}

func (f *file) Close() error {
	f.c.mu.Lock()
	defer f.c.mu.Unlock()
	if f.shut {
		return &fs.PathError{Op: "close", Path: f.name, Err: fs.ErrClosed}
	}
	f.shut = true
	if f.gen == f.c.gen { // PowerCut already forgot older handles
		f.n.opens--
		f.c.forgetIfFree(f.n)
	}
	return nil
}

// Sys is what the Sys method of this package's fs.FileInfo values
// returns: what a path does not tell, because a rename or a power cut
// can put another file at the same path.
type Sys struct {
	// Ino is the inode number, unique and never reused within one FS.
	Ino uint64
}

// info is a copy taken under the lock, so it can be read without it.
type info struct {
	name  string
	size  int64
	dir   bool
	perm  fs.FileMode
	mtime time.Time
	ino   uint64
}

func infoOf(name string, n *inode) info {
	i := info{name: name, size: int64(len(n.data)), dir: n.dir, perm: n.mode, mtime: n.mtime, ino: n.ino}
	if n.dir {
		i.size = dirSize
	}
	return i
}

func (i info) Name() string { return i.name }
func (i info) Size() int64  { return i.size }
func (i info) Mode() fs.FileMode {
	if i.dir {
		return fs.ModeDir | i.perm
	}
	return i.perm
}
func (i info) ModTime() time.Time { return i.mtime }
func (i info) IsDir() bool        { return i.dir }
func (i info) Sys() any           { return Sys{Ino: i.ino} }
