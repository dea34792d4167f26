package retainlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/svckit/svckit/svckit/durable"
)

// Damage is a run of records that failed validation (a CRC or length
// mismatch, a wrong sequence number, bytes missing) and that is not a torn
// tail: intact records follow it, or its owner knew it was durable
// (Options.Durable), or it lies in a sealed segment. Damaged bytes are never
// truncated or overwritten: they stay where they are, a copy goes to the
// quarantine directory, and reads skip them and report their sequence
// numbers (DamagedError).
type Damage struct {
	Segment string `json:"segment"` // path of the segment file
	Offset  int64  `json:"offset"`  // where the damaged bytes start
	Bytes   int64  `json:"bytes"`   // how many bytes are damaged (0: records missing, no bytes)
	// First and Last are the sequence numbers the damaged bytes held:
	// exact, since the record after them (or the segment's extent, known
	// from the file names) says where the stream went on.
	First  uint64 `json:"first"`
	Last   uint64 `json:"last"`
	Reason string `json:"reason"`
	// Quarantine is the file holding a copy of the damaged bytes, "" until
	// one could be written (a full disk; retried by the background
	// goroutine, and retention keeps the segment meanwhile).
	Quarantine string `json:"quarantine,omitempty"`
}

// Records is how many sequence numbers the damage covers (resync finds the
// stream again only above First, so at least one).
func (d Damage) Records() uint64 { return d.Last + 1 - d.First }

// DamagedError is returned by Read after every intact record of the range
// was delivered, when some records in it are damaged. Ranges are the
// damaged sequence numbers within the range read, in order, as [first,
// last] pairs. errors.Is(err, ErrCorrupt) holds.
type DamagedError struct {
	Ranges [][2]uint64
}

func (e *DamagedError) Error() string {
	return "retainlog: damaged records " + FormatRanges(e.Ranges) + " (kept in quarantine, not served)"
}

func (e *DamagedError) Unwrap() error { return ErrCorrupt }

// Count is how many sequence numbers the error names.
func (e *DamagedError) Count() uint64 {
	var n uint64
	for _, r := range e.Ranges {
		n += r[1] - r[0] + 1
	}
	return n
}

// FormatRanges writes ranges as "5-5,9-12".
func FormatRanges(rs [][2]uint64) string {
	var b strings.Builder
	for i, r := range rs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(r[0], 10))
		b.WriteByte('-')
		b.WriteString(strconv.FormatUint(r[1], 10))
	}
	return b.String()
}

// ParseRanges reads what FormatRanges wrote: "first-last" pairs separated by
// commas, each with first <= last, in increasing order.
func ParseRanges(s string) ([][2]uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var out [][2]uint64
	for part := range strings.SplitSeq(s, ",") {
		a, b, ok := strings.Cut(strings.TrimSpace(part), "-")
		if !ok {
			return nil, fmt.Errorf("damaged range %q: want first-last", part)
		}
		first, err1 := strconv.ParseUint(a, 10, 64)
		last, err2 := strconv.ParseUint(b, 10, 64)
		if err1 != nil || err2 != nil || first == 0 || last < first || (len(out) > 0 && first <= out[len(out)-1][1]) {
			return nil, fmt.Errorf("damaged range %q: want first-last with 1 <= first <= last, in increasing order", part)
		}
		out = append(out, [2]uint64{first, last})
	}
	return out, nil
}

// addRange appends [first, last] to rs, merging it with the last range when
// they touch.
func addRange(rs [][2]uint64, first, last uint64) [][2]uint64 {
	if n := len(rs); n > 0 && rs[n-1][1]+1 >= first {
		rs[n-1][1] = max(rs[n-1][1], last)
		return rs
	}
	return append(rs, [2]uint64{first, last})
}

// minRecordLen is the smallest encoded record: n records occupy at least
// n*minRecordLen bytes, which bounds the sequence numbers damaged bytes can
// have held.
const minRecordLen = headerLen + bodyFixedLen

