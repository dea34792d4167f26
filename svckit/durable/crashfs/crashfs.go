// Package crashfs is an in-memory durable.FS that can lose power.
//
// It keeps two images of everything: what the programs see, and what has
// been made durable. A file's data becomes durable when the file is
// fsynced; a directory's entries (creates, renames, removes) when the
// directory is fsynced. PowerCut throws the first image away and keeps the
// second, the strictest behaviour POSIX allows and the one Jepsen's LazyFS
// reproduces: nothing that was not fsynced survives.
//
// StopAfter makes the filesystem refuse every operation after the n-th
// one, as if the machine stopped at that instant; the test then calls
// PowerCut and opens what is left. Running a workload once per n explores
// every write, fsync, create, rename and remove boundary in turn.
//
// SetSpace gives the filesystem a size, as a small tmpfs has: writes that
// would grow its files beyond it fail with ENOSPC (partially, as Linux's
// do), while creating, renaming, removing and fsyncing keep working.
//
// The repository's internal/crashfuse serves an FS over FUSE, so that
// whole processes (not only code calling the FS directly) can keep their
// data on it, be killed, and restart on what a power cut left.
//
// It is for tests (svckit's own and importers'); nothing in svckit's
// binaries links it.
package crashfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/svckit/svckit/svckit/durable"
)

// ErrStopped is returned by every operation after the machine stopped
// (StopAfter) or by a file opened before a PowerCut.
var ErrStopped = errors.New("crashfs: the machine is stopped")

type inode struct {
	ino     uint64      // identity across renames; never reused within one FS
	mode    fs.FileMode // permission bits only
	dir     bool
	data    []byte            // files: what programs see
	durable []byte            // files: what survives a power cut
	ents    map[string]*inode // dirs: what programs see
	dents   map[string]*inode // dirs: what survives a power cut
	mtime   time.Time
	// Files only, for the space accounting (see FS.Used): links is the
	// number of entries naming the file in the programs' view, opens the
	// number of handles opened since the last PowerCut and not closed.
	links, opens int
}

// counted reports whether n's data takes space: a file that a name in the
// programs' view or an open handle still reaches. Caller holds mu.
func (n *inode) counted() bool { return !n.dir && (n.links > 0 || n.opens > 0) }

// RootIno is the root directory's inode number (the one FUSE gives its
// root); every other inode gets a higher one.
const RootIno = 1

// dirSize is what Stat reports as a directory's size: one block, as ext4
// does for a small directory, because some programs take a size of 0 for
// a broken filesystem; nothing here depends on its value.
const dirSize = 4096

func (c *FS) newDir(perm fs.FileMode) *inode {
	c.lastIno++
	return &inode{ino: c.lastIno, mode: perm.Perm(), dir: true, ents: map[string]*inode{}, dents: map[string]*inode{}, mtime: time.Now()}
}

func (c *FS) newFile(perm fs.FileMode) *inode {
	c.lastIno++
	return &inode{ino: c.lastIno, mode: perm.Perm(), mtime: time.Now()}
}

// FS is the filesystem. The zero value is not usable; call New.
type FS struct {
	mu      sync.Mutex
	root    *inode
	gen     int // bumped by PowerCut: files opened before are stale
	ops     int // mutating operations done so far
	stopAt  int // refuse operations after this many; <0 never
	stopped bool
	trace   []string
	lastIno uint64 // the highest inode number handed out
	space   int64  // SetSpace's limit on used; <0 none
	used    int64  // bytes of data of the counted files (see Used)
}

// New returns an empty filesystem whose root directory exists durably,
// with no limit on its space.
func New() *FS {
	c := &FS{stopAt: -1, lastIno: RootIno - 1, space: -1}
	c.root = c.newDir(0o755)
	return c
}

var _ durable.FS = (*FS)(nil)

// StopAfter makes every mutating operation after the n-th (counted from
// now) fail with ErrStopped, without effect; reads keep working. n < 0
// lifts it.
func (c *FS) StopAfter(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n < 0 {
		c.stopAt = -1
		return
	}
	c.stopAt = c.ops + n
}

// Ops is the number of mutating operations done so far.
func (c *FS) Ops() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ops
}

// Stopped reports whether an operation was refused since the last PowerCut.
func (c *FS) Stopped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped
}

