package retainlog

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// segmentBases returns the first seqs of the segment files on disk.
func segmentBases(t testing.TB, dir string) []uint64 {
	t.Helper()
	var bases []uint64
	for _, f := range segmentFiles(t, dir) {
		b, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(f), ".log"), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		bases = append(bases, b)
	}
	return bases
}

// checkDiskMatches asserts that the files on disk are exactly the log's
// segments and that FirstSeq is the oldest one's name.
func checkDiskMatches(t testing.TB, l *Log, dir string) []uint64 {
	t.Helper()
	bases := segmentBases(t, dir)
	st := l.Stats()
	if len(bases) != st.Segments {
		t.Fatalf("%d files on disk, Stats.Segments %d", len(bases), st.Segments)
	}
	if st.FirstSeq != bases[0] {
		t.Fatalf("FirstSeq %d, oldest file %d", st.FirstSeq, bases[0])
	}
	var total int64
	files := segmentFiles(t, dir)
	for _, f := range files {
		total += fileSize(t, f)
	}
	// The active segment of an open log may hold preallocated zeros
	// after its records: up to a segment's size.
	zeros := total - st.Bytes
	if zeros != 0 && (l.opts.PreallocateBytes == 0 || zeros < 0 || zeros > l.opts.SegmentBytes) {
		t.Fatalf("%d bytes on disk, Stats.Bytes %d", total, st.Bytes)
	}
	return bases
}

func TestRetentionByCount(t *testing.T) {
	const limit = 40
	dir := t.TempDir()
	o := testOptions(t, dir)
	o.RetainMessages = limit
	l := mustOpen(t, o)
	for seq := uint64(1); seq <= 300; seq++ {
		appendN(t, l, seq, 1, 200, 1)
		bases := checkDiskMatches(t, l, dir)
		kept := l.LastSeq() - l.FirstSeq() + 1
		if kept < min(limit, seq) {
			t.Fatalf("after %d: kept %d records, limit %d", seq, kept, limit)
		}
		if len(bases) > 1 {
			if newer := l.LastSeq() - bases[1] + 1; newer >= limit {
				t.Fatalf("after %d: oldest segment %d kept although %d newer records", seq, bases[0], newer)
			}
		}
	}
	if l.FirstSeq() <= 1 {
		t.Fatal("retention never ran")
	}
	wantErr(t, l.Read(context.Background(), 1, 10, func(Record) error { return nil }), ErrTrimmed)
	checkRange(t, l, l.FirstSeq(), 300, 300, 200)
}

func TestRetentionByBytes(t *testing.T) {
	const limit = 10000
	dir := t.TempDir()
	o := testOptions(t, dir)
	o.RetainBytes = limit
	l := mustOpen(t, o)
	for seq := uint64(1); seq <= 300; seq += 3 {
		appendN(t, l, seq, 3, 200, 3)
		checkDiskMatches(t, l, dir)
		files := segmentFiles(t, dir)
		var total, oldest int64
		for i, f := range files {
			sz := fileSize(t, f)
			total += sz
			if i == 0 {
				oldest = sz
			}
		}
		if total < min(limit, int64(seq+2)*int64(EncodedLen(200))) {
			t.Fatalf("after %d: kept %d bytes, limit %d", seq+2, total, limit)
		}
		if len(files) > 1 && total-oldest >= limit {
			t.Fatalf("after %d: oldest segment kept although %d newer bytes", seq+2, total-oldest)
		}
	}
	if l.FirstSeq() <= 1 {
		t.Fatal("retention never ran")
	}
	checkRange(t, l, l.FirstSeq(), 300, 300, 200)
}

