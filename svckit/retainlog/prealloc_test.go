package retainlog

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/durable/crashfs"
	"github.com/svckit/svckit/svckit/testenv"
)

// syncCountFS is the OS's filesystem counting the fsyncs and fdatasyncs
// of files.
type syncCountFS struct {
	durable.FS
	syncs, datasyncs atomic.Int64
}

func (c *syncCountFS) OpenFile(name string, flag int, perm fs.FileMode) (durable.File, error) {
	f, err := c.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &syncCountFile{f, c}, nil
}

type syncCountFile struct {
	durable.File
	c *syncCountFS
}

func (f *syncCountFile) Sync() error {
	f.c.syncs.Add(1)
	return f.File.Sync()
}

func (f *syncCountFile) Datasync() error {
	f.c.datasyncs.Add(1)
	return durable.Datasync(f.File)
}

func preallocOptions(dir string, fsys durable.FS) Options {
	o := DefaultOptions(dir)
	o.SegmentBytes = 256 << 10
	o.PreallocateBytes = 32 << 10
	o.ScrubRate = 0
	o.FS = fsys
	return o
}

// waitIdle waits until no preallocation job runs and the one wanted is
// done: the active segment zeroed ahead, and the next file prepared
// when the log wants one.
func waitIdle(t *testing.T, l *Log) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, "preallocation to finish", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.preparing {
			return false
		}
		l.maybePrepareLocked() // nothing more to do: it starts nothing
		return !l.preparing
	})
}

// settle waits until no preallocation job runs and none is wanted.
func settle(l *Log) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		for l.preparing {
			l.prepCond.Wait()
		}
		l.maybePrepareLocked()
		if !l.preparing {
			return
		}
	}
}

// TestPreallocatedAppendsFdatasync: with preallocation every durable
// append is one fdatasync and no fsync; without it, one fsync each. A
// change that loses preallocation (or the fdatasync it allows) fails.
func TestPreallocatedAppendsFdatasync(t *testing.T) {
	for _, prealloc := range []bool{true, false} {
		c := &syncCountFS{FS: durable.OS()}
		o := preallocOptions(t.TempDir(), c)
		if !prealloc {
			o.PreallocateBytes = 0
		}
		l := mustOpen(t, o)
		waitIdle(t, l) // the first segment's file, before the first append
		if err := l.Append(mkRecs(1, 1, 100)...); err != nil {
			t.Fatal(err)
		}
		waitIdle(t, l)
		c.syncs.Store(0)
		c.datasyncs.Store(0)
		const n = 100 // 12 KiB: within the first 32 KiB, no job starts
		for seq := uint64(2); seq < 2+n; seq++ {
			if err := l.Append(mkRecs(seq, 1, 100)...); err != nil {
				t.Fatal(err)
			}
		}
		syncs, datasyncs := c.syncs.Load(), c.datasyncs.Load()
		if prealloc && (datasyncs != n || syncs != 0) {
			t.Errorf("preallocated: %d appends made %d fdatasyncs and %d fsyncs, want %d and 0", n, datasyncs, syncs, n)
		}
		if !prealloc && (syncs != n || datasyncs != 0) {
			t.Errorf("not preallocated: %d appends made %d fsyncs and %d fdatasyncs, want %d and 0", n, syncs, datasyncs, n)
		}
		t.Logf("prealloc %v: %d appends, %d fdatasyncs, %d fsyncs", prealloc, n, datasyncs, syncs)
	}
}

