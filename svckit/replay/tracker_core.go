package replay

import (
	"fmt"
	"time"

	"github.com/svckit/svckit/svckit/envelope"
)

// The tracker's core: one stream's bookkeeping of what was handled (the
// applied set, with the parts of split sequences and the markers of
// sequences a stage made nothing of), of what is missing (gaps, and how
// long each has been open), and of how far live sequences may run ahead of
// what the owner is known to have published.
//
// streamCore neither locks nor touches the network, the disk, the metrics
// or the log: the Tracker calls it with its trackedStream's lock held, and
// does those around it (tracker.go for live delivery, tracker_recovery.go
// for replay and snapshots, tracker_checkpoint.go for the file,
// tracker_status.go for what is reported). Its only callout is the
// Applier, between deciding that a message is new and recording it.

// streamCore is one stream's exactly-once state.
type streamCore struct {
	id string
	// applied holds every handled sequence: applied to the state, or
	// dead-lettered (those are in parked too). Gaps are what it lacks.
	applied    SeqSet
	parked     SeqSet
	partial    map[uint64]*partialSeq // split sequences not complete yet
	duplicates uint64
	snapshots  uint64
	ownerLast  uint64 // last_seq the owner reported
	// contigAt is when the message that last moved the contiguous
	// position was created (its envelope's time): how old the position
	// is, for the lag in seconds.
	contigAt time.Time
	gapSeen  map[uint64]time.Time // gap start → when first seen open
	counted  map[uint64]bool      // gap starts already counted in GapsDetected
}

func newStreamCore(id string) streamCore {
	return streamCore{id: id, gapSeen: map[uint64]time.Time{}, counted: map[uint64]bool{}, partial: map[uint64]*partialSeq{}}
}

// partialSeq is a sequence split into parts, some applied.
type partialSeq struct {
	parts uint32
	got   SeqSet // part index + 1: handled (applied or marked)
	dead  SeqSet // part index + 1: handled by dead-lettering
}

// apply applies env through a once, and reports whether it applied and
// whether env was a duplicate (counted in duplicates). An Apply error
// leaves the sequence unhandled.
//
// A sequence is complete when its message was applied, or all its parts
// (a stage split its input), or its marker seen (a stage made nothing of
// it). A marker that carries a reason (the input was dead-lettered
// upstream) parks the sequence: complete for gap detection, and applied
// should its message ever arrive (requeued by an operator).
func (c *streamCore) apply(a Applier, env envelope.Envelope) (applied, duplicate bool, err error) {
	prev := c.applied.Contiguous()
	applied, duplicate, err = c.applyOne(a, env)
	c.noteContiguous(prev, env.Created)
	return applied, duplicate, err
}

// noteContiguous keeps the creation time of the message that moved the
// contiguous position past prev. Sequences fill in order of creation, so
// the position is at least this old: the lag in seconds is measured from
// it (an upper bound, by at most the time between two messages).
func (c *streamCore) noteContiguous(prev uint64, created time.Time) {
	if c.applied.Contiguous() > prev && !created.IsZero() {
		c.contigAt = created
	}
}

// lag is how far the stream's contiguous position is behind the highest
// sequence known to exist (the owner's last, or one applied out of
// order), in messages, and in seconds since the position's message was
// created; 0, 0 when it is not behind.
func (c *streamCore) lag(now time.Time) (messages uint64, seconds float64) {
	top, at := max(c.ownerLast, c.applied.Max()), c.applied.Contiguous()
	if top <= at {
		return 0, 0
	}
	if !c.contigAt.IsZero() {
		seconds = max(now.Sub(c.contigAt).Seconds(), 0)
	}
	return top - at, seconds
}

func (c *streamCore) applyOne(a Applier, env envelope.Envelope) (applied, duplicate bool, err error) {
	seq := env.Seq
	parked := c.parked.Contains(seq)
	if c.applied.Contains(seq) && (!parked || env.Marker) && c.partial[seq] == nil {
		c.duplicates++
		return false, true, nil
	}
	if env.Parts > 1 {
		return c.applyPart(a, env)
	}
	if c.partial[seq] != nil {
		return false, false, permanentError{fmt.Errorf("stream %s seq %d: a whole message for a sequence sent in parts", c.id, seq)}
	}
	switch {
	case env.Marker && len(env.Payload) > 0:
		c.applied.Add(seq)
		c.parked.Add(seq)
		return false, false, nil
	case env.Marker:
		c.applied.Add(seq)
		return false, false, nil
	}
	if err := a.Apply(env.Stream, env); err != nil {
		return false, false, err
	}
	// A dead-lettered sequence sent again applies now: no longer parked.
	c.parked.Remove(seq)
	c.applied.Add(seq)
	return true, false, nil
}

