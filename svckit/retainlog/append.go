package retainlog

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/svckit/svckit/svckit/durable"
)

// Appending: a batch is checked, encoded into one buffer and written with
// one write, undone if it fails; a full segment is sealed (fsynced first,
// unless FsyncNever) and the next one created.

// Append appends recs as one batch. Their seqs must go up by one; on a
// non-empty log the first must be LastSeq()+1, on an empty log it may be any
// seq >= 1 (a publisher restarting from a snapshot). The batch is encoded into
// a reused buffer and written with a single write(2), so it lands whole or (on
// a crash mid-write) is cut off as a torn tail at the next Open. Under
// FsyncAlways Append returns only after fsync (concurrent Appends share
// one); otherwise once the batch is in the kernel's page cache.
//
// Records with a zero Time are stamped with Options.Now().
func (l *Log) Append(recs ...Record) error {
	if err := l.AppendNoWait(recs...); err != nil {
		return err
	}
	if l.opts.Fsync != FsyncAlways || len(recs) == 0 {
		return nil
	}
	return l.SyncTo(recs[len(recs)-1].Seq)
}

// AppendNoWait is Append without waiting for the fsync FsyncAlways asks
// for: a caller that orders appends under a lock of its own appends under
// it, releases it, and then calls WaitDurable, so that its concurrent
// callers share one fsync instead of taking turns.
func (l *Log) AppendNoWait(recs ...Record) error {
	if len(recs) == 0 {
		return nil
	}
	first := recs[0].Seq
	if first == 0 {
		return fmt.Errorf("%w: seq 0 is not a valid sequence number", ErrNotContiguous)
	}
	if first+uint64(len(recs)-1) < first {
		return fmt.Errorf("%w: batch overflows uint64 sequence numbers", ErrNotContiguous)
	}
	size := 0
	for i := range recs {
		if want := first + uint64(i); recs[i].Seq != want {
			return fmt.Errorf("%w: batch record %d has seq %d, want %d", ErrNotContiguous, i, recs[i].Seq, want)
		}
		if len(recs[i].Data) > MaxDataLen {
			return fmt.Errorf("retainlog: record seq %d: data of %d bytes exceeds %d", recs[i].Seq, len(recs[i].Data), MaxDataLen)
		}
		size += EncodedLen(len(recs[i].Data))
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	var act *segment
	for {
		if l.closed {
			return ErrClosed
		}
		if l.err != nil {
			return l.err
		}
		if l.count > 0 && first != l.last.Load()+1 {
			return fmt.Errorf("%w: append seq %d, log ends at %d", ErrNotContiguous, first, l.last.Load())
		}
		act = l.active()
		// act.f is nil when the last roll sealed it but could not create the
		// next segment (too many open files, say): roll again.
		needRoll := act == nil || act.f == nil || act.sealNext || (act.count == 0 && act.base != first) ||
			(act.size > 0 && act.size+int64(size) > l.opts.SegmentBytes)
		// A roll (which cuts the zeros off) or a write beyond the zeroed
		// space would race the job zero-filling there: wait for it. It
		// is ahead of the appends by half a chunk, so this is rare.
		if act != nil && act.zeroing && (needRoll || act.size+int64(size) > act.alloc) {
			l.prepCond.Wait()
			continue
		}
		if needRoll {
			if err := l.roll(first); err != nil {
				return err
			}
			act = l.active()
		}
		break
	}

	var now, lastNanos int64
	buf := l.wbuf[:0]
	pend := l.pending[:0]
	for i := range recs {
		r := &recs[i]
		if (act.count+uint64(i))%indexEvery == 0 {
			pend = append(pend, indexEntry{r.Seq, act.size + int64(len(buf))})
		}
		nanos := r.Time.UnixNano()
		if r.Time.IsZero() {
			if now == 0 {
				now = l.opts.Now().UnixNano()
			}
			nanos = now
		}
		buf = encodeRecord(buf, r.Seq, nanos, r.Data)
		lastNanos = nanos
	}
	if cap(buf) <= maxKeptWriteBuf {
		l.wbuf = buf
	} else {
		l.wbuf = nil
	}
	l.pending = pend

	if _, err := act.f.WriteAt(buf, act.size); err != nil {
		// Cut off whatever part of the batch reached the file so the next
		// append starts at a record boundary; if even that fails the file
		// state is unknown and the log refuses further appends.
		if terr := act.f.Truncate(act.size); terr != nil {
			l.err = fmt.Errorf("retainlog: %s is unusable after a failed write (%v) and truncate: %w", act.path, err, terr)
			l.log.Error("retainlog: failed write could not be undone", "segment", act.path, "error", l.err)
		}
		// The truncate took the zeroed space too (and a job zero-filling
		// meanwhile must not give it back): none for this segment.
		act.alloc, act.metaDirty, act.noPrealloc = act.size, true, true
		return fmt.Errorf("%w: %s: %w", ErrWrite, act.path, err)
	}
	if end := act.size + int64(len(buf)); end > act.alloc {
		// The file grew: its new size must reach the disk with the data.
		act.alloc, act.metaDirty = end, true
	}
	act.idxMu.Lock()
	act.index = append(act.index, pend...)
	act.idxMu.Unlock()

	n := uint64(len(recs))
	act.size += int64(len(buf))
	act.count += n
	act.lastNanos = lastNanos
	act.lastKnown = true
	l.count += n
	l.bytes += int64(len(buf))
	l.updateBounds()
	l.appended.Add(n)
	// Checking retention after every append (not only on roll) keeps the
	// bound tight: at most the limit plus one segment. It is O(1) unless a
	// segment goes.
	l.enforceRetentionLocked()
	l.maybePrepareLocked()

	l.dirty = true
	return nil
}

// active is the segment appends go to, nil before the first append to a new
// log. Caller holds mu.
func (l *Log) active() *segment {
	if len(l.segs) == 0 {
		return nil
	}
	return l.segs[len(l.segs)-1]
}

// updateBounds republishes FirstSeq/LastSeq. Segment names carry their first
// seq and segments are contiguous, so the bounds follow from the oldest base
// and the record count. Caller holds mu.
func (l *Log) updateBounds() {
	if l.count == 0 {
		l.first.Store(0)
		l.last.Store(0)
		return
	}
	base := l.segs[0].base
	l.first.Store(base)
	l.last.Store(base + l.count - 1)
}

// roll seals the active segment and starts a new one whose first record will
// be first. Caller holds mu.
func (l *Log) roll(first uint64) error {
	if act := l.active(); act != nil && act.f != nil { // nil: sealed already
		if act.count == 0 {
			// An empty active segment (Open truncated all of it, or a crash
			// came right after it was created) named for a seq other than the
			// one now being appended: replace it so the name stays the truth.
			if err := act.f.Close(); err != nil {
				l.log.Warn("retainlog: close empty segment", "segment", act.path, "error", err)
			}
			act.f = nil
			l.segs = l.segs[:len(l.segs)-1]
			l.dropSegment(act)
		} else {
			// A sealed segment ends at its last record (Open takes its
			// extent from its size): cut the zeroed space off. No job is
			// writing zeros into it (AppendNoWait waited); one may still
			// be fsyncing them, so ask the file, not alloc.
			if err := l.cutZeros(act); err != nil {
				return err
			}
			// The sealed segment must be durable before anything is written
			// after it: Open trusts sealed segments without scanning them.
			if l.opts.Fsync != FsyncNever {
				if err := act.f.Sync(); err != nil {
					return l.failSync(act, err)
				}
				l.fsyncs.Add(1)
				l.dirty = false
				l.raiseSynced(l.last.Load())
			}
			if err := act.f.Close(); err != nil {
				l.log.Warn("retainlog: close sealed segment", "segment", act.path, "error", err)
			}
			act.f = nil
		}
	}
	path := filepath.Join(l.opts.Dir, segmentName(first))
	// The next segment's file, zero-filled in the background, if it is
	// ready; else a new file.
	f, alloc := l.takePrepared(path)
	l.nextFailed = false
	if f == nil {
		// O_EXCL: a file with this name would be another segment with the same
		// first seq; overwriting it could destroy data, so fail loudly instead,
		// unless it holds nothing but zeros: what an earlier roll left when
		// it failed after the create or the rename of the prepared file (its
		// directory fsync, or the removal after it).
		var err error
		f, err = l.opts.FS.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, fs.ErrExist) {
			f, err = l.reuseZeroFile(path, err)
		}
		if err != nil {
			return fmt.Errorf("%w: creating segment %s: %w", ErrWrite, path, err)
		}
	}
	if l.opts.Fsync != FsyncNever {
		if err := l.opts.FS.SyncDir(l.opts.Dir); err != nil {
			f.Close()
			l.opts.FS.Remove(path)
			return fmt.Errorf("%w: fsync of directory %s after creating a segment: %w", ErrWrite, l.opts.Dir, err)
		}
	}
	l.segs = append(l.segs, &segment{base: first, path: path, f: f, indexed: true, alloc: alloc})
	l.log.Debug("retainlog: new segment", "segment", path)
	return nil
}

