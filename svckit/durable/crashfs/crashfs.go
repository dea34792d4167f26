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
	"io/fs"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/svckit/svckit/svckit/durable"
)

// By job: crashfs.go holds the two images (inodes, the FS), the machine's
// controls (StopAfter, SetSpace, PowerCut) and the counting and space
// accounting every operation goes through; paths.go the FS's operations on
// names (open, create, rename, remove, fsync of a directory); file.go an
// open file's operations and the FileInfo values. The FS's one lock (mu)
// guards all of it.

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
