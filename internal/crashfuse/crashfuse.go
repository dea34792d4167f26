// Package crashfuse serves a crashfs.FS as a real mounted filesystem
// (FUSE), so that whole processes can keep their data on it, be killed,
// and be restarted on what a power cut left: the process-level
// counterpart of calling crashfs directly, and the same model Jepsen's
// LazyFS implements (nothing that was not fsynced survives).
//
// The model lives in crashfs; this package only translates. A file's data
// is durable once the file is fsynced, a directory's entries (create,
// rename, remove) once the directory is fsynced (FSYNCDIR, which Go's
// (*os.File).Sync on a directory sends), and Server.PowerCut throws away
// the rest.
//
// Two things would let the kernel hide the model, and both are switched
// off: the page cache (every open is FOPEN_DIRECT_IO, so reads and writes
// reach crashfs, and PowerCut also invalidates whatever the kernel may
// hold), and the dentry/attribute caches (timeouts are zero, so every
// path walk and stat asks crashfs again).
//
// Locks (flock, fcntl) are not forwarded: without FUSE_FLOCK_LOCKS and
// FUSE_POSIX_LOCKS the kernel keeps them itself, which is exact for
// processes on one machine, the only kind a test starts.
//
// It is for tests; nothing in svckit's binaries links it.
package crashfuse

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	fusefs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/svckit/svckit/svckit/durable/crashfs"
)

// fuseSuperMagic is the f_type statfs reports for a FUSE mount
// (linux/magic.h); Mount waits until the mountpoint reports it.
const fuseSuperMagic = 0x65735546

// mountDeadline bounds how long Mount waits for the mount to answer.
const mountDeadline = 10 * time.Second

// Server is a mounted crashfs.FS.
type Server struct {
	dir string
	m   *mount
	srv *fuse.Server

	mu   sync.Mutex // serialises Unmount and PowerCut
	done bool       // Unmount ran
	err  error      // what the first Unmount returned
}

// mount is what every node of one mount shares.
type mount struct {
	fsys *crashfs.FS
	root *node
	uid  uint32 // files belong to whoever mounted, as on a fresh disk
	gid  uint32
	// gen counts Server.PowerCut calls. Directory handles remember it at
	// opendir so that one opened before a cut fails like a file handle
	// does (crashfs itself only tracks file handles).
	gen atomic.Uint64
	// hung, while set, is closed when fsyncs may answer again
	// (Server.HangSyncs).
	hung atomic.Pointer[chan struct{}]
}

// waitSync holds an fsync while the disk hangs. It gives up only when the
// kernel interrupts the request (the caller was killed).
func (m *mount) waitSync(ctx context.Context) syscall.Errno {
	ch := m.hung.Load()
	if ch == nil {
		return 0
	}
	select {
	case <-*ch:
		return 0
	case <-ctx.Done():
		return syscall.EINTR
	}
}

// Mount mounts fsys on mountpoint (an existing, empty directory) and
// returns once the mount answers. As root it mounts with mount(2);
// otherwise go-fuse falls back to fusermount. Set CRASHFUSE_DEBUG=1 to
// log every FUSE request.
func Mount(mountpoint string, fsys *crashfs.FS) (*Server, error) {
	dir, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, fmt.Errorf("mounting crashfs: resolving %s: %w", mountpoint, err)
	}
	m := &mount{fsys: fsys, uid: uint32(os.Getuid()), gid: uint32(os.Getgid())}
	m.root = &node{m: m}
	// Zero timeouts: the kernel must ask again on every lookup and stat,
	// because a PowerCut (or a test touching fsys directly) changes the
	// tree behind its back.
	zero := time.Duration(0)
	opts := &fusefs.Options{
		EntryTimeout:    &zero,
		AttrTimeout:     &zero,
		NegativeTimeout: &zero,
		RootStableAttr:  &fusefs.StableAttr{Ino: crashfs.RootIno},
		MountOptions: fuse.MountOptions{
			FsName:        "crashfs",
			Name:          "crashfs",
			DirectMount:   true, // root needs no fusermount; others fall back to it
			DisableXAttrs: true, // crashfs has none; saves the kernel asking on every write
			// EnableLocks stays false on purpose: see the package comment.
			Debug: os.Getenv("CRASHFUSE_DEBUG") == "1",
		},
	}
	srv, err := fusefs.Mount(dir, m.root, opts)
	if err != nil {
		return nil, fmt.Errorf("mounting crashfs on %s: %w", dir, err)
	}
	s := &Server{dir: dir, m: m, srv: srv}
	if err := s.waitAnswers(time.Now().Add(mountDeadline)); err != nil {
		_ = s.Unmount()
		return nil, fmt.Errorf("mounting crashfs on %s: %w", dir, err)
	}
	return s, nil
}

