package bench

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// The disk's own limit: what one durable append of a record costs on the
// filesystem the owners' logs are on, measured in the same run as the
// pipeline, so that the pipeline's tail latency is judged against this
// machine's disk at that hour and not against a figure from another day
// (issue 26: on a shared 2-core machine the disk's p99 moves from 0.2 ms
// to several ms with the load).

// DiskOptions configures MeasureDisk. Zero values take the defaults named
// on each field.
type DiskOptions struct {
	// Dir is where the probe files are made (and removed); it must be on
	// the filesystem being measured. Required.
	Dir string
	// Samples is how many appends each way is timed; default 2000.
	Samples int
	// RecordBytes is the size of one append; default 120, about one of the
	// pipeline's readings in its log.
	RecordBytes int
}

// DiskResult is what MeasureDisk measured, in milliseconds.
type DiskResult struct {
	Dir         string `json:"dir"`
	Samples     int    `json:"samples"`
	RecordBytes int    `json:"record_bytes"`
	// AppendFsync: a record appended to a file that grows (O_APPEND), then
	// fsync: the file's size changes with every record, so the fsync also
	// writes the inode (and on ext4 a journal commit).
	AppendFsync Percentiles `json:"append_fsync"`
	// PreallocFdatasync: a record written into a file zero-filled and
	// fsynced ahead of use, then fdatasync: nothing but the data block is
	// flushed, which is what PostgreSQL's and etcd's preallocated WAL
	// segments buy.
	PreallocFdatasync Percentiles `json:"prealloc_fdatasync"`
	// LimitP99Ms is the disk's own p99 for one durable append: the lower
	// p99 of the two ways, the best a log on this disk can do. The
	// pipeline's targets are stated against it.
	LimitP99Ms float64 `json:"limit_p99_ms"`
	// Limit names the way LimitP99Ms comes from: "append_fsync" or
	// "prealloc_fdatasync".
	Limit string `json:"limit"`
}

// Percentiles of a set of latencies, in milliseconds.
type Percentiles struct {
	P50Ms float64 `json:"p50_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

// percentilesOf summarises samples (ms).
func percentilesOf(samples []float64) Percentiles {
	q := quantiles(samples, 0.5, 0.99, 1)
	return Percentiles{P50Ms: q[0], P99Ms: q[1], MaxMs: q[2]}
}

// quantiles returns the samples' quantiles at each of ps (0 ≤ p ≤ 1) by
// the nearest rank below, the element at index ⌊p·n⌋ of the sorted
// samples (the last for p = 1): with 2000 samples p99 is the 21st
// largest. Every latency figure of the bench is taken this way. samples is
// not modified; an empty set gives NaN, which no caller reports: a set
// without samples fails the run first.
func quantiles(samples []float64, ps ...float64) []float64 {
	out := make([]float64, len(ps))
	if len(samples) == 0 {
		for i := range out {
			out[i] = math.NaN()
		}
		return out
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	for i, p := range ps {
		out[i] = s[min(len(s)-1, max(0, int(p*float64(len(s)))))]
	}
	return out
}

// MeasureDisk times o.Samples durable appends of o.RecordBytes each way
// (see DiskResult) in files it makes in o.Dir and removes. The two ways
// alternate append by append, so that a change in the machine's load
// during the measurement lands on both alike.
func MeasureDisk(ctx context.Context, o DiskOptions) (DiskResult, error) {
	if o.Dir == "" {
		return DiskResult{}, fmt.Errorf("measuring the disk: no directory")
	}
	if o.Samples <= 0 {
		o.Samples = 2000
	}
	if o.RecordBytes <= 0 {
		o.RecordBytes = 120
	}
	dir, err := os.MkdirTemp(o.Dir, "disk-probe-")
	if err != nil {
		return DiskResult{}, fmt.Errorf("measuring the disk: %w", err)
	}
	defer os.RemoveAll(dir)

	grow, err := os.OpenFile(filepath.Join(dir, "append"), os.O_WRONLY|os.O_CREATE|os.O_APPEND|os.O_EXCL, 0o600)
	if err != nil {
		return DiskResult{}, fmt.Errorf("measuring the disk: creating the append file: %w", err)
	}
	defer grow.Close()
	pre, err := preallocated(filepath.Join(dir, "prealloc"), int64(o.Samples*o.RecordBytes))
	if err != nil {
		return DiskResult{}, fmt.Errorf("measuring the disk: %w", err)
	}
	defer pre.Close()

	rec := make([]byte, o.RecordBytes)
	for i := range rec {
		rec[i] = byte('a' + i%26) // not zeros: a record the disk has to write
	}
	appendMs := make([]float64, 0, o.Samples)
	preMs := make([]float64, 0, o.Samples)
	for i := range o.Samples {
		if err := ctx.Err(); err != nil {
			return DiskResult{}, fmt.Errorf("measuring the disk: %w", err)
		}
		t := time.Now()
		if _, err := grow.Write(rec); err != nil {
			return DiskResult{}, fmt.Errorf("measuring the disk: appending: %w", err)
		}
		if err := grow.Sync(); err != nil {
			return DiskResult{}, fmt.Errorf("measuring the disk: fsync after an append: %w", err)
		}
		appendMs = append(appendMs, ms(time.Since(t)))

		t = time.Now()
		if _, err := pre.WriteAt(rec, int64(i*o.RecordBytes)); err != nil {
			return DiskResult{}, fmt.Errorf("measuring the disk: writing into the preallocated file: %w", err)
		}
		if err := fdatasync(pre); err != nil {
			return DiskResult{}, fmt.Errorf("measuring the disk: fdatasync of the preallocated file: %w", err)
		}
		preMs = append(preMs, ms(time.Since(t)))
	}
	res := DiskResult{Dir: o.Dir, Samples: o.Samples, RecordBytes: o.RecordBytes,
		AppendFsync: percentilesOf(appendMs), PreallocFdatasync: percentilesOf(preMs)}
	res.LimitP99Ms, res.Limit = res.PreallocFdatasync.P99Ms, "prealloc_fdatasync"
	if res.AppendFsync.P99Ms < res.LimitP99Ms {
		res.LimitP99Ms, res.Limit = res.AppendFsync.P99Ms, "append_fsync"
	}
	return res, nil
}

// preallocated creates path with size zero bytes written (not a hole, nor
// fallocate's unwritten extents, which a later write must still convert
// in the filesystem's metadata) and fsynced, and the directory entry
// fsynced: from then on a write inside it changes no metadata that
// fdatasync must flush.
func preallocated(path string, size int64) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating the preallocated file: %w", err)
	}
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(zeros)) {
		if _, err := f.Write(zeros[:min(int64(len(zeros)), size-off)]); err != nil {
			f.Close()
			return nil, fmt.Errorf("zero-filling the preallocated file: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, fmt.Errorf("fsync of the preallocated file: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("fsync of the probe directory: %w", err)
		}
	}
	return f, nil
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }
