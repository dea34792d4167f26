package retainlog

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/durable/crashfs"
)

// damageLog writes n records of size bytes in segments of segBytes, closes
// the log cleanly and returns its directory and options.
func damageLog(t *testing.T, n, size int, segBytes int64) (string, Options) {
	t.Helper()
	dir := t.TempDir()
	o := testOptions(t, dir)
	o.SegmentBytes = segBytes
	o.Fsync = FsyncAlways
	// Offsets and cuts to the byte: no preallocated zeros, whose extent
	// depends on when the background ran (TestZeroTailIsNotATornTail
	// has damage beside them).
	o.PreallocateBytes = 0
	l, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 1, n, size, 3)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, o
}

// copyLog copies the segment files of src into a new directory.
func copyLog(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	for _, p := range segmentFiles(t, src) {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(p)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// flipBit flips bit of the byte at off of path.
func flipBit(t *testing.T, path string, off int64, bit uint) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 1 << bit
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// readSeqs reads from..to and returns what was delivered (checked against
// mkRecs' content) and the damaged ranges reported.
func readSeqs(t *testing.T, l *Log, from, to uint64, size int) ([]uint64, [][2]uint64) {
	t.Helper()
	var got []uint64
	err := l.Read(context.Background(), from, to, func(r Record) error {
		if err := checkRecord(r, r.Seq, size); err != nil {
			return err
		}
		got = append(got, r.Seq)
		return nil
	})
	var de *DamagedError
	switch {
	case err == nil:
		return got, nil
	case errors.As(err, &de):
		return got, de.Ranges
	}
	t.Fatalf("Read(%d, %d): %v", from, to, err)
	return nil, nil
}

// A bit flipped anywhere in a cleanly closed log (every record durable, and
// known to be: Options.Durable) costs exactly the record holding it: Open
// truncates nothing, every other record is served, the damaged one is
// reported by its sequence number, kept in quarantine, and appends go on
// with the next sequence number. Every byte of the first, a middle and the
// last record of a sealed segment and of the active one is flipped, and a
// stride of bytes across the rest.
func TestBitFlipCostsOneRecord(t *testing.T) {
	t.Parallel()
	const n, size = 60, 40
	recLen := int64(EncodedLen(size))
	base, o := damageLog(t, n, size, 16*recLen) // segments of 15 records: 1, 16, 31, 46 (active)
	segs := segmentFiles(t, base)
	if len(segs) != 4 {
		t.Fatalf("%d segments, want 4", len(segs))
	}
	type pos struct {
		seg int
		off int64
	}
	// The bytes of records: the active segment holds preallocated
	// zeros after them, which are not records to damage.
	recBytes := func(i int) int64 {
		if i == len(segs)-1 {
			return int64(n+1-segBase(t, segs[i])) * recLen
		}
		return fileSize(t, segs[i])
	}
	var positions []pos
	for _, seg := range []int{1, 3} { // a sealed segment and the active one
		size := recBytes(seg)
		for _, rec := range []int64{0, 7, size/recLen - 1} {
			for b := range recLen {
				positions = append(positions, pos{seg, rec*recLen + b})
			}
		}
	}
	for seg := range segs {
		for off := int64(3); off < recBytes(seg); off += 29 {
			positions = append(positions, pos{seg, off})
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, p := range positions {
		bit := uint(rng.IntN(8))
		name := fmt.Sprintf("segment %d offset %d bit %d", p.seg, p.off, bit)
		dir := copyLog(t, base)
		segPath := filepath.Join(dir, filepath.Base(segs[p.seg]))
		before := fileSize(t, segPath)
		flipBit(t, segPath, p.off, bit)
		oo := o
		oo.Dir = dir
		oo.Durable = n
		l, err := Open(oo)
		if err != nil {
			t.Fatalf("%s: Open: %v", name, err)
		}
		if r := l.Recovery(); r != (Recovery{}) {
			t.Fatalf("%s: truncated %+v", name, r)
		}
		// Nothing cut.
		if got := fileSize(t, segPath); got != before {
			t.Fatalf("%s: segment is %d bytes after Open, was %d", name, got, before)
		}
		if l.LastSeq() != n {
			t.Fatalf("%s: LastSeq %d, want %d", name, l.LastSeq(), n)
		}
		wantSeq := segBase(t, segs[p.seg]) + uint64(p.off/recLen)
		got, damaged := readSeqs(t, l, 1, n, size)
		if len(damaged) != 1 || damaged[0] != [2]uint64{wantSeq, wantSeq} || len(got) != n-1 {
			t.Fatalf("%s: delivered %d records, damaged %v; want all but %d", name, len(got), damaged, wantSeq)
		}
		if d := l.Damaged(); len(d) != 1 || d[0].Quarantine == "" {
			t.Fatalf("%s: Damaged() = %+v, want one run with a quarantine copy", name, d)
		} else if q, err := os.ReadFile(d[0].Quarantine); err != nil || int64(len(q)) != d[0].Bytes {
			t.Fatalf("%s: quarantine copy: %d bytes, %v; want %d", name, len(q), err, d[0].Bytes)
		}
		// The stream goes on after the damage, never reusing a sequence.
		appendN(t, l, n+1, 2, size, 2)
		l.Close()
		l2, err := Open(oo)
		if err != nil {
			t.Fatalf("%s: reopen: %v", name, err)
		}
		if r := l2.Recovery(); r != (Recovery{}) || l2.LastSeq() != n+2 {
			t.Fatalf("%s: reopen: %+v, LastSeq %d", name, r, l2.LastSeq())
		}
		got, damaged = readSeqs(t, l2, 1, n+2, size)
		if len(damaged) != 1 || damaged[0] != [2]uint64{wantSeq, wantSeq} || len(got) != n+1 {
			t.Fatalf("%s: after reopen delivered %d, damaged %v", name, len(got), damaged)
		}
		l2.Close()
	}
	t.Logf("%d single-bit flips, each cost exactly its record", len(positions))
}

func segBase(t *testing.T, path string) uint64 {
	t.Helper()
	b, ok := parseSegmentName(filepath.Base(path))
	if !ok {
		t.Fatalf("not a segment: %s", path)
	}
	return b
}

// Without knowledge of what was durable, a bad last record is a torn tail
// (cut, with a copy kept) and a bad record with intact ones after it is
// damage (kept): the two are told apart by what follows.
func TestTornTailAndDamageToldApart(t *testing.T) {
	t.Parallel()
	const n, size = 20, 40
	recLen := int64(EncodedLen(size))
	base, o := damageLog(t, n, size, 1<<20) // one segment

	dir := copyLog(t, base)
	seg := lastSegment(t, dir)
	flipBit(t, seg, (n-1)*recLen+20, 3) // inside the last record
	o.Dir = dir
	l := mustOpen(t, o)
	r := l.Recovery()
	if r.TruncatedBytes != recLen || r.Copy == "" || l.LastSeq() != n-1 {
		t.Fatalf("last record: Recovery %+v, LastSeq %d", r, l.LastSeq())
	}
	if b, err := os.ReadFile(r.Copy); err != nil || int64(len(b)) != recLen {
		t.Fatalf("torn tail copy: %d bytes, %v", len(b), err)
	}
	l.Close()

	dir = copyLog(t, base)
	flipBit(t, lastSegment(t, dir), 10*recLen+20, 3) // record 11 of 20
	o.Dir = dir
	l = mustOpen(t, o)
	if r := l.Recovery(); r != (Recovery{}) || l.LastSeq() != n {
		t.Fatalf("middle record: Recovery %+v, LastSeq %d", r, l.LastSeq())
	}
	if got, damaged := readSeqs(t, l, 1, n, size); len(got) != n-1 || FormatRanges(damaged) != "11-11" {
		t.Fatalf("middle record: delivered %d, damaged %v", len(got), damaged)
	}
}

// Damage the owner knew was durable at the very end of the active segment
// (nothing intact follows it): the bytes stay, the log goes on after what
// the owner knew was durable, and the next append starts a new segment.
func TestDamagedTailKnownDurable(t *testing.T) {
	t.Parallel()
	const n, size = 20, 40
	recLen := int64(EncodedLen(size))
	dir, o := damageLog(t, n, size, 1<<20)
	seg := lastSegment(t, dir)
	flipBit(t, seg, (n-1)*recLen+30, 2) // inside record 20, the last
	before := fileSize(t, seg)
	// The owner knew of 22: the disk lost the last two records' bytes
	// altogether, and damaged the one before them.
	o.Durable = n + 2
	l := mustOpen(t, o)
	if r := l.Recovery(); r != (Recovery{}) || l.LastSeq() != n+2 || fileSize(t, seg) != before {
		t.Fatalf("Recovery %+v, LastSeq %d, size %d (was %d)", l.Recovery(), l.LastSeq(), fileSize(t, seg), before)
	}
	got, damaged := readSeqs(t, l, 1, n+2, size)
	if len(got) != n-1 || FormatRanges(damaged) != "20-22" {
		t.Fatalf("delivered %d, damaged %v; want 1-19 and 20-22 damaged", len(got), damaged)
	}
	appendN(t, l, n+3, 3, size, 3)
	if files := segmentFiles(t, dir); len(files) != 2 || filepath.Base(files[1]) != segmentName(n+3) {
		t.Fatalf("segments %v, want a new one at %d", files, n+3)
	}
	l.Close()
	l = mustOpen(t, o)
	if got, damaged := readSeqs(t, l, 1, n+5, size); len(got) != n+2 || FormatRanges(damaged) != "20-22" {
		t.Fatalf("after reopen: delivered %d, damaged %v", len(got), damaged)
	}
}

// The scrubber finds damage in a sealed segment before anyone reads it,
// and reports it through OnDamage.
func TestScrubberFindsDamage(t *testing.T) {
	t.Parallel()
	const n, size = 60, 40
	recLen := int64(EncodedLen(size))
	dir, o := damageLog(t, n, size, 16*recLen)
	flipBit(t, segmentFiles(t, dir)[1], 4*recLen+30, 5) // seq 20
	found := make(chan Damage, 4)
	o.ScrubRate = 64 << 20
	o.ScrubEvery = time.Hour
	o.OnDamage = func(d Damage) { found <- d }
	l := mustOpen(t, o)
	select {
	case d := <-found:
		if d.First != 20 || d.Last != 20 || d.Quarantine == "" {
			t.Fatalf("scrubber reported %+v", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the scrubber reported nothing")
	}
	deadline := time.Now().Add(30 * time.Second)
	for l.Stats().ScrubPasses == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no scrub pass finished (%d bytes read)", l.Stats().ScrubbedBytes)
		}
		time.Sleep(10 * time.Millisecond) // polling with a deadline
	}
	if rs := l.DamagedRanges(); FormatRanges(rs) != "20-20" {
		t.Fatalf("DamagedRanges %v", rs)
	}
}

// On a full disk, retention still frees what its limits allow (here by
// age, from the background goroutine: no append succeeds to trigger it),
// and appends then go on by themselves with the next sequence number.
func TestFullDiskRetentionFreesSpace(t *testing.T) {
	t.Parallel()
	fsys := crashfs.New()
	clock := &fakeClock{t: t0}
	o := testOptions(t, "/log")
	o.FS = fsys
	o.Fsync = FsyncAlways
	o.RetainAge = time.Hour
	o.Now = clock.Now
	l := mustOpen(t, o)
	appendN(t, l, 1, 60, 200, 3) // about four segments of 4 KiB
	fsys.SetSpace(fsys.Used())
	next := uint64(61)
	var err error
	// Fill what is left: of the active segment, and of the space the
	// background preallocation may have set aside before the disk was
	// declared full (the rest of the segment zero-filled, the next
	// segment's file prepared): up to about two segments of records.
	for range 200 {
		if err = l.Append(mkRecs(next, 1, 200)...); err != nil {
			break
		}
		next++
	}
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("append on a full disk: %v, want ENOSPC", err)
	}
	full := fsys.Used()
	clock.Set(t0.Add(3 * time.Hour)) // every sealed segment is now past RetainAge
	deadline := time.Now().Add(20 * time.Second)
	for fsys.Used() >= full {
		if time.Now().After(deadline) {
			t.Fatalf("retention freed nothing on the full disk: %d bytes used", fsys.Used())
		}
		time.Sleep(10 * time.Millisecond) // polling the background goroutine with a deadline
	}
	if err := l.Append(mkRecs(next, 1, 200)...); err != nil {
		t.Fatalf("append after retention freed space: %v", err)
	}
	if l.LastSeq() != next {
		t.Fatalf("LastSeq %d, want %d", l.LastSeq(), next)
	}
}
