package crashfuse

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/durable/crashfs"
)

// node is one file or directory of the mount. It keeps no state but its
// place in go-fuse's tree: each operation resolves the node's path and
// asks crashfs, so the model stays in one place. go-fuse keeps the tree
// right across renames and unlinks done through the mount, and
// Server.PowerCut resets it. Where a path might now name another inode
// than the one the kernel means, the inode number (crashfs.Sys) tells.
type node struct {
	fusefs.Inode
	m *mount
}

var (
	_ fusefs.NodeLookuper       = (*node)(nil)
	_ fusefs.NodeGetattrer      = (*node)(nil)
	_ fusefs.NodeSetattrer      = (*node)(nil)
	_ fusefs.NodeOpener         = (*node)(nil)
	_ fusefs.NodeCreater        = (*node)(nil)
	_ fusefs.NodeMkdirer        = (*node)(nil)
	_ fusefs.NodeUnlinker       = (*node)(nil)
	_ fusefs.NodeRmdirer        = (*node)(nil)
	_ fusefs.NodeRenamer        = (*node)(nil)
	_ fusefs.NodeFsyncer        = (*node)(nil)
	_ fusefs.NodeOpendirHandler = (*node)(nil)
	_ fusefs.NodeStatfser       = (*node)(nil)

	_ fusefs.FileReader       = (*handle)(nil)
	_ fusefs.FileWriter       = (*handle)(nil)
	_ fusefs.FileReleaser     = (*handle)(nil)
	_ fusefs.FileReaddirenter = (*dirHandle)(nil)
	_ fusefs.FileSeekdirer    = (*dirHandle)(nil)
	_ fusefs.FileFsyncdirer   = (*dirHandle)(nil)
	_ fusefs.FileReleasedirer = (*dirHandle)(nil)
)

// openFlags are the open(2) flags crashfs understands; the kernel adds
// others (O_LARGEFILE, ...) that mean nothing to it. The kernel sends
// O_TRUNC as a SETATTR of the size instead (go-fuse does not ask for
// atomic O_TRUNC), but it is harmless to pass on.
const openFlags = os.O_RDONLY | os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC

// renameNoReplace is RENAME_NOREPLACE (linux/fs.h); package syscall lacks it.
const renameNoReplace = 0x1

func (n *node) path() string { return n.Path(n.m.root.EmbeddedInode()) }

func (n *node) child(name string) string { return filepath.Join(n.path(), name) }

func inoOf(fi fs.FileInfo) uint64 {
	if s, ok := fi.Sys().(crashfs.Sys); ok {
		return s.Ino
	}
	return 0
}

func stableOf(fi fs.FileInfo) fusefs.StableAttr {
	st := fusefs.StableAttr{Mode: syscall.S_IFREG, Ino: inoOf(fi)}
	if fi.IsDir() {
		st.Mode = syscall.S_IFDIR
	}
	return st
}

// fill describes fi to the kernel.
func (m *mount) fill(fi fs.FileInfo, a *fuse.Attr) {
	a.Ino = inoOf(fi)
	a.Size = uint64(fi.Size())
	a.Mode = uint32(fi.Mode().Perm()) | syscall.S_IFREG
	a.Nlink = 1
	if fi.IsDir() {
		a.Mode = uint32(fi.Mode().Perm()) | syscall.S_IFDIR
		a.Nlink = 2
	}
	t := fi.ModTime()
	a.SetTimes(&t, &t, &t)
	a.Uid, a.Gid = m.uid, m.gid
}

// stat describes n by its path, refusing another inode that may sit at
// that path now.
func (n *node) stat() (fs.FileInfo, syscall.Errno) {
	fi, err := n.m.fsys.Stat(n.path())
	if err != nil {
		return nil, errnoOf(err)
	}
	if inoOf(fi) != n.StableAttr().Ino {
		return nil, syscall.ESTALE
	}
	return fi, 0
}

// newChild is the Inode for a child crashfs just described. go-fuse
// returns the existing one when the inode number is known already (a
// file that came back under another name after a power cut, say).
func (n *node) newChild(ctx context.Context, fi fs.FileInfo, out *fuse.EntryOut) *fusefs.Inode {
	n.m.fill(fi, &out.Attr)
	return n.NewInode(ctx, &node{m: n.m}, stableOf(fi))
}

func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	fi, err := n.m.fsys.Stat(n.child(name))
	if err != nil {
		return nil, errnoOf(err)
	}
	return n.newChild(ctx, fi, out), 0
}

