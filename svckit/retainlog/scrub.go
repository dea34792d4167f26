package retainlog

import (
	"errors"
	"io"
	"math"
	"os"
	"slices"
	"time"
)

// errScrubStopped ends a scrub pass when the log closes.
var errScrubStopped = errors.New("retainlog: scrub stopped")

// scrubLoop verifies every segment at Options.ScrubRate, a pass at Open and
// then every Options.ScrubEvery, until Close.
func (l *Log) scrubLoop() {
	defer close(l.scrubDone)
	for {
		l.scrubPass()
		t := time.NewTimer(l.opts.ScrubEvery)
		select {
		case <-l.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// scrubPass reads every segment as it was when the pass began, the active
// one up to what was committed then. Damage it finds is noted (quarantine
// copy, log, OnDamage) as a read would.
func (l *Log) scrubPass() {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	segs := slices.Clone(l.segs)
	l.mu.Unlock()
	// One segment referenced at a time: a pass over a large log takes
	// minutes, and retention must be able to free the others meanwhile.
	for _, s := range segs {
		l.mu.Lock()
		if s.removed || s.count == 0 {
			l.mu.Unlock()
			continue
		}
		s.refs++
		r := segRef{s: s, limit: s.size, count: s.count}
		l.mu.Unlock()
		err := l.scrubSegment(r)
		l.release(s)
		if errors.Is(err, errScrubStopped) {
			return
		}
		if err != nil {
			l.log.Warn("retainlog: scrubbing a segment", "segment", s.path, "error", err)
		}
	}
	l.scrubPasses.Add(1)
}

func (l *Log) scrubSegment(r segRef) error {
	f, err := l.opts.FS.OpenFile(r.s.path, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	bufp := l.getBuf()
	defer l.putBuf(bufp)
	pr := &pacedReader{f: f, rate: l.opts.ScrubRate, stop: l.stop, log: l}
	maxSeq := r.s.base + r.count - 1
	res, err := scan(newSegReader(pr, 0, r.limit, *bufp), r.s, maxSeq, false, math.MaxInt64)
	if err != nil {
		return err
	}
	for _, d := range sealedDamage(r.s, res, r.limit, maxSeq) {
		l.noteDamage(r.s, f, d)
	}
	return nil
}

// pacedReader reads at most rate bytes a second on average, and fails with
// errScrubStopped once stop is closed.
type pacedReader struct {
	f    io.ReaderAt
	rate int64
	stop <-chan struct{}
	log  *Log
}

func (p *pacedReader) ReadAt(b []byte, off int64) (int, error) {
	select {
	case <-p.stop:
		return 0, errScrubStopped
	default:
	}
	n, err := p.f.ReadAt(b, off)
	p.log.scrubbed.Add(uint64(n))
	if n > 0 {
		// Pacing, not synchronisation: spread the reads over time.
		t := time.NewTimer(time.Duration(float64(n) / float64(p.rate) * float64(time.Second)))
		select {
		case <-p.stop:
			t.Stop()
			return n, errScrubStopped
		case <-t.C:
		}
	}
	return n, err
}

// retryQuarantine copies the damaged bytes that could not be copied when
// they were found (a full disk), so retention may delete their segments.
func (l *Log) retryQuarantine() {
	l.mu.Lock()
	var segs []*segment
	for _, s := range l.segs {
		if s.uncopied.Load() {
			s.refs++
			segs = append(segs, s)
		}
	}
	l.mu.Unlock()
	for _, s := range segs {
		l.copyDamage(s)
		l.release(s)
	}
}

func (l *Log) copyDamage(s *segment) {
	f, err := l.opts.FS.OpenFile(s.path, os.O_RDONLY, 0)
	if err != nil {
		return
	}
	defer f.Close()
	s.idxMu.Lock()
	ds := append([]Damage(nil), s.damage...)
	s.idxMu.Unlock()
	all := true
	for i, d := range ds {
		if d.Quarantine != "" {
			continue
		}
		path, err := l.quarantine(f, d.Offset, s.path, d.Offset, d.Bytes, "damaged")
		if err != nil {
			all = false
			continue
		}
		ds[i].Quarantine = path
		l.log.Info("retainlog: damaged bytes copied to quarantine", "segment", s.path, "offset", d.Offset, "quarantine", path)
	}
	s.idxMu.Lock()
	for _, d := range ds {
		for i := range s.damage {
			if s.damage[i].Offset == d.Offset && d.Quarantine != "" {
				s.damage[i].Quarantine = d.Quarantine
			}
		}
	}
	// Looked at again under the lock: damage found meanwhile may have no
	// copy either.
	all = true
	for _, d := range s.damage {
		all = all && d.Quarantine != ""
	}
	s.uncopied.Store(!all)
	s.idxMu.Unlock()
}
