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

// Records is how many sequence numbers the damage covers: 0 for bytes
// that held no record (Last = First-1: garbage between intact records).
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
// off, the start of the record that should have had sequence want. A
// candidate at p must decode (length, CRC), have a sequence number q with
// want <= q <= maxSeq that the bytes in between could have held
// ((q-want)*minRecordLen <= p-off: damage replaces bytes, it does not remove
// them), and be followed by the end of the data or by an intact record with
// sequence q+1. The last condition keeps a record-shaped payload inside a
// damaged record (a publisher's data can be anything) from being taken for
// the stream going on. It returns the candidate's offset and sequence, or
// found = false when nothing intact follows off before limit.
func resync(f io.ReaderAt, off, limit int64, want, maxSeq uint64, buf []byte) (p int64, q uint64, found bool, err error) {
	const window = headerLen + bodyFixedLen // what a candidate test needs in buf
	if len(buf) < 2*window {
		buf = make([]byte, 64<<10)
	}
	var rec []byte // a candidate's whole record, when it is not in buf
	for pos := off + 1; pos+minRecordLen <= limit; {
		n := int(min(int64(len(buf)), limit-pos))
		m, rerr := f.ReadAt(buf[:n], pos)
		if rerr != nil && !errors.Is(rerr, io.EOF) {
			return 0, 0, false, rerr
		}
		if m < minRecordLen {
			return 0, 0, false, nil // the file ends before limit
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
			if seq < want || seq > maxSeq || (seq-want) > uint64(at-off)/minRecordLen {
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
			ok, err := chained(f, end, limit, seq+1)
			if err != nil {
				return 0, 0, false, err
			}
			if ok {
				return at, seq, true, nil
			}
		}
		pos += int64(last + 1)
	}
	return 0, 0, false, nil
}

// chained reports whether off is the end of the data or the start of an
// intact record with sequence number seq.
func chained(f io.ReaderAt, off, limit int64, seq uint64) (bool, error) {
	if off == limit {
		return true, nil
	}
	var hdr [headerLen + bodyFixedLen]byte
	if off+int64(len(hdr)) > limit {
		return false, nil
	}
	if _, err := f.ReadAt(hdr[:], off); err != nil {
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		return false, err
	}
	n, ok := peekBodyLen(hdr[:])
	if !ok || off+headerLen+int64(n) > limit || binary.BigEndian.Uint64(hdr[headerLen:]) != seq {
		return false, nil
	}
	b := make([]byte, headerLen+n)
	if _, err := f.ReadAt(b, off); err != nil {
		if errors.Is(err, io.EOF) {
			return false, nil
		}
		return false, err
	}
	_, _, fault := decodeRecord(b)
	return fault == faultNone, nil
}

// quarantineDir is where copies of damaged bytes (and of cut torn tails)
// are kept, inside the log's directory.
const quarantineDir = "quarantine"

// quarantine copies n bytes of the segment at off into the quarantine
// directory, durably, under a name that says where they came from, and
// returns its path. An existing copy is kept (the same damage found again).
func (l *Log) quarantine(f io.ReaderAt, segPath string, off, n int64, kind string) (string, error) {
	dir := filepath.Join(l.opts.Dir, quarantineDir)
	name := fmt.Sprintf("%s.%d.%s", strings.TrimSuffix(filepath.Base(segPath), segSuffix), off, kind)
	path := filepath.Join(dir, name)
	if _, err := l.opts.FS.Stat(path); err == nil {
		return path, nil
	}
	if n > MaxBodyLen*2 {
		n = MaxBodyLen * 2 // a whole garbage segment: its first part names it well enough
	}
	b := make([]byte, n)
	if n > 0 {
		m, err := f.ReadAt(b, off)
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

// damageAt returns the known damage starting at off. Caller holds s.idxMu.
func (s *segment) damageAt(off int64) (Damage, bool) {
	for _, d := range s.damage {
		if d.Offset == off {
			return d, true
		}
	}
	return Damage{}, false
}