func TestRetentionByAge(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: t0.Add(100 * time.Second)}
	o := testOptions(t, dir)
	o.RetainAge = 30 * time.Second
	o.Now = clock.Now
	l := mustOpen(t, o)
	// Record seq has time t0+seq s; 18 records per segment: 1, 19, 37, 55,
	// 73, 91 (active). At t0+100s anything newest before t0+70s goes.
	appendN(t, l, 1, 100, 200, 1)
	if l.FirstSeq() != 55 {
		t.Fatalf("FirstSeq %d, want 55", l.FirstSeq())
	}
	checkDiskMatches(t, l, dir)
	wantErr(t, l.Read(context.Background(), 54, 60, func(Record) error { return nil }), ErrTrimmed)

	clock.Set(t0.Add(102 * time.Second)) // segment 55's newest (72s) is exactly 30s old: kept
	if err := l.EnforceRetention(); err != nil {
		t.Fatal(err)
	}
	if l.FirstSeq() != 55 {
		t.Fatalf("FirstSeq %d, want 55", l.FirstSeq())
	}
	clock.Set(t0.Add(103 * time.Second))
	l.EnforceRetention()
	if l.FirstSeq() != 73 {
		t.Fatalf("FirstSeq %d, want 73", l.FirstSeq())
	}

	// Everything is old: only the active segment survives.
	clock.Set(t0.Add(time.Hour))
	l.EnforceRetention()
	if l.FirstSeq() != 91 || l.LastSeq() != 100 || l.Stats().Segments != 1 {
		t.Fatalf("stats %+v", l.Stats())
	}
	checkDiskMatches(t, l, dir)
	checkRange(t, l, 91, 100, 100, 200)
	appendN(t, l, 101, 5, 200, 5)
	checkRange(t, l, 91, 105, 105, 200)
}

// Segments found at Open have no known newest time; the successor's first
// record bounds it.
func TestRetentionByAgeAfterReopen(t *testing.T) {
	dir := t.TempDir()
	clock := &fakeClock{t: t0}
	o := testOptions(t, dir)
	o.Now = clock.Now
	l, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 1, 100, 200, 1)
	l.Close()

	clock.Set(t0.Add(100 * time.Second))
	o.RetainAge = 30 * time.Second
	l = mustOpen(t, o)
	if l.FirstSeq() != 55 {
		t.Fatalf("FirstSeq %d, want 55", l.FirstSeq())
	}
	checkDiskMatches(t, l, dir)
	checkRange(t, l, 55, 100, 100, 200)
}

func TestActiveSegmentNeverDeleted(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*Options)
	}{
		{"count", func(o *Options) { o.RetainMessages = 1 }},
		{"bytes", func(o *Options) { o.RetainBytes = 1 }},
		{"age", func(o *Options) {
			o.RetainAge = time.Nanosecond
			o.Now = func() time.Time { return t0.Add(1000 * time.Hour) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			o := testOptions(t, dir)
			tc.set(&o)
			l := mustOpen(t, o)
			for seq := uint64(1); seq <= 60; seq++ {
				appendN(t, l, seq, 1, 200, 1)
				if l.LastSeq() != seq || l.Stats().Segments != 1 {
					t.Fatalf("after %d: %+v", seq, l.Stats())
				}
				checkDiskMatches(t, l, dir)
			}
			if l.FirstSeq() != 55 { // the active segment starts at 55
				t.Fatalf("FirstSeq %d", l.FirstSeq())
			}
			l.EnforceRetention()
			checkRange(t, l, 55, 60, 60, 200)
		})
	}
}

