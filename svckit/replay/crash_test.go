package replay

// Systematic crash-point exploration of an owner and a tracking consumer
// sharing one machine (one crashfs).
//
// The workload: an owner publishes (single messages and batches) across
// segment rolls, with retention deleting segments under its floor; its
// pump hands what is durable to a publisher that delivers it to a tracker;
// the owner saves snapshot.json and published.seq, the tracker its
// checkpoint, at several points (some while the pump is still delivering);
// the owner closes, reopens, publishes more and closes again. It runs once
// to count the mutating operations N, then again for every k in 0..N on a
// fresh crashfs that refuses every operation after the k-th: the machine
// stops there, the power is cut (only what was fsynced survives) or, in the
// process-crash mode, only the processes die; then everything is reopened
// on what is left and checked (see check).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/durable/crashfs"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/retainlog"
)

// errCrashDead is what a filesystem handle of a crashed process returns.
var errCrashDead = errors.New("test: the process using this filesystem crashed")

// crashFaultFS wraps one incarnation's view of a crashfs with what a real
// machine adds to crashfs's model (see package retainlog's crash test for
// the same wrapper).
type crashFaultFS struct {
	base durable.FS
	// chunk > 0 splits every write into pieces of at most chunk bytes, each
	// its own crashfs operation, so that a stop tears a write.
	chunk int
	// writeback fsyncs the file after every piece, as a kernel writing
	// dirty pages back on its own may: a torn write survives a power cut.
	writeback bool
	// lie, if set, makes fsync of the files it selects report success
	// without syncing: a lying disk (the negative control).
	lie func(name string) bool
	// dead: the incarnation crashed; whatever it still tries fails.
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
	return &crashFaultFile{File: file, fs: f, lie: f.lie != nil && f.lie(name)}, nil
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
	fs  *crashFaultFS
	lie bool
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
		m, err := f.File.WriteAt(p[n:min(len(p), n+f.fs.chunk)], off+int64(n))
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
	if f.lie {
		return nil
	}
	return f.File.Sync()
}

// crashMode is how the machine fails and what its disk does.
type crashMode struct {
	name      string
	powerCut  bool // false: only the processes die, the page cache survives
	chunk     int
	writeback bool
	lie       func(name string) bool
	limit     int  // explore at most about this many crash points (see crashPoints)
	interval  bool // the log's fsync policy is interval (1 ms), not always
}

const (
	crashStream     = "crash"
	crashOwnerDir   = "/node/sensor"
	crashCheckpoint = "/node/app/checkpoint.json"
)

// crashOwnerSet is the owner service's passing instances, as a watcher would
// report them: none until the owner's replay server runs.
type crashOwnerSet struct {
	p atomic.Pointer[[]discovery.Instance]
}

func (s *crashOwnerSet) Instances() []discovery.Instance {
	if p := s.p.Load(); p != nil {
		return *p
	}
	return nil
}
func (s *crashOwnerSet) Service() string { return "sensor" }

// crashRun is one run of the owner workload and what it made visible.
type crashRun struct {
	c     *crashfs.FS
	mode  crashMode
	fsys  *crashFaultFS   // the current incarnation's view
	fss   []*crashFaultFS // every incarnation's, killed by crash
	phase int64

	owner   *Owner
	fold    *pipeline.ReadingFold
	stopRun context.CancelFunc
	runDone chan struct{}

	tr     *Tracker // the consumer, fed live by the pump
	st     *appState
	owners *crashOwnerSet

	mu sync.Mutex
	// values is the reading value of every seq appended (seq*10+phase, so
	// that a seq reused for another message is told apart), bytes the
	// envelope of every seq made visible: Publish returned it, or the pump
	// handed it to the publisher.
	values  map[uint64]int64
	bytes   map[uint64][]byte
	visible uint64 // highest seq made visible (Publish, pump, Status)
	// durable and written: the highest DurableSeq and LastSeq of the log.
	durable, written uint64
	deliver          []*Tracker // trackers the publisher delivers to
	problems         []string   // what the publisher saw go wrong
	err              error      // the first error of the run
	// damaged is the seq whose record a test flipped a bit in after the
	// crash (0: none): check expects it, and only it, reported damaged.
	damaged uint64
}

