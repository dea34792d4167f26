package retainlog

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/svckit/svckit/svckit/durable"
)

// Preallocation: zero-filled space ahead of the appends, made durable in
// the background, so that an append overwrites blocks that are already
// allocated, with the file's size already on disk. Its flush is then an
// fdatasync that writes the data and nothing else: no inode, no journal
// commit for a new size (PostgreSQL's wal_init_zero, etcd's preallocated
// WAL files). One job runs at a time:
//
//   - extending the active segment by PreallocateBytes of zeros when less
//     than half of that is left ahead of the appends;
//   - near the end of the active segment (or before a new log's first
//     append), preparing the next segment's file, preparedName, which
//     the roll renames into place instead of creating a file.
//
// Nothing here is needed for correctness: an append beyond the zeroed
// space grows the file as it always did and is fsynced in full, and a
// job that fails (a full disk) only leaves the log without preallocation
// until the next segment. Zeros are never records: Open takes an all-zero
// tail for unwritten space (see openActive), and a roll cuts the zeros
// off the segment it seals, so a sealed segment ends at its last record.

// preparedName is the next segment's file while it waits for a roll. It
// is not a segment name (listSegments ignores it); Open removes one that
// a crash left behind.
const preparedName = "prealloc.tmp"

// zeroChunk is the largest write of zeros a job makes at once.
const zeroChunk = 256 << 10

// maybePrepareLocked starts the background job that preallocation needs
// now, if any. Caller holds mu.
func (l *Log) maybePrepareLocked() {
	chunk := l.opts.PreallocateBytes
	if chunk == 0 || l.preparing || l.closed || l.err != nil {
		return
	}
	act := l.active()
	live := act != nil && act.f != nil && !act.sealNext
	if live && !act.noPrealloc && act.alloc < l.opts.SegmentBytes && act.alloc-act.size < chunk/2 {
		from := act.alloc
		n := min(chunk, l.opts.SegmentBytes-from)
		act.zeroing = true
		l.startPrep(func() { l.extend(act, from, n) })
		return
	}
	if l.next == nil && !l.nextFailed && (!live || act.size+chunk >= l.opts.SegmentBytes) {
		l.startPrep(l.prepareNext)
	}
}

// startPrep runs job in the background. Caller holds mu.
func (l *Log) startPrep(job func()) {
	l.preparing = true
	l.prepWG.Add(1)
	go func() {
		defer l.prepWG.Done()
		job()
	}()
}

