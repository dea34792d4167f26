package retainlog

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/svckit/svckit/svckit/durable"
)

// Opening the log: trusting the sealed segments, scanning the active one
// and cutting a torn tail but keeping damage (noteDamage, which reads and
// the scrubber call too); then the background goroutine (interval fsync,
// retention) that runs until Close.

// Open opens (or creates) the log in opts.Dir, repairing a torn tail of the
// active segment (see Recovery), applies retention and starts the background
// goroutine that fsyncs (FsyncInterval) and enforces retention. Close stops it.
func Open(opts Options) (*Log, error) {
	opts, err := opts.normalize()
	if err != nil {
		return nil, err
	}
	if err := durable.MkdirAll(opts.FS, opts.Dir); err != nil {
		return nil, fmt.Errorf("retainlog: %w", err)
	}
	segs, err := listSegments(opts.FS, opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("retainlog: list segments: %w", err)
	}
	l := &Log{
		opts:      opts,
		log:       opts.Logger,
		stop:      make(chan struct{}),
		done:      make(chan struct{}),
		scrubDone: make(chan struct{}),
		syncedCh:  make(chan struct{}),
	}
	l.prepCond = sync.NewCond(&l.mu)
	// A next segment's file a crash left before a roll named it: the
	// next one is prepared afresh.
	if err := opts.FS.Remove(filepath.Join(opts.Dir, preparedName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("retainlog: removing a leftover prepared segment: %w", err)
	}
	l.floor.Store(opts.Floor)
	l.bufPool.New = func() any {
		b := make([]byte, readBufSize)
		return &b
	}
	if len(segs) > 0 {
		// Sealed segments are trusted: their extent follows from the names.
		for i, s := range segs[:len(segs)-1] {
			fi, err := opts.FS.Stat(s.path)
			if err != nil {
				return nil, fmt.Errorf("retainlog: %w", err)
			}
			s.size = fi.Size()
			s.count = segs[i+1].base - s.base
		}
		if err := l.openActive(segs[len(segs)-1]); err != nil {
			return nil, err
		}
		l.segs = segs
		for _, s := range segs {
			l.count += s.count
			l.bytes += s.size
		}
	}
	l.mu.Lock()
	l.updateBounds()
	// What the last process wrote may still be only in the page cache (it
	// was killed before an fsync): make it durable before anyone is told
	// it is (DurableSeq), unless the policy leaves flushing to the OS.
	if act := l.active(); act != nil && act.f != nil && opts.Fsync != FsyncNever {
		// Sealed segments too: written under the never policy, they may be
		// in the page cache only (a policy changed since).
		for _, sg := range l.segs[:len(l.segs)-1] {
			if err := syncFile(opts.FS, sg.path); err != nil {
				l.mu.Unlock()
				act.f.Close()
				return nil, fmt.Errorf("retainlog: fsync %s: %w", sg.path, err)
			}
		}
		if err := act.f.Sync(); err != nil {
			l.mu.Unlock()
			act.f.Close()
			return nil, fmt.Errorf("retainlog: fsync %s: %w", act.path, err)
		}
		if err := opts.FS.SyncDir(opts.Dir); err != nil {
			l.mu.Unlock()
			act.f.Close()
			return nil, fmt.Errorf("retainlog: fsync dir %s: %w", opts.Dir, err)
		}
	}
	if opts.Fsync != FsyncNever {
		l.synced.Store(l.last.Load())
	}
	l.dirty = false
	l.enforceRetentionLocked()
	l.maybePrepareLocked()
	l.mu.Unlock()

	tick := maxRetentionTick
	if opts.Fsync == FsyncInterval {
		tick = min(tick, opts.FsyncInterval)
	}
	go l.run(tick)
	if opts.ScrubRate > 0 {
		go l.scrubLoop()
	} else {
		close(l.scrubDone)
	}
	return l, nil
}

// openActive scans the last segment and keeps the file open for
// appending. Damage with intact records after it, or at or below
// Options.Durable, is kept and noted (Damage); only a torn tail, which
// nothing intact follows and nobody knew was durable, is cut (after a copy
// of it went to the quarantine directory).
func (l *Log) openActive(s *segment) error {
	f, err := l.opts.FS.OpenFile(s.path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("retainlog: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("retainlog: %w", err)
	}
	size := fi.Size()
	bufp := l.getBuf()
	defer l.putBuf(bufp)
	// Preallocated space a crash left unwritten is all zeros: where it
	// starts, the records end, and the scan need not resync through it.
	zeroFrom, err := zeroTailFrom(f, size, *bufp)
	if err != nil {
		f.Close()
		return fmt.Errorf("retainlog: reading the end of %s: %w", s.path, err)
	}
	s.idxMu.Lock()
	res, err := scan(newSegReader(f, 0, size, *bufp), s, math.MaxUint64, true, zeroFrom)
	s.indexed = true
	s.idxMu.Unlock()
	if err != nil {
		f.Close()
		return fmt.Errorf("retainlog: scan %s: %w", s.path, err)
	}
	for _, d := range res.damage {
		l.noteDamage(s, f, d)
	}
	s.f = f
	s.size = res.good
	s.count = res.last + 1 - s.base
	s.lastNanos = res.lastNanos
	s.lastKnown = res.intact > 0
	s.alloc = res.good
	if res.good == size && res.fault == "" {
		return nil
	}
	reason := res.fault
	if reason == "" {
		reason = fmt.Sprintf("file shrank to %d bytes during scan", res.good)
	}
	want := res.last + 1
	if res.zeroTail && want > l.opts.Durable {
		// Zeros to the end: preallocated space that no write reached
		// (Close leaves it, and so does a crash; so does a write that
		// was never fsynced when the power went). No record is there
		// and nothing is cut: the appends go on over it. Zeros where
		// records known to be durable should be are damage (below).
		s.alloc = size
		// Said at Info: zeros are also what a disk that lost the last
		// records (acknowledged after the owner's last save) would show.
		l.log.Info("retainlog: preallocated space after the last record", "segment", s.path, "last_seq", res.last, "offset", res.good, "bytes", size-res.good)
		return nil
	}
	if want <= l.opts.Durable {
		// Not a torn tail: the owner knew these records were durable,
		// so the disk damaged them. Keep the bytes; the log goes on
		// after what was durable, in a new segment from the next append.
		d := Damage{Segment: s.path, Offset: res.good, Bytes: size - res.good, First: want, Last: l.opts.Durable, Reason: reason}
		l.noteDamage(s, f, d)
		s.size = size
		s.count = l.opts.Durable + 1 - s.base
		s.sealNext = true
		return nil
	}
	// A torn tail: a write that never completed before a crash (nothing
	// above Options.Durable was known to be durable, nothing intact
	// follows). Keep a copy, then cut it so appends go on at a record
	// boundary (preallocation starts again from there). The copy stops
	// where the zeros begin: they are evidence of nothing, and in a
	// preallocated segment there are megabytes of them.
	var copyPath string
	if zeroFrom > res.good {
		var qerr error
		copyPath, qerr = l.quarantine(f, res.good, s.path, res.good, zeroFrom-res.good, "torn")
		if qerr != nil {
			l.log.Warn("retainlog: could not keep a copy of a torn tail before cutting it", "segment", s.path, "error", qerr)
		}
	}
	if err := f.Truncate(res.good); err != nil {
		f.Close()
		return fmt.Errorf("retainlog: truncate %s: %w", s.path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("retainlog: fsync %s: %w", s.path, err)
	}
	s.alloc = res.good
	s.metaDirty = true
	l.recovery = Recovery{Segment: s.path, TruncatedBytes: size - res.good, Reason: reason, Copy: copyPath}
	l.log.Warn("retainlog: truncated torn tail",
		"segment", s.path, "offset", res.good, "truncated_bytes", size-res.good,
		"last_seq", res.last, "reason", reason, "copy", copyPath)
	return nil
}

// noteDamage records damage found in s (f reads it): a quarantine copy,
// the log, Options.OnDamage. Known damage (same offset) is ignored.
func (l *Log) noteDamage(s *segment, f io.ReaderAt, d Damage) {
	s.idxMu.Lock()
	_, known := s.damageAt(d.Offset)
	s.idxMu.Unlock()
	if known {
		return
	}
	path, err := l.quarantine(f, d.Offset, s.path, d.Offset, d.Bytes, "damaged")
	if err != nil {
		l.log.Warn("retainlog: could not copy damaged bytes to quarantine (retried later)", "segment", s.path, "offset", d.Offset, "error", err)
	}
	d.Quarantine = path
	s.idxMu.Lock()
	added := s.addDamage(d)
	s.idxMu.Unlock()
	if !added {
		return
	}
	l.log.Error("retainlog: damaged records found; kept in place and skipped by reads",
		"segment", s.path, "offset", d.Offset, "bytes", d.Bytes, "first_seq", d.First, "last_seq", d.Last,
		"reason", d.Reason, "quarantine", d.Quarantine)
	if l.opts.OnDamage != nil {
		l.opts.OnDamage(d)
	}
}

// syncFile fsyncs the file at path.
func syncFile(fsys durable.FS, path string) error {
	f, err := fsys.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// Close stops the background goroutine, fsyncs and closes the active segment.
// Reads already running finish normally; later calls return ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	l.closing.Store(true)
	l.mu.Unlock()

	// The goroutines take mu, so wait for them without holding mu.
	close(l.stop)
	<-l.done
	<-l.scrubDone
	l.prepWG.Wait()
	l.removeDeferred()

	l.mu.Lock()
	defer l.mu.Unlock()
	l.closePrepared()
	act := l.active()
	if act == nil || act.f == nil {
		return nil
	}
	// The preallocated space stays (the next Open takes it for space
	// again). Close writes nothing but this fsync: an owner whose Close
	// gave up on a hung disk may already have opened the log again.
	var err error
	if l.err == nil {
		if err = act.f.Sync(); err == nil {
			l.fsyncs.Add(1)
			l.raiseSynced(l.last.Load())
		} else {
			err = fmt.Errorf("retainlog: fsync %s: %w", act.path, err)
		}
	}
	if cerr := act.f.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("retainlog: close %s: %w", act.path, cerr)
	}
	act.f = nil
	return err
}

// run is the background goroutine: interval fsync and retention (age limits
// need it; count and byte limits also run on every roll).
func (l *Log) run(every time.Duration) {
	defer close(l.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.tick()
			l.retryQuarantine()
			l.removeDeferred()
		}
	}
}

func (l *Log) tick() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.enforceRetentionLocked()
	// A log that failed takes no more fsyncs: waiters must hear so rather
	// than wait for one that will not come.
	failed := l.err != nil
	var f durable.File
	var act *segment
	var upTo uint64
	if l.opts.Fsync == FsyncInterval && l.dirty && l.err == nil {
		if act = l.active(); act != nil && act.f != nil {
			f = act.f
			l.dirty = false
			upTo = l.last.Load()
		}
	}
	l.mu.Unlock()
	if f == nil {
		if failed {
			l.wake()
		}
		return
	}
	// fsync without mu so appends continue meanwhile. If a roll or Close
	// closes f first, they fsynced it themselves (os.File keeps the fd alive
	// until this call returns, so there is no fd reuse race).
	err := f.Sync()
	switch {
	case err == nil:
		l.fsyncs.Add(1)
		l.raiseSynced(upTo)
	case errors.Is(err, os.ErrClosed):
	default:
		l.mu.Lock()
		l.failSync(act, err)
		l.mu.Unlock()
		l.wake()
	}
}