func newCrashRun(mode crashMode) *crashRun {
	r := &crashRun{c: crashfs.New(), mode: mode, values: map[uint64]int64{}, bytes: map[uint64][]byte{}, owners: &crashOwnerSet{}}
	return r
}

func (r *crashRun) newFS() *crashFaultFS {
	f := &crashFaultFS{base: r.c, chunk: r.mode.chunk, writeback: r.mode.writeback, lie: r.mode.lie}
	r.fss = append(r.fss, f)
	return f
}

// crashLogOptions: small segments and count retention, so a short
// workload rolls and deletes segments.
func crashLogOptions(interval bool) retainlog.Options {
	lo := retainlog.DefaultOptions("")
	lo.SegmentBytes = 240 // three of the workload's records (75 bytes each)
	lo.RetainMessages = 6
	lo.Fsync = retainlog.FsyncAlways
	if interval {
		lo.Fsync, lo.FsyncInterval = retainlog.FsyncInterval, time.Millisecond
	}
	return lo
}

// crashPub is the owner's publisher: nsqd acknowledging at once and a
// consumer receiving every message live.
type crashPub struct{ r *crashRun }

func (p crashPub) PublishAsync(_ context.Context, body []byte, done func(error)) {
	r := p.r
	b := bytes.Clone(body)
	env, err := envelope.Decode(b)
	r.mu.Lock()
	if err != nil {
		r.problems = append(r.problems, fmt.Sprintf("the pump handed over an undecodable message: %v", err))
		r.mu.Unlock()
		done(nil)
		return
	}
	if old, ok := r.bytes[env.Seq]; ok && !bytes.Equal(old, b) {
		r.problems = append(r.problems, fmt.Sprintf("invariant 1: the pump handed over seq %d with other bytes than it had before", env.Seq))
	}
	r.bytes[env.Seq] = b
	r.visible = max(r.visible, env.Seq)
	trs := r.deliver
	r.mu.Unlock()
	for _, tr := range trs {
		if _, err := tr.Deliver(context.Background(), env); err != nil {
			r.mu.Lock()
			r.problems = append(r.problems, fmt.Sprintf("delivering seq %d: %v", env.Seq, err))
			r.mu.Unlock()
		}
	}
	done(nil)
}

func (crashPub) Close(context.Context) error { return nil }

func (r *crashRun) openOwner() (*Owner, *pipeline.ReadingFold, error) {
	fold := &pipeline.ReadingFold{}
	o, err := OpenOwner(OwnerOptions{Stream: crashStream, Dir: crashOwnerDir, Log: crashLogOptions(r.mode.interval), ContentType: pipeline.ReadingType,
		Fold: fold, SnapshotInterval: time.Hour, CloseGrace: time.Second, FS: r.fsys}, crashPub{r})
	return o, fold, err
}

// stopOwner ends a closed owner's Run.
func (r *crashRun) stopOwner() {
	if r.runDone != nil {
		r.stopRun()
		<-r.runDone
		r.runDone = nil
	}
	r.owner = nil
}

func (r *crashRun) run(o *Owner) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); o.Run(ctx) }()
	r.stopRun, r.runDone = cancel, done
}

// observe records what the owner has shown so far.
func (r *crashRun) observe() {
	if r.owner == nil {
		return
	}
	l := r.owner.Log()
	r.mu.Lock()
	r.durable = max(r.durable, l.DurableSeq())
	r.written = max(r.written, l.LastSeq())
	r.visible = max(r.visible, r.owner.Status().LastSeq)
	r.mu.Unlock()
}

type crashStep struct {
	name string
	do   func(r *crashRun) error
}