// waitAnswers polls until dir is a FUSE mount whose root this server
// describes, or the deadline passes. go-fuse's WaitMount has already seen
// INIT; this checks what a client will see: the kernel routing dir to us.
func (s *Server) waitAnswers(deadline time.Time) error {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		var st syscall.Statfs_t
		if err := syscall.Statfs(s.dir, &st); err != nil {
			last = fmt.Errorf("statfs: %w", err)
		} else if st.Type != fuseSuperMagic {
			last = fmt.Errorf("statfs reports filesystem type %#x, not FUSE", st.Type)
		} else if fi, err := os.Stat(s.dir); err != nil {
			last = fmt.Errorf("stat of the mount's root: %w", err)
		} else if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Ino != crashfs.RootIno {
			last = fmt.Errorf("the mount's root is not crashfs's (stat %+v)", fi.Sys())
		} else {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the mount did not answer within %v: %w", mountDeadline, last)
		}
		<-tick.C
	}
}

// Unmount unmounts and waits for the server to stop. When the mount is
// busy (a process still has a file or its working directory there) it
// detaches it lazily and, as root, aborts the FUSE connection, so a test's
// cleanup never hangs; processes still using it get ENOTCONN. Calling it
// again returns what the first call returned.
func (s *Server) Unmount() error {
	s.ResumeSyncs()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return s.err
	}
	s.done = true
	err := s.srv.Unmount() // retries EBUSY for a little while itself
	if err == nil {
		return nil
	}
	if os.Geteuid() == 0 {
		// MNT_FORCE makes the kernel abort the FUSE connection
		// (fuse_umount_begin), which ends the serve loops; MNT_DETACH
		// removes the mount even though it is busy.
		if ferr := syscall.Unmount(s.dir, syscall.MNT_FORCE|syscall.MNT_DETACH); ferr != nil && !errors.Is(ferr, syscall.EINVAL) {
			s.err = fmt.Errorf("unmounting crashfs from %s: %v; forced: %w", s.dir, err, ferr)
			return s.err
		}
		s.srv.Wait()
		return nil
	}
	// Without root the connection cannot be aborted; a lazy unmount
	// detaches it, and the serve loops end when its last user goes.
	if ferr := lazyFusermount(s.dir); ferr != nil {
		s.err = fmt.Errorf("unmounting crashfs from %s: %v; lazily: %w", s.dir, err, ferr)
	}
	return s.err
}

func lazyFusermount(dir string) error {
	var last error
	for _, bin := range []string{"fusermount3", "fusermount"} {
		out, err := exec.Command(bin, "-u", "-z", dir).CombinedOutput()
		if err == nil {
			return nil
		}
		last = fmt.Errorf("%s -u -z: %w: %s", bin, err, out)
	}
	return last
}

// PowerCut cuts the power: fsys keeps only what was made durable (see
// crashfs.FS.PowerCut), file and directory handles opened before fail
// with EIO, and every cache that could still show the lost state is
// dropped: go-fuse's tree of names (which would otherwise resolve paths
// that no longer exist), the kernel's dentries and its page cache.
//
// Call it once the processes using the mount are dead, as after a real
// power cut; one that still runs sees EIO on its old handles. Call this
// rather than fsys.PowerCut while mounted.
func (s *Server) PowerCut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m.fsys.PowerCut()
	s.m.gen.Add(1)
	if s.done {
		return
	}
	forget(s.m.root.EmbeddedInode())
}

// HangSyncs makes the disk stop answering fsyncs: every fsync of a file or
// a directory waits until ResumeSyncs, while reads and writes go on (the
// kernel's page cache still takes them), as when a disk or its controller
// hangs. Unmount resumes them.
func (s *Server) HangSyncs() {
	ch := make(chan struct{})
	s.m.hung.CompareAndSwap(nil, &ch)
}

// ResumeSyncs lets the fsyncs held by HangSyncs, and later ones, answer.
func (s *Server) ResumeSyncs() {
	if ch := s.m.hung.Swap(nil); ch != nil {
		close(*ch)
	}
}

// forget drops dir's subtree from go-fuse's tree and the kernel's caches.
// Nodes resolve their paths through that tree, and after a cut it can
// name what no longer exists (a file whose unsynced rename was undone
// would otherwise keep only its lost name). Nodes the kernel still
// references stay known to go-fuse by inode number; the next lookup of
// their name reattaches them. With zero timeouts and direct IO the kernel
// would ask again anyway; the notifications make that hold even for what
// it cached before.
func forget(dir *fusefs.Inode) {
	for name, ch := range dir.Children() {
		// Errors mean the kernel had nothing cached there: nothing to do.
		_ = dir.NotifyEntry(name)
		if ch.IsDir() {
			forget(ch)
		} else {
			_ = ch.NotifyContent(0, 0)
		}
		dir.RmChild(name)
	}
}

// errnoOf maps a crashfs error to what the kernel passes to the program.
func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno): // crashfs says ENOTDIR, EISDIR, ... as they are
		return errno
	case errors.Is(err, crashfs.ErrStopped):
		// The machine stopped (StopAfter), or the handle is from before
		// a power cut: the disk is gone, as far as the caller can tell.
		return syscall.EIO
	case errors.Is(err, fs.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, fs.ErrExist):
		return syscall.EEXIST
	case errors.Is(err, fs.ErrClosed):
		return syscall.EBADF
	case errors.Is(err, fs.ErrPermission):
		return syscall.EACCES
	case errors.Is(err, fs.ErrInvalid):
		return syscall.EINVAL
	}
	return syscall.EIO
}
