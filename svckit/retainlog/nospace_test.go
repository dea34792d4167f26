package retainlog

// The retained log on a full disk (crashfs.FS.SetSpace, which behaves as a
// small tmpfs: a write that does not fit is short and fails with ENOSPC).
//
// The contract for a failed write (not a failed fsync, which is sticky):
// Append returns the error, the log cuts off whatever part of the batch
// reached the file (back to the last record boundary) and stays usable,
// so that once there is space again an Append of the same sequence
// numbers succeeds. Nothing already appended is lost, no sequence number
// is skipped or reused, and a power cut while the disk is full takes
// nothing that was durable.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/durable/crashfs"
)

const (
	nsDir     = "/disk/log"
	nsRecords = 300 // records the workload appends
	nsRetain  = 120 // RetainMessages: retention deletes segments as it goes
)

var nsT0 = time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)

// nsData is record seq's data: 0 to 299 bytes, so batches of 1 to 20 are
// anywhere from a few dozen bytes to more than a segment.
func nsData(seq uint64) []byte {
	b := make([]byte, int(seq*7919%300))
	for i := range b {
		b[i] = byte(seq*131 + uint64(i)*17 + 5)
	}
	if len(b) >= 8 {
		binary.BigEndian.PutUint64(b, seq)
	}
	return b
}

func nsRecs(from uint64, n int) []Record {
	recs := make([]Record, n)
	for i := range recs {
		seq := from + uint64(i)
		recs[i] = Record{Seq: seq, Time: nsT0.Add(time.Duration(seq) * time.Millisecond), Data: nsData(seq)}
	}
	return recs
}

// nsBatches splits 1..nsRecords into batches of 1 to 20 records, the same
// ones every run.
func nsBatches() [][]Record {
	rng := rand.New(rand.NewPCG(42, 1))
	var out [][]Record
	for next := uint64(1); next <= nsRecords; {
		n := min(1+rng.IntN(20), int(nsRecords-next+1))
		out = append(out, nsRecs(next, n))
		next += uint64(n)
	}
	return out
}

func nsEncoded(recs []Record) int64 {
	var n int64
	for _, r := range recs {
		n += int64(EncodedLen(len(r.Data)))
	}
	return n
}

// nsProcFS is one process's view of the disk: once the process is dead
// (the power went), its goroutines (retention, the scrubber) can no longer
// touch the disk the machine restarts on. Its files already fail by
// themselves after crashfs's PowerCut.
type nsProcFS struct {
	durable.FS
	dead atomic.Bool
}

var errNsDead = errors.New("test: the process is dead")

func (p *nsProcFS) alive() error {
	if p.dead.Load() {
		return errNsDead
	}
	return nil
}

func (p *nsProcFS) OpenFile(name string, flag int, perm fs.FileMode) (durable.File, error) {
	if err := p.alive(); err != nil {
		return nil, err
	}
	return p.FS.OpenFile(name, flag, perm)
}

func (p *nsProcFS) ReadDir(name string) ([]fs.DirEntry, error) {
	if err := p.alive(); err != nil {
		return nil, err
	}
	return p.FS.ReadDir(name)
}

func (p *nsProcFS) Stat(name string) (fs.FileInfo, error) {
	if err := p.alive(); err != nil {
		return nil, err
	}
	return p.FS.Stat(name)
}

func (p *nsProcFS) Mkdir(name string, perm fs.FileMode) error {
	if err := p.alive(); err != nil {
		return err
	}
	return p.FS.Mkdir(name, perm)
}

func (p *nsProcFS) Remove(name string) error {
	if err := p.alive(); err != nil {
		return err
	}
	return p.FS.Remove(name)
}

func (p *nsProcFS) Rename(oldpath, newpath string) error {
	if err := p.alive(); err != nil {
		return err
	}
	return p.FS.Rename(oldpath, newpath)
}

func (p *nsProcFS) SyncDir(name string) error {
	if err := p.alive(); err != nil {
		return err
	}
	return p.FS.SyncDir(name)
}

// nsDisk is a crashfs disk and the process currently using it.
type nsDisk struct {
	t    *testing.T
	c    *crashfs.FS
	proc *nsProcFS
	l    *Log
}

func newNsDisk(t *testing.T) *nsDisk { return &nsDisk{t: t, c: crashfs.New()} }