// crashStepOpen starts (or restarts) the owner with its pump, and the first
// time the consumer too.
func crashStepOpen() crashStep {
	return crashStep{"open owner", func(r *crashRun) error {
		r.phase++
		r.fsys = r.newFS()
		if r.tr == nil {
			r.st = newAppState()
			tr, err := NewTracker(r.st, TrackerOptions{CheckpointPath: crashCheckpoint, FS: r.fsys, Owners: r.owners, CheckpointInterval: time.Hour})
			if err != nil {
				return err
			}
			r.tr = tr
			r.deliver = []*Tracker{tr}
		}
		o, fold, err := r.openOwner()
		if err != nil {
			return err
		}
		r.owner, r.fold = o, fold
		r.run(o)
		return nil
	}}
}

// crashStepPublish publishes n messages, one by one, or as one batch.
func crashStepPublish(n int, batch bool) crashStep {
	return crashStep{fmt.Sprintf("publish %d batch=%v", n, batch), func(r *crashRun) error {
		return r.publish(n, batch)
	}}
}

func (r *crashRun) publish(n int, batch bool) error {
	o := r.owner
	o.mu.Lock()
	next := o.seq + 1
	o.mu.Unlock()
	payloads := make([][]byte, n)
	r.mu.Lock()
	for i := range payloads {
		seq := next + uint64(i)
		v := int64(seq)*10 + r.phase
		r.values[seq] = v
		payloads[i] = pipeline.MarshalReading(pipeline.Reading{Value: v})
	}
	r.mu.Unlock()
	if batch {
		last, err := o.PublishBatch(context.Background(), payloads)
		if err != nil {
			return err
		}
		return r.remember(next, last, next+uint64(n)-1)
	}
	for i, p := range payloads {
		last, err := o.Publish(context.Background(), p, "")
		if err != nil {
			return err
		}
		if err := r.remember(last, last, next+uint64(i)); err != nil {
			return err
		}
	}
	return nil
}

// remember records the bytes of from..to, which Publish returned (want
// is the last seq the test expected).
func (r *crashRun) remember(from, to, want uint64) error {
	if to != want {
		return fmt.Errorf("test harness: the owner gave seq %d, the test expected %d", to, want)
	}
	r.mu.Lock()
	r.visible = max(r.visible, to)
	r.mu.Unlock()
	return r.owner.Log().Read(context.Background(), from, to, func(rec retainlog.Record) error {
		r.mu.Lock()
		r.bytes[rec.Seq] = bytes.Clone(rec.Data)
		r.mu.Unlock()
		return nil
	})
}

// crashStepWaitPump waits until the pump handed over (and the publisher
// acknowledged) everything durable, so that a save's watermark does not
// depend on timing.
func crashStepWaitPump() crashStep {
	return crashStep{"wait for the pump", func(r *crashRun) error {
		o := r.owner
		want := o.Status().LastSeq
		return crashPoll(10*time.Second, func() bool {
			o.mu.Lock()
			defer o.mu.Unlock()
			return o.acked.Contiguous() >= want
		}, func() string { return fmt.Sprintf("the pump to hand over up to %d", want) })
	}}
}

// crashStepSave saves the owner's snapshot.json and published.seq as its Run
// loop does every SnapshotInterval, then applies retention at once (so
// that the log's background goroutine has nothing left to delete at a
// random instant).
func crashStepSave() crashStep {
	return crashStep{"owner save", func(r *crashRun) error {
		if err := r.owner.save(); err != nil {
			return err
		}
		return r.owner.Log().EnforceRetention()
	}}
}

func crashStepCheckpoint() crashStep {
	return crashStep{"tracker checkpoint", func(r *crashRun) error { return r.tr.Save() }}
}

func crashStepClose() crashStep {
	return crashStep{"close owner", func(r *crashRun) error {
		err := r.owner.Close(context.Background())
		r.observe() // Close's last fsync made more durable
		r.stopOwner()
		return err
	}}
}

