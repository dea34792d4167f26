package retainlog

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/durable/crashfs"
)

// Cases a hostile review found (each failed before the fix named).

// Two flips two records apart in a sealed segment: the intact record
// between them is served; exactly the two are damaged. (Resync took only a
// candidate followed by an intact record: 21, followed by the damaged 22,
// was reported damaged.)
func TestTwoFlipsKeepTheRecordBetween(t *testing.T) {
	t.Parallel()
	const n, size = 60, 40
	recLen := int64(EncodedLen(size))
	base, o := damageLog(t, n, size, 16*recLen) // segments 1, 16, 31, 46
	dir := copyLog(t, base)
	segs := segmentFiles(t, dir)
	flipBit(t, segs[1], 4*recLen+5, 1) // 20
	flipBit(t, segs[1], 6*recLen+5, 1) // 22
	o.Dir = dir
	l := mustOpen(t, o)
	got, damaged := readSeqs(t, l, 16, 30, size)
	if FormatRanges(damaged) != "20-20,22-22" || len(got) != 13 {
		t.Fatalf("served %v, damaged %v; want all but 20 and 22", got, damaged)
	}
}

// The active segment with nothing known durable past 40: flips in 50 and in
// the last record, 52. 50 is damage (an intact record follows), 51 is kept,
// 52 is a torn tail (nothing follows, nobody knew it durable).
func TestActiveFlipsBeforeATornTail(t *testing.T) {
	t.Parallel()
	const n, size = 52, 40
	recLen := int64(EncodedLen(size))
	base, o := damageLog(t, n, size, 16*recLen) // active segment 46..52
	dir := copyLog(t, base)
	act := lastSegment(t, dir)
	flipBit(t, act, 4*recLen+5, 1) // 50
	flipBit(t, act, 6*recLen+5, 1) // 52
	o.Dir, o.Durable = dir, 40
	l := mustOpen(t, o)
	if l.LastSeq() != 51 || l.Recovery().TruncatedBytes != recLen {
		t.Fatalf("LastSeq %d, recovery %+v; want 51 kept and only 52 cut", l.LastSeq(), l.Recovery())
	}
	if got, damaged := readSeqs(t, l, 46, 51, size); FormatRanges(damaged) != "50-50" || len(got) != 5 {
		t.Fatalf("served %v, damaged %v", got, damaged)
	}
}

// One rotten record the owner knew durable (50), an intact one after it
// (51), and a torn write after that (52, the crash): 51 is kept, and the
// next append gets 52. (51 fell into the damaged tail, the log went on
// after 50, and the next append took 51 again: a reused sequence.)
func TestRotThenTornTailReusesNothing(t *testing.T) {
	t.Parallel()
	const n, size = 52, 40
	recLen := int64(EncodedLen(size))
	base, o := damageLog(t, n, size, 16*recLen)
	dir := copyLog(t, base)
	act := lastSegment(t, dir)
	flipBit(t, act, 4*recLen+5, 1)                        // 50 rots
	if err := os.Truncate(act, 6*recLen+10); err != nil { // 52 torn
		t.Fatal(err)
	}
	o.Dir, o.Durable = dir, 50
	l := mustOpen(t, o)
	if l.LastSeq() != 51 || FormatRanges(l.DamagedRanges()) != "50-50" {
		t.Fatalf("LastSeq %d, damaged %v; want 51 and 50-50", l.LastSeq(), l.DamagedRanges())
	}
	appendN(t, l, 52, 1, size, 1)
}

// A record whose data ends with an encoded record of its own sequence
// number: a flip in its CRC must not make the embedded bytes pass for it.
// (Resync accepted the embedded record, and Read served "FORGED" with no
// error.)
func TestEmbeddedRecordNotServed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	o := testOptions(t, dir)
	o.Fsync = FsyncAlways
	l, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	forged := EncodeRecord(nil, Record{Seq: 5, Time: t0, Data: []byte("FORGED")})
	for _, recs := range [][]Record{mkRecs(1, 4, 40), {{Seq: 5, Time: t0, Data: append([]byte("real message 5 / "), forged...)}}, mkRecs(6, 3, 40)} {
		if err := l.Append(recs...); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	flipBit(t, lastSegment(t, dir), 4*int64(EncodedLen(40))+5, 0) // record 5's CRC
	o.Durable = 8
	l = mustOpen(t, o)
	var served []uint64
	err = l.Read(context.Background(), 1, 8, func(r Record) error {
		if bytes.Equal(r.Data, []byte("FORGED")) {
			t.Errorf("record %d served with the embedded payload", r.Seq)
		}
		served = append(served, r.Seq)
		return nil
	})
	var de *DamagedError
	if !errors.As(err, &de) || FormatRanges(de.Ranges) != "5-5" || len(served) != 7 {
		t.Fatalf("served %v, error %v; want all but 5, 5 damaged", served, err)
	}
}