// resync looks for where intact records start again after damage found at
// off, the start of the record that should have had sequence want.
//
// First it trusts the damaged record's own length field: when the bytes
// right after it are an intact record with sequence want+1, only the
// record at off is damaged (its CRC or data took the hit) — the real layout
// of the file, which no payload can fake.
//
// Otherwise it scans. A candidate at p must decode (length, CRC) and have a
// sequence number q with want < q <= maxSeq that the damaged bytes could
// have held ((q-want)*minRecordLen <= p-off: damage replaces bytes, it does
// not insert or remove them, so the record at off, want, is never found
// again further on). A candidate is chained when an intact record with
// sequence q+1 follows it, unchained when damage, a torn tail or the end of
// the data does. The first unchained candidate before the first chained one
// wins if its sequence is lower (an intact record between two damaged
// ones, or before a torn tail, is kept); else the chained one (the
// unchained one was a record-shaped payload: the stream's own record of
// its sequence is chained, or later). Without a chained candidate, the
// first unchained one. A record-shaped payload inside a damaged record can
// pass only as an unchained candidate when the records after it are damaged
// too.
//
// It returns the candidate's offset and sequence, or found = false when
// nothing intact follows off before limit.
func resync(f io.ReaderAt, off, limit int64, want, maxSeq uint64, buf []byte) (p int64, q uint64, found bool, err error) {
	if p, q, ok, err := byOwnLength(f, off, limit, want, maxSeq); err != nil || ok {
		return p, q, ok, err
	}
	const window = headerLen + bodyFixedLen // what a candidate test needs in buf
	if len(buf) < 2*window {
		buf = make([]byte, 64<<10)
	}
	var weak struct {
		p     int64
		q     uint64
		found bool
	}
	var rec []byte // a candidate's whole record, when it is not in buf
	for pos := off + 1; pos+minRecordLen <= limit; {
		n := int(min(int64(len(buf)), limit-pos))
		m, rerr := f.ReadAt(buf[:n], pos)
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return 0, 0, false, rerr
		}
		if m < minRecordLen {
			break // the file ends before limit
		}
		chunk := buf[:m]
		// Candidates start at pos+i for i <= m-window; the next chunk
		// starts right after the last one tested here.
		last := m - window
		for i := 0; i <= last; i++ {
			bodyLen := binary.BigEndian.Uint32(chunk[i:])
			if bodyLen < bodyFixedLen || bodyLen > MaxBodyLen {
				continue
			}
			at := pos + int64(i)
			end := at + headerLen + int64(bodyLen)
			if end > limit {
				continue
			}
			seq := binary.BigEndian.Uint64(chunk[i+headerLen:])
			if seq <= want || seq > maxSeq || (seq-want) > uint64(at-off)/minRecordLen {
				continue
			}

			var whole []byte
			if i+headerLen+int(bodyLen) <= m {
				whole = chunk[i : i+headerLen+int(bodyLen)]
			} else {
				if cap(rec) < headerLen+int(bodyLen) {
					rec = make([]byte, headerLen+int(bodyLen))
				}
				whole = rec[:headerLen+int(bodyLen)]
				if _, err := f.ReadAt(whole, at); err != nil {
					if errors.Is(err, io.EOF) {
						continue
					}
					return 0, 0, false, err
				}
			}
			if crc32.Checksum(whole[headerLen:], castagnoli) != binary.BigEndian.Uint32(whole[4:]) {
				continue
			}
			next, err := successor(f, end, limit, seq+1)
			if err != nil {
				return 0, 0, false, err
			}
			switch {
			case next == chainContinues && end < limit:
				// Chained to an intact successor: the stream going on.
				// An earlier unchained candidate with a lower sequence is
				// an intact record between damages (keep it); one with a
				// sequence at or above this one's was a record-shaped
				// payload (the stream's own record of that sequence is
				// this chained one, or comes later).
				if weak.found && weak.q < seq {
					return weak.p, weak.q, true, nil
				}
				return at, seq, true, nil
			case next == chainContradicted:
			case !weak.found:
				// Unchained: followed by damage, a torn tail, or the end.
				weak.p, weak.q, weak.found = at, seq, true
			}
		}
		pos += int64(last + 1)
	}
	if weak.found {
		return weak.p, weak.q, true, nil
	}
	return 0, 0, false, nil
}

// byOwnLength reports the record right after the damaged one at off, by the
// damaged record's length field, when it is intact with sequence want+1.
func byOwnLength(f io.ReaderAt, off, limit int64, want, maxSeq uint64) (int64, uint64, bool, error) {
	var hdr [headerLen]byte
	if off+headerLen > limit || want+1 > maxSeq {
		return 0, 0, false, nil
	}
	if _, err := f.ReadAt(hdr[:], off); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, 0, false, nil
		}
		return 0, 0, false, err
	}
	n, ok := peekBodyLen(hdr[:])
	if !ok {
		return 0, 0, false, nil
	}
	next := off + headerLen + int64(n)
	if next >= limit {
		return 0, 0, false, nil
	}
	s, err := successor(f, next, limit, want+1)
	if err != nil || s != chainContinues {
		return 0, 0, false, err
	}
	// The length field may be the damaged part, pointing into the
	// record's own data, where a payload may hold a record-shaped copy:
	// the record there must itself be followed by the end of the data or
	// by an intact want+2, as the real next record is.
	var hdr2 [headerLen]byte
	if _, err := f.ReadAt(hdr2[:], next); err != nil {
		return 0, 0, false, nil
	}
	n2, _ := peekBodyLen(hdr2[:])
	if s2, err := successor(f, next+headerLen+int64(n2), limit, want+2); err != nil || s2 != chainContinues {
		return 0, 0, false, err
	}
	return next, want + 1, true, nil
}

