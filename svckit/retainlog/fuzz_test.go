package retainlog

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func FuzzDecodeRecord(f *testing.F) {
	f.Add(EncodeRecord(nil, Record{Seq: 1, Time: t0, Data: []byte("hello")}))
	f.Add(EncodeRecord(nil, Record{Seq: 1 << 63, Time: t0}))
	f.Add([]byte{0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := DecodeRecord(b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("unexpected error class: %v", err)
			}
			if n != 0 {
				t.Fatalf("error with n = %d", n)
			}
			return
		}
		if n > len(b) || n != EncodedLen(len(r.Data)) {
			t.Fatalf("n = %d for %d bytes, %d data", n, len(b), len(r.Data))
		}
		// A record that decodes re-encodes to exactly the same bytes.
		if re := EncodeRecord(nil, r); !bytes.Equal(re, b[:n]) {
			t.Fatalf("re-encoding differs:\n%x\n%x", re, b[:n])
		}
	})
}

// FuzzOpenTail writes arbitrary bytes after valid records in the active
// segment: Open must succeed, keep every valid record, and serve nothing
// that is not a valid continuation; what it does not serve in 1..LastSeq
// it reports as damaged (bytes followed by an intact continuation are
// damage, kept, not a torn tail).
func FuzzOpenTail(f *testing.F) {
	const good = 3
	valid := func(seq uint64) []byte { return EncodeRecord(nil, mkRecs(seq, 1, 20)[0]) }
	f.Add([]byte{})
	f.Add([]byte{0xde, 0xad})
	f.Add(valid(good + 1))
	f.Add(append(valid(good+1), valid(good + 2)[:10]...))
	f.Add(valid(good + 2))
	f.Add(valid(good)[:30])
	f.Add(bytes.Repeat([]byte{0}, 64))
	f.Add([]byte{0x03, 0xff, 0xff, 0xff, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, tail []byte) {
		dir := t.TempDir()
		var seg []byte
		for seq := uint64(1); seq <= good; seq++ {
			seg = append(seg, valid(seq)...)
		}
		seg = append(seg, tail...)
		path := filepath.Join(dir, segmentName(1))
		if err := os.WriteFile(path, seg, 0o644); err != nil {
			t.Fatal(err)
		}
		o := testOptions(t, dir)
		l, err := Open(o)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer l.Close()
		last := l.LastSeq()
		if l.FirstSeq() != 1 || last < good {
			t.Fatalf("first %d last %d", l.FirstSeq(), last)
		}
		rec := l.Recovery()
		if fileSize(t, path)+rec.TruncatedBytes != int64(len(seg)) {
			t.Fatalf("size %d + truncated %d != %d", fileSize(t, path), rec.TruncatedBytes, len(seg))
		}
		var got []uint64
		err = l.Read(context.Background(), 1, last, func(r Record) error {
			if n := len(got); n > 0 && r.Seq <= got[n-1] {
				t.Fatalf("seq %d after %d", r.Seq, got[n-1])
			}
			if r.Seq <= good {
				if err := checkRecord(r, r.Seq, 20); err != nil {
					t.Fatal(err)
				}
			}
			got = append(got, r.Seq)
			return nil
		})
		var damaged *DamagedError
		if err != nil && !errors.As(err, &damaged) {
			t.Fatalf("Read: %v", err)
		}
		// Delivered and damaged together are exactly 1..last.
		seen := map[uint64]bool{}
		for _, s := range got {
			seen[s] = true
		}
		if damaged != nil {
			for _, r := range damaged.Ranges {
				for s := r[0]; s <= r[1]; s++ {
					if seen[s] || s <= good {
						t.Fatalf("seq %d reported damaged (delivered or intact): %v", s, damaged.Ranges)
					}
					seen[s] = true
				}
			}
		}
		for s := uint64(1); s <= last; s++ {
			if !seen[s] {
				t.Fatalf("seq %d neither delivered nor reported damaged (got %v, err %v)", s, got, err)
			}
		}
		if len(got) == 0 || got[len(got)-1] != last {
			t.Fatalf("last delivered %v, LastSeq %d: the log must end at an intact record", got, last)
		}
		if err := l.Append(mkRecs(last+1, 1, 20)...); err != nil {
			t.Fatalf("Append after recovery: %v", err)
		}
		l.Close()
		l2, err := Open(o)
		if err != nil {
			t.Fatalf("reopen: %v", err)
		}
		defer l2.Close()
		if r := l2.Recovery(); r != (Recovery{}) {
			t.Fatalf("reopen after repair reported %+v", r)
		}
		if l2.LastSeq() != last+1 {
			t.Fatalf("reopen LastSeq %d, want %d", l2.LastSeq(), last+1)
		}
	})
}
