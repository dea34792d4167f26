package retainlog

import (
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/svckit/svckit/svckit/durable"
)

const (
	// indexEvery is the sparse index stride. 128 records of 200 bytes is
	// ~28 KiB, so a seek lands within one read-buffer of the wanted record while
	// the index of a 64 MiB segment stays around 40 KiB.
	indexEvery = 128
	// readBufSize is the chunk a reader pulls from the file with one pread.
	// Large chunks amortise the syscall over hundreds of records.
	readBufSize = 256 << 10
	segSuffix   = ".log"
	segNameLen  = 20
)

// indexEntry maps a sequence number to the file offset of its record.
type indexEntry struct {
	seq uint64
	off int64
}

// segment is one <first-seq>.log file.
type segment struct {
	base uint64 // first sequence number, from the file name
	path string

	// Guarded by Log.mu.
	f         durable.File // writer fd, non-nil only while this is the active segment
	count     uint64       // records in the segment (last seq = base+count-1)
	size      int64        // committed bytes: only records that write(2) completed
	lastNanos int64        // time of the newest record (an upper bound, see Log.newestNanos)
	lastKnown bool
	// alloc is how far the file is known to hold, durably, records or
	// zeros (>= size): an append that stays below it only overwrites
	// preallocated blocks. zeroing: a background job is zero-filling
	// from alloc on; an append that would write there waits for it.
	// metaDirty: the file grew (or shrank) since its last fsync, so the
	// next one must be an fsync, not an fdatasync. noPrealloc: a
	// preallocation failed (a full disk) or a write was undone; this
	// segment is not extended again.
	alloc      int64
	zeroing    bool
	metaDirty  bool
	noPrealloc bool
	refs       int  // readers currently using the file
	removed    bool // dropped by retention; the last reader to leave unlinks it
	// sealNext: Open found damage at the end of this (active) segment that
	// its owner knew was durable; the damaged bytes stay, and the next
	// append starts a new segment after them.
	sealNext bool
	// uncopied: some damage of this segment has no quarantine copy yet
	// (the disk was full); retention keeps the segment until it has.
	uncopied atomic.Bool

	// idxMu guards the sparse index. It is separate from Log.mu so that building
	// the index of a sealed segment (a full scan) does not stall appends.
	idxMu   sync.Mutex
	index   []indexEntry
	indexed bool // index covers the segment (built on append, at Open, or lazily)
	// damage lists the damaged runs found in the file, by offset (see
	// Damage): reads skip them.
	damage []Damage
}

func segmentName(base uint64) string {
	return fmt.Sprintf("%0*d%s", segNameLen, base, segSuffix)
}

// parseSegmentName returns the first seq encoded in a segment file name. Any
// other file in the directory (editor backups, temp files) is ignored rather
// than treated as corruption.
func parseSegmentName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, segSuffix)
	if !ok || len(digits) != segNameLen {
		return 0, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	base, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || base == 0 {
		return 0, false
	}
	return base, true
}

// addIndex records seq at off. Caller holds idxMu.
func (s *segment) addIndex(seq uint64, off int64) {
	s.index = append(s.index, indexEntry{seq, off})
}

// lookup returns the indexed record at or before seq. Caller holds idxMu.
func (s *segment) lookup(seq uint64) (uint64, int64) {
	i := sort.Search(len(s.index), func(i int) bool { return s.index[i].seq > seq }) - 1
	if i < 0 {
		return s.base, 0
	}
	return s.index[i].seq, s.index[i].off
}

// segReader reads records from a segment file up to limit with large preads
// into one reusable buffer. Records it returns alias that buffer and are valid
// until the next call to next.
type segReader struct {
	f     io.ReaderAt
	pos   int64 // file offset of buf[0]
	limit int64 // never read at or beyond this offset (the committed size)
	buf   []byte
	start int // next unread byte
	end   int // end of valid data in buf
	chunk int // size of the next pread; grows to len(buf)
}

// firstChunk is the first pread of a reader. Replay often asks for a handful
// of records (a gap); starting small and doubling up to the buffer size keeps
// those reads cheap while long scans still reach full-size reads at once.
const firstChunk = 16 << 10

func newSegReader(f io.ReaderAt, off, limit int64, buf []byte) *segReader {
	buf = buf[:cap(buf)]
	return &segReader{f: f, pos: off, limit: limit, buf: buf, chunk: min(firstChunk, len(buf))}
}

// offset is the file offset of the next record.
func (r *segReader) offset() int64 { return r.pos + int64(r.start) }

// seek moves the reader to off (past damage), dropping what it buffered.
func (r *segReader) seek(off int64) {
	r.pos, r.start, r.end = off, 0, 0
}