// What follows a resync candidate.
const (
	chainContinues    = iota // the end of the data, or an intact record with the next sequence
	chainBroken              // bytes that are no intact record: damage or a torn tail
	chainContradicted        // an intact record with another sequence
)

// successor says what follows a candidate ending at off whose successor
// should have sequence seq.
func successor(f io.ReaderAt, off, limit int64, seq uint64) (int, error) {
	if off == limit {
		return chainContinues, nil
	}
	var hdr [headerLen + bodyFixedLen]byte
	if off+int64(len(hdr)) > limit {
		return chainBroken, nil
	}
	if _, err := f.ReadAt(hdr[:], off); err != nil {
		if errors.Is(err, io.EOF) {
			return chainBroken, nil
		}
		return 0, err
	}
	n, ok := peekBodyLen(hdr[:])
	if !ok || off+headerLen+int64(n) > limit {
		return chainBroken, nil
	}
	b := make([]byte, headerLen+n)
	if _, err := f.ReadAt(b, off); err != nil {
		if errors.Is(err, io.EOF) {
			return chainBroken, nil
		}
		return 0, err
	}
	r, _, fault := decodeRecord(b)
	switch {
	case fault != faultNone:
		return chainBroken, nil
	case r.Seq == seq:
		return chainContinues, nil
	}
	return chainContradicted, nil
}

// quarantineDir is where copies of damaged bytes (and of cut torn tails)
// are kept, inside the log's directory.
const quarantineDir = "quarantine"

// maxQuarantineCopy bounds one quarantine copy: a whole garbage segment's
// first part names it well enough.
const maxQuarantineCopy = 2 * MaxBodyLen

// quarantine copies n bytes, read from src at at, that stood at off of the
// segment segPath, into the quarantine directory, durably, under a name
// that says where they came from, and returns its path. An existing copy
// is kept (the same damage found again).
func (l *Log) quarantine(src io.ReaderAt, at int64, segPath string, off, n int64, kind string) (string, error) {
	dir := filepath.Join(l.opts.Dir, quarantineDir)
	name := fmt.Sprintf("%s.%d.%s", strings.TrimSuffix(filepath.Base(segPath), segSuffix), off, kind)
	path := filepath.Join(dir, name)
	if _, err := l.opts.FS.Stat(path); err == nil {
		return path, nil
	}
	b := make([]byte, min(n, maxQuarantineCopy))
	if len(b) > 0 {
		m, err := src.ReadAt(b, at)
		if err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("reading damaged bytes of %s at %d: %w", segPath, off, err)
		}
		b = b[:m]
	}
	if err := durable.MkdirAll(l.opts.FS, dir); err != nil {
		return "", err
	}
	if err := durable.WriteFileAtomic(l.opts.FS, path, b); err != nil {
		return "", err
	}
	return path, nil
}

// addDamage records d in s (unless known already: the same offset) and
// reports whether it was new. Caller holds s.idxMu.
func (s *segment) addDamage(d Damage) bool {
	i, found := slices.BinarySearchFunc(s.damage, d.Offset, func(e Damage, off int64) int {
		switch {
		case e.Offset < off:
			return -1
		case e.Offset > off:
			return 1
		}
		return 0
	})
	if found {
		return false
	}
	s.damage = slices.Insert(s.damage, i, d)
	if d.Quarantine == "" {
		s.uncopied.Store(true)
	}
	return true
}

// damageOf returns the known damage a read at off meets when it wants
// sequence want: the run holding want that the read is at or in (whatever
// record it started from). Caller holds s.idxMu.
func (s *segment) damageOf(want uint64, off int64) (Damage, bool) {
	for _, d := range s.damage {
		if d.First <= want && want <= d.Last && d.Offset <= off && off <= d.Offset+d.Bytes {
			return d, true
		}
	}
	return Damage{}, false
}

// damageAt returns the known damage starting at off. Caller holds s.idxMu.
func (s *segment) damageAt(off int64) (Damage, bool) {
	for _, d := range s.damage {
		if d.Offset == off {
			return d, true
		}
	}
	return Damage{}, false
}
