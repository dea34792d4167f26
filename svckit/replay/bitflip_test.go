package replay

// Bit rot in the crash-point exploration's filesystem: after the owner
// workload (crash_test.go) ran to its end, or was stopped and its power cut
// at a crash point, one bit is flipped in a record the owner knew was
// durable (its state files cover it), in a sealed or the active segment.
// Then everything is reopened on what is left and crashRun.check runs with
// the flipped record expected as the only damage: no intact record lost, no
// sequence number reused, both consumers exact (the one that needs the
// damaged record recovers through the snapshot).

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/retainlog"
)

// crashRecord is one record of the owner's log in the crashfs.
type crashRecord struct {
	path     string
	off, len int64
	seq      uint64
	segment  int // index of its segment, oldest first
	active   bool
}

// crashRecords lists the records of the owner's log as the power cut left
// them.
func (r *crashRun) crashRecords() ([]crashRecord, error) {
	dir := filepath.Join(crashOwnerDir, "log")
	ents, err := r.c.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // stopped before the log existed
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".log") {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	var out []crashRecord
	for i, name := range names {
		path := filepath.Join(dir, name)
		b, err := durable.ReadFile(r.c, path)
		if err != nil {
			return nil, err
		}
		for off := 0; off < len(b); {
			rec, n, err := retainlog.DecodeRecord(b[off:])
			if err != nil {
				break // a torn tail: not a record the owner knew durable
			}
			out = append(out, crashRecord{path: path, off: int64(off), len: int64(n), seq: rec.Seq, segment: i, active: i == len(names)-1})
			off += n
		}
	}
	return out, nil
}

// flipBit flips bit of the byte at off of path, durably.
func (r *crashRun) flipBit(path string, off int64, bit uint) error {
	f, err := r.c.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		return err
	}
	b[0] ^= 1 << bit
	if _, err := f.WriteAt(b, off); err != nil {
		return err
	}
	return f.Sync()
}

// crashFlip is one bit to flip: in the rec-th record (counting from the
// oldest retained, clamped) at byte at (clamped to the record).
type crashFlip struct {
	rec int
	at  int64
	bit uint
}

func (r *crashRun) applyFlip(fl crashFlip, durableTo uint64) (crashRecord, bool, error) {
	recs, err := r.crashRecords()
	if err != nil {
		return crashRecord{}, false, err
	}
	recs = slices.DeleteFunc(recs, func(c crashRecord) bool { return c.seq > durableTo })
	if len(recs) == 0 {
		return crashRecord{}, false, nil
	}
	c := recs[min(fl.rec, len(recs)-1)]
	if err := r.flipBit(c.path, c.off+min(fl.at, c.len-1), fl.bit); err != nil {
		return crashRecord{}, false, err
	}
	return c, true, nil
}

// flipWorkload is crashWorkload without its last two checkpoints: the
// consumer restarted from its checkpoint then needs the last records, which
// the log still retains, so a damaged one among them is recovered through
// the snapshot.
func flipWorkload() []crashStep {
	steps := crashWorkload()
	var out []crashStep
	skip := 2
	for i := len(steps) - 1; i >= 0; i-- {
		if skip > 0 && steps[i].name == crashStepCheckpoint().name {
			skip--
			continue
		}
		out = append(out, steps[i])
	}
	slices.Reverse(out)
	return out
}

func TestBitFlipsOwnerTracker(t *testing.T) {
	t.Parallel()
	start := time.Now()
	// Every byte class of a record (length, CRC, seq, time, envelope) in
	// every retained record.
	var flips []crashFlip
	for rec := range 10 {
		for i, at := range []int64{0, 2, 3, 5, 9, 15, 20, 27, 40, 60, 74} {
			flips = append(flips, crashFlip{rec: rec, at: at, bit: uint(i+rec) % 8})
		}
	}
	type result struct {
		bad              []string
		rec              crashRecord
		skipped          bool
		sealed, inActive bool
	}
	results := make([]result, len(flips))
	var stats crashRecoveryStats
	var mu sync.Mutex
	work := make(chan int)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				var st crashRecoveryStats
				res := result{}
				r := newCrashRun(crashMode{name: "bit-flip", powerCut: true})
				r.runSteps(flipWorkload())
				if r.err != nil {
					res.bad = []string{fmt.Sprintf("the workload failed: %v", r.err)}
					results[i] = res
					continue
				}
				r.crash()
				c, ok, err := r.applyFlip(flips[i], ^uint64(0))
				switch {
				case err != nil:
					res.bad = []string{fmt.Sprintf("flipping: %v", err)}
				case !ok:
					res.skipped = true
				default:
					r.damaged = c.seq
					res.rec = c
					for _, v := range r.check(&st) {
						res.bad = append(res.bad, fmt.Sprintf("flip %+v in seq %d (%s at %d, active %v): %s", flips[i], c.seq, filepath.Base(c.path), c.off, c.active, v))
					}
				}
				results[i] = res
				mu.Lock()
				stats.replays += st.replays
				stats.snapshots += st.snapshots
				mu.Unlock()
			}
		}()
	}
	for i := range flips {
		work <- i
	}
	close(work)
	wg.Wait()
	var sealed, active int
	for _, res := range results {
		for _, v := range res.bad {
			t.Error(v)
		}
		if res.skipped {
			continue
		}
		if res.rec.active {
			active++
		} else {
			sealed++
		}
	}
	if sealed == 0 || active == 0 {
		t.Errorf("flips landed in %d sealed and %d active-segment records: both must be covered", sealed, active)
	}
	if stats.snapshots == 0 {
		t.Errorf("no consumer needed a snapshot: recovery of a damaged record is not exercised")
	}
	t.Logf("%d flips (%d in sealed segments, %d in the active one), each cost exactly its record; consumers recovered with %d replay and %d snapshot requests, in %v",
		len(flips), sealed, active, stats.replays, stats.snapshots, time.Since(start).Round(time.Millisecond))
}

// Power cut at a sample of crash points, then a bit flipped in a record the
// owner's state files say was durable (so it must be kept as damage, not
// cut as a torn tail).
func TestBitFlipsAfterCrashPoints(t *testing.T) {
	t.Parallel()
	full := newCrashRun(crashMode{name: "bit-flip-crash", powerCut: true})
	full.runSteps(crashWorkload())
	if full.err != nil {
		t.Fatal(full.err)
	}
	n := len(full.c.Trace())
	full.crash()
	var flipped, points int
	var stats crashRecoveryStats
	for k := 0; k <= n; k += 3 {
		r := newCrashRun(crashMode{name: "bit-flip-crash", powerCut: true})
		r.c.StopAfter(k)
		r.runSteps(crashWorkload())
		r.crash()
		points++
		mark, snap, err := crashReadState(r.c)
		if err != nil {
			t.Errorf("k=%d: state files: %v", k, err)
			continue
		}
		c, ok, err := r.applyFlip(crashFlip{rec: k % 7, at: int64(k % 75), bit: uint(k % 8)}, max(mark, snap))
		if err != nil {
			t.Fatalf("k=%d: flipping: %v", k, err)
		}
		if !ok {
			continue
		}
		flipped++
		r.damaged = c.seq
		for _, v := range r.check(&stats) {
			t.Errorf("k=%d, flip in seq %d (%s at %d): %s", k, c.seq, filepath.Base(c.path), c.off, v)
		}
	}
	if flipped < 10 {
		t.Errorf("only %d of %d crash points had a durable record to flip", flipped, points)
	}
	t.Logf("%d crash points, %d with a flipped durable record; %d replay and %d snapshot requests", points, flipped, stats.replays, stats.snapshots)
}