// crashWorkload: three messages fill a segment; RetainMessages is 6.
func crashWorkload() []crashStep {
	return []crashStep{
		crashStepOpen(),
		crashStepPublish(2, false),
		crashStepPublish(3, true),
		crashStepWaitPump(),
		crashStepCheckpoint(), // creates the checkpoint's directory
		crashStepSave(),       // the first snapshot.json and published.seq
		crashStepPublish(6, false),
		crashStepCheckpoint(), // while the pump may still be delivering
		crashStepPublish(3, true),
		crashStepWaitPump(),
		crashStepSave(), // moves the floor: retention deletes segments
		crashStepCheckpoint(),
		crashStepPublish(9, false), // more than RetainMessages beyond the last save
		crashStepPublish(2, true),
		crashStepWaitPump(),
		crashStepCheckpoint(),
		crashStepClose(), // saves and closes the log
		crashStepOpen(),  // restart
		crashStepPublish(5, false),
		crashStepWaitPump(),
		crashStepSave(),
		crashStepCheckpoint(),
		crashStepPublish(3, true),
		crashStepWaitPump(),
		crashStepClose(),
		crashStepCheckpoint(),
	}
}

func (r *crashRun) runSteps(steps []crashStep) {
	for _, s := range steps {
		err := s.do(r)
		r.observe()
		if err == nil && !r.c.Stopped() {
			continue
		}
		if err == nil {
			// The stop hit an operation whose failure is only logged (a
			// retention remove): the machine is stopped all the same.
			err = crashfs.ErrStopped
		}
		r.err = fmt.Errorf("%s: %w", s.name, err)
		return
	}
}

// crash ends every process of the machine, then the power goes (or not,
// in the process-crash mode). The processes' filesystem handles are dead
// first, so nothing they do on their way out reaches the disk.
func (r *crashRun) crash() {
	for _, f := range r.fss {
		f.dead.Store(true)
	}
	if r.owner != nil {
		r.owner.Close(context.Background())
		r.stopOwner()
	}
	if r.mode.powerCut {
		r.c.PowerCut()
	} else {
		r.c.StopAfter(-1)
	}
}