// Getattr prefers an open handle (the kernel, or go-fuse for it, passes
// one when the file is open): it names the inode itself, which matters
// for a file unlinked or renamed while open.
func (n *node) Getattr(ctx context.Context, f fusefs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if h, ok := f.(*handle); ok {
		if fi, err := h.f.Stat(); err == nil {
			n.m.fill(fi, &out.Attr)
			return 0
		}
		// A handle from before a power cut; the path may still be good.
	}
	fi, errno := n.stat()
	if errno != 0 {
		return errno
	}
	n.m.fill(fi, &out.Attr)
	return 0
}

// Setattr keeps a size (truncate, ftruncate, O_TRUNC) and a mode (chmod);
// owners and times are accepted and dropped, since nothing in the
// power-loss model depends on them and failing would stop programs that
// set them in passing.
func (n *node) Setattr(ctx context.Context, f fusefs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		var err error
		if h, ok := f.(*handle); ok {
			err = h.f.Truncate(int64(size))
		} else if _, errno := n.stat(); errno != 0 {
			return errno
		} else {
			err = n.m.fsys.Truncate(n.path(), int64(size))
		}
		if err != nil {
			return errnoOf(err)
		}
	}
	if mode, ok := in.GetMode(); ok {
		if err := n.m.fsys.Chmod(n.path(), fs.FileMode(mode).Perm()); err != nil {
			return errnoOf(err)
		}
	}
	return n.Getattr(ctx, f, out)
}

func (n *node) Open(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	f, err := n.m.fsys.OpenFile(n.path(), int(flags)&openFlags, 0)
	if err != nil {
		return nil, 0, errnoOf(err)
	}
	if fi, err := f.Stat(); err != nil || inoOf(fi) != n.StableAttr().Ino {
		_ = f.Close()
		return nil, 0, syscall.ESTALE
	}
	return newHandle(f, flags)
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, fusefs.FileHandle, uint32, syscall.Errno) {
	f, err := n.m.fsys.OpenFile(n.child(name), int(flags)&(openFlags|os.O_EXCL)|os.O_CREATE, fs.FileMode(mode).Perm())
	if err != nil {
		return nil, nil, 0, errnoOf(err)
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, nil, 0, errnoOf(err)
	}
	h, fuseFlags, errno := newHandle(f, flags)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return n.newChild(ctx, fi, out), h, fuseFlags, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fusefs.Inode, syscall.Errno) {
	p := n.child(name)
	if err := n.m.fsys.Mkdir(p, fs.FileMode(mode).Perm()); err != nil {
		return nil, errnoOf(err)
	}
	fi, err := n.m.fsys.Stat(p)
	if err != nil {
		return nil, errnoOf(err)
	}
	return n.newChild(ctx, fi, out), 0
}

// remove removes name if it is a directory exactly when dir is set:
// crashfs's Remove takes either, unlink(2) and rmdir(2) do not.
func (n *node) remove(name string, dir bool) syscall.Errno {
	p := n.child(name)
	fi, err := n.m.fsys.Stat(p)
	switch {
	case err != nil:
		return errnoOf(err)
	case dir && !fi.IsDir():
		return syscall.ENOTDIR
	case !dir && fi.IsDir():
		return syscall.EISDIR
	}
	return errnoOf(n.m.fsys.Remove(p))
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno { return n.remove(name, false) }
func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno  { return n.remove(name, true) }

// Rename supports plain rename(2) (over an existing file too) and
// RENAME_NOREPLACE; the kernel holds both directories locked meanwhile,
// so the existence check cannot race another call through the mount.
// RENAME_EXCHANGE is refused: crashfs has no atomic exchange.
func (n *node) Rename(ctx context.Context, name string, newParent fusefs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	to := np.child(newName)
	switch flags {
	case 0:
	case renameNoReplace:
		if _, err := n.m.fsys.Stat(to); err == nil {
			return syscall.EEXIST
		} else if !errors.Is(err, fs.ErrNotExist) {
			return errnoOf(err)
		}
	default:
		return syscall.EINVAL
	}
	return errnoOf(n.m.fsys.Rename(n.child(name), to))
}

// Fsync is FSYNC for files. (FSYNCDIR goes to dirHandle.Fsyncdir: go-fuse
// tries the directory handle first.) It must never answer ENOSYS: the
// kernel would take that as "fsync is a no-op here" and stop asking,
// making every later fsync succeed without making anything durable.
func (n *node) Fsync(ctx context.Context, f fusefs.FileHandle, flags uint32) syscall.Errno {
	if errno := n.m.waitSync(ctx); errno != 0 {
		return errno
	}
	switch h := f.(type) {
	case *handle:
		return errnoOf(h.f.Sync())
	case *dirHandle:
		return h.Fsyncdir(ctx, flags)
	}
	return syscall.EBADF
}

// Statfs reports a large, empty disk: crashfs has no capacity, and
// programs that check free space before writing must not refuse.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	const blocks = 1 << 24 // 64 GiB of 4 KiB blocks
	out.Bsize = 4096
	out.Frsize = 4096
	out.Blocks = blocks
	out.Bfree = blocks
	out.Bavail = blocks
	out.Files = 1 << 20
	out.Ffree = 1 << 20
	out.NameLen = 255
	return 0
}

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fusefs.FileHandle, uint32, syscall.Errno) {
	d := &dirHandle{n: n, gen: n.m.gen.Load()}
	if errno := d.load(); errno != 0 {
		return nil, 0, errno
	}
	// No FOPEN_CACHE_DIR: the kernel must not keep listings.
	return d, 0, 0
}

