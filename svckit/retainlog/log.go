package retainlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svckit/svckit/svckit/durable"
)

// FsyncPolicy says when appended records are flushed to stable storage. See
// the package documentation for what each policy guarantees.
type FsyncPolicy int

const (
	// FsyncInterval fsyncs from the background every Options.FsyncInterval:
	// fewer fsyncs, and WaitDurable waits up to an interval.
	FsyncInterval FsyncPolicy = iota
	// FsyncAlways fsyncs as soon as someone waits for a record
	// (WaitDurable, Append): concurrent waiters share one fsync.
	FsyncAlways
	// FsyncNever leaves flushing to the OS: nothing is known to be durable,
	// and WaitDurable returns at once.
	FsyncNever
)

// ParseFsyncPolicy parses "interval", "always" or "never" (the --log-fsync
// flag values).
func ParseFsyncPolicy(s string) (FsyncPolicy, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "interval":
		return FsyncInterval, nil
	case "always":
		return FsyncAlways, nil
	case "never":
		return FsyncNever, nil
	}
	return 0, fmt.Errorf("retainlog: unknown fsync policy %q (want interval, always or never)", s)
}

// String returns the flag spelling of p.
func (p FsyncPolicy) String() string {
	switch p {
	case FsyncInterval:
		return "interval"
	case FsyncAlways:
		return "always"
	case FsyncNever:
		return "never"
	}
	return fmt.Sprintf("FsyncPolicy(%d)", int(p))
}

const (
	// DefaultSegmentBytes keeps segments large enough that rolls (an fsync and a
	// directory fsync) are rare, and small enough that retention, which deletes
	// whole segments, stays close to its limits.
	DefaultSegmentBytes = 64 << 20
	// DefaultFsyncInterval bounds what a power loss can take under
	// FsyncInterval.
	DefaultFsyncInterval = 200 * time.Millisecond
	// maxRetentionTick is how often retention runs at the least, so that age
	// retention happens even without appends.
	maxRetentionTick = time.Second
	// DefaultScrubRate reads a 1 GiB log in about four minutes: little
	// enough beside appends and replays, often enough to find rot before
	// a consumer needs the records.
	DefaultScrubRate = 4 << 20
	// DefaultScrubEvery is the time between the starts of two scrub passes.
	DefaultScrubEvery = time.Hour
	// maxKeptWriteBuf is the largest encode buffer kept between appends; one
	// huge batch should not pin its buffer forever.
	maxKeptWriteBuf = 4 << 20
)

// Options configure a Log. Start from DefaultOptions. Dir is required;
// other zero values take the defaults named on each field, but a zero
// Fsync is FsyncInterval and a zero ScrubRate turns the scrubber off.
type Options struct {
	Dir            string           // segment files live here (created if missing)
	SegmentBytes   int64            // roll to a new segment beyond this size; default 64 MiB
	RetainMessages uint64           // 0 = no count limit
	RetainBytes    int64            // 0 = no byte limit
	RetainAge      time.Duration    // 0 = no age limit
	Fsync          FsyncPolicy      // DefaultOptions: FsyncAlways
	FsyncInterval  time.Duration    // default 200ms
	Logger         *slog.Logger     // nil = discard
	Now            func() time.Time // nil = time.Now (tests inject a clock for age retention)
	FS             durable.FS       // nil = the OS's; tests use crashfs to cut the power
	// Floor is the floor (see SetFloor) from the start: Open's own
	// retention pass already keeps every record at or above it, which
	// SetFloor, callable only once Open returned, comes too late for. An
	// owner that restarts knows it from its state files. 0 = no floor.
	Floor uint64
	// Durable is the highest sequence number its owner knows was made
	// durable before (its state files say so). A record at or below it
	// that fails validation is damage, never a torn tail: Open keeps it
	// and goes on after Durable. 0 = nothing known.
	Durable uint64
	// ScrubRate is how many bytes a second the background scrubber reads
	// to verify every segment (0 = no scrubbing; DefaultOptions:
	// DefaultScrubRate); a pass starts at Open and then every ScrubEvery.
	// Damage it finds is reported like damage found by a read, before any
	// reader needs the records.
	ScrubRate  int64
	ScrubEvery time.Duration // default 1h
	// OnDamage, if set, is called once for every damaged run found (at
	// Open, by a read or by the scrubber), from the goroutine that found
	// it, with no lock of the log held.
	OnDamage func(Damage)
}