// crashReadState reads published.seq and snapshot.json's seq as they survived.
func crashReadState(fsys durable.FS) (mark, snap uint64, err error) {
	mark, err = readUint(fsys, filepath.Join(crashOwnerDir, "published.seq"))
	if err != nil {
		return 0, 0, err
	}
	b, err := durable.ReadFile(fsys, filepath.Join(crashOwnerDir, "snapshot.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return mark, 0, nil
	}
	if err != nil {
		return 0, 0, err
	}
	var s snapshotFile
	if err := json.Unmarshal(b, &s); err != nil {
		return 0, 0, fmt.Errorf("snapshot.json: %w", err)
	}
	return mark, s.Seq, nil
}

// crashAggregate is the fold of the readings of seqs.
func crashAggregate(values map[uint64]int64, seqs func(func(uint64) bool)) (pipeline.Aggregate, error) {
	var a pipeline.Aggregate
	for seq := range seqs {
		v, ok := values[seq]
		if !ok {
			return a, fmt.Errorf("seq %d was never published", seq)
		}
		a.Add(seq, pipeline.Reading{Value: v})
	}
	return a, nil
}

func crashSeqRange(from, to uint64) func(func(uint64) bool) {
	return func(yield func(uint64) bool) {
		for s := from; s <= to; s++ {
			if !yield(s) {
				return
			}
		}
	}
}

func crashSeqIntervals(iv [][2]uint64) func(func(uint64) bool) {
	return func(yield func(uint64) bool) {
		for _, x := range iv {
			for s := x[0]; s <= x[1]; s++ {
				if !yield(s) {
					return
				}
			}
		}
	}
}

func crashState(st *appState) pipeline.Aggregate {
	b, _ := st.ExportState(crashStream)
	a, _ := pipeline.UnmarshalAggregate(b)
	return a
}

// crashApplied is the consumer's applied set: what it handled minus
// what it dead-lettered (nothing, in these tests).
func crashApplied(tr *Tracker) [][2]uint64 {
	s := tr.stream(crashStream)
	s.mu.Lock()
	defer s.mu.Unlock()
	var out [][2]uint64
	for _, iv := range s.applied.Intervals() {
		for seq := iv[0]; seq <= iv[1]; seq++ {
			if s.parked.Contains(seq) {
				continue
			}
			if n := len(out); n > 0 && out[n-1][1]+1 == seq {
				out[n-1][1] = seq
			} else {
				out = append(out, [2]uint64{seq, seq})
			}
		}
	}
	return out
}

// crashRecoveryStats counts what the consumers needed from the owner over
// HTTP after a crash.
type crashRecoveryStats struct {
	replays, snapshots int // requests to /replay and /snapshot
}

// check reopens the owner and the consumer on what the crash left and
// checks the invariants; it returns the violations.
func (r *crashRun) check(stats *crashRecoveryStats) []string {
	var bad []string
	fail := func(format string, args ...any) { bad = append(bad, fmt.Sprintf(format, args...)) }
	r.mu.Lock()
	bad = append(bad, r.problems...)
	must := max(r.visible, r.durable)
	if !r.mode.powerCut {
		must = max(must, r.written) // the page cache survived
	}
	r.phase = 9
	r.mu.Unlock()

	r.fsys = &crashFaultFS{base: r.c} // the disk is healthy from now on
	mark, snap, err := crashReadState(r.c)
	if err != nil {
		fail("invariant 4: the owner's state files are unreadable after the crash: %v", err)
		return bad
	}

	// The consumer restarting from its checkpoint (invariant 3).
	st2 := newAppState()
	tr2, err := NewTracker(st2, TrackerOptions{CheckpointPath: crashCheckpoint, FS: r.fsys, Owners: r.owners,
		GapGrace: 5 * time.Millisecond, TailInterval: 20 * time.Millisecond, RetryMin: 5 * time.Millisecond,
		RetryMax: 50 * time.Millisecond, CheckpointInterval: time.Hour, MaxBatch: 7})
	if err != nil {
		fail("invariant 3: the consumer cannot load its checkpoint after the crash: %v", err)
		return bad
	}
	applied2 := crashApplied(tr2)
	r.mu.Lock()
	want, err := crashAggregate(r.values, crashSeqIntervals(applied2))
	r.mu.Unlock()
	switch got := crashState(st2); {
	case err != nil:
		fail("invariant 3: the checkpoint's applied set %v holds a seq never published: %v", applied2, err)
	case got != want:
		fail("invariant 3: the checkpoint's state %+v is not the fold over its applied set %v, %+v", got, applied2, want)
	}

	// The owner restarting (invariants 1, 2, 4).
	o, fold, err := r.openOwner()
	if err != nil {
		fail("invariant 4: OpenOwner fails after the crash (published.seq %d, snapshot.json at %d, %d was visible): %v", mark, snap, must, err)
		return bad
	}
	r.owner, r.fold = o, fold
	defer func() {
		r.owner.Close(context.Background())
		r.stopOwner()
	}()
	l := o.Log()
	first, last := l.FirstSeq(), l.LastSeq()
	if mark > last || snap > last {
		fail("invariant 4: published.seq %d or snapshot.json's seq %d is past the log's last seq %d", mark, snap, last)
	}
	if last < must {
		fail("invariants 1+2: the log ends at %d after the crash, but %d was visible/durable before it: those sequence numbers would be reused", last, must)
	}
	if floor := min(mark, snap) + 1; last > 0 && first > min(floor, last) {
		fail("invariant 2: the log starts at %d after the crash, but the owner still needed %d.. (published.seq %d, snapshot.json at %d): retention deleted them", first, floor, mark, snap)
	}
	if applied2 != nil && applied2[len(applied2)-1][1] > last {
		fail("invariant 1: the consumer's checkpoint holds up to %d, the owner's log ends at %d: those sequence numbers would be reused", applied2[len(applied2)-1][1], last)
	}
	r.mu.Lock()
	if last > 0 {
		var dec envelope.Decoder
		err := l.Read(context.Background(), first, last, func(rec retainlog.Record) error {
			if old, ok := r.bytes[rec.Seq]; ok && !bytes.Equal(old, rec.Data) {
				return fmt.Errorf("invariant 1: seq %d holds other bytes than the ones that were visible", rec.Seq)
			}
			env, err := dec.Decode(rec.Data)
			if err != nil {
				return fmt.Errorf("seq %d: %w", rec.Seq, err)
			}
			rd, err := pipeline.UnmarshalReading(env.Payload)
			if err != nil || env.Seq != rec.Seq || env.Stream != crashStream || rd.Value != r.values[rec.Seq] {
				return fmt.Errorf("seq %d: envelope %+v, reading %v (%v), want value %d", rec.Seq, env, rd.Value, err, r.values[rec.Seq])
			}
			return nil
		})
		var de *retainlog.DamagedError
		if r.damaged != 0 && r.damaged >= first {
			want := fmt.Sprintf("%d-%d", r.damaged, r.damaged)
			switch {
			case !errors.As(err, &de) || retainlog.FormatRanges(de.Ranges) != want:
				fail("bit rot: reading %d..%d after the flip in seq %d: %v (want exactly that record damaged)", first, last, r.damaged, err)
			case retainlog.FormatRanges(o.Status().Damaged) != want:
				fail("bit rot: the owner's status names %v damaged, want %s", o.Status().Damaged, want)
			default:
				err = nil
			}
		}
		if err != nil {
			fail("invariants 1+2: reading %d..%d after the crash: %v", first, last, err)
		}
	}
	if wantFold, err := crashAggregate(r.values, crashSeqRange(1, last)); err != nil || fold.A != wantFold {
		fail("the owner's fold after the restart is %+v, want %+v over 1..%d (%v)", fold.A, wantFold, last, err)
	}
	r.mu.Unlock()
	if len(bad) > 0 {
		return bad
	}

	// Invariant 1: the next message gets a fresh sequence number.
	if err := r.publish(1, false); err != nil {
		fail("publishing after the crash: %v", err)
		return bad
	}
	if next := o.Log().LastSeq(); next <= must {
		fail("invariant 1: the first message after the crash got seq %d, not above %d", next, must)
	}
	if err := r.publish(3, true); err != nil {
		fail("publishing after the crash: %v", err)
		return bad
	}

	// Invariant 5: the consumer that kept running (on another machine)
	// and the one restarted from its checkpoint both end exact against
	// the owner, through live delivery, replay and snapshots over HTTP.
	mux := http.NewServeMux()
	NewServer("", o.o.Metrics, o).Register(mux)
	var replays, snapshots atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/replay":
			replays.Add(1)
		case "/snapshot":
			snapshots.Add(1)
		}
		mux.ServeHTTP(w, req)
	}))
	defer func() {
		srv.Close()
		stats.replays += int(replays.Load())
		stats.snapshots += int(snapshots.Load())
	}()
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	r.owners.p.Store(&[]discovery.Instance{{ID: "sensor-1", Address: host, Port: p, Tags: []string{OwnerTag(crashStream)}}})
	tr1 := r.tr
	tr1.o.GapGrace, tr1.o.TailInterval, tr1.o.RetryMin, tr1.o.RetryMax, tr1.o.MaxBatch = tr2.o.GapGrace, tr2.o.TailInterval, tr2.o.RetryMin, tr2.o.RetryMax, tr2.o.MaxBatch
	r.mu.Lock()
	r.deliver = []*Tracker{tr1, tr2}
	r.mu.Unlock()
	r.run(o)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, tr := range []*Tracker{tr1, tr2} {
		wg.Add(1)
		go func() { defer wg.Done(); tr.Run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()
	end := o.Status().LastSeq
	exact := func(tr *Tracker, st *appState) bool {
		s := tr.Status()
		return len(s) == 1 && s[0].Applied == end && s[0].LastContiguous == end && crashState(st) == fold.A
	}
	if err := crashPoll(20*time.Second, func() bool { return exact(tr1, r.st) && exact(tr2, st2) }, func() string {
		return fmt.Sprintf("both consumers to end exact at %d", end)
	}); err != nil {
		fail("invariant 5: %v: the running consumer has %+v, state %+v; the restarted one %+v, state %+v; the owner's fold %+v",
			err, tr1.Status(), crashState(r.st), tr2.Status(), crashState(st2), fold.A)
	}
	return bad
}

// crashPoll waits until cond holds, checking every few milliseconds, for at
// most d.
func crashPoll(d time.Duration, cond func() bool, what func() string) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", d, what())
		}
		time.Sleep(2 * time.Millisecond) // polling interval, not synchronisation
	}
	return nil
}

