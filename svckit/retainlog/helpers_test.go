package retainlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"
)

// t0 is the base of record times in tests; record seq s has time t0+s seconds.
var t0 = time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)

// payload returns the deterministic data of record seq, size bytes long.
func payload(seq uint64, size int) []byte {
	b := make([]byte, size)
	for i := range b {
		b[i] = byte(seq*31 + uint64(i)*7)
	}
	if size >= 8 {
		binary.BigEndian.PutUint64(b, seq)
	}
	return b
}

func mkRecs(from uint64, n, size int) []Record {
	recs := make([]Record, n)
	for i := range recs {
		seq := from + uint64(i)
		recs[i] = Record{Seq: seq, Time: t0.Add(time.Duration(seq) * time.Second), Data: payload(seq, size)}
	}
	return recs
}

func testOptions(t testing.TB, dir string) Options {
	o := DefaultOptions(dir)
	o.SegmentBytes = 4096
	o.Fsync = FsyncNever
	// No scrubber unless a test wants one: its reference on the segment it
	// reads defers retention's unlink, which tests count files to see.
	o.ScrubRate = 0
	return o
}

func mustOpen(t testing.TB, o Options) *Log {
	t.Helper()
	l, err := Open(o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// appendN appends n records of size bytes starting at from, in batches.
func appendN(t testing.TB, l *Log, from uint64, n, size, batch int) {
	t.Helper()
	for i := 0; i < n; i += batch {
		k := min(batch, n-i)
		if err := l.Append(mkRecs(from+uint64(i), k, size)...); err != nil {
			t.Fatalf("Append(%d..): %v", from+uint64(i), err)
		}
	}
}

// readAll returns copies of the records in from..to.
func readAll(l *Log, from, to uint64) ([]Record, error) {
	var out []Record
	err := l.Read(context.Background(), from, to, func(r Record) error {
		r.Data = bytes.Clone(r.Data)
		out = append(out, r)
		return nil
	})
	return out, err
}

// checkRange asserts that Read(from, to) returns exactly want records
// from..wantTo with the content mkRecs gives them.
func checkRange(t testing.TB, l *Log, from, to, wantTo uint64, size int) {
	t.Helper()
	got, err := readAll(l, from, to)
	if err != nil {
		t.Fatalf("Read(%d, %d): %v", from, to, err)
	}
	if want := int(wantTo - from + 1); len(got) != want {
		t.Fatalf("Read(%d, %d): got %d records, want %d", from, to, len(got), want)
	}
	for i, r := range got {
		seq := from + uint64(i)
		if err := checkRecord(r, seq, size); err != nil {
			t.Fatalf("Read(%d, %d): %v", from, to, err)
		}
	}
}

func checkRecord(r Record, seq uint64, size int) error {
	if r.Seq != seq {
		return fmt.Errorf("record seq %d, want %d", r.Seq, seq)
	}
	if !r.Time.Equal(t0.Add(time.Duration(seq) * time.Second)) {
		return fmt.Errorf("record %d time %v", seq, r.Time)
	}
	if !bytes.Equal(r.Data, payload(seq, size)) {
		return fmt.Errorf("record %d data mismatch", seq)
	}
	return nil
}

// segmentFiles lists the *.log files in dir, sorted.
func segmentFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.log"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(m)
	return m
}

func lastSegment(t testing.TB, dir string) string {
	t.Helper()
	files := segmentFiles(t, dir)
	if len(files) == 0 {
		t.Fatal("no segment files")
	}
	return files[len(files)-1]
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func wantErr(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error = %v, want %v", err, target)
	}
}

// fakeClock is an injectable clock; the background goroutine reads it too,
// hence the mutex.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}