// SetSpace limits the filesystem to n bytes of file data from now on
// (n < 0: no limit, what New starts with), as a tmpfs mounted with
// size=n; calling it again resizes it at once, as `mount -o remount,size=`
// does.
//
// What counts is the size of every regular file in the programs' view
// (see Used): a write (WriteAt, Write) or a truncate that would take Used
// beyond n fails with a *fs.PathError whose Err is syscall.ENOSPC. A write
// is partial then, as on a full tmpfs: it writes the bytes that still fit
// and returns their count with the error, so callers must cope with a
// short write. Writes that do not grow a file (overwrites), shrinking a
// file and the metadata operations (create, mkdir, rename, remove, fsync)
// never fail for space: directories and durability cost nothing here.
//
// A limit below Used is allowed: everything that would grow a file fails
// until enough is freed (removing a file that nothing holds open any
// more, or truncating one) or the limit is raised.
//
// An operation that fails for space is counted by StopAfter and traced
// like any other (with ": ENOSPC" added to its line), so a workload does
// the same numbered operations whatever the limit; a stop comes first,
// so a stopped machine answers ErrStopped, never ENOSPC.
func (c *FS) SetSpace(n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.space = max(n, -1)
}

// Used is the space in use: the total size of the regular files that a
// name in the programs' view reaches, plus that of the files removed (or
// replaced by a rename) while a handle opened since the last PowerCut
// still holds them open; a file under several names counts once. A
// file's durable image is not counted on top: a real filesystem writes
// the same blocks back. Directories take nothing.
//
// After a PowerCut it is the durable size of the files that are left,
// which may exceed the limit: a removal that was not made durable brings
// its file back.
func (c *FS) Used() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used
}

// room is how many bytes the files may still grow by. Caller holds mu.
func (c *FS) room() int64 {
	if c.space < 0 {
		return 1<<63 - 1
	}
	return max(c.space-c.used, 0)
}

// noSpace marks the operation just counted by mutate as refused for
// space and returns the error the OS gives. Caller holds mu.
func (c *FS) noSpace(op, name string) error {
	if len(c.trace) > 0 {
		c.trace[len(c.trace)-1] += ": ENOSPC"
	}
	return &fs.PathError{Op: op, Path: name, Err: syscall.ENOSPC}
}

// unlinked drops one name of n from the programs' view. Caller holds mu.
func (c *FS) unlinked(n *inode) {
	if n.dir {
		return
	}
	n.links--
	c.forgetIfFree(n)
}

// forgetIfFree gives n's bytes back when nothing reaches it any more.
// Caller holds mu.
func (c *FS) forgetIfFree(n *inode) {
	if !n.dir && n.links <= 0 && n.opens <= 0 {
		c.used -= int64(len(n.data))
		// Nothing can read it any more (a PowerCut that brings the file
		// back restores it from its durable image); dropping it makes a
		// second call subtract nothing.
		n.data = nil
		n.links, n.opens = 0, 0
	}
}

// Trace returns the mutating operations done so far, one line each (for
// a failing test's message).
func (c *FS) Trace() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.trace)
}

// PowerCut loses everything that was not made durable: every file's data
// returns to its last fsync, every directory's entries to its last
// directory fsync. Files opened before are unusable (ErrStopped); the stop
// set by StopAfter is lifted.
//
// It is atomic with respect to every other method, so it may be called
// while other goroutines (a FUSE server's) are using the FS: each
// operation happens wholly before or wholly after the cut. Inode numbers
// survive the cut, so a file that comes back keeps its identity. A file
// renamed across directories where only one of the two was fsynced may
// come back under both names (as a hard link); that is a state a real
// filesystem can reach too.
//
// The space limit (SetSpace) stays; Used is counted afresh from what is
// left: the durable size of every file a name reaches, since no handle
// survives the cut. It may exceed the limit (see Used).
func (c *FS) PowerCut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.used = 0
	seen := map[*inode]bool{}
	var walk func(d *inode)
	walk = func(d *inode) {
		seen[d] = true
		d.ents = make(map[string]*inode, len(d.dents))
		for name, ch := range d.dents {
			d.ents[name] = ch
			switch {
			case ch.dir:
				if !seen[ch] {
					walk(ch)
				}
			default:
				if !seen[ch] {
					seen[ch] = true
					ch.data = slices.Clone(ch.durable)
					ch.links, ch.opens = 0, 0 // no handle survives the cut
					c.used += int64(len(ch.data))
				}
				ch.links++ // once per entry naming it
			}
		}
	}
	walk(c.root)
	c.gen++
	c.stopAt = -1
	c.stopped = false
	c.trace = append(c.trace, "--- power cut ---")
}