// crashPoints are the k to explore for a trace of n operations: all of
// them when there are at most limit, else every stride-th plus every k
// whose refused operation (trace[k]) is not a plain write or file fsync
// (every create, rename, remove, truncate, mkdir and directory fsync is
// kept) plus the first k of every kind of operation on every kind of file
// (digits stripped from names, so log segments are one kind and
// snapshot.json.tmp another): sampling never skips an operation kind.
func crashPoints(trace []string, limit int) []int {
	n := len(trace)
	if limit <= 0 || n+1 <= limit {
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
		if class := kind + " " + crashStripDigits(strings.Fields(op)[1]); !seen[class] {
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

func crashTraceTail(tr []string, n int) string {
	if len(tr) > n {
		tr = tr[len(tr)-n:]
	}
	return "\n\t\t" + strings.Join(tr, "\n\t\t")
}

// crashExplore runs the workload at the crash points of mode, several at a
// time (most of a point's time is spent waiting for the consumers), and
// returns the violations (each naming k and the trace's tail), the
// number of points explored and N.
func crashExplore(t *testing.T, mode crashMode, steps []crashStep, wantKinds ...string) (violations []string, points, n int, stats crashRecoveryStats) {
	t.Helper()
	full := newCrashRun(mode)
	full.runSteps(steps)
	if full.err != nil {
		t.Fatalf("%s: the workload fails without a crash: %v", mode.name, full.err)
	}
	trace := full.c.Trace()
	n = len(trace)
	full.crash()
	kinds := map[string]bool{}
	for _, op := range trace {
		kinds[crashOpKind(op)] = true
	}
	for _, want := range wantKinds {
		if !kinds[want] {
			t.Errorf("%s: the workload never does a %q; the exploration does not cover it", mode.name, want)
		}
	}
	ks := crashPoints(trace, mode.limit)
	results := make([][]string, len(ks))
	rstats := make([]crashRecoveryStats, len(ks))
	work := make(chan int)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				results[i] = crashExplorePoint(mode, steps, ks[i], &rstats[i])
			}
		}()
	}
	for i := range ks {
		work <- i
	}
	close(work)
	wg.Wait()
	for i, v := range results {
		violations = append(violations, v...)
		stats.replays += rstats[i].replays
		stats.snapshots += rstats[i].snapshots
	}
	return violations, len(ks), n, stats
}