func (d *nsDisk) options() Options {
	o := DefaultOptions(nsDir)
	o.SegmentBytes = 4096
	o.RetainMessages = nsRetain
	o.Fsync = FsyncAlways
	// No scrubber: a segment it holds while retention drops it is
	// unlinked when it lets go, which would give space back at a moment
	// the test does not choose (a retry meant to fail would succeed).
	o.ScrubRate = 0
	// Byte for byte, what a failed write leaves and undoes in a file
	// that grows with every append. A write into preallocated space
	// needs no more of the disk, so with preallocation a full disk
	// fails other writes at other moments:
	// TestPreallocationOnAFullDisk is that case.
	o.PreallocateBytes = 0
	return o
}

// open starts a process and opens the log; it must succeed, whatever space
// is left.
func (d *nsDisk) open() *Log {
	d.t.Helper()
	d.proc = &nsProcFS{FS: d.c}
	o := d.options()
	o.FS = d.proc
	l, err := Open(o)
	if err != nil {
		d.t.Fatalf("Open with %d bytes used: %v; trace%s", d.c.Used(), err, nsTail(d.c))
	}
	d.l = l
	return l
}

// close closes the log cleanly.
func (d *nsDisk) close() {
	d.t.Helper()
	if err := d.l.Close(); err != nil {
		d.t.Fatalf("Close: %v", err)
	}
	d.l = nil
}

// powerCut cuts the power under the running process, which dies with it.
func (d *nsDisk) powerCut() {
	d.c.PowerCut()
	d.proc.dead.Store(true)
	_ = d.l.Close() // stops its goroutines; its I/O cannot happen any more
	d.l = nil
}

func nsTail(c *crashfs.FS) string {
	tr := c.Trace()
	if len(tr) > 8 {
		tr = tr[len(tr)-8:]
	}
	s := ""
	for _, op := range tr {
		s += "\n\t" + op
	}
	return s
}

// wantNoSpace appends recs on a disk without room for them: Append must
// fail with ENOSPC and leave the log as it was: LastSeq and DurableSeq,
// and on disk the partial batch cut off (the newest segment file as large
// as before, or empty if the roll created it). Used may only go down:
// the last reader of a segment retention dropped (a Read, the scrubber)
// unlinks it whenever it is done.
//
// With noWait it appends with AppendNoWait, as a publisher that waits
// for durability after releasing its own lock does; a WaitDurable for
// the batch must then fail at once (ErrBeyondEnd), not wait.
func (d *nsDisk) wantNoSpace(recs []Record, what string, noWait bool) {
	d.t.Helper()
	last, dur, used := d.l.LastSeq(), d.l.DurableSeq(), d.c.Used()
	sizes := nsSegmentSizes(d.t, d.c)
	var err error
	if noWait {
		err = d.l.AppendNoWait(recs...)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		werr := d.l.WaitDurable(ctx, recs[len(recs)-1].Seq)
		cancel()
		if !errors.Is(werr, ErrBeyondEnd) {
			d.t.Fatalf("%s: WaitDurable(%d) after a failed AppendNoWait: %v, want ErrBeyondEnd", what, recs[len(recs)-1].Seq, werr)
		}
	} else {
		err = d.l.Append(recs...)
	}
	if !errors.Is(err, syscall.ENOSPC) {
		d.t.Fatalf("%s: Append(%d..%d) with %d bytes used: err = %v, want ENOSPC; trace%s",
			what, recs[0].Seq, recs[len(recs)-1].Seq, used, err, nsTail(d.c))
	}
	if got := d.l.LastSeq(); got != last {
		d.t.Fatalf("%s: a failed Append moved LastSeq from %d to %d", what, last, got)
	}
	if got := d.l.DurableSeq(); got != dur {
		d.t.Fatalf("%s: a failed Append moved DurableSeq from %d to %d", what, dur, got)
	}
	if got := d.c.Used(); got > used {
		d.t.Fatalf("%s: the disk holds %d bytes after a failed Append, %d before: the partial batch was not cut off; trace%s",
			what, got, used, nsTail(d.c))
	}
	after := nsSegmentSizes(d.t, d.c)
	if newest := nsNewest(after); newest != "" && after[newest] != sizes[newest] { // a new file was 0 bytes before
		d.t.Fatalf("%s: segment %s holds %d bytes after a failed Append, %d before: the partial batch was not cut off; trace%s",
			what, newest, after[newest], sizes[newest], nsTail(d.c))
	}
}