// applyPart applies one part of a split sequence once. The sequence is
// complete when every part was applied or marked; if some were
// dead-lettered upstream it is parked, and its record kept, so that
// exactly those parts apply should they come again (requeued), and no
// other part twice.
func (c *streamCore) applyPart(a Applier, env envelope.Envelope) (applied, duplicate bool, err error) {
	seq, part := env.Seq, uint64(env.Part)+1 // SeqSet has no 0
	p := c.partial[seq]
	if p == nil {
		p = &partialSeq{parts: env.Parts}
		c.partial[seq] = p
	} else if p.parts != env.Parts {
		return false, false, permanentError{fmt.Errorf("stream %s seq %d: part %d of %d, but earlier parts said %d", c.id, seq, env.Part, env.Parts, p.parts)}
	}
	if p.got.Contains(part) && (env.Marker || !p.dead.Contains(part)) {
		c.duplicates++
		return false, true, nil
	}
	switch {
	case env.Marker && len(env.Payload) > 0:
		p.dead.Add(part) // dead-lettered upstream
	case env.Marker:
	default:
		if err := a.Apply(env.Stream, env); err != nil {
			return false, false, err
		}
		applied = true
		p.dead.Remove(part)
	}
	p.got.Add(part)
	c.settleParts(seq, p)
	return applied, false, nil
}

// settleParts completes seq once every part is handled: parked while some
// part is dead, else done with.
func (c *streamCore) settleParts(seq uint64, p *partialSeq) {
	if p.got.Count() < uint64(p.parts) {
		return
	}
	c.applied.Add(seq)
	if p.dead.Count() > 0 {
		c.parked.Add(seq)
		return
	}
	c.parked.Remove(seq)
	delete(c.partial, seq)
}

// park counts a replayed env that was dead-lettered as handled, so that it
// is not requested again: only its part when it is one (its siblings
// still come, or are asked for), and nothing when it was handled already.
func (c *streamCore) park(env envelope.Envelope) {
	prev := c.applied.Contiguous()
	defer func() { c.noteContiguous(prev, env.Created) }()
	seq := env.Seq
	switch {
	case env.Parts > 1:
		// Only this part: its siblings still come, or are asked for.
		p := c.partial[seq]
		if p == nil {
			p = &partialSeq{parts: env.Parts}
			c.partial[seq] = p
		}
		if part := uint64(env.Part) + 1; !p.got.Contains(part) {
			p.got.Add(part)
			p.dead.Add(part)
			c.settleParts(seq, p)
		}
	case !c.applied.Contains(seq):
		c.applied.Add(seq)
		c.parked.Add(seq)
	}
}

// pastBound reports whether a live seq is more than maxAhead past what the
// owner is known to have published (its last answer, kept in the
// checkpoint): such a sequence must be checked with the owner first. Only
// what the owner said counts: what this consumer applied could be a
// forgery within the bound, which must not move it.
func (c *streamCore) pastBound(seq, maxAhead uint64) bool {
	return seq > c.ownerLast+maxAhead
}

// noteOwnerLast records an owner's answer for its last sequence; the
// bound only ever moves up.
func (c *streamCore) noteOwnerLast(last uint64) {
	c.ownerLast = max(c.ownerLast, last)
}

// missing lists the stream's missing ranges, the tail up to what the owner
// reported included.
func (c *streamCore) missing() [][2]uint64 {
	gaps := c.applied.Gaps()
	if top := c.applied.Max(); c.ownerLast > top {
		gaps = append(gaps, [2]uint64{top + 1, c.ownerLast})
	}
	return gaps
}

// scanGaps notes, at now, when each missing range was first seen open and
// forgets those that closed since. It returns how many sequences are
// missing, whether some range has stayed open for grace (recovery is
// due), and the ranges that became due at this scan (each detected once,
// until it closes).
func (c *streamCore) scanGaps(now time.Time, grace time.Duration) (n uint64, due bool, detected [][2]uint64) {
	gaps := c.missing()
	open := make(map[uint64]bool, len(gaps))
	for _, g := range gaps {
		n += g[1] - g[0] + 1
		open[g[0]] = true
		seen, ok := c.gapSeen[g[0]]
		if !ok {
			c.gapSeen[g[0]] = now
			continue
		}
		if now.Sub(seen) >= grace {
			due = true
			if !c.counted[g[0]] {
				c.counted[g[0]] = true
				detected = append(detected, g)
			}
		}
	}
	for k := range c.gapSeen {
		if !open[k] {
			delete(c.gapSeen, k)
			delete(c.counted, k)
		}
	}
	return n, due, detected
}

// dueGaps lists the missing ranges a scan saw open at least grace before
// now: those recovery asks for.
func (c *streamCore) dueGaps(now time.Time, grace time.Duration) [][2]uint64 {
	var due [][2]uint64
	for _, g := range c.missing() {
		if seen, ok := c.gapSeen[g[0]]; ok && now.Sub(seen) >= grace {
			due = append(due, g)
		}
	}
	return due
}

// applySnapshot replaces the stream's state by the owner's fold over
// 1..seq through a, unless the stream is already past seq (then it
// reports false and changes nothing). On an ApplySnapshot error nothing
// of the core changes either.
func (c *streamCore) applySnapshot(a Applier, seq uint64, state []byte) (bool, error) {
	if seq <= c.applied.Contiguous() {
		return false, nil // we are already past it: nothing to gain
	}
	if err := a.ApplySnapshot(c.id, seq, state); err != nil {
		return false, fmt.Errorf("applying snapshot of %s at %d: %w", c.id, seq, err)
	}
	// Sequences above the snapshot that were applied are no longer in the
	// state: forget them too, so they are replayed (they are recent, so
	// retained) instead of counted twice or lost.
	c.applied.Reset(seq)
	c.parked.Reset(0)
	clear(c.partial)
	c.snapshots++
	return true, nil
}