func crashExplorePoint(mode crashMode, steps []crashStep, k int, stats *crashRecoveryStats) []string {
	r := newCrashRun(mode)
	r.c.StopAfter(k)
	r.runSteps(steps)
	var out []string
	if r.err != nil && !errors.Is(r.err, crashfs.ErrStopped) {
		out = append(out, fmt.Sprintf("k=%d: the workload failed with an error the stop does not explain: %v", k, r.err))
	}
	tail := crashTraceTail(r.c.Trace(), 6)
	r.crash()
	for _, v := range r.check(stats) {
		out = append(out, fmt.Sprintf("k=%d (stopped at: %v; visible %d, durable %d, written %d): %s; trace tail:%s",
			k, r.err, r.visible, r.durable, r.written, v, tail))
	}
	return out
}

var crashAllKinds = []string{"mkdir", "create", "write", "fsync", "fsync dir", "rename", "remove"}

func TestCrashPointsOwnerTracker(t *testing.T) {
	modes := []crashMode{
		{name: "power-cut", powerCut: true},
		// Writes in 16-byte pieces, each fsynced by "the kernel": torn
		// records and torn temporary files survive the cut. N is about
		// 670: sampled (see crashPoints: every operation other than a
		// plain write or file fsync is explored, and the first write and
		// fsync of every kind of file).
		{name: "power-cut-writeback-torn", powerCut: true, chunk: 16, writeback: true, limit: 300},
		// Only the processes die, mid-write: the page cache keeps torn
		// tails. N is about 410: sampled likewise.
		{name: "process-crash-torn", chunk: 16, limit: 300},
		// The interval policy: the log's own goroutine fsyncs every 1 ms,
		// and nothing is shown or published before one covered it.
		{name: "power-cut-fsync-interval", powerCut: true, interval: true, limit: 300},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			start := time.Now()
			violations, points, n, stats := crashExplore(t, mode, crashWorkload(), crashAllKinds...)
			for _, v := range violations {
				t.Error(v)
			}
			if stats.replays == 0 || stats.snapshots == 0 {
				t.Errorf("after %d crash points the consumers asked for %d replays and %d snapshots: recovery over HTTP is not exercised", points, stats.replays, stats.snapshots)
			}
			t.Logf("N=%d operations, %d crash points explored, consumers recovered with %d replay and %d snapshot requests, in %v",
				n, points, stats.replays, stats.snapshots, time.Since(start).Round(time.Millisecond))
		})
	}
}

