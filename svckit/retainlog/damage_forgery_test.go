package retainlog

import (
	"bytes"
	"context"
	"testing"
)

// Found by a hostile review (each failed before the fix).

// An unchained candidate (the intact 6, followed by the damaged 7) and a
// later one with a lower sequence: a record-shaped payload at the end of
// 7's data, seq 5, "followed" by the end of the data. resync took the
// forged 5; the intact 6 was dropped, the log ended at 5 and the next
// append reused 6 (and 7, which the owner knew durable).
func TestForgedRecordAtTheEndDoesNotBeatAnIntactOne(t *testing.T) {
	dir := t.TempDir()
	o := testOptions(t, dir)
	o.Fsync = FsyncAlways
	l, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	forged := EncodeRecord(nil, Record{Seq: 5, Time: t0, Data: []byte("FORGED")})
	seven := Record{Seq: 7, Time: t0, Data: append([]byte("real message 7 / "), forged...)}
	for _, recs := range [][]Record{mkRecs(1, 6, 40), {seven}} {
		if err := l.Append(recs...); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	recLen := int64(EncodedLen(40))
	seg := lastSegment(t, dir)
	flipBit(t, seg, 3*recLen+3, 4) // 4's length field
	flipBit(t, seg, 4*recLen+5, 0) // 5's CRC
	flipBit(t, seg, 6*recLen+5, 0) // 7's CRC
	o.Durable = 7
	l = mustOpen(t, o)
	var served []string
	err = l.Read(context.Background(), 1, l.LastSeq(), func(r Record) error {
		s := string(rune('0' + r.Seq))
		if bytes.Equal(r.Data, []byte("FORGED")) {
			s += "(FORGED)"
		}
		served = append(served, s)
		return nil
	})
	t.Logf("LastSeq %d, damaged %v, served %v, err %v", l.LastSeq(), FormatRanges(l.DamagedRanges()), served, err)
	if l.LastSeq() != 7 {
		t.Errorf("LastSeq %d, want 7 (7 was durable; the next append reuses %d)", l.LastSeq(), l.LastSeq()+1)
	}
	for _, s := range served {
		if s == "5(FORGED)" || s == "6(FORGED)" {
			t.Errorf("forged record served: %v", served)
		}
	}
	if err := l.Append(Record{Seq: l.LastSeq() + 1, Time: t0, Data: []byte("new")}); err == nil && l.LastSeq() <= 7 {
		t.Errorf("append took seq %d, a sequence the log already had", l.LastSeq())
	}
}

// One bit flip in a record's length field (5's) that lands it on a
// record-shaped payload inside its own data: byOwnLength checked only that
// the record there was intact with sequence want+1, not what followed it.
// The forged 6 was served and the intact 6 dropped (a later resync wanted
// 7).
func TestLengthFlipOntoForgedRecord(t *testing.T) {
	dir := t.TempDir()
	o := testOptions(t, dir)
	o.Fsync = FsyncAlways
	l, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	forged := EncodeRecord(nil, Record{Seq: 6, Time: t0, Data: []byte("FORGED")}) // 30 bytes
	data := append(append(bytes.Repeat([]byte{'.'}, 48), forged...), '.', '.')    // 80 bytes: body 96
	for _, recs := range [][]Record{mkRecs(1, 4, 40), {{Seq: 5, Time: t0, Data: data}}, mkRecs(6, 3, 40)} {
		if err := l.Append(recs...); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	off5 := 4 * int64(EncodedLen(40))
	flipBit(t, lastSegment(t, dir), off5+3, 5) // 5's length 96 -> 64: points at the forged record
	o.Durable = 8
	l = mustOpen(t, o)
	var served []string
	err = l.Read(context.Background(), 1, 8, func(r Record) error {
		s := string(rune('0' + r.Seq))
		if bytes.Equal(r.Data, []byte("FORGED")) {
			s += "(FORGED)"
		}
		served = append(served, s)
		return nil
	})
	t.Logf("served %v, err %v", served, err)
	if FormatRanges(l.DamagedRanges()) != "5-5" || len(served) != 7 || served[4] != "6" {
		t.Errorf("want 1-4,6-8 served and 5 damaged; got %v, damaged %v", served, FormatRanges(l.DamagedRanges()))
	}
}