// A segment removed by retention while a Read is using it stays readable
// until that Read is done, and its file goes afterwards.
func TestRetentionDuringRead(t *testing.T) {
	dir := t.TempDir()
	o := testOptions(t, dir)
	o.RetainMessages = 30
	l := mustOpen(t, o)
	appendN(t, l, 1, 40, 200, 1) // segments 1, 19, 37
	first := filepath.Join(dir, segmentName(1))

	paused, resume := make(chan struct{}), make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		n := uint64(0)
		errc <- l.Read(context.Background(), 1, 40, func(r Record) error {
			n++
			if err := checkRecord(r, n, 200); err != nil {
				return err
			}
			if n == 2 {
				close(paused)
				<-resume
			}
			return nil
		})
	}()
	select {
	case <-paused:
	case err := <-errc:
		t.Fatalf("Read ended before pausing: %v", err)
	}
	appendN(t, l, 41, 100, 200, 10)
	if l.FirstSeq() <= 19 {
		t.Fatalf("FirstSeq %d: retention did not run", l.FirstSeq())
	}
	if _, err := os.Stat(first); err != nil {
		t.Fatalf("segment in use was unlinked: %v", err)
	}
	close(resume)
	if err := <-errc; err != nil {
		t.Fatalf("Read across removed segments: %v", err)
	}
	if _, err := os.Stat(first); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("removed segment still on disk after the read: %v", err)
	}
	checkDiskMatches(t, l, dir)
	wantErr(t, l.Read(context.Background(), 1, 2, func(Record) error { return nil }), ErrTrimmed)
}

func TestConcurrentAppendRead(t *testing.T) {
	dir := t.TempDir()
	o := testOptions(t, dir)
	o.SegmentBytes = 16 << 10
	o.RetainMessages = 3000
	o.Fsync = FsyncInterval
	o.FsyncInterval = time.Millisecond
	l := mustOpen(t, o)

	const total = 20000
	const size = 100
	done := make(chan struct{})
	var wg sync.WaitGroup
	var appendErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(done)
		rng := rand.New(rand.NewPCG(1, 2))
		for seq := uint64(1); seq <= total; {
			n := 1 + rng.IntN(50)
			n = min(n, int(total-seq+1))
			if err := l.Append(mkRecs(seq, n, size)...); err != nil {
				appendErr = err
				return
			}
			seq += uint64(n)
		}
	}()

	errs := make(chan error, 8)
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 9))
			reads := 0
			for {
				select {
				case <-done:
					if reads > 0 {
						return
					}
				default:
				}
				first, last := l.FirstSeq(), l.LastSeq()
				if last == 0 {
					continue
				}
				from, to := first, last
				if r%2 == 1 { // random sub-ranges
					from = first + rng.Uint64N(last-first+1)
					to = from + rng.Uint64N(500)
				}
				next := from
				err := l.Read(context.Background(), from, to, func(rec Record) error {
					if err := checkRecord(rec, next, size); err != nil {
						return err
					}
					next++
					return nil
				})
				if errors.Is(err, ErrTrimmed) {
					continue // retention won the race with FirstSeq
				}
				if err != nil {
					errs <- err
					return
				}
				if next <= min(to, last) {
					errs <- errors.New("read ended early")
					return
				}
				reads++
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if appendErr != nil {
		t.Fatal(appendErr)
	}
	if l.LastSeq() != total {
		t.Fatalf("LastSeq %d", l.LastSeq())
	}
	checkDiskMatches(t, l, dir)
	checkRange(t, l, l.FirstSeq(), total, total, size)
}

// With the active segment cut back to nothing at Open, retention must still
// keep the newest records: LastSeq is where the publisher resumes.
func TestRetentionKeepsLastRecords(t *testing.T) {
	dir, o := tornLog(t, 37) // segments 1, 19, 37 (one record)
	os.Truncate(lastSegment(t, dir), 100)
	o.RetainAge = time.Nanosecond
	o.RetainMessages = 1
	o.Now = func() time.Time { return t0.Add(1000 * time.Hour) }
	l := mustOpen(t, o)
	if l.FirstSeq() != 19 || l.LastSeq() != 36 {
		t.Fatalf("first %d last %d, want 19 36", l.FirstSeq(), l.LastSeq())
	}
	checkRange(t, l, 19, 36, 36, 200)
	appendN(t, l, 37, 1, 200, 1)
	if l.FirstSeq() != 37 || l.LastSeq() != 37 {
		t.Fatalf("first %d last %d, want 37 37", l.FirstSeq(), l.LastSeq())
	}
	checkDiskMatches(t, l, dir)
}
