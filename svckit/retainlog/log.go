package retainlog

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svckit/svckit/svckit/durable"
)

// The Log, by job:
//
//   - log.go: its options, types and errors, its state, and what it
//     reports about itself (bounds, Stats, Recovery, Err);
//   - open.go: Open, the repair of the active segment's tail, the
//     background goroutine and Close;
//   - append.go: Append and rolling to a new segment;
//   - fsync.go: fsync, group commit and the durable bound (SyncTo,
//     WaitDurable, DurableSeq, VisibleSeq);
//   - read.go: Read, and the damage a read finds;
//   - retention.go: the retention limits, the floor, and deleting segments
//     readers may still hold;
//   - scrub.go: the background scrubber.
//
// The on-disk format is in record.go and segment.go, damage and
// quarantine in damage.go.

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
	// DefaultPreallocateBytes is the zero-filled space kept ahead of the
	// appends: at 200-byte records about 20k of them, so the background
	// extends a segment a few times a second at full speed, while a log
	// that sits idle holds at most 4 MiB it has not used (and the next
	// segment's first 4 MiB near the end of a segment).
	DefaultPreallocateBytes = 4 << 20
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
	Dir            string        // segment files live here (created if missing)
	SegmentBytes   int64         // roll to a new segment beyond this size; default 64 MiB
	RetainMessages uint64        // 0 = no count limit
	RetainBytes    int64         // 0 = no byte limit
	RetainAge      time.Duration // 0 = no age limit
	Fsync          FsyncPolicy   // DefaultOptions: FsyncAlways
	// PreallocateBytes is how far ahead of the appends the background
	// zero-fills and fsyncs the active segment (and, near its end, the
	// next one), so that an append overwrites blocks already allocated
	// and its fsync is an fdatasync that flushes the data alone. At most
	// SegmentBytes; 0 = none (DefaultOptions: DefaultPreallocateBytes).
	// Unused under FsyncNever, where nothing is flushed on the path.
	PreallocateBytes int64
	FsyncInterval    time.Duration    // default 200ms
	Logger           *slog.Logger     // nil = discard
	Now              func() time.Time // nil = time.Now (tests inject a clock for age retention)
	FS               durable.FS       // nil = the OS's; tests use crashfs to cut the power
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
// fsync as soon as a record is waited for (FsyncAlways, group commit),
// 4 MiB preallocated ahead of the appends, no retention limits, a scrub pass over every segment at Open and every hour
// at DefaultScrubRate.
func DefaultOptions(dir string) Options {
	return Options{
		Dir:              dir,
		SegmentBytes:     DefaultSegmentBytes,
		Fsync:            FsyncAlways,
		FsyncInterval:    DefaultFsyncInterval,
		PreallocateBytes: DefaultPreallocateBytes,
		ScrubRate:        DefaultScrubRate,
		ScrubEvery:       DefaultScrubEvery,
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
	if o.PreallocateBytes < 0 {
		return o, fmt.Errorf("retainlog: negative PreallocateBytes %d", o.PreallocateBytes)
	}
	o.PreallocateBytes = min(o.PreallocateBytes, o.SegmentBytes)
	if o.Fsync == FsyncNever {
		o.PreallocateBytes = 0
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
	Bytes             int64  // bytes of records in the segments (preallocated space not counted)
	Segments          int
	Appended          uint64 // records appended since Open
	Fsyncs            uint64 // successful fsyncs (or fdatasyncs) of records since Open; preallocation's not counted
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
	// Preallocation (prealloc.go): one background job at a time
	// (preparing), waited for with prepCond (on mu) by an append that
	// would write where a job is zero-filling, and by Close (prepWG);
	// next is the next segment's file once prepared; nextFailed stops
	// retrying to prepare it until the next roll (a full disk).
	preparing  bool
	closing    atomic.Bool // Close began: jobs stop between chunks
	prepCond   *sync.Cond
	prepWG     sync.WaitGroup
	next       durable.File
	nextFailed bool
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