// DefaultOptions returns the defaults for a log in dir: 64 MiB segments,
// fsync as soon as a record is waited for (FsyncAlways, group commit), no
// retention limits, a scrub pass over every segment at Open and every hour
// at DefaultScrubRate.
func DefaultOptions(dir string) Options {
	return Options{
		Dir:           dir,
		SegmentBytes:  DefaultSegmentBytes,
		Fsync:         FsyncAlways,
		FsyncInterval: DefaultFsyncInterval,
		ScrubRate:     DefaultScrubRate,
		ScrubEvery:    DefaultScrubEvery,
	}
}

func (o Options) normalize() (Options, error) {
	if o.Dir == "" {
		return o, errors.New("retainlog: Options.Dir is empty")
	}
	if o.SegmentBytes <= 0 {
		o.SegmentBytes = DefaultSegmentBytes
	}
	if o.FsyncInterval <= 0 {
		o.FsyncInterval = DefaultFsyncInterval
	}
	if o.Fsync < FsyncInterval || o.Fsync > FsyncNever {
		return o, fmt.Errorf("retainlog: invalid fsync policy %d", int(o.Fsync))
	}
	if o.RetainBytes < 0 {
		return o, fmt.Errorf("retainlog: negative RetainBytes %d", o.RetainBytes)
	}
	if o.RetainAge < 0 {
		return o, fmt.Errorf("retainlog: negative RetainAge %s", o.RetainAge)
	}
	if o.ScrubRate < 0 {
		return o, fmt.Errorf("retainlog: negative ScrubRate %d", o.ScrubRate)
	}
	if o.ScrubEvery <= 0 {
		o.ScrubEvery = DefaultScrubEvery
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.FS = durable.Or(o.FS)
	return o, nil
}

// Record is one retained message.
type Record struct {
	Seq  uint64
	Time time.Time // Append uses Options.Now() when zero
	Data []byte
}

// Recovery describes what Open had to cut off the active segment. The zero
// value means the log was opened cleanly.
type Recovery struct {
	Segment        string // path of the segment that was truncated
	TruncatedBytes int64  // bytes removed from its end
	Reason         string // what was found at the cut, e.g. "crc mismatch at offset 4096"
	Copy           string // the quarantine file keeping the cut bytes ("" if it could not be written)
}

// Stats is a snapshot of the log for metrics.
type Stats struct {
	FirstSeq, LastSeq uint64 // 0 when empty
	Bytes             int64  // total size of the segment files
	Segments          int
	Appended          uint64 // records appended since Open
	Fsyncs            uint64 // successful fsyncs of segment files since Open
	ScrubbedBytes     uint64 // bytes the scrubber read since Open
	ScrubPasses       uint64 // complete scrub passes since Open
}

// Errors returned by Append and Read; they are wrapped with the sequence
// numbers involved, so test with errors.Is.
var (
	// ErrTrimmed: the requested seq is below FirstSeq, retention removed it.
	ErrTrimmed = errors.New("retainlog: sequence trimmed by retention")
	// ErrBeyondEnd: the requested seq is above LastSeq, it was never written.
	ErrBeyondEnd = errors.New("retainlog: sequence beyond end of log")
	// ErrNotContiguous: an append does not continue the log at LastSeq()+1, or
	// the seqs within a batch do not go up by one.
	ErrNotContiguous = errors.New("retainlog: sequence not contiguous")
	// ErrClosed: the Log has been closed.
	ErrClosed = errors.New("retainlog: log closed")
	// ErrWrite: an append's write, or the creation of its segment, failed
	// (a full disk, above all) and was undone: nothing of the batch is in
	// the log, and the next Append tries again. Not sticky, unlike a failed
	// fsync (Err).
	ErrWrite = errors.New("retainlog: write failed")
)

// Log is an open retained log. Create it with Open; it is safe for concurrent
// use.
type Log struct {
	opts Options
	log  *slog.Logger

	mu       sync.Mutex
	segs     []*segment // oldest first; the last one is the active segment
	count    uint64     // records in segs
	bytes    int64      // committed bytes in segs
	closed   bool
	err      error // sticky: a failed fsync or an unrepairable failed write
	dirty    bool  // appended since the last fsync (FsyncInterval)
	wbuf     []byte
	pending  []indexEntry
	recovery Recovery
	// deferred: segments retention dropped whose damaged bytes still need a
	// quarantine copy; the background goroutine removes them (removeDeferred).
	deferred []*segment

	// Mirrors of the bounds and counters, readable without the lock because
	// FirstSeq/LastSeq sit on the publisher's and the replay server's hot paths.
	first, last      atomic.Uint64
	appended, fsyncs atomic.Uint64
	// synced is the highest seq known to be on stable storage (everything
	// at or below it survives a power loss); floor is the lowest seq
	// retention must keep (SetFloor).
	synced, floor atomic.Uint64

	syncMu sync.Mutex // one SyncTo fsync at a time; the others wait and share it
	// syncedCh is closed (and replaced) whenever synced rises, to wake
	// WaitDurable under FsyncInterval.
	syncedMu sync.Mutex
	syncedCh chan struct{}
	bufPool  sync.Pool // *[]byte read buffers, so a Read allocates nothing per record
	stop     chan struct{}
	done     chan struct{}
	// scrubDone is closed when the scrubber stopped (at once without one).
	scrubDone   chan struct{}
	scrubbed    atomic.Uint64 // bytes read by the scrubber
	scrubPasses atomic.Uint64 // complete passes
}

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
	s.idxMu.Lock()
	res, err := scan(newSegReader(f, 0, size, *bufp), s, math.MaxUint64, true)
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
	if res.good == size && res.fault == "" {
		return nil
	}
	reason := res.fault
	if reason == "" {
		reason = fmt.Sprintf("file shrank to %d bytes during scan", res.good)
	}
	if want := res.last + 1; want <= l.opts.Durable {
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
	// boundary.
	copyPath, qerr := l.quarantine(f, res.good, s.path, res.good, size-res.good, "torn")
	if qerr != nil {
		l.log.Warn("retainlog: could not keep a copy of a torn tail before cutting it", "segment", s.path, "error", qerr)
	}
	if err := f.Truncate(res.good); err != nil {
		f.Close()
		return fmt.Errorf("retainlog: truncate %s: %w", s.path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("retainlog: fsync %s: %w", s.path, err)
	}
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

// Recovery reports what Open truncated; the zero value means a clean open.
func (l *Log) Recovery() Recovery {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.recovery
}

// Err is the log's sticky failure (a failed fsync, or a failed write that
// could not be undone), nil while appends may succeed. A failed write
// alone (a full disk) is not sticky: the next Append tries again.
func (l *Log) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// FirstSeq is the oldest retained sequence number, 0 if the log is empty.
func (l *Log) FirstSeq() uint64 { return l.first.Load() }

// LastSeq is the newest sequence number, 0 if the log is empty.
func (l *Log) LastSeq() uint64 { return l.last.Load() }

// Stats returns a consistent snapshot of the log's extent and counters.
func (l *Log) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Stats{
		FirstSeq:      l.first.Load(),
		LastSeq:       l.last.Load(),
		Bytes:         l.bytes,
		Segments:      len(l.segs),
		Appended:      l.appended.Load(),
		Fsyncs:        l.fsyncs.Load(),
		ScrubbedBytes: l.scrubbed.Load(),
		ScrubPasses:   l.scrubPasses.Load(),
	}
}

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
	if l.closed {
		return ErrClosed
	}
	if l.err != nil {
		return l.err
	}
	if l.count > 0 && first != l.last.Load()+1 {
		return fmt.Errorf("%w: append seq %d, log ends at %d", ErrNotContiguous, first, l.last.Load())
	}
	act := l.active()
	// act.f is nil when the last roll sealed it but could not create the
	// next segment (too many open files, say): roll again.
	if act == nil || act.f == nil || act.sealNext || (act.count == 0 && act.base != first) ||
		(act.size > 0 && act.size+int64(size) > l.opts.SegmentBytes) {
		if err := l.roll(first); err != nil {
			return err
		}
		act = l.active()
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
		return fmt.Errorf("%w: %s: %w", ErrWrite, act.path, err)
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

// failSync makes a failed fsync sticky: after a failed fsync Linux may have
// dropped the dirty pages, so later fsyncs can succeed over lost data.
// Refusing further appends surfaces a failing disk instead of hiding it.
// Caller holds mu.
func (l *Log) failSync(s *segment, err error) error {
	l.err = fmt.Errorf("retainlog: fsync %s: %w", s.path, err)
	l.log.Error("retainlog: fsync failed; refusing further appends", "segment", s.path, "error", err)
	return l.err
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
	// O_EXCL: a file with this name would be another segment with the same
	// first seq; overwriting it could destroy data, so fail loudly instead,
	// unless it is empty: what an earlier roll left when it failed after
	// the create (its directory fsync, or the removal after it).
	f, err := l.opts.FS.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, fs.ErrExist) {
		if fi, serr := l.opts.FS.Stat(path); serr == nil && fi.Size() == 0 {
			f, err = l.opts.FS.OpenFile(path, os.O_RDWR, 0)
		}
	}
	if err != nil {
		return fmt.Errorf("%w: creating segment %s: %w", ErrWrite, path, err)
	}
	if l.opts.Fsync != FsyncNever {
		if err := l.opts.FS.SyncDir(l.opts.Dir); err != nil {
			f.Close()
			l.opts.FS.Remove(path)
			return fmt.Errorf("%w: fsync of directory %s after creating a segment: %w", ErrWrite, l.opts.Dir, err)
		}
	}
	l.segs = append(l.segs, &segment{base: first, path: path, f: f, indexed: true})
	l.log.Debug("retainlog: new segment", "segment", path)
	return nil
}

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
		res, err := scan(newSegReader(f, 0, r.limit, buf), s, maxSeq, true)
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

// Sync fsyncs the active segment now, whatever the policy.
func (l *Log) Sync() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if l.err != nil {
		return l.err
	}
	act := l.active()
	if act == nil || act.f == nil {
		return nil
	}
	if err := act.f.Sync(); err != nil {
		return l.failSync(act, err)
	}
	l.fsyncs.Add(1)
	l.dirty = false
	l.raiseSynced(l.last.Load())
	return nil
}

// SyncTo returns once every record up to seq is on stable storage (a no-op
// under FsyncNever). Concurrent callers share fsyncs (group commit), and
// appends continue while one runs.
func (l *Log) SyncTo(seq uint64) error {
	if l.opts.Fsync == FsyncNever || l.synced.Load() >= seq {
		return nil
	}
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	for l.synced.Load() < seq {
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			return ErrClosed
		}
		if l.err != nil {
			l.mu.Unlock()
			return l.err
		}
		act := l.active()
		if act == nil || act.f == nil {
			l.mu.Unlock()
			return fmt.Errorf("%w: sync to %d, log ends at %d", ErrBeyondEnd, seq, l.last.Load())
		}
		f, upTo := act.f, l.last.Load()
		if upTo < seq {
			l.mu.Unlock()
			return fmt.Errorf("%w: sync to %d, log ends at %d", ErrBeyondEnd, seq, upTo)
		}
		l.mu.Unlock()
		err := f.Sync()
		switch {
		case err == nil:
			l.fsyncs.Add(1)
			l.raiseSynced(upTo)
		case errors.Is(err, os.ErrClosed):
			// A roll or Close sealed f, fsyncing it first: look again.
		default:
			l.mu.Lock()
			err = l.failSync(act, err)
			l.mu.Unlock()
			return err
		}
	}
	return nil
}

