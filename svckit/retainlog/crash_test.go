package retainlog

// Systematic crash-point exploration of the retained log.
//
// A workload (appends across segment rolls, retention deleting segments
// under a floor, a clean close and a reopen that appends more) runs once on
// a fresh crashfs to count its mutating operations N; then, for every k in
// 0..N, it runs again on a fresh crashfs that refuses every operation after
// the k-th (the machine stopped there), the power is cut (only what was
// fsynced survives) or, in the process-crash modes, only the process dies
// (the page cache survives), and the log is reopened on what is left and
// checked:
//
//   - nothing durable is lost and no sequence number can be reused: the
//     reopened log ends at or after every record that was durable (visible)
//     before the cut, and the next append continues after it;
//   - every record it holds has the bytes that were written for that seq;
//   - retention only ever removed records below the floor the owner set
//     (and kept the RetainMessages newest ones);
//   - Open never fails on what a power cut (or a process crash) leaves.
//
// Torn tails come from a filesystem wrapper that splits every write into
// small pieces: in the process-crash mode the stop lands between pieces,
// and in the writeback mode every piece is also fsynced on its own, as a
// kernel flushing dirty pages whenever it likes may do, so a torn record
// survives the power cut too. A negative control (a disk that acknowledges
// fsync without syncing) shows that the checks fail when durability is
// broken.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/durable/crashfs"
)

// errCrashDead is what a filesystem handle of a process that crashed returns:
// the process is gone, whatever it still tries to do does not happen.
var errCrashDead = errors.New("test: the process using this filesystem crashed")

// crashFaultFS wraps one process's view of a crashfs with the failures a real
// machine adds to crashfs's model.
type crashFaultFS struct {
	base durable.FS
	// chunk > 0 splits every write into pieces of at most chunk bytes, each
	// its own crashfs operation, so that a stop can tear a write.
	chunk int
	// writeback fsyncs the file after every piece: a kernel writing dirty
	// pages back on its own, so that a torn write can survive a power cut.
	writeback bool
	// lie makes file fsyncs report success without syncing: a disk whose
	// write cache lies (the negative control).
	lie bool
	// dead: the process crashed; everything it still tries fails.
	dead atomic.Bool
}

func (f *crashFaultFS) alive() error {
	if f.dead.Load() {
		return errCrashDead
	}
	return nil
}

func (f *crashFaultFS) OpenFile(name string, flag int, perm fs.FileMode) (durable.File, error) {
	if err := f.alive(); err != nil {
		return nil, err
	}
	file, err := f.base.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &crashFaultFile{File: file, fs: f}, nil
}

func (f *crashFaultFS) ReadDir(name string) ([]fs.DirEntry, error) {
	if err := f.alive(); err != nil {
		return nil, err
	}
	return f.base.ReadDir(name)
}

func (f *crashFaultFS) Stat(name string) (fs.FileInfo, error) {
	if err := f.alive(); err != nil {
		return nil, err
	}
	return f.base.Stat(name)
}

func (f *crashFaultFS) Mkdir(name string, perm fs.FileMode) error {
	if err := f.alive(); err != nil {
		return err
	}
	return f.base.Mkdir(name, perm)
}

func (f *crashFaultFS) Remove(name string) error {
	if err := f.alive(); err != nil {
		return err
	}
	return f.base.Remove(name)
}

func (f *crashFaultFS) Rename(oldpath, newpath string) error {
	if err := f.alive(); err != nil {
		return err
	}
	return f.base.Rename(oldpath, newpath)
}

func (f *crashFaultFS) SyncDir(name string) error {
	if err := f.alive(); err != nil {
		return err
	}
	return f.base.SyncDir(name)
}

type crashFaultFile struct {
	durable.File
	fs *crashFaultFS
}

func (f *crashFaultFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.fs.alive(); err != nil {
		return 0, err
	}
	return f.File.ReadAt(p, off)
}