// mutate counts one mutating operation and says whether it may happen.
// Caller holds mu.
func (c *FS) mutate(what string) error {
	if c.stopAt >= 0 && c.ops >= c.stopAt {
		c.stopped = true
		return fmt.Errorf("%s: %w", what, ErrStopped)
	}
	c.ops++
	c.trace = append(c.trace, what)
	return nil
}

func split(name string) []string {
	name = filepath.ToSlash(filepath.Clean(name))
	name = strings.Trim(name, "/")
	if name == "" || name == "." {
		return nil
	}
	return strings.Split(name, "/")
}

// lookup returns the parent directory of name and name's inode (nil if
// absent). Caller holds mu.
func (c *FS) lookup(name string) (parent *inode, base string, n *inode, err error) {
	parts := split(name)
	if len(parts) == 0 {
		return nil, "", c.root, nil
	}
	d := c.root
	for _, p := range parts[:len(parts)-1] {
		ch := d.ents[p]
		if ch == nil {
			return nil, "", nil, &fs.PathError{Op: "lookup", Path: name, Err: fs.ErrNotExist}
		}
		if !ch.dir {
			return nil, "", nil, &fs.PathError{Op: "lookup", Path: name, Err: syscall.ENOTDIR}
		}
		d = ch
	}
	base = parts[len(parts)-1]
	return d, base, d.ents[base], nil
}

// OpenFile opens name. O_CREATE, O_EXCL, O_TRUNC and O_APPEND are
// honoured; perm is the new file's permission bits.
func (c *FS) OpenFile(name string, flag int, perm fs.FileMode) (durable.File, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	parent, base, n, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	switch {
	case n == nil && flag&os.O_CREATE == 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	case n != nil && flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrExist}
	case n != nil && n.dir:
		return nil, &fs.PathError{Op: "open", Path: name, Err: syscall.EISDIR}
	case n == nil && parent == nil:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	case n == nil:
		if err := c.mutate("create " + name); err != nil {
			return nil, err
		}
		n = c.newFile(perm)
		n.links = 1
		parent.ents[base] = n
	}
	if flag&os.O_TRUNC != 0 && len(n.data) > 0 {
		if err := c.mutate("truncate " + name + " 0"); err != nil {
			return nil, err
		}
		c.resize(n, 0)
	}
	n.opens++
	return &file{c: c, n: n, name: name, gen: c.gen,
		write: flag&(os.O_WRONLY|os.O_RDWR) != 0, append: flag&os.O_APPEND != 0}, nil
}

// ReadDir lists name's entries, sorted.
func (c *FS) ReadDir(name string) ([]fs.DirEntry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _, n, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	if n == nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: fs.ErrNotExist}
	}
	if !n.dir {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: syscall.ENOTDIR}
	}
	out := make([]fs.DirEntry, 0, len(n.ents))
	for nm, ch := range n.ents {
		out = append(out, fs.FileInfoToDirEntry(infoOf(nm, ch)))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

// Stat describes name.
func (c *FS) Stat(name string) (fs.FileInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, base, n, err := c.lookup(name)
	if err != nil {
		return nil, err
	}
	if n == nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	}
	return infoOf(base, n), nil
}

// Mkdir creates a directory (durable once its parent is fsynced) with
// permission bits perm.
func (c *FS) Mkdir(name string, perm fs.FileMode) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	parent, base, n, err := c.lookup(name)
	if err != nil {
		return err
	}
	if n != nil {
		return &fs.PathError{Op: "mkdir", Path: name, Err: fs.ErrExist}
	}
	if err := c.mutate("mkdir " + name); err != nil {
		return err
	}
	parent.ents[base] = c.newDir(perm)
	return nil
}