// extend zero-fills [from, from+n) of the active segment s and fsyncs
// it. Appends go on below from meanwhile; one that would write at or
// beyond it waits (prepCond) while the zeros are being written, not for
// their fsync: on a disk that stopped answering, appends still reach the
// page cache, as they do without preallocation.
//
// It writes and fsyncs through a descriptor of its own. Linux reports a
// write-back error once to every open file description, so the fsync
// here cannot take an error meant for the records (which were written
// through the appends' descriptor) and leave a later fdatasync of theirs
// to report success over pages the kernel dropped. Should it see one
// anyway, the log fails as for any failed fsync of a segment.
func (l *Log) extend(s *segment, from, n int64) {
	f, err := l.opts.FS.OpenFile(s.path, os.O_RDWR, 0)
	if err == nil {
		err = l.writeZeros(f, from, n)
	}
	l.mu.Lock()
	s.zeroing = false
	l.prepCond.Broadcast()
	l.mu.Unlock()
	synced := false
	if f != nil {
		if err == nil {
			// The size and the blocks on disk, once: appends below from+n
			// then need only fdatasync. One that went beyond from meanwhile
			// marked the segment for a full fsync itself.
			if err = f.Sync(); err == nil {
				synced = true
			}
		}
		f.Close()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.preparing = false
	l.prepCond.Broadcast()
	if err != nil {
		s.noPrealloc = true
		if l.closed || errors.Is(err, os.ErrClosed) || errors.Is(err, errClosing) {
			return
		}
		if f != nil && !synced && !errors.Is(err, errZeroWrite) && l.err == nil {
			// The fsync of a segment holding records failed (sealed by
			// a roll meanwhile or not: the disk failed under them).
			l.failSync(s, err)
			l.wake()
			return
		}
		l.log.Warn("retainlog: could not preallocate; appends go on without it", "segment", s.path, "error", err)
		// The disk is full, most likely: the prepared next file's space
		// serves the records better now.
		l.closePrepared()
		l.nextFailed = true
		return
	}
	if !s.noPrealloc {
		s.alloc = max(s.alloc, from+n)
	}
	l.maybePrepareLocked()
}

// prepareNext writes the next segment's file: PreallocateBytes of zeros,
// fsynced. The directory is fsynced when a roll gives it its name.
func (l *Log) prepareNext() {
	path := filepath.Join(l.opts.Dir, preparedName)
	n := l.opts.PreallocateBytes
	if l.closing.Load() {
		l.mu.Lock()
		l.preparing = false
		l.prepCond.Broadcast()
		l.mu.Unlock()
		return
	}
	f, err := l.opts.FS.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err == nil {
		err = l.writeZeros(f, 0, n)
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			f.Close()
			l.opts.FS.Remove(path)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.preparing = false
	l.prepCond.Broadcast()
	if err != nil {
		l.nextFailed = true
		if !l.closed {
			l.log.Warn("retainlog: could not prepare the next segment; it will be created when needed", "file", path, "error", err)
		}
		return
	}
	if l.closed {
		f.Close()
		l.opts.FS.Remove(path)
		return
	}
	l.next = f
	l.maybePrepareLocked()
}

// takePrepared names the prepared file path (a new segment) and returns
// it with its zeroed size, or nil when there is none or it could not be
// renamed (the caller creates the segment as it would without one).
// Like the O_EXCL create it stands in for, it never replaces a segment
// that holds anything. Caller holds mu.
func (l *Log) takePrepared(path string) (durable.File, int64) {
	f := l.next
	if f == nil {
		return nil, 0
	}
	l.next = nil
	tmp := filepath.Join(l.opts.Dir, preparedName)
	if fi, err := l.opts.FS.Stat(path); err == nil && fi.Size() > 0 {
		f.Close()
		l.opts.FS.Remove(tmp)
		return nil, 0 // the create reports the clash
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		f.Close()
		l.opts.FS.Remove(tmp)
		return nil, 0
	}
	if err := l.opts.FS.Rename(tmp, path); err != nil {
		l.log.Warn("retainlog: could not use the prepared segment", "file", tmp, "error", err)
		f.Close()
		l.opts.FS.Remove(tmp)
		return nil, 0
	}
	return f, l.opts.PreallocateBytes
}

// closePrepared closes and removes the prepared file (Close). Caller
// holds mu.
func (l *Log) closePrepared() {
	if l.next == nil {
		return
	}
	l.next.Close()
	l.next = nil
	l.opts.FS.Remove(filepath.Join(l.opts.Dir, preparedName))
}

var (
	// errZeroWrite marks a failed write of zeros (a full disk): the log
	// goes on without preallocation.
	errZeroWrite = errors.New("retainlog: zero-filling failed")
	// errClosing: Close began; a job stops between chunks, so that a
	// Close that its caller stopped waiting for (an owner's, on a slow
	// disk) writes as little as it can after it.
	errClosing = errors.New("retainlog: log closing")
)

// writeZeros writes n zero bytes to f at off, in chunks, stopping when
// Close begins.
func (l *Log) writeZeros(f durable.File, off, n int64) error {
	zeros := make([]byte, min(n, zeroChunk))
	for n > 0 {
		if l.closing.Load() {
			return errClosing
		}
		w := min(n, int64(len(zeros)))
		if _, err := f.WriteAt(zeros[:w], off); err != nil {
			return fmt.Errorf("%w at %d: %w", errZeroWrite, off, err)
		}
		off += w
		n -= w
	}
	return nil
}

// zeroTailFrom returns where the all-zero tail of the first size bytes
// of f begins (size when the last byte is not zero), reading backwards.
func zeroTailFrom(f durable.File, size int64, buf []byte) (int64, error) {
	end := size
	for end > 0 {
		n := min(end, int64(len(buf)))
		b := buf[:n]
		if _, err := f.ReadAt(b, end-n); err != nil {
			return 0, err
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] != 0 {
				return end - n + int64(i) + 1, nil
			}
		}
		end -= n
	}
	return 0, nil
}