func (f *crashFaultFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fs.alive(); err != nil {
		return 0, err
	}
	if f.fs.chunk <= 0 {
		return f.File.WriteAt(p, off)
	}
	n := 0
	for n < len(p) {
		piece := p[n:min(len(p), n+f.fs.chunk)]
		m, err := f.File.WriteAt(piece, off+int64(n))
		n += m
		if err != nil {
			return n, err
		}
		if f.fs.writeback {
			if err := f.File.Sync(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

func (f *crashFaultFile) Truncate(size int64) error {
	if err := f.fs.alive(); err != nil {
		return err
	}
	return f.File.Truncate(size)
}

func (f *crashFaultFile) Sync() error {
	if err := f.fs.alive(); err != nil {
		return err
	}
	if f.fs.lie {
		return nil
	}
	return f.File.Sync()
}

// crashMode is how the machine fails and what its disk does.
type crashMode struct {
	name      string
	powerCut  bool // false: only the process dies, the page cache survives
	chunk     int
	writeback bool
	lie       bool
	fsync     FsyncPolicy
	// noPrealloc turns preallocation off: appends grow the segment files
	// (the log as it was before preallocation, and as a full disk leaves it).
	noPrealloc bool
}

// crashRun is one run of a log workload and what it made visible.
type crashRun struct {
	c    *crashfs.FS
	mode crashMode
	opts Options
	fsys *crashFaultFS // the current process's view
	l    *Log
	// data holds the bytes last written for every seq.
	data map[uint64][]byte
	// durable is the highest DurableSeq (= VisibleSeq under FsyncAlways)
	// seen; written the highest LastSeq (what reached the page cache).
	durable, written uint64
	floor            uint64 // the floor in force (what the owner would persist)
	phase            byte
	err              error // the first error of the run
}

func newCrashRun(mode crashMode) *crashRun {
	o := DefaultOptions("/data/log")
	o.SegmentBytes = int64(4 * EncodedLen(crashDataLen)) // four records a segment
	o.RetainMessages = 6
	o.Fsync = mode.fsync
	o.FsyncInterval = time.Millisecond
	if mode.noPrealloc {
		o.PreallocateBytes = 0
	}
	return &crashRun{c: crashfs.New(), mode: mode, opts: o, data: map[uint64][]byte{}}
}

const crashDataLen = 16

// crashData is record seq's data as written in phase p: a seq reused with
// other content is told apart.
func crashData(seq uint64, p byte) []byte {
	b := make([]byte, crashDataLen)
	binary.BigEndian.PutUint64(b, seq)
	b[8] = p
	for i := 9; i < len(b); i++ {
		b[i] = byte(seq*13 + uint64(i))
	}
	return b
}

func (r *crashRun) newFS() *crashFaultFS {
	return &crashFaultFS{base: r.c, chunk: r.mode.chunk, writeback: r.mode.writeback, lie: r.mode.lie}
}

// observe records what the log has shown so far.
func (r *crashRun) observe() {
	if r.l == nil {
		return
	}
	r.durable = max(r.durable, r.l.DurableSeq())
	r.written = max(r.written, r.l.LastSeq())
}

type crashStep struct {
	name string
	do   func(r *crashRun) error
}

func crashStepOpen() crashStep {
	return crashStep{"open", func(r *crashRun) error {
		r.fsys = r.newFS()
		o := r.opts
		o.FS = r.fsys
		o.Floor = r.floor // the owner knows its floor from its state files
		l, err := Open(o)
		if err != nil {
			return err
		}
		r.l = l
		r.phase++
		return nil
	}}
}

// crashStepAppend appends n records as one batch; wait=false leaves them
// unsynced (AppendNoWait).
func crashStepAppend(n int, wait bool) crashStep {
	return crashStep{fmt.Sprintf("append %d wait=%v", n, wait), func(r *crashRun) error {
		from := r.l.LastSeq() + 1
		recs := make([]Record, n)
		for i := range recs {
			seq := from + uint64(i)
			recs[i] = Record{Seq: seq, Time: t0.Add(time.Duration(seq) * time.Second), Data: crashData(seq, r.phase)}
			r.data[seq] = recs[i].Data
		}
		if wait {
			return r.l.Append(recs...)
		}
		return r.l.AppendNoWait(recs...)
	}}
}

func crashStepSync() crashStep {
	return crashStep{"sync", func(r *crashRun) error { return r.l.SyncTo(r.l.LastSeq()) }}
}

// crashStepFloor moves the floor and applies retention at once, so that the
// background goroutine has nothing left to delete at a random instant.
func crashStepFloor(f uint64) crashStep {
	return crashStep{fmt.Sprintf("floor %d", f), func(r *crashRun) error {
		r.l.SetFloor(f)
		r.floor = f
		return r.l.EnforceRetention()
	}}
}

func crashStepClose() crashStep {
	return crashStep{"close", func(r *crashRun) error {
		err := r.l.Close()
		r.l = nil
		return err
	}}
}

// crashWorkload: appends single and batched, synced and not, across several
// segment rolls; retention held back by a floor, then let go; a clean
// close; a reopen that appends across more rolls and retention; a close.
func crashWorkload() []crashStep {
	// Four records fill a segment; RetainMessages is 6.
	return []crashStep{
		crashStepOpen(),           // mkdir, directory fsyncs
		crashStepAppend(1, true),  // 1: creates segment 1
		crashStepAppend(3, true),  // 2..4 fill segment 1
		crashStepAppend(2, false), // 5..6: roll to segment 5, unsynced
		crashStepSync(),
		crashStepAppend(1, false), // 7, unsynced
		crashStepFloor(3),
		crashStepAppend(3, true), // 8..10: roll to 8; retention wants segment 1, the floor keeps it
		crashStepAppend(4, true), // 11..14: roll to 11
		crashStepFloor(12),       // retention removes segments 1 and 5
		crashStepAppend(4, true), // 15..18: roll to 15, retention removes 8; 11 holds the floor
		crashStepAppend(2, false),
		crashStepClose(), // syncs 19..20
		crashStepOpen(),  // with the floor 12 (Options.Floor): nothing removed
		crashStepAppend(2, true),
		crashStepAppend(1, false), // 23: roll to 23
		crashStepSync(),
		crashStepFloor(0),        // retention removes segment 11
		crashStepAppend(3, true), // 24..26
		crashStepAppend(5, true), // 27..31, larger than a segment: roll, removes 15 and 19
		crashStepAppend(1, true), // 32: roll
		crashStepClose(),
	}
}

// run runs the workload until the end or the first failed step. A step
// may fail only because the machine stopped.
func (r *crashRun) run(steps []crashStep) {
	for _, s := range steps {
		err := s.do(r)
		if r.l != nil {
			// Preallocation's jobs run between steps, not beside them,
			// so that every run does the same operations in the same
			// order and crash point k is the same point in each.
			settle(r.l)
		}
		r.observe()
		if err == nil && !r.c.Stopped() {
			continue
		}
		if err == nil {
			// The stop hit an operation whose failure the log only logs
			// (a retention remove): the machine is stopped all the same.
			err = fmt.Errorf("%s: %w", s.name, crashfs.ErrStopped)
		}
		r.err = fmt.Errorf("%s: %w", s.name, err)
		return
	}
}

// crash ends the process: whatever it still holds stops working, then the
// power goes (or not, in the process-crash modes).
func (r *crashRun) crash() {
	if r.l != nil {
		r.fsys.dead.Store(true)
		r.l.Close() // stops the background goroutine; its I/O is refused
		r.l = nil
	}
	if r.mode.powerCut {
		r.c.PowerCut()
	} else {
		r.c.StopAfter(-1)
	}
}

// crashTraceTail is the end of a crashfs trace, for failure messages.
func crashTraceTail(tr []string, n int) string {
	if len(tr) > n {
		tr = tr[len(tr)-n:]
	}
	return "\n\t\t" + strings.Join(tr, "\n\t\t")
}

// crashResult is what checking one crash point found.
type crashResult struct {
	violations []string
	recovered  bool // Open cut a torn tail (in the recovery's first attempt at least)
}

// check reopens the log on what the crash left and checks the invariants.
func (r *crashRun) check() crashResult {
	var res crashResult
	bad := func(format string, args ...any) {
		res.violations = append(res.violations, fmt.Sprintf(format, args...))
	}
	// Reopen, crashing again at every operation of the recovery in turn
	// (cutting a torn tail, its fsync, the directory fsync, retention)
	// until an Open runs to its end: recovery must survive its own crash.
	o := r.opts
	o.Floor = r.floor
	var l *Log
	traced := len(r.c.Trace())
	for j := 0; l == nil; j++ {
		r.fsys = r.newFS()
		r.fsys.lie = false
		o.FS = r.fsys
		before := r.c.Ops()
		r.c.StopAfter(j)
		l2, err := Open(o)
		switch {
		case err == nil && r.c.Ops()-before < j:
			r.c.StopAfter(-1)
			l = l2
		case err == nil:
			// The stop may have hit an operation Open does not report
			// (a retention remove): count it as a crash in recovery.
			r.l = l2
			r.crash()
		case errors.Is(err, crashfs.ErrStopped) && j < 100:
			r.crash()
		default:
			bad("invariant 4: Open fails on what the crash left (crash in recovery at operation %d): %v", j, err)
			return res
		}
	}
	defer l.Close()
	for _, op := range r.c.Trace()[traced:] {
		res.recovered = res.recovered || crashOpKind(op) == "truncate"
	}
	first, last := l.FirstSeq(), l.LastSeq()
	// What must survive: the durable records on a power cut, everything
	// written on a process crash.
	must := r.durable
	if !r.mode.powerCut {
		must = r.written
	}
	if last < must {
		bad("invariants 1+2: the log ends at %d after the crash, but %d was durable/visible before it: those sequence numbers would be reused", last, must)
	}
	if r.floor > 0 && first > min(r.floor, last) {
		bad("invariant 2: the log starts at %d after the crash, above the floor %d: retention deleted records the owner still needed", first, r.floor)
	}
	if n := o.RetainMessages; r.floor == 0 && n > 0 && last > 0 && last-first+1 < min(n, last) {
		bad("invariant 2: the log keeps %d..%d, fewer than RetainMessages=%d", first, last, n)
	}
	if last > 0 {
		seq := first
		err := l.Read(context.Background(), first, last, func(rec Record) error {
			switch want, ok := r.data[rec.Seq]; {
			case rec.Seq != seq:
				return fmt.Errorf("seq %d where %d was expected", rec.Seq, seq)
			case !ok:
				return fmt.Errorf("seq %d was never written", rec.Seq)
			case !bytes.Equal(rec.Data, want):
				return fmt.Errorf("seq %d holds %x, but %x was written", rec.Seq, rec.Data, want)
			}
			seq++
			return nil
		})
		if err != nil {
			bad("invariants 1+2: reading %d..%d after the crash: %v", first, last, err)
		} else if seq != last+1 {
			bad("invariants 1+2: reading %d..%d after the crash delivered up to %d only", first, last, seq-1)
		}
	}
	// The next append continues after everything that was ever visible.
	next := last + 1
	if err := l.Append(Record{Seq: next, Time: t0, Data: crashData(next, 99)}); err != nil {
		bad("invariant 1: appending %d after the crash: %v", next, err)
	} else if next <= must {
		bad("invariant 1: the next append after the crash got seq %d, not above %d", next, must)
	}
	return res
}

// crashPoints are the k to explore for a trace of n operations: all of
// them when there are at most limit, else every stride-th plus every k
// whose refused operation (trace[k]) is not a plain write or file fsync
// (creates, renames, removes, truncates, mkdirs and directory fsyncs are
// all kept) and the first k of every kind of operation on every kind of
// file (digits stripped from names), so that sampling never skips a kind
// of operation.
func crashPoints(trace []string, limit int) []int {
	n := len(trace)
	if n+1 <= limit {
		ks := make([]int, n+1)
		for i := range ks {
			ks[i] = i
		}
		return ks
	}
	stride := (n + limit - 1) / limit
	seen := map[string]bool{}
	var ks []int
	for k := 0; k <= n; k++ {
		if k == n || k%stride == 0 {
			ks = append(ks, k)
			continue
		}
		op := trace[k]
		kind := crashOpKind(op)
		if kind != "write" && kind != "fsync" {
			ks = append(ks, k)
			continue
		}
		class := kind + " " + crashStripDigits(strings.Fields(op)[1])
		if !seen[class] {
			seen[class] = true
			ks = append(ks, k)
		}
	}
	return ks
}

// crashOpKind is the kind of a crashfs trace line: write, fsync, fsync dir,
// create, rename, remove, truncate, mkdir.
func crashOpKind(op string) string {
	if strings.HasPrefix(op, "fsync dir ") {
		return "fsync dir"
	}
	kind, _, _ := strings.Cut(op, " ")
	return kind
}

func crashStripDigits(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return -1
		}
		return r
	}, s)
}

// crashExplore runs the workload at every crash point of mode and returns the
// violations found (each naming k and the trace's tail), how many points
// were explored, N, and at how many Open found a torn tail.
func crashExplore(t *testing.T, mode crashMode, steps []crashStep, wantKinds ...string) (violations []string, points, n, torn int) {
	t.Helper()
	full := newCrashRun(mode)
	full.run(steps)
	if full.err != nil {
		t.Fatalf("%s: the workload fails without a crash: %v", mode.name, full.err)
	}
	trace := full.c.Trace()
	n = len(trace)
	kinds := map[string]bool{}
	for _, op := range trace {
		kinds[crashOpKind(op)] = true
	}
	for _, want := range wantKinds {
		if !kinds[want] {
			t.Errorf("%s: the workload never does a %q; the exploration does not cover it", mode.name, want)
		}
	}
	for _, k := range crashPoints(trace, 400) {
		r := newCrashRun(mode)
		r.c.StopAfter(k)
		r.run(steps)
		if r.err != nil && !errors.Is(r.err, crashfs.ErrStopped) {
			violations = append(violations, fmt.Sprintf("k=%d: the workload failed with an error the stop does not explain: %v", k, r.err))
		}
		tail := crashTraceTail(r.c.Trace(), 6)
		r.crash()
		res := r.check()
		points++
		if res.recovered {
			torn++
		}
		for _, v := range res.violations {
			violations = append(violations, fmt.Sprintf("k=%d (stopped at: %v; durable %d, written %d, floor %d): %s; trace tail:%s",
				k, r.err, r.durable, r.written, r.floor, v, tail))
		}
	}
	return violations, points, n, torn
}

func TestCrashPointsLog(t *testing.T) {
	modes := []crashMode{
		{name: "power-cut", powerCut: true, fsync: FsyncAlways},
		{name: "power-cut-no-prealloc", powerCut: true, fsync: FsyncAlways, noPrealloc: true},
		{name: "power-cut-writeback-torn-no-prealloc", powerCut: true, chunk: 12, writeback: true, fsync: FsyncAlways, noPrealloc: true},
		// Every write in 12-byte pieces, each fsynced by "the kernel": a
		// torn record survives the cut.
		{name: "power-cut-writeback-torn", powerCut: true, chunk: 12, writeback: true, fsync: FsyncAlways},
		// Only the process dies, mid-write: the page cache keeps a torn tail.
		{name: "process-crash-torn", chunk: 12, fsync: FsyncAlways},
		{name: "process-crash-torn-fsync-never", chunk: 12, fsync: FsyncNever},
		// The interval policy: fsyncs come from the log's own goroutine
		// (every 1 ms here), and nothing is shown before one covered it.
		{name: "power-cut-fsync-interval", powerCut: true, fsync: FsyncInterval},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			start := time.Now()
			// Every kind of operation the log does; it renames only a
			// prepared (preallocated) segment into place.
			kinds := []string{"mkdir", "create", "write", "fsync", "fsync dir", "remove"}
			if mode.fsync != FsyncNever && !mode.noPrealloc {
				kinds = append(kinds, "rename")
			}
			violations, points, n, torn := crashExplore(t, mode, crashWorkload(), kinds...)
			for _, v := range violations {
				t.Error(v)
			}
			if mode.chunk > 0 && torn == 0 {
				t.Errorf("no crash point left a torn tail for Open to cut: the torn-tail cases are not exercised")
			}
			t.Logf("N=%d operations, %d crash points explored, %d with a torn tail, in %v", n, points, torn, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestCrashPointsLogNegativeControl proves the checks have teeth: on a disk
// that acknowledges fsync without syncing, some crash point must violate an
// invariant.
func TestCrashPointsLogNegativeControl(t *testing.T) {
	for _, fsync := range []FsyncPolicy{FsyncAlways, FsyncInterval} {
		mode := crashMode{name: "lying-fsync", powerCut: true, lie: true, fsync: fsync}
		violations, points, n, _ := crashExplore(t, mode, crashWorkload())
		if len(violations) == 0 {
			t.Fatalf("fsync policy %v: a disk that lies about fsync broke no invariant at any of %d crash points (N=%d): the checks have no teeth", fsync, points, n)
		}
		t.Logf("fsync policy %v: as expected, %d violations at %d crash points (N=%d); the first: %s", fsync, len(violations), points, n, violations[0])
	}
}

// TestOpenRetentionKeepsFloor: Open's own retention pass runs before the
// caller can SetFloor, so the floor an owner persisted must reach it
// through Options.Floor; without it a restart deleted records the owner
// still needed (unacknowledged, or not covered by its snapshot).
func TestOpenRetentionKeepsFloor(t *testing.T) {
	o := testOptions(t, t.TempDir())
	o.SegmentBytes = int64(4 * EncodedLen(16))
	l := mustOpen(t, o)
	appendN(t, l, 1, 20, 16, 4) // five segments of four
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	o.RetainMessages = 4
	o.Floor = 6
	l2, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if got := l2.FirstSeq(); got > 6 {
		t.Fatalf("after Open with Floor 6 the log starts at %d: retention deleted records at or above the floor", got)
	}
	if got := l2.FirstSeq(); got != 5 {
		t.Fatalf("after Open with Floor 6 the log starts at %d, want 5 (the segment holding 6)", got)
	}
	checkRange(t, l2, 5, 20, 20, 16)
}