// nsNewest is the name of the newest segment (names sort by first seq).
func nsNewest(sizes map[string]int64) string {
	newest := ""
	for name := range sizes {
		newest = max(newest, name)
	}
	return newest
}

// nsSegmentSizes returns the size of every segment file.
func nsSegmentSizes(t *testing.T, c *crashfs.FS) map[string]int64 {
	t.Helper()
	ents, err := c.ReadDir(nsDir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, e := range ents {
		if _, ok := parseSegmentName(e.Name()); !ok {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fi.Size()
	}
	return out
}

// check asserts that the log ends at last, that retention kept at least
// the nsRetain newest records (all of them from the start if there are
// fewer), and that every record it holds reads back intact and in order.
func (d *nsDisk) check(last uint64, what string) {
	d.t.Helper()
	if err := nsCheck(d.l, last); err != nil {
		d.t.Fatalf("%s: %v; trace%s", what, err, nsTail(d.c))
	}
}

func nsCheck(l *Log, last uint64) error {
	if got := l.LastSeq(); got != last {
		return fmt.Errorf("LastSeq = %d, want %d", got, last)
	}
	if last == 0 {
		return nil
	}
	first := l.FirstSeq()
	if first < 1 || first > last || (last >= nsRetain && first > last-nsRetain+1) {
		return fmt.Errorf("FirstSeq = %d with LastSeq %d: retention must keep the %d newest", first, last, nsRetain)
	}
	if first > 1 {
		if err := l.Read(context.Background(), first-1, first-1, func(Record) error { return nil }); !errors.Is(err, ErrTrimmed) {
			return fmt.Errorf("Read(%d) below FirstSeq %d: %v, want ErrTrimmed", first-1, first, err)
		}
	}
	next := first
	err := l.Read(context.Background(), first, last, func(r Record) error {
		switch {
		case r.Seq != next:
			return fmt.Errorf("Read delivered seq %d, want %d", r.Seq, next)
		case !r.Time.Equal(nsT0.Add(time.Duration(r.Seq) * time.Millisecond)):
			return fmt.Errorf("record %d has time %v", r.Seq, r.Time)
		case !bytes.Equal(r.Data, nsData(r.Seq)):
			return fmt.Errorf("record %d has other data than was appended", r.Seq)
		}
		next++
		return nil
	})
	if err != nil {
		return fmt.Errorf("Read(%d, %d): %w", first, last, err)
	}
	if next != last+1 {
		return fmt.Errorf("Read(%d, %d) stopped before %d", first, last, next)
	}
	return nil
}

// TestAppendNoSpaceAtEveryWrite runs the workload once per batch k and
// per amount of space left: the disk fills up just before batch k (with
// no room, or room for part of the batch: a short write, the partial
// record cut off by the log), so its write fails whether it goes into
// the active segment or into a new one a roll just created. The workload
// retries the batch (it must keep failing, and change nothing), then
// either gets the space back and goes on with the same sequence numbers,
// or first loses the power on the full disk, restarts on it (Open on a
// full disk, with the segments whose removal the power cut undid back),
// and then goes on. At the end every record reads back, again after a
// clean reopen, and after a power cut everything that was durable is
// there.
func TestAppendNoSpaceAtEveryWrite(t *testing.T) {
	t.Parallel()
	batches := nsBatches()
	var runs, rolled atomic.Int64
	t.Run("runs", func(t *testing.T) {
		for k, b := range batches {
			size := nsEncoded(b)
			seen := map[int64]bool{}
			for _, room := range []int64{0, 1, headerLen + bodyFixedLen, size / 2, size - 1} {
				if room >= size || seen[room] {
					continue
				}
				seen[room] = true
				for _, cut := range []bool{false, true} {
					name := fmt.Sprintf("batch%d_seq%d-%d/room%d/cut=%v", k, b[0].Seq, b[len(b)-1].Seq, room, cut)
					t.Run(name, func(t *testing.T) {
						t.Parallel()
						runs.Add(1)
						if nsAtEveryWrite(t, batches, k, room, cut) {
							rolled.Add(1)
						}
					})
				}
			}
		}
	})
	// The runs must cover both kinds of failed write.
	if n, r := runs.Load(), rolled.Load(); !t.Failed() && (r == 0 || r == n) {
		t.Fatalf("of %d runs, %d failed their write into a segment a roll had just created: want some of both", n, r)
	}
	t.Logf("%d runs, %d of them failing the first write of a new segment", runs.Load(), rolled.Load())
}

// nsAtEveryWrite is one run of TestAppendNoSpaceAtEveryWrite; it reports
// whether batch k's failed write went into a segment that was just
// created.
func nsAtEveryWrite(t *testing.T, batches [][]Record, k int, room int64, cut bool) (rolled bool) {
	d := newNsDisk(t)
	d.open()
	last := uint64(0)
	for i, b := range batches {
		if i == k {
			before := nsSegmentSizes(t, d.c)
			d.c.SetSpace(d.c.Used() + room)
			for try := 0; try < 3; try++ {
				d.wantNoSpace(b, fmt.Sprintf("try %d", try), try == 1)
			}
			_, existed := before[nsNewest(nsSegmentSizes(t, d.c))]
			rolled = !existed
			// Reads go on while the disk is full.
			d.check(last, "on the full disk")
			if cut {
				d.powerCut()
				d.open()
				// FsyncAlways: everything appended was durable, and
				// the failed batch was never fsynced.
				d.check(last, "reopened on the full disk after a power cut")
				d.c.SetSpace(d.c.Used())
				d.wantNoSpace(b, "after the restart", false)
			}
			d.c.SetSpace(-1)
		}
		if err := d.l.Append(b...); err != nil {
			t.Fatalf("Append(%d..%d) with space: %v; trace%s", b[0].Seq, b[len(b)-1].Seq, err, nsTail(d.c))
		}
		last = b[len(b)-1].Seq
		if i == k {
			d.check(last, "after the space came back")
		}
	}
	d.check(nsRecords, "at the end")
	d.close()
	d.open()
	d.check(nsRecords, "reopened")

	// Appended but not waited for, then the power goes: what was
	// durable survives, what survives above it is intact.
	if err := d.l.AppendNoWait(nsRecs(nsRecords+1, 3)...); err != nil {
		t.Fatal(err)
	}
	durableSeq := d.l.DurableSeq()
	if durableSeq < nsRecords {
		t.Fatalf("DurableSeq %d after a clean reopen, want at least %d", durableSeq, nsRecords)
	}
	d.powerCut()
	l := d.open()
	if got := l.LastSeq(); got < durableSeq || got > nsRecords+3 {
		t.Fatalf("after the power cut LastSeq = %d, want %d..%d", got, durableSeq, nsRecords+3)
	}
	d.check(l.LastSeq(), "after the final power cut")
	d.close()
	return rolled
}

// nsSegments counts the segment files in the log's directory.
func nsSegments(t *testing.T, c *crashfs.FS) int { return len(nsSegmentSizes(t, c)) }

// TestAppendNoSpaceAtSegmentRoll fills the disk exactly when the next
// batch rolls to a new segment: the roll creates it (creating takes no
// space) and its first write fails. The empty segment stays; the log must
// keep working through a retry, a clean close and reopen on the full disk,
// and a power cut, and put the batch into that segment once there is
// space.
func TestAppendNoSpaceAtSegmentRoll(t *testing.T) {
	t.Parallel()
	d := newNsDisk(t)
	d.open()
	// Fill segment 1 to just under 4096 bytes with 100-byte records.
	per := int64(EncodedLen(100))
	n := int(4096 / per)
	recs := make([]Record, n+1)
	for i := range recs {
		seq := uint64(i + 1)
		recs[i] = Record{Seq: seq, Time: nsT0.Add(time.Duration(seq) * time.Millisecond), Data: bytes.Repeat([]byte{byte(seq)}, 100)}
	}
	if err := d.l.Append(recs[:n]...); err != nil {
		t.Fatal(err)
	}
	if got := nsSegments(t, d.c); got != 1 {
		t.Fatalf("%d segments after %d bytes, want 1", got, int64(n)*per)
	}
	next := recs[n : n+1]
	nextName := filepath.Join(nsDir, segmentName(uint64(n+1)))
	check := func(last uint64, what string) {
		t.Helper()
		if got := d.l.LastSeq(); got != last {
			t.Fatalf("%s: LastSeq %d, want %d", what, got, last)
		}
		i := 0
		err := d.l.Read(context.Background(), 1, last, func(r Record) error {
			if r.Seq != recs[i].Seq || !bytes.Equal(r.Data, recs[i].Data) {
				return fmt.Errorf("record %d read back as seq %d with other data", recs[i].Seq, r.Seq)
			}
			i++
			return nil
		})
		if err != nil || i != int(last) {
			t.Fatalf("%s: Read(1, %d): %d records, %v", what, last, i, err)
		}
	}

	d.c.SetSpace(d.c.Used())
	d.wantNoSpace(next, "the roll's first write", false)
	fi, err := d.c.Stat(nextName)
	if err != nil || fi.Size() != 0 {
		t.Fatalf("the roll's new segment %s: %v, %v; want it created and empty", nextName, fi, err)
	}
	d.wantNoSpace(next, "retry into the new segment", false)
	check(uint64(n), "on the full disk")

	d.close() // on the full disk: fsyncs, writes nothing
	d.open()
	check(uint64(n), "reopened on the full disk")
	d.wantNoSpace(next, "after a reopen on the full disk", false)

	d.powerCut()
	d.open()
	check(uint64(n), "after a power cut on the full disk")
	d.wantNoSpace(next, "after the power cut", false)

	d.c.SetSpace(-1)
	if err := d.l.Append(next...); err != nil {
		t.Fatalf("Append with space: %v; trace%s", err, nsTail(d.c))
	}
	check(uint64(n+1), "after the space came back")
	if fi, err := d.c.Stat(nextName); err != nil || fi.Size() != per {
		t.Fatalf("segment %s: %v, %v; want the record in it", nextName, fi, err)
	}
	d.powerCut()
	d.open()
	check(uint64(n+1), "after a power cut")
	d.close()
}

// TestOpenNoSpace opens the log on a disk with no space left: a fresh
// one (no room even for the first record), and one whose last segment
// has a torn tail to cut (cutting frees space; keeping a copy of the cut
// bytes cannot work). Open must succeed, appends fail with ENOSPC until
// the space returns and then continue the sequence.
func TestOpenNoSpace(t *testing.T) {
	t.Parallel()
	t.Run("empty", func(t *testing.T) {
		t.Parallel()
		d := newNsDisk(t)
		d.c.SetSpace(0)
		d.open()
		first := nsRecs(1, 5)
		d.wantNoSpace(first, "the first append", false)
		d.check(0, "empty on the full disk")
		d.close()
		d.open()
		d.wantNoSpace(first, "after a reopen", false)
		d.powerCut()
		d.open()
		d.wantNoSpace(first, "after a power cut", false)
		d.c.SetSpace(-1)
		if err := d.l.Append(first...); err != nil {
			t.Fatalf("Append with space: %v; trace%s", err, nsTail(d.c))
		}
		if err := d.l.Append(nsRecs(6, 5)...); err != nil {
			t.Fatal(err)
		}
		d.check(10, "after the space came back")
		d.close()
	})
	t.Run("torn tail", func(t *testing.T) {
		t.Parallel()
		d := newNsDisk(t)
		d.open()
		if err := d.l.Append(nsRecs(1, 30)...); err != nil {
			t.Fatal(err)
		}
		d.close()
		// A torn tail: half a record's worth of garbage after the last one,
		// fsynced (the kernel wrote it back before the crash).
		segs, err := d.c.ReadDir(nsDir)
		if err != nil {
			t.Fatal(err)
		}
		last := filepath.Join(nsDir, segs[len(segs)-1].Name())
		f, err := d.c.OpenFile(last, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		garbage := bytes.Repeat([]byte{0xa5}, 77)
		if _, err := f.WriteAt(garbage, fi.Size()); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		f.Close()

		d.c.SetSpace(d.c.Used())
		d.open()
		if got := d.l.Recovery().TruncatedBytes; got != int64(len(garbage)) {
			t.Fatalf("Open on a full disk cut %d bytes of the torn tail, want %d", got, len(garbage))
		}
		d.check(30, "opened on the full disk")
		d.c.SetSpace(d.c.Used())
		d.wantNoSpace(nsRecs(31, 4), "after the torn tail was cut", false)
		d.c.SetSpace(-1)
		if err := d.l.Append(nsRecs(31, 4)...); err != nil {
			t.Fatalf("Append with space: %v", err)
		}
		d.check(34, "after the space came back")
		d.close()
		d.open()
		d.check(34, "reopened")
		d.close()
	})
}