// cutZeros truncates the active segment act, about to be sealed, to its
// records when preallocated space follows them. A failure is sticky: a
// sealed segment with zeros after its records would be damage to every
// later Open and scrub. Caller holds mu.
func (l *Log) cutZeros(act *segment) error {
	fi, err := act.f.Stat()
	if err == nil && fi.Size() > act.size {
		err = act.f.Truncate(act.size)
	}
	if err != nil {
		l.err = fmt.Errorf("retainlog: cutting the preallocated space off %s before sealing it: %w", act.path, err)
		l.log.Error("retainlog: could not seal a segment; refusing further appends", "segment", act.path, "error", err)
		return l.err
	}
	act.alloc = act.size
	act.noPrealloc = true
	return nil
}

// reuseZeroFile opens path, a segment an earlier roll left behind, when
// it holds nothing but zeros (nothing of a record); else it returns
// exists, the error of the create it stands in for.
func (l *Log) reuseZeroFile(path string, exists error) (durable.File, error) {
	f, err := l.opts.FS.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, exists
	}
	fi, err := f.Stat()
	if err == nil {
		bufp := l.getBuf()
		var from int64
		from, err = zeroTailFrom(f, fi.Size(), *bufp)
		l.putBuf(bufp)
		if err == nil && from == 0 {
			return f, nil
		}
	}
	f.Close()
	return nil, exists
}
