package bench

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// TestDiskQuantilesNearestRankBelow: the element at ⌊p·n⌋ of the sorted
// samples, the last for p = 1, the samples left as they were, NaN for
// none. The figures of every latency in the bench come from it.
func TestDiskQuantilesNearestRankBelow(t *testing.T) {
	var s []float64
	for i := 100; i >= 1; i-- { // 100 … 1: unsorted on purpose
		s = append(s, float64(i))
	}
	orig := slices.Clone(s)
	got := quantiles(s, 0, 0.5, 0.99, 0.999, 1)
	if want := []float64{1, 51, 100, 100, 100}; !slices.Equal(got, want) {
		t.Errorf("quantiles of 1..100 at 0, .5, .99, .999, 1 = %v; want %v", got, want)
	}
	if !slices.Equal(s, orig) {
		t.Error("quantiles sorted its argument in place: a caller's samples must stay as they were")
	}
	// 2000 samples, as the disk's: p99 is the 21st largest, not the 20th.
	s = s[:0]
	for i := 1; i <= 2000; i++ {
		s = append(s, float64(i))
	}
	if got := quantiles(s, 0.99)[0]; got != 1981 {
		t.Errorf("p99 of 1..2000 = %v; want 1981 (index 1980)", got)
	}
	if got := quantiles([]float64{7}, 0.5, 0.99); !slices.Equal(got, []float64{7, 7}) {
		t.Errorf("quantiles of one sample = %v; want it at every p", got)
	}
	if got := quantiles(nil, 0.5); !math.IsNaN(got[0]) {
		t.Errorf("quantiles of no samples = %v; want NaN", got)
	}
	p := percentilesOf([]float64{3, 1, 2})
	if p.P50Ms != 2 || p.P99Ms != 3 || p.MaxMs != 3 {
		t.Errorf("percentilesOf(3, 1, 2) = %+v; want p50 2, p99 3, max 3", p)
	}
}

// TestMeasureDiskReportsAndCleansUp runs the disk measurement for a few
// samples: what it reports is consistent (ordered percentiles, the limit
// the lower p99 of the two ways and named as such), and it leaves nothing
// behind. How fast the disk is is never asserted: figures belong to
// docs/benchmarks.md.
func TestMeasureDiskReportsAndCleansUp(t *testing.T) {
	dir := t.TempDir()
	d, err := MeasureDisk(context.Background(), DiskOptions{Dir: dir, Samples: 25})
	if err != nil {
		t.Fatal(err)
	}
	if d.Dir != dir || d.Samples != 25 || d.RecordBytes != 120 {
		t.Errorf("MeasureDisk = dir %q, %d samples of %d bytes; want %q, 25, 120 (the default)", d.Dir, d.Samples, d.RecordBytes, dir)
	}
	for name, p := range map[string]Percentiles{"append_fsync": d.AppendFsync, "prealloc_fdatasync": d.PreallocFdatasync} {
		if !(p.P50Ms >= 0 && p.P50Ms <= p.P99Ms && p.P99Ms <= p.MaxMs) {
			t.Errorf("%s = %+v; want 0 <= p50 <= p99 <= max", name, p)
		}
	}
	switch want := min(d.AppendFsync.P99Ms, d.PreallocFdatasync.P99Ms); {
	case d.LimitP99Ms != want:
		t.Errorf("limit_p99_ms = %v; want the lower p99 of the two ways, %v", d.LimitP99Ms, want)
	case d.Limit == "append_fsync" && d.LimitP99Ms != d.AppendFsync.P99Ms,
		d.Limit == "prealloc_fdatasync" && d.LimitP99Ms != d.PreallocFdatasync.P99Ms,
		d.Limit != "append_fsync" && d.Limit != "prealloc_fdatasync":
		t.Errorf("limit %q does not name the way limit_p99_ms (%v) comes from", d.Limit, d.LimitP99Ms)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("MeasureDisk left %d entries in %s: its probe files must go", len(left), dir)
	}
}

// TestDiskPreallocatedIsZeroFilled: the preallocated file is written, not
// sparse: its size and every byte a zero, its blocks allocated.
func TestDiskPreallocatedIsZeroFilled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prealloc")
	const size = 3<<20 + 120 // more than one of its 1 MiB writes, and not a multiple
	f, err := preallocated(path, size)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != size {
		t.Fatalf("preallocated file of %d bytes; want %d", len(b), size)
	}
	if i := slices.IndexFunc(b, func(c byte) bool { return c != 0 }); i >= 0 {
		t.Fatalf("byte %d of the preallocated file is %d; want zeros", i, b[i])
	}
	if _, err := preallocated(path, 1); err == nil {
		t.Error("preallocated over an existing file succeeded; it must make a new one")
	}
}

// TestMeasureDiskStopsWithItsContext: an ended context ends the
// measurement with its error, and the probe files still go.
func TestMeasureDiskStopsWithItsContext(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := MeasureDisk(ctx, DiskOptions{Dir: dir, Samples: 10}); !errors.Is(err, context.Canceled) {
		t.Errorf("MeasureDisk with a cancelled context: %v; want context.Canceled", err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("MeasureDisk left %d entries in %s", len(left), dir)
	}
	if _, err := MeasureDisk(context.Background(), DiskOptions{}); err == nil {
		t.Error("MeasureDisk without a directory succeeded")
	}
}
