package retainlog

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
)

// Reading: a Read holds the segments it needs (retention leaves them be
// until it lets go) and skips damaged runs, known or found on the way,
// reporting their sequences after every intact record.

// release drops a reader's reference. Caller must not hold mu.
func (l *Log) release(s *segment) {
	l.mu.Lock()
	s.refs--
	if s.refs == 0 && s.removed {
		l.unlink(s)
	}
	l.mu.Unlock()
}

func (l *Log) getBuf() *[]byte  { return l.bufPool.Get().(*[]byte) }
func (l *Log) putBuf(b *[]byte) { l.bufPool.Put(b) }

// segRef is a reader's view of one segment: its extent when the Read started.
type segRef struct {
	s     *segment
	limit int64
	count uint64
}

// Read calls fn for every intact record from..to inclusive, in order; to is
// clamped to LastSeq. It returns an error wrapping ErrTrimmed if from is below
// FirstSeq, ErrBeyondEnd if from is above LastSeq (or the log is empty), and,
// after every intact record was delivered, a *DamagedError (wrapping
// ErrCorrupt) naming the damaged sequences of the range, which it skipped. It
// stops with fn's error, unwrapped, or ctx.Err().
//
// Read sees the log as it was when it started: records appended meanwhile are
// not delivered, and segments removed by retention meanwhile stay readable
// until it returns. Record.Data aliases a reused buffer and is only valid
// during fn.
func (l *Log) Read(ctx context.Context, from, to uint64, fn func(Record) error) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	first, last := l.first.Load(), l.last.Load()
	switch {
	case l.count == 0:
		l.mu.Unlock()
		return fmt.Errorf("%w: read from %d, log is empty", ErrBeyondEnd, from)
	case from < first:
		l.mu.Unlock()
		return fmt.Errorf("%w: read from %d, first retained is %d", ErrTrimmed, from, first)
	case from > last:
		l.mu.Unlock()
		return fmt.Errorf("%w: read from %d, last is %d", ErrBeyondEnd, from, last)
	}
	to = min(to, last)
	if to < from {
		l.mu.Unlock()
		return nil
	}
	i := sort.Search(len(l.segs), func(k int) bool { return l.segs[k].base > from }) - 1
	j := sort.Search(len(l.segs), func(k int) bool { return l.segs[k].base > to }) - 1
	var small [4]segRef
	refs := small[:0]
	for k := max(i, 0); k <= j; k++ {
		s := l.segs[k]
		s.refs++
		refs = append(refs, segRef{s: s, limit: s.size, count: s.count})
	}
	l.mu.Unlock()

	done := 0
	defer func() {
		for _, r := range refs[done:] {
			l.release(r.s)
		}
	}()
	bufp := l.getBuf()
	defer l.putBuf(bufp)
	var damaged [][2]uint64
	for _, r := range refs {
		if r.count > 0 {
			segFrom := max(from, r.s.base)
			segTo := min(to, r.s.base+r.count-1)
			if segFrom <= segTo {
				var err error
				if damaged, err = l.readSegment(ctx, r, segFrom, segTo, *bufp, fn, damaged); err != nil {
					return err
				}
			}
		}
		done++
		l.release(r.s)
	}
	if len(damaged) > 0 {
		return &DamagedError{Ranges: damaged}
	}
	return nil
}