// TestPreallocationAcrossRolls: appends across several segments with
// the background zero-filling ahead and preparing the next file. Sealed
// segments end at their last record, the active one holds zeros after
// it, and everything reads back, before and after a reopen.
func TestPreallocationAcrossRolls(t *testing.T) {
	dir := t.TempDir()
	c := &syncCountFS{FS: durable.OS()}
	o := preallocOptions(dir, c)
	l := mustOpen(t, o)
	const n, size = 6000, 100 // 744 KB: three segments and some
	for seq := uint64(1); seq <= n; seq += 20 {
		if err := l.Append(mkRecs(seq, 20, size)...); err != nil {
			t.Fatal(err)
		}
	}
	checkRange(t, l, 1, n, n, size)
	waitIdle(t, l)
	files := segmentFiles(t, dir)
	if len(files) < 3 {
		t.Fatalf("%d segments, want at least 3", len(files))
	}
	recLen := int64(EncodedLen(size))
	for i, p := range files[:len(files)-1] {
		recs := segBase(t, files[i+1]) - segBase(t, p)
		if got := fileSize(t, p); got != int64(recs)*recLen {
			t.Errorf("sealed %s: %d bytes, want %d (its %d records, no zeros)", filepath.Base(p), got, int64(recs)*recLen, recs)
		}
	}
	act := files[len(files)-1]
	committed := int64(n-segBase(t, act)+1) * recLen
	if got := fileSize(t, act); got < committed+o.PreallocateBytes/2 {
		t.Errorf("active %s: %d bytes for %d of records: not preallocated ahead", filepath.Base(act), got, committed)
	}
	if _, err := os.Stat(filepath.Join(dir, preparedName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	t.Logf("%d segments; %d fdatasyncs, %d fsyncs (preallocation's included)", len(files), c.datasyncs.Load(), c.syncs.Load())
	if c.datasyncs.Load() < c.syncs.Load() {
		t.Errorf("%d fdatasyncs and %d fsyncs: most flushes should be fdatasyncs", c.datasyncs.Load(), c.syncs.Load())
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, preparedName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Close left the prepared file behind: %v", err)
	}

	l2 := mustOpen(t, o)
	if r := l2.Recovery(); r != (Recovery{}) {
		t.Errorf("reopen after a clean close: recovery %+v", r)
	}
	checkRange(t, l2, 1, n, n, size)
	if err := l2.Append(mkRecs(n+1, 1, size)...); err != nil {
		t.Fatal(err)
	}
	checkRange(t, l2, 1, n+1, n+1, size)
}

// TestZeroTailIsNotATornTail: the active segment ends in zeros after
// its records (preallocated, never written), after a Close and after a
// crash alike. Open never takes them for records: it serves the records
// before them, cuts nothing, reports nothing, and the appends go on over
// them. A torn record in that space is cut as any torn tail, and its
// quarantine copy stops where the zeros begin. Zeros where records known
// to be durable should be are damage.
func TestZeroTailIsNotATornTail(t *testing.T) {
	dir := t.TempDir()
	o := preallocOptions(dir, nil)
	l := mustOpen(t, o)
	const n, size = 10, 100
	appendN(t, l, 1, n, size, 1)
	waitIdle(t, l)
	// The process dies here: the files are what it left (its page cache
	// would survive; everything was fsynced anyway).
	crashed := copyLog(t, dir)
	seg := segmentFiles(t, crashed)[0]
	zeroed := fileSize(t, seg)
	recLen := int64(EncodedLen(size))
	if zeroed <= n*recLen {
		t.Fatalf("the active segment has %d bytes for %d of records: no zeros to test", zeroed, n*recLen)
	}

	t.Run("zeros", func(t *testing.T) {
		d := copyLog(t, crashed)
		o := preallocOptions(d, nil)
		l := mustOpen(t, o)
		if r := l.Recovery(); r != (Recovery{}) || l.LastSeq() != n || len(l.Damaged()) != 0 {
			t.Fatalf("recovery %+v, LastSeq %d, damage %v; want a clean open at %d", r, l.LastSeq(), l.Damaged(), n)
		}
		if got := fileSize(t, segmentFiles(t, d)[0]); got < zeroed {
			t.Errorf("Open cut the segment from %d to %d bytes", zeroed, got)
		}
		checkRange(t, l, 1, 1<<40, n, size)
		appendN(t, l, n+1, 5, size, 1)
		checkRange(t, l, 1, 1<<40, n+5, size)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l2 := mustOpen(t, o)
		if r := l2.Recovery(); r != (Recovery{}) {
			t.Errorf("reopen after a clean close: recovery %+v", r)
		}
		checkRange(t, l2, 1, 1<<40, n+5, size)
	})

	t.Run("torn record in the zeros", func(t *testing.T) {
		d := copyLog(t, crashed)
		p := segmentFiles(t, d)[0]
		garbage := bytes.Repeat([]byte{0xff}, 10)
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(garbage, n*recLen); err != nil {
			t.Fatal(err)
		}
		f.Close()
		l := mustOpen(t, preallocOptions(d, nil))
		r := l.Recovery()
		if l.LastSeq() != n || r.TruncatedBytes != zeroed-n*recLen {
			t.Fatalf("LastSeq %d, recovery %+v; want %d kept and the %d bytes after them cut", l.LastSeq(), r, n, zeroed-n*recLen)
		}
		if r.Copy == "" || fileSize(t, r.Copy) != int64(len(garbage)) {
			t.Errorf("quarantine copy %q: want the %d torn bytes, not the zeros after them", r.Copy, len(garbage))
		}
		appendN(t, l, n+1, 3, size, 1)
		checkRange(t, l, 1, n+3, n+3, size)
	})

	t.Run("zeros where durable records were", func(t *testing.T) {
		d := copyLog(t, crashed)
		o := preallocOptions(d, nil)
		o.Durable = n + 2 // its owner knew n+2 was durable: the disk lost two
		l := mustOpen(t, o)
		if got := l.DamagedRanges(); len(got) != 1 || got[0] != [2]uint64{n + 1, n + 2} {
			t.Fatalf("damaged %v; want [%d %d] reported, not cut as a torn tail", got, n+1, n+2)
		}
	})
}

// TestPreallocationOnAFullDisk: a disk too small for the zeros. The
// jobs fail, and the appends go on without them, growing the files as
// a log without preallocation does, until the disk is full for them
// too, and then they fail as such appends do (ErrWrite), undone.
func TestPreallocationOnAFullDisk(t *testing.T) {
	c := crashfs.New()
	c.SetSpace(48 << 10) // the first job's 32 KiB fits, the next not
	o := preallocOptions("/log", c)
	l := mustOpen(t, o)
	const size = 100
	var seq uint64 = 1
	var werr error
	for ; seq < 2000; seq++ {
		if werr = l.Append(mkRecs(seq, 1, size)...); werr != nil {
			break
		}
	}
	if !errors.Is(werr, ErrWrite) {
		t.Fatalf("append %d: %v, want ErrWrite once the disk is full", seq, werr)
	}
	if seq*uint64(EncodedLen(size)) < 40<<10 {
		t.Errorf("the disk was full after %d records (%d bytes of 48 KiB): the zeros took the records' space", seq-1, (seq-1)*uint64(EncodedLen(size)))
	}
	checkRange(t, l, 1, seq-1, seq-1, size)
	if err := l.Err(); err != nil {
		t.Fatalf("a full disk made the log fail: %v", err)
	}
	t.Logf("%d records appended on a 48 KiB disk before it was full", seq-1)
}

// failJobSyncFS fails the fsync of a segment file opened without
// O_CREATE: the preallocation job's own descriptor (the appends write
// through the one that created the segment).
type failJobSyncFS struct{ durable.FS }

func (c failJobSyncFS) OpenFile(name string, flag int, perm fs.FileMode) (durable.File, error) {
	f, err := c.FS.OpenFile(name, flag, perm)
	if err != nil || flag&os.O_CREATE != 0 || filepath.Ext(name) != ".log" {
		return f, err
	}
	return jobSyncFailFile{f}, nil
}

type jobSyncFailFile struct{ durable.File }

func (jobSyncFailFile) Sync() error { return syscall.EIO }

// TestPreallocationFsyncFailureIsSticky: the job's fsync flushes the
// segment, records included; when it fails, the log fails as it does for
// any failed fsync (Err, and no append or durable wait succeeds after).
// A warning and "go on without preallocation" would let a later
// fdatasync report success over pages the kernel dropped.
func TestPreallocationFsyncFailureIsSticky(t *testing.T) {
	o := preallocOptions(t.TempDir(), failJobSyncFS{durable.OS()})
	l := mustOpen(t, o)
	if err := l.Append(mkRecs(1, 1, 100)...); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the job's failed fsync to fail the log", func() bool { return l.Err() != nil })
	if err := l.Append(mkRecs(2, 1, 100)...); err == nil {
		t.Fatal("Append succeeded after a failed fsync of its segment")
	}
	t.Logf("the log failed: %v", l.Err())
}