// handle is an open file: the crashfs file, which already ties it to its
// inode and fails with ErrStopped (EIO) after a power cut.
type handle struct {
	f durable.File
	// w is set for O_APPEND: every write goes to the end of the file as
	// it is in crashfs, whatever offset the kernel computed from its
	// (possibly stale) idea of the size.
	w io.Writer
}

// newHandle wraps f. FOPEN_DIRECT_IO keeps the kernel's page cache out,
// so every read and write reaches crashfs and nothing cached survives a
// PowerCut.
func newHandle(f durable.File, flags uint32) (*handle, uint32, syscall.Errno) {
	h := &handle{f: f}
	if flags&syscall.O_APPEND != 0 {
		w, ok := f.(io.Writer)
		if !ok {
			_ = f.Close()
			return nil, 0, syscall.EINVAL
		}
		h.w = w
	}
	return h, fuse.FOPEN_DIRECT_IO, 0
}

func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	k, err := h.f.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, errnoOf(err)
	}
	return fuse.ReadResultData(dest[:k]), 0
}

func (h *handle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	var k int
	var err error
	if h.w != nil {
		k, err = h.w.Write(data)
	} else {
		k, err = h.f.WriteAt(data, off)
	}
	if k > 0 {
		// A short write (crashfs out of space: SetSpace): FUSE's answer
		// carries either a count or an error, and an error would tell
		// the program that none of the k bytes now in the file were
		// written. The count is what write(2) on a full disk returns;
		// the program's next write for the rest gets the error.
		return uint32(k), 0
	}
	return 0, errnoOf(err)
}

func (h *handle) Release(ctx context.Context) syscall.Errno {
	// The kernel ignores RELEASE's answer; crashfs only refuses a second
	// close.
	return errnoOf(h.f.Close())
}

// dirHandle is an open directory. go-fuse serialises Readdirent and
// Seekdir on one handle; Fsyncdir reads only what never changes.
type dirHandle struct {
	n    *node
	gen  uint64 // mount.gen at opendir
	ents []fuse.DirEntry
	next int
}

// load takes a fresh listing, at opendir and at rewinddir (POSIX wants
// rewinddir to show the directory as it is now).
func (d *dirHandle) load() syscall.Errno {
	ents, err := d.n.m.fsys.ReadDir(d.n.path())
	if err != nil {
		return errnoOf(err)
	}
	list := make([]fuse.DirEntry, 0, len(ents))
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			return errnoOf(err)
		}
		st := stableOf(fi)
		list = append(list, fuse.DirEntry{Name: e.Name(), Mode: st.Mode, Ino: st.Ino})
	}
	d.ents, d.next = list, 0
	return 0
}

// stale reports whether the handle is from before a power cut.
func (d *dirHandle) stale() bool { return d.gen != d.n.m.gen.Load() }

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if d.stale() {
		return nil, syscall.EIO
	}
	if d.next >= len(d.ents) {
		return nil, 0
	}
	e := d.ents[d.next]
	d.next++
	e.Off = uint64(d.next)
	return &e, 0
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if d.stale() {
		return syscall.EIO
	}
	if off == 0 {
		return d.load()
	}
	if off > uint64(len(d.ents)) {
		return syscall.EINVAL
	}
	d.next = int(off)
	return 0
}

// Fsyncdir is FSYNCDIR, what (*os.File).Sync on a directory sends: it
// makes the directory's entries durable (crashfs.FS.SyncDir).
func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	if errno := d.n.m.waitSync(ctx); errno != 0 {
		return errno
	}
	if d.stale() {
		return syscall.EIO
	}
	return errnoOf(d.n.m.fsys.SyncDir(d.n.path()))
}

func (d *dirHandle) Releasedir(ctx context.Context, releaseFlags uint32) {}