// readSegment delivers the intact records of from..to (all within r) to
// fn, skipping damaged runs (known, or found now) and adding their
// sequence numbers within from..to to damaged, which it returns.
func (l *Log) readSegment(ctx context.Context, r segRef, from, to uint64, buf []byte, fn func(Record) error, damaged [][2]uint64) ([][2]uint64, error) {
	s := r.s
	f, err := l.opts.FS.OpenFile(s.path, os.O_RDONLY, 0)
	if err != nil {
		return damaged, fmt.Errorf("retainlog: %w", err)
	}
	defer f.Close()
	maxSeq := s.base + r.count - 1

	s.idxMu.Lock()
	var found []Damage
	if !s.indexed {
		// First read of a segment found at Open: build its sparse index with
		// one sequential scan so that this and later reads can seek. The
		// scan finds what damage there is too.
		res, err := scan(newSegReader(f, 0, r.limit, buf), s, maxSeq, true, math.MaxInt64)
		if err != nil {
			s.index = s.index[:0]
			s.idxMu.Unlock()
			return damaged, fmt.Errorf("retainlog: index %s: %w", s.path, err)
		}
		s.indexed = true
		found = sealedDamage(s, res, r.limit, maxSeq)
	}
	seq, off := s.lookup(from)
	s.idxMu.Unlock()
	for _, d := range found {
		l.noteDamage(s, f, d)
	}

	rd := newSegReader(f, off, r.limit, buf)
	var n uint
	for want := seq; want <= to; {
		rec, roff, fault, err := rd.next()
		if err != nil && err != io.EOF {
			return damaged, fmt.Errorf("retainlog: read %s: %w", s.path, err)
		}
		if err == io.EOF || fault != faultNone || rec.Seq != want {
			d, err := l.damageAt(s, f, rd, roff, r.limit, want, maxSeq, fault, rec.Seq, err == io.EOF)
			if err != nil {
				return damaged, err
			}
			if d.Last >= from {
				damaged = addRange(damaged, max(d.First, from), min(d.Last, to))
			}
			rd.seek(d.Offset + d.Bytes)
			want = d.Last + 1
			continue
		}
		want++
		if rec.Seq < from {
			continue
		}
		// ctx.Err takes a lock; checking every 256 records keeps it off the
		// per-record cost while still stopping promptly.
		if n%256 == 0 {
			if err := ctx.Err(); err != nil {
				return damaged, err
			}
		}
		n++
		if err := fn(rec); err != nil {
			return damaged, err
		}
	}
	return damaged, nil
}

// damageAt returns the damage a read met at off, where it wanted seq want:
// the segment's known damage there, or damage found now (resync, noted).
func (l *Log) damageAt(s *segment, f io.ReaderAt, rd *segReader, off, limit int64, want, maxSeq uint64, fault decodeFault, got uint64, eof bool) (Damage, error) {
	s.idxMu.Lock()
	d, ok := s.damageOf(want, off)
	s.idxMu.Unlock()
	if ok {
		return d, nil
	}
	reason := fault.String()
	switch {
	case eof:
		reason = "segment ends early"
	case fault == faultNone:
		reason = fmt.Sprintf("seq %d, want %d", got, want)
	}
	d = Damage{Segment: s.path, Offset: off, Bytes: limit - off, First: want, Last: maxSeq, Reason: fmt.Sprintf("%s at offset %d", reason, off)}
	if !eof {
		p, q, found, err := resync(f, off, limit, want, maxSeq, nil)
		if err != nil {
			return Damage{}, fmt.Errorf("retainlog: read %s: %w", s.path, err)
		}
		if found {
			d.Bytes, d.Last = p-off, q-1
		}
	} else {
		d.Bytes = 0
	}
	l.noteDamage(s, f, d)
	return d, nil
}

// sealedDamage turns a scan of a segment whose extent is known (sealed, or
// the active one up to a read's limit) into damage: the runs the scan found,
// and a bad or missing end, which in such a segment is damage, never a torn
// tail. Caller holds s.idxMu.
func sealedDamage(s *segment, res scanResult, limit int64, maxSeq uint64) []Damage {
	out := res.damage
	if res.last < maxSeq {
		reason := res.fault
		if reason == "" {
			reason = fmt.Sprintf("segment ends at offset %d, before seq %d", res.good, res.last+1)
		}
		out = append(out, Damage{Segment: s.path, Offset: res.good, Bytes: limit - res.good, First: res.last + 1, Last: maxSeq, Reason: reason})
	}
	return out
}

// Damaged lists the damage known in the retained segments, oldest first
// (found at Open, by reads and by the scrubber).
func (l *Log) Damaged() []Damage {
	l.mu.Lock()
	segs := slices.Clone(l.segs)
	l.mu.Unlock()
	var out []Damage
	for _, s := range segs {
		s.idxMu.Lock()
		out = append(out, s.damage...)
		s.idxMu.Unlock()
	}
	return out
}

// DamagedRanges is Damaged as merged [first, last] sequence ranges.
func (l *Log) DamagedRanges() [][2]uint64 {
	var rs [][2]uint64
	for _, d := range l.Damaged() {
		rs = addRange(rs, d.First, d.Last)
	}
	return rs
}