// TestCrashPointsOwnerNegativeControl proves the checks have teeth: with a
// disk that acknowledges the log's fsyncs without syncing them (the state
// files are synced for real), published.seq and snapshot.json end up
// pointing past what survives of the log, and visible messages vanish.
func TestCrashPointsOwnerNegativeControl(t *testing.T) {
	mode := crashMode{name: "lying-log-fsync", powerCut: true, limit: 40,
		lie: func(name string) bool { return strings.Contains(name, "/log/") }}
	violations, points, n, _ := crashExplore(t, mode, crashWorkload())
	// Both ways the lie shows: the log lost what was visible (1+2), and
	// published.seq or snapshot.json point past the log (4).
	for _, inv := range []string{"invariants 1+2:", "invariant 4:"} {
		found := ""
		for _, v := range violations {
			if strings.Contains(v, inv) {
				found = v
				break
			}
		}
		if found == "" {
			t.Errorf("a disk that lies about the log's fsyncs broke no %q at any of %d crash points (N=%d): that check has no teeth", inv, points, n)
			continue
		}
		t.Logf("as expected, %s is broken, e.g. %s", inv, found)
	}
	t.Logf("%d violations at %d crash points (N=%d)", len(violations), points, n)
}

// TestOwnerRestartKeepsUnsavedRecords: an owner killed more than
// RetainMessages (plus a segment) messages after its last save must start
// again. The retained log's Open applies retention before OpenOwner can
// set its floor, so it deleted the records after snapshot.json (and the
// unacknowledged ones after published.seq): OpenOwner then refused to
// start ("the fold cannot be rebuilt"), for good, since the files are
// gone. The crash-point exploration above finds the same at every crash
// point of that window.
func TestOwnerRestartKeepsUnsavedRecords(t *testing.T) {
	dir := t.TempDir()
	open := func() (*Owner, *pipeline.ReadingFold, error) {
		fold := &pipeline.ReadingFold{}
		o, err := OpenOwner(OwnerOptions{Stream: "s", Dir: dir, Log: crashLogOptions(false), Fold: fold}, ackAll{})
		return o, fold, err
	}
	o, fold, err := open()
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 20; i++ {
		if _, err := o.Publish(context.Background(), pipeline.MarshalReading(pipeline.Reading{Value: int64(i)}), ""); err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			if err := o.save(); err != nil { // snapshot.json at 3, nothing acknowledged
				t.Fatal(err)
			}
		}
	}
	want := fold.A
	// Killed: no Close, no save; only the log (durable) survives.
	o.log.Close()
	o2, fold2, err := open()
	if err != nil {
		t.Fatalf("BUG (owner.go, OpenOwner): the owner cannot restart after a kill 17 messages past its last save: %v", err)
	}
	defer o2.Close(context.Background())
	if first := o2.Log().FirstSeq(); first > 1 {
		t.Errorf("BUG (owner.go, OpenOwner): after the restart the log starts at %d: retention deleted messages nsqd never acknowledged (published.seq 0)", first)
	}
	if fold2.A != want {
		t.Errorf("fold after the restart %+v, want %+v", fold2.A, want)
	}
}