// next returns the next record and its offset. At the limit it returns io.EOF;
// a record that is torn or invalid is reported as a fault (with a nil error)
// so that callers can decide between truncating and failing. Other errors are
// I/O errors.
func (r *segReader) next() (Record, int64, decodeFault, error) {
	off := r.offset()
	if off >= r.limit {
		return Record{}, off, faultNone, io.EOF
	}
	if r.end-r.start < headerLen {
		if err := r.fill(headerLen); err != nil {
			return Record{}, off, faultNone, err
		}
		if r.end-r.start < headerLen {
			return Record{}, off, faultShortHeader, nil
		}
	}
	n, ok := peekBodyLen(r.buf[r.start:])
	if !ok {
		return Record{}, off, faultBadLength, nil
	}
	total := headerLen + n
	// Check against the limit before reading so that a garbage length never
	// makes us grow the buffer for bytes that are not there.
	if off+int64(total) > r.limit {
		return Record{}, off, faultShortBody, nil
	}
	if r.end-r.start < total {
		if err := r.fill(total); err != nil {
			return Record{}, off, faultNone, err
		}
		if r.end-r.start < total {
			return Record{}, off, faultShortBody, nil
		}
	}
	rec, used, fault := decodeRecord(r.buf[r.start : r.start+total])
	if fault != faultNone {
		return Record{}, off, fault, nil
	}
	r.start += used
	return rec, off, faultNone, nil
}

// fill makes at least need bytes available from start, reading as much as the
// buffer holds in each pread. It stops early only at the limit or the end of
// the file, leaving fewer than need bytes; next turns that into a fault.
func (r *segReader) fill(need int) error {
	if need > len(r.buf) {
		nb := make([]byte, max(need, 2*len(r.buf)))
		r.end = copy(nb, r.buf[r.start:r.end])
		r.pos += int64(r.start)
		r.start = 0
		r.buf = nb
	} else if r.start > 0 {
		// What is left unread is less than one record: moving it to the
		// front is cheap and lets every pread use the whole free buffer.
		r.end = copy(r.buf, r.buf[r.start:r.end])
		r.pos += int64(r.start)
		r.start = 0
	}
	for r.end-r.start < need {
		fileOff := r.pos + int64(r.end)
		avail := r.limit - fileOff
		if avail <= 0 {
			return nil
		}
		want := max(r.chunk, need-(r.end-r.start))
		r.chunk = min(2*r.chunk, len(r.buf))
		n := int(min(int64(len(r.buf)-r.end), avail, int64(want)))
		m, err := r.f.ReadAt(r.buf[r.end:r.end+n], fileOff)
		r.end += m
		if err == io.EOF {
			// The file is shorter than we were told (a sealed segment cut
			// short behind our back); treat the end of file as the limit.
			r.limit = fileOff + int64(m)
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// scanResult is what scanning a segment from its start found.
type scanResult struct {
	good      int64  // offset just past the last intact record
	last      uint64 // seq of the last intact record; base-1 if none
	intact    uint64 // intact records
	lastNanos int64  // time of the last intact record
	// damage: damaged runs with intact records after them.
	damage []Damage
	// fault says why the scan stopped at good before the limit, with no
	// intact record after it; "" = the records ran up to the limit.
	fault string
	// zeroTail: from good to the limit every byte is zero (space
	// preallocated and never written), so the scan did not resync.
	zeroTail bool
}

// scan reads every record from the reader's position (the segment's
// start), checking CRCs and that sequence numbers run up by one from the
// segment's base. Where a record fails, it looks for intact records again
// (resync) and notes the damaged run; it stops where nothing intact
// follows. With index set it feeds the segment's sparse index (caller
// holds s.idxMu). maxSeq bounds the sequence numbers the segment may hold.
//
// zeroFrom is where the bytes up to the limit are all zero: a record
// that fails there is the start of unwritten (preallocated) space, not
// damage, and the scan ends there without a resync (openActive; the others
// pass math.MaxInt64).
func scan(r *segReader, s *segment, maxSeq uint64, index bool, zeroFrom int64) (scanResult, error) {
	want := s.base
	res := scanResult{good: r.offset(), last: want - 1}
	for {
		rec, off, fault, err := r.next()
		if err == io.EOF {
			return res, nil
		}
		if err != nil {
			return res, err
		}
		if fault == faultNone && rec.Seq == want {
			if index && res.intact%indexEvery == 0 {
				s.addIndex(rec.Seq, off)
			}
			res.intact++
			res.last = want
			want++
			res.good = r.offset()
			res.lastNanos = rec.Time.UnixNano()
			continue
		}
		reason := fault.String()
		if fault == faultNone {
			reason = fmt.Sprintf("seq %d, want %d", rec.Seq, want)
		}
		reason = fmt.Sprintf("%s at offset %d", reason, off)
		if off >= zeroFrom {
			res.fault = reason + ", zeros from there on (space never written)"
			res.zeroTail = true
			return res, nil
		}
		p, q, found, err := resync(r.f, off, r.limit, want, maxSeq, nil)
		if err != nil {
			return res, err
		}
		if !found {
			res.fault = reason
			return res, nil
		}
		res.damage = append(res.damage, Damage{Segment: s.path, Offset: off, Bytes: p - off, First: want, Last: q - 1, Reason: reason})
		want = q
		r.seek(p)
	}
}

// listSegments returns the segment files in dir sorted by first seq.
func listSegments(fsys durable.FS, dir string) ([]*segment, error) {
	ents, err := fsys.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var segs []*segment
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		base, ok := parseSegmentName(e.Name())
		if !ok {
			continue
		}
		segs = append(segs, &segment{base: base, path: filepath.Join(dir, e.Name())})
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].base < segs[j].base })
	return segs, nil
}