// A full disk and a damaged record in the oldest segment, whose quarantine
// copy cannot be written: retention still deletes it when its limits say
// so (the damaged bytes are copied once the removal made room), and
// appends go on. (Retention kept the segment, and every later one, for
// ever.)
func TestFullDiskDamageDoesNotBlockRetention(t *testing.T) {
	t.Parallel()
	c := crashfs.New()
	clk := &fakeClock{t: t0}
	o := testOptions(t, "/disk/log")
	o.FS, o.SegmentBytes, o.RetainAge, o.Now = c, 1024, time.Hour, clk.Now
	l := mustOpen(t, o)
	for s := uint64(1); s <= 100; s++ {
		if err := l.Append(Record{Seq: s, Time: t0, Data: payload(s, 40)}); err != nil {
			t.Fatal(err)
		}
	}
	segs, _ := listSegments(c, "/disk/log")
	f, err := c.OpenFile(segs[0].path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	f.ReadAt(b, 5)
	b[0] ^= 1
	f.WriteAt(b, 5) // an overwrite: costs no space
	f.Close()
	c.SetSpace(c.Used()) // the disk is full
	l.Read(context.Background(), 1, 100, func(Record) error { return nil })
	if d := l.Damaged(); len(d) != 1 || d[0].Quarantine != "" {
		t.Fatalf("Damaged() = %+v, want one run without a copy (the disk is full)", d)
	}
	clk.Set(t0.Add(2 * time.Hour)) // every sealed segment is past RetainAge
	l.EnforceRetention()
	if err := l.Append(Record{Seq: 101, Time: clk.Now(), Data: payload(101, 40)}); err != nil {
		t.Fatalf("append after retention: %v (first retained %d)", err, l.FirstSeq())
	}
	// The background goroutine removes the damaged segment and then copies
	// its damaged bytes.
	deadline := time.Now().Add(20 * time.Second)
	for {
		q, _ := c.ReadDir(filepath.Join("/disk/log", quarantineDir))
		if len(q) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("quarantine holds %d files, want the deleted segment's damaged bytes", len(q))
		}
		time.Sleep(10 * time.Millisecond) // polling the background goroutine with a deadline
	}
	if _, err := c.Stat(segs[0].path); err == nil {
		t.Fatalf("the damaged segment %s was not deleted", segs[0].path)
	}
}

// blockingReadFS blocks reads of segments opened read-only, once armed,
// until released: a failing disk retrying a bad sector.
type blockingReadFS struct {
	*crashfs.FS
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

type blockingReadFile struct {
	durable.File
	fs *blockingReadFS
}

func (b *blockingReadFS) OpenFile(name string, flag int, perm fs.FileMode) (durable.File, error) {
	f, err := b.FS.OpenFile(name, flag, perm)
	if err != nil || flag != os.O_RDONLY || !strings.HasSuffix(name, segSuffix) {
		return f, err
	}
	return blockingReadFile{f, b}, nil
}

func (f blockingReadFile) ReadAt(p []byte, off int64) (int, error) {
	if f.fs.armed.CompareAndSwap(true, false) {
		close(f.fs.entered)
		<-f.fs.release
	}
	return f.File.ReadAt(p, off)
}

// Retention of a segment whose damaged bytes have no quarantine copy reads
// them without the log's lock: appends go on while that read hangs. (They
// were read inside Append, under the lock: a slow read stalled every
// append; found by a hostile review.)
func TestUncopiedDamageReadOutsideTheLock(t *testing.T) {
	t.Parallel()
	c := &blockingReadFS{FS: crashfs.New(), entered: make(chan struct{}), release: make(chan struct{})}
	clk := &fakeClock{t: t0}
	o := testOptions(t, "/disk/log")
	o.FS, o.SegmentBytes, o.RetainAge, o.Now = c, 1024, time.Hour, clk.Now
	l := mustOpen(t, o)
	var once sync.Once
	unblock := func() { once.Do(func() { close(c.release) }) }
	t.Cleanup(unblock) // before the log's Close, which waits for the reader
	for s := uint64(1); s <= 100; s++ {
		if err := l.Append(Record{Seq: s, Time: t0, Data: payload(s, 40)}); err != nil {
			t.Fatal(err)
		}
	}
	segs, _ := listSegments(c.FS, "/disk/log")
	f, _ := c.FS.OpenFile(segs[0].path, os.O_RDWR, 0)
	b := make([]byte, 1)
	f.ReadAt(b, 5)
	b[0] ^= 1
	f.WriteAt(b, 5)
	f.Close()
	c.SetSpace(c.Used()) // the copy cannot be written when the damage is found
	l.Read(context.Background(), 1, 100, func(Record) error { return nil })
	c.SetSpace(-1)
	clk.Set(t0.Add(2 * time.Hour))
	c.armed.Store(true)
	// appendWithin appends seq and fails the test if that takes 20 s.
	appendWithin := func(seq uint64, what string) {
		done := make(chan error, 1)
		go func() { done <- l.Append(Record{Seq: seq, Time: clk.Now(), Data: payload(seq, 40)}) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal(what)
		}
	}
	appendWithin(101, "the append that ran retention waited for the read of damaged bytes")
	select {
	case <-c.entered: // the background goroutine is reading the damaged bytes, and hangs
	case <-time.After(20 * time.Second):
		t.Fatal("the damaged segment's bytes were never read for their copy")
	}
	appendWithin(102, "an append waited for the read of damaged bytes")
	unblock()
}