// raiseSynced moves DurableSeq up to seq (never down: another fsync may
// have covered more meanwhile) and wakes WaitDurable.
func (l *Log) raiseSynced(seq uint64) {
	for {
		cur := l.synced.Load()
		if cur >= seq {
			return
		}
		if l.synced.CompareAndSwap(cur, seq) {
			break
		}
	}
	l.wake()
}

// wake makes WaitDurable's waiters look again: at a raised DurableSeq, or
// at an error that means the fsync they wait for will not come.
func (l *Log) wake() {
	l.syncedMu.Lock()
	close(l.syncedCh)
	l.syncedCh = make(chan struct{})
	l.syncedMu.Unlock()
}

// WaitDurable returns once every record up to seq is on stable storage, as
// the policy provides it: FsyncAlways fsyncs now (concurrent callers share
// one fsync), FsyncInterval waits for the background fsync, FsyncNever
// returns at once (nothing is ever known to be durable).
func (l *Log) WaitDurable(ctx context.Context, seq uint64) error {
	switch l.opts.Fsync {
	case FsyncNever:
		return nil
	case FsyncAlways:
		if l.synced.Load() >= seq {
			return nil
		}
		// fsync takes no context: on a hung disk it never returns, and a
		// caller that is shutting down must not hang with it.
		done := make(chan error, 1)
		go func() { done <- l.SyncTo(seq) }()
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for {
		l.syncedMu.Lock()
		ch := l.syncedCh
		l.syncedMu.Unlock()
		if l.synced.Load() >= seq {
			return nil
		}
		if last := l.last.Load(); last < seq {
			return fmt.Errorf("%w: wait for %d, log ends at %d", ErrBeyondEnd, seq, last)
		}
		l.mu.Lock()
		closed, err := l.closed, l.err
		l.mu.Unlock()
		switch {
		case err != nil:
			return err
		case closed:
			return ErrClosed
		}
		select {
		case <-ch:
		case <-l.stop:
			// Close fsyncs after stopping the goroutine: look again.
			<-l.done
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// VisibleSeq is the highest sequence number that may be shown to anyone
// (published, replayed, covered by a snapshot): DurableSeq, or LastSeq
// under FsyncNever, where nothing is known to be durable and a power loss
// may take back what was shown.
func (l *Log) VisibleSeq() uint64 {
	if l.opts.Fsync == FsyncNever {
		return l.last.Load()
	}
	return l.synced.Load()
}

// DurableSeq is the highest sequence number known to be on stable storage:
// every record at or below it survives a power loss. Under FsyncNever it is
// 0 (nothing is known). Records above it are readable but may vanish.
func (l *Log) DurableSeq() uint64 { return l.synced.Load() }

// SetFloor tells retention never to delete a record at or above seq (the
// owner's oldest unacknowledged message, or the first not covered by its
// durable snapshot). 0, the default, is no floor.
func (l *Log) SetFloor(seq uint64) { l.floor.Store(seq) }

// Close stops the background goroutine, fsyncs and closes the active segment.
// Reads already running finish normally; later calls return ErrClosed.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	l.mu.Unlock()

	// The goroutines take mu, so wait for them without holding mu.
	close(l.stop)
	<-l.done
	<-l.scrubDone
	l.removeDeferred()

	l.mu.Lock()
	defer l.mu.Unlock()
	act := l.active()
	if act == nil || act.f == nil {
		return nil
	}
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