// Remove unlinks a file or an empty directory.
func (c *FS) Remove(name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	parent, base, n, err := c.lookup(name)
	if err != nil {
		return err
	}
	if n == nil || parent == nil {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	if n.dir && len(n.ents) > 0 {
		return &fs.PathError{Op: "remove", Path: name, Err: syscall.ENOTEMPTY}
	}
	if err := c.mutate("remove " + name); err != nil {
		return err
	}
	delete(parent.ents, base)
	c.unlinked(n)
	return nil
}

// Rename moves oldpath to newpath, replacing a file (or, when oldpath is
// a directory, an empty directory) there, with rename(2)'s rules.
func (c *FS) Rename(oldpath, newpath string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	op, ob, n, err := c.lookup(oldpath)
	if err != nil {
		return err
	}
	if n == nil || op == nil {
		return &fs.PathError{Op: "rename", Path: oldpath, Err: fs.ErrNotExist}
	}
	np, nb, old, err := c.lookup(newpath)
	if err != nil {
		return err
	}
	if np == nil {
		return &fs.PathError{Op: "rename", Path: newpath, Err: syscall.EBUSY}
	}
	switch {
	case old == n:
		// Two names of one inode (see PowerCut): rename(2) does nothing.
		return nil
	case old != nil && old.dir && !n.dir:
		return &fs.PathError{Op: "rename", Path: newpath, Err: syscall.EISDIR}
	case old != nil && !old.dir && n.dir:
		return &fs.PathError{Op: "rename", Path: newpath, Err: syscall.ENOTDIR}
	case old != nil && old.dir && len(old.ents) > 0:
		return &fs.PathError{Op: "rename", Path: newpath, Err: syscall.ENOTEMPTY}
	case n.dir && c.within(np, n):
		// Moving a directory under itself would cut it off the tree.
		return &fs.PathError{Op: "rename", Path: newpath, Err: syscall.EINVAL}
	}
	if err := c.mutate("rename " + oldpath + " " + newpath); err != nil {
		return err
	}
	delete(op.ents, ob)
	np.ents[nb] = n
	if old != nil {
		c.unlinked(old)
	}
	return nil
}

// within reports whether directory d is dir or below it. Caller holds mu.
func (c *FS) within(d, dir *inode) bool {
	if d == dir {
		return true
	}
	for _, ch := range dir.ents {
		if ch.dir && c.within(d, ch) {
			return true
		}
	}
	return false
}

// Truncate changes name's size, as os.Truncate does. Like a write, the
// new size is durable once the file is fsynced.
func (c *FS) Truncate(name string, size int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _, n, err := c.lookup(name)
	if err != nil {
		return err
	}
	switch {
	case n == nil:
		return &fs.PathError{Op: "truncate", Path: name, Err: fs.ErrNotExist}
	case n.dir:
		return &fs.PathError{Op: "truncate", Path: name, Err: syscall.EISDIR}
	case size < 0:
		return &fs.PathError{Op: "truncate", Path: name, Err: syscall.EINVAL}
	}
	if err := c.mutate(fmt.Sprintf("truncate %s %d", name, size)); err != nil {
		return err
	}
	if !c.resize(n, size) {
		return c.noSpace("truncate", name)
	}
	return nil
}

// Chmod sets name's permission bits. Modes are outside the power-loss
// model (a change is kept by PowerCut at once and is not counted by
// StopAfter): nothing svckit does for durability depends on them, and
// FUSE needs somewhere to keep a chmod.
func (c *FS) Chmod(name string, mode fs.FileMode) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _, n, err := c.lookup(name)
	if err != nil {
		return err
	}
	if n == nil {
		return &fs.PathError{Op: "chmod", Path: name, Err: fs.ErrNotExist}
	}
	n.mode = mode.Perm()
	return nil
}

// resize sets a file's visible size, zero-filling when it grows, unless
// growing takes more space than is left: then it changes nothing and
// returns false. Caller holds mu.
func (c *FS) resize(n *inode, size int64) bool {
	old := int64(len(n.data))
	if size > old && size-old > c.room() {
		return false
	}
	if size <= old {
		n.data = n.data[:size]
	} else {
		n.data = append(n.data, make([]byte, size-old)...)
	}
	if n.counted() {
		c.used += size - old
	}
	n.mtime = time.Now()
	return true
}

// SyncDir makes the directory's current entries durable.
func (c *FS) SyncDir(name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, _, n, err := c.lookup(name)
	if err != nil {
		return err
	}
	if n == nil || !n.dir {
		return &fs.PathError{Op: "fsync", Path: name, Err: fs.ErrNotExist}
	}
	if err := c.mutate("fsync dir " + name); err != nil {
		return err
	}
	n.dents = make(map[string]*inode, len(n.ents))
	for k, v := range n.ents {
		n.dents[k] = v
	}
	return nil
}

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
