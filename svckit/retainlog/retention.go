package retainlog

import (
	"bytes"
	"errors"
	"io"
	"os"
	"slices"
)

// Retention: deleting the oldest sealed segments while the rest satisfy a
// limit, never at or above the floor; a segment a reader still holds goes
// when the reader lets go, and damaged bytes with no quarantine copy are
// copied after the removal made room.

// EnforceRetention applies the retention limits now. It runs by itself on
// every segment roll and from the background goroutine; calling it is only
// useful to make the effect of a clock change visible at once (tests).
func (l *Log) EnforceRetention() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	l.enforceRetentionLocked()
	return nil
}

// enforceRetentionLocked deletes sealed segments, oldest first, while the
// segments newer than the oldest one satisfy a limit on their own. Caller
// holds mu.
func (l *Log) enforceRetentionLocked() {
	o := l.opts
	if o.RetainMessages == 0 && o.RetainBytes == 0 && o.RetainAge == 0 {
		return
	}
	var now int64
	if o.RetainAge > 0 {
		now = o.Now().UnixNano()
	}
	removed := 0
	for len(l.segs) > 1 {
		s := l.segs[0]
		if s.count == l.count {
			// Everything newer is empty (Open cut the active segment back to
			// nothing). Keep the last records so LastSeq survives: a publisher
			// resumes its sequence from it.
			break
		}
		if f := l.floor.Load(); f > 0 && s.base+s.count > f {
			// The segment holds a record at or above the floor: one its
			// owner still needs (not yet acknowledged by nsqd, or not yet
			// covered by a durable snapshot).
			break
		}
		var why string
		switch {
		case o.RetainMessages > 0 && l.count-s.count >= o.RetainMessages:
			why = "messages"
		case o.RetainBytes > 0 && l.bytes-s.size >= o.RetainBytes:
			why = "bytes"
		case o.RetainAge > 0:
			if newest, ok := l.newestNanos(0); ok && now-newest > int64(o.RetainAge) {
				why = "age"
			}
		}
		if why == "" {
			break
		}
		l.segs[0] = nil
		l.segs = l.segs[1:]
		l.count -= s.count
		l.bytes -= s.size
		l.dropSegment(s)
		removed++
		l.log.Debug("retainlog: retention removed segment", "segment", s.path, "limit", why,
			"records", s.count, "bytes", s.size)
	}
	if removed > 0 {
		// Re-slice into a fresh array now and then so the dropped prefix of
		// the backing array does not grow without bound.
		if cap(l.segs) > 2*len(l.segs)+16 {
			l.segs = append([]*segment(nil), l.segs...)
		}
		l.updateBounds()
	}
}

// newestNanos returns the time of the newest record of sealed segment i. For
// segments written since Open it is exact. For segments found at Open it is
// the time of the first record of the next segment, an upper bound (records
// are appended in time order) that costs one small read instead of a scan of
// the whole segment; it errs towards keeping data. Caller holds mu.
func (l *Log) newestNanos(i int) (int64, bool) {
	s := l.segs[i]
	if s.lastKnown {
		return s.lastNanos, true
	}
	if i+1 >= len(l.segs) {
		return 0, false
	}
	next := l.segs[i+1]
	if next.count == 0 || next.size == 0 {
		return 0, false
	}
	f, err := l.opts.FS.OpenFile(next.path, os.O_RDONLY, 0)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	r := newSegReader(f, 0, next.size, make([]byte, 4096))
	rec, _, fault, err := r.next()
	if err != nil || fault != faultNone || rec.Seq != next.base {
		return 0, false
	}
	s.lastNanos, s.lastKnown = rec.Time.UnixNano(), true
	return s.lastNanos, true
}

// dropSegment unlinks a segment that is no longer part of the log, or leaves
// that to the last reader still holding it. Caller holds mu.
func (l *Log) dropSegment(s *segment) {
	s.removed = true
	if s.refs == 0 {
		l.unlink(s)
	}
}

func (l *Log) unlink(s *segment) {
	if s.uncopied.Load() {
		// Damaged bytes with no quarantine copy yet (the disk was full
		// when they were found): the background goroutine reads them,
		// removes the segment and copies them once the removal made room,
		// without the log's lock (reading a failing disk may take long).
		// Retention must not wait for space only it can free, nor delete
		// the only copy.
		l.deferred = append(l.deferred, s)
		return
	}
	// No directory fsync: a removal lost in a power cut brings an old
	// segment back, which only retains more (segments go oldest first, so
	// what remains is still contiguous).
	if err := l.opts.FS.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		l.log.Warn("retainlog: remove segment", "segment", s.path, "error", err)
	}
}

// removeDeferred removes the segments unlink left to it, keeping their
// uncopied damaged bytes: read first, written to the quarantine directory
// after the removal. Caller must not hold mu.
func (l *Log) removeDeferred() {
	l.mu.Lock()
	segs := l.deferred
	l.deferred = nil
	l.mu.Unlock()
	for _, s := range segs {
		kept, err := l.keepUncopied(s)
		if err != nil {
			l.log.Error("retainlog: retention deletes a segment whose damaged bytes cannot be read for a quarantine copy", "segment", s.path, "error", err)
		}
		if err := l.opts.FS.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			l.log.Warn("retainlog: remove segment", "segment", s.path, "error", err)
		}
		for _, k := range kept {
			path, err := l.quarantine(bytes.NewReader(k.b), 0, s.path, k.d.Offset, int64(len(k.b)), "damaged")
			if err != nil {
				l.log.Error("retainlog: retention deleted a segment whose damaged bytes could not be copied to quarantine", "segment", s.path, "offset", k.d.Offset, "error", err)
				continue
			}
			l.log.Info("retainlog: damaged bytes of a deleted segment copied to quarantine", "segment", s.path, "quarantine", path)
		}
	}
}

type keptDamage struct {
	d Damage
	b []byte
}

// keepUncopied reads the damaged runs of s that have no quarantine copy.
func (l *Log) keepUncopied(s *segment) ([]keptDamage, error) {
	f, err := l.opts.FS.OpenFile(s.path, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s.idxMu.Lock()
	ds := slices.Clone(s.damage)
	s.idxMu.Unlock()
	var out []keptDamage
	for _, d := range ds {
		if d.Quarantine != "" {
			continue
		}
		b := make([]byte, min(d.Bytes, maxQuarantineCopy))
		n, err := f.ReadAt(b, d.Offset)
		if err != nil && !errors.Is(err, io.EOF) {
			return out, err
		}
		out = append(out, keptDamage{d: d, b: b[:n]})
	}
	return out, nil
}

// SetFloor tells retention never to delete a record at or above seq (the
// owner's oldest unacknowledged message, or the first not covered by its
// durable snapshot). 0, the default, is no floor.
func (l *Log) SetFloor(seq uint64) { l.floor.Store(seq) }
