package retainlog

import (
	"context"
	"fmt"
	"testing"
	"time"
)

func BenchmarkAppend(b *testing.B) {
	for _, p := range []FsyncPolicy{FsyncNever, FsyncInterval, FsyncAlways} {
		for _, batch := range []int{1, 100} {
			b.Run(fmt.Sprintf("fsync=%s/batch=%d", p, batch), func(b *testing.B) {
				o := DefaultOptions(b.TempDir())
				o.Fsync = p
				l, err := Open(o)
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				recs := mkRecs(1, batch, 200)
				now := time.Now()
				for i := range recs {
					recs[i].Time = now
				}
				b.SetBytes(int64(batch * EncodedLen(200)))
				b.ResetTimer()
				seq := uint64(1)
				for range b.N {
					for i := range recs {
						recs[i].Seq = seq + uint64(i)
					}
					if err := l.Append(recs...); err != nil {
						b.Fatal(err)
					}
					seq += uint64(batch)
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

func BenchmarkRead(b *testing.B) {
	const n = 100_000
	o := DefaultOptions(b.TempDir())
	o.Fsync = FsyncNever
	o.SegmentBytes = 8 << 20 // ~3 segments: includes crossing segment boundaries
	l, err := Open(o)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	for seq := uint64(1); seq <= n; seq += 1000 {
		if err := l.Append(mkRecs(seq, 1000, 200)...); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	var sum int
	b.SetBytes(n * int64(EncodedLen(200)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		got := 0
		if err := l.Read(ctx, 1, n, func(r Record) error {
			got++
			sum += len(r.Data)
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		if got != n {
			b.Fatalf("read %d records", got)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkReadOne is the gap-fill case: one record at a random position.
func BenchmarkReadOne(b *testing.B) {
	const n = 100_000
	o := DefaultOptions(b.TempDir())
	o.Fsync = FsyncNever
	l, err := Open(o)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	for seq := uint64(1); seq <= n; seq += 1000 {
		if err := l.Append(mkRecs(seq, 1000, 200)...); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	seq := uint64(1)
	for range b.N {
		seq = (seq*7919)%n + 1
		if err := l.Read(ctx, seq, seq, func(r Record) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
