package replay

import (
	"context"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/durable/crashfs"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/retainlog"
)

// serveOwner serves o's replay protocol and returns its instance.
func serveOwner(t *testing.T, o *Owner) discovery.Instance {
	t.Helper()
	mux := http.NewServeMux()
	NewServer("", o.o.Metrics, o).Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	return discovery.Instance{ID: "sensor-1", Address: host, Port: p, Tags: []string{OwnerTag(o.Stream())}}
}

// recordAt returns the offset of seq's record in the segment file at path.
func recordAt(t *testing.T, path string, seq uint64) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(b); {
		r, n, err := retainlog.DecodeRecord(b[off:])
		if err != nil {
			t.Fatalf("%s at %d: %v", path, off, err)
		}
		if r.Seq == seq {
			return int64(off)
		}
		off += n
	}
	t.Fatalf("seq %d not in %s", seq, path)
	return 0
}

func segments(t *testing.T, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "log", "*.log"))
	sort.Strings(m)
	return m
}

// One bit flipped in a sealed segment and one in the active segment of a
// cleanly stopped owner: it starts, truncates nothing, names the two
// damaged sequences (Status, the metric, the replay trailer), keeps every
// other record, and a consumer that needs them ends exact through the
// snapshot; new messages get new sequence numbers.
func TestOwnerBitRotRecoveredThroughSnapshot(t *testing.T) {
	dir := t.TempDir()
	lo := retainlog.DefaultOptions("")
	lo.SegmentBytes = 4096
	const n = 300
	open := func() (*Owner, *pipeline.ReadingFold, *Metrics) {
		fold := &pipeline.ReadingFold{}
		m := NewMetrics(prometheus.NewRegistry())
		o, err := OpenOwner(OwnerOptions{Stream: "rot", Dir: dir, Log: lo, ContentType: pipeline.ReadingType, Fold: fold,
			SnapshotInterval: 20 * time.Millisecond, Metrics: m}, ackAll{})
		if err != nil {
			t.Fatal(err)
		}
		return o, fold, m
	}
	o, _, _ := open()
	for i := 1; i <= n; i++ {
		if _, err := o.Publish(context.Background(), pipeline.MarshalReading(pipeline.Reading{Value: int64(i)}), ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Close(context.Background()); err != nil {
		t.Fatal(err)
	}

	segs := segments(t, dir)
	if len(segs) < 3 {
		t.Fatalf("%d segments, want a few", len(segs))
	}
	sizes := map[string]int64{}
	for _, p := range segs {
		fi, _ := os.Stat(p)
		sizes[p] = fi.Size()
	}
	flip := func(path string, seq uint64, at int64) {
		b, _ := os.ReadFile(path)
		b[recordAt(t, path, seq)+at] ^= 0x10
		os.WriteFile(path, b, 0o644)
	}
	sealedSeq, activeSeq := uint64(10), uint64(n-5)
	flip(segs[0], sealedSeq, 2)            // its length field
	flip(segs[len(segs)-1], activeSeq, 30) // its body

	o, fold, m := open()
	t.Cleanup(func() { o.Close(context.Background()) })
	for _, p := range segs {
		if fi, _ := os.Stat(p); fi.Size() != sizes[p] {
			t.Fatalf("%s is %d bytes, was %d: something was cut", p, fi.Size(), sizes[p])
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go o.Run(ctx)
	inst := serveOwner(t, o)

	// The replay serves all but the damaged two and names them.
	var got int
	_, err := Client{}.Replay(ctx, inst.Addr(), Request{Stream: "rot", From: 1, To: n}, func(envelope.Envelope, int) error { got++; return nil })
	var de *DamagedError
	if !errors.As(err, &de) || retainlog.FormatRanges(de.Ranges) != "10-10,295-295" || !errors.Is(err, ErrDamaged) {
		t.Fatalf("replay: %v, want damaged 10-10,295-295", err)
	}
	if got != n-2 {
		t.Fatalf("replay delivered %d frames, want %d", got, n-2)
	}
	waitFor(t, "the scrubber and reads to find both", func() bool {
		return retainlog.FormatRanges(o.Status().Damaged) == "10-10,295-295"
	})
	// A client from before damage was reported (no Svckit-Accept-Damaged)
	// gets 410 Gone for a range with known damage: it takes a snapshot.
	resp, err := http.Get("http://" + inst.Addr() + "/replay?stream=rot&from=1&to=300")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGone {
		t.Fatalf("legacy replay over damage: %s, want 410", resp.Status)
	}
	if v := metricValue(m.DamagedRecords.WithLabelValues("rot")); v != 2 {
		t.Fatalf("damaged records gauge %v, want 2", v)
	}
	if q, _ := filepath.Glob(filepath.Join(dir, "log", "quarantine", "*")); len(q) != 2 {
		t.Fatalf("quarantine holds %v, want the two damaged runs", q)
	}

	// A consumer that never saw the stream recovers it whole.
	st := newAppState()
	tr, err := NewTracker(st, TrackerOptions{Owners: staticOwners{inst}, GapGrace: 20 * time.Millisecond, TailInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	go tr.Run(ctx)
	waitFor(t, "the consumer at 300", func() bool {
		s := tr.Status()
		return len(s) == 1 && s[0].LastContiguous == n
	})
	for i := 1; i <= 10; i++ {
		seq, err := o.Publish(ctx, pipeline.MarshalReading(pipeline.Reading{Value: 7}), "")
		if err != nil || seq != n+uint64(i) {
			t.Fatalf("publish after damage: seq %d, %v; want %d", seq, err, n+i)
		}
	}
	waitFor(t, "the consumer at 310", func() bool { return tr.Status()[0].LastContiguous == n+10 })
	if a, b := st.m["rot"].Marshal(), fold.A.Marshal(); string(a) != string(b) {
		t.Fatalf("consumer state %s, owner fold %s", a, b)
	}
}

// A full disk stops the owner accepting messages (Publish fails with
// ErrNotAccepting, nothing is taken, Accepting says why, the metric counts
// it) while what it has is still served; once space is back it takes
// messages again by itself, with the next sequence number.
func TestOwnerNotAcceptingOnFullDisk(t *testing.T) {
	fsys := crashfs.New()
	lo := retainlog.DefaultOptions("")
	lo.SegmentBytes = 4096
	m := NewMetrics(prometheus.NewRegistry())
	o, err := OpenOwner(OwnerOptions{Stream: "full", Dir: "/data", Log: lo, ContentType: pipeline.ReadingType,
		Fold: &pipeline.ReadingFold{}, Metrics: m, FS: fsys}, ackAll{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close(context.Background())
	ctx := context.Background()
	publish := func() (uint64, error) {
		return o.Publish(ctx, pipeline.MarshalReading(pipeline.Reading{Value: 3}), "")
	}
	for range 50 {
		if _, err := publish(); err != nil {
			t.Fatal(err)
		}
	}
	fsys.SetSpace(fsys.Used())
	var refused int
	for range 200 { // enough to need a new segment
		seq, err := publish()
		if err == nil {
			continue
		}
		if seq != 0 || !errors.Is(err, ErrNotAccepting) || !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("publish on a full disk: seq %d, %v", seq, err)
		}
		refused++
	}
	if refused == 0 {
		t.Fatal("nothing was refused on a full disk")
	}
	if err := o.Accepting(); !errors.Is(err, ErrNotAccepting) || o.Status().NotAccepting == "" {
		t.Fatalf("Accepting() = %v, Status %+v", err, o.Status())
	}
	if v := metricValue(m.WriteFailures.WithLabelValues("full")); v != float64(refused) {
		t.Fatalf("write failures %v, want %d", v, refused)
	}
	last := o.Status().LastSeq
	var read int
	if err := o.Log().Read(ctx, 1, last, func(retainlog.Record) error { read++; return nil }); err != nil || uint64(read) != last {
		t.Fatalf("reading what it has: %d of %d, %v", read, last, err)
	}
	fsys.SetSpace(-1)
	seq, err := publish()
	if err != nil || seq != last+1 {
		t.Fatalf("after space came back: seq %d, %v; want %d", seq, err, last+1)
	}
	if err := o.Accepting(); err != nil {
		t.Fatalf("Accepting() after space came back: %v", err)
	}
}

// metricValue reads one gauge or counter.
func metricValue(c prometheus.Collector) float64 {
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	if err := (<-ch).Write(&m); err != nil {
		return -1
	}
	if m.Gauge != nil {
		return m.Gauge.GetValue()
	}
	return m.Counter.GetValue()
}

// A message the log refuses for what it is (too large), not for a failed
// write, is not a full disk: Publish fails, and the owner still accepts
// others.
func TestOwnerOversizedMessageIsNotAFullDisk(t *testing.T) {
	o, err := OpenOwner(OwnerOptions{Stream: "big", Dir: t.TempDir(), Log: retainlog.DefaultOptions("")}, ackAll{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close(context.Background())
	_, err = o.Publish(context.Background(), make([]byte, retainlog.MaxDataLen+1), "")
	if err == nil || errors.Is(err, ErrNotAccepting) {
		t.Fatalf("publishing an oversized message: %v, want an error that is not ErrNotAccepting", err)
	}
	if err := o.Accepting(); err != nil {
		t.Fatalf("Accepting() after an oversized message: %v", err)
	}
}

// An owner without a fold whose nsqd acknowledged nothing: its state files
// say nothing was published, but durable.seq says what was fsynced, so a
// bit flipped in its last record is damage, kept, not a torn tail cut and
// its sequence number given again.
func TestOwnerDurableSeqKeepsARottenLastRecord(t *testing.T) {
	dir := t.TempDir()
	lo := retainlog.DefaultOptions("")
	open := func() *Owner {
		o, err := OpenOwner(OwnerOptions{Stream: "nofold", Dir: dir, Log: lo}, silentPublisher{})
		if err != nil {
			t.Fatal(err)
		}
		return o
	}
	o := open()
	for range 20 {
		if _, err := o.Publish(context.Background(), []byte("reading"), ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "published.seq")); len(b) > 0 && string(b) != "0\n" {
		t.Fatalf("published.seq %q: nsqd acknowledged something", b)
	}
	seg := segments(t, dir)[0]
	b, _ := os.ReadFile(seg)
	b[recordAt(t, seg, 20)+30] ^= 0x08
	os.WriteFile(seg, b, 0o644)
	o = open()
	defer o.Close(context.Background())
	if st := o.Status(); st.LastSeq != 20 || retainlog.FormatRanges(st.Damaged) != "20-20" || o.Log().Recovery().TruncatedBytes != 0 {
		t.Fatalf("status %+v, recovery %+v; want 20 kept as damage", st, o.Log().Recovery())
	}
	if seq, err := o.Publish(context.Background(), []byte("next"), ""); err != nil || seq != 21 {
		t.Fatalf("next publish: %d, %v; want 21", seq, err)
	}
}

// failSyncFS fails every fsync of a file once fail is set.
type failSyncFS struct {
	durable.FS
	fail *atomic.Bool
}

func (f failSyncFS) OpenFile(name string, flag int, perm fs.FileMode) (durable.File, error) {
	file, err := f.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return failSyncFile{file, f.fail}, nil
}

type failSyncFile struct {
	durable.File
	fail *atomic.Bool
}

func (f failSyncFile) Sync() error {
	if f.fail.Load() {
		return &fs.PathError{Op: "fsync", Path: "log", Err: syscall.EIO}
	}
	return f.File.Sync()
}

// A failed fsync is not a full disk: it stays (the kernel may have dropped
// the pages), the owner refuses appends until a restart, and Accepting
// says so.
func TestOwnerFailedFsyncIsSticky(t *testing.T) {
	var fail atomic.Bool
	o, err := OpenOwner(OwnerOptions{Stream: "eio", Dir: t.TempDir(), Log: retainlog.DefaultOptions(""),
		FS: failSyncFS{durable.OS(), &fail}}, ackAll{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close(context.Background())
	if _, err := o.Publish(context.Background(), []byte("a"), ""); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	if _, err := o.Publish(context.Background(), []byte("b"), ""); err == nil {
		t.Fatal("publish with a failing fsync succeeded")
	}
	fail.Store(false)
	_, err = o.Publish(context.Background(), []byte("c"), "")
	if err == nil || errors.Is(err, ErrNotAccepting) {
		t.Fatalf("publish after a failed fsync: %v, want the sticky failure", err)
	}
	if err := o.Accepting(); err == nil || !strings.Contains(err.Error(), "restart") {
		t.Fatalf("Accepting() = %v, want the failed fsync", err)
	}
}

// A tracker whose checkpoint cannot be written (a full disk) keeps its
// state, says so in Ready, and writes the checkpoint once it can.
func TestTrackerCheckpointOnFullDisk(t *testing.T) {
	fsys := crashfs.New()
	st := newAppState()
	tr, err := NewTracker(st, TrackerOptions{CheckpointPath: "/app/checkpoint.json", FS: fsys, CheckpointInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	deliver := func(seq uint64) {
		env := envelope.Envelope{Stream: "cp", Seq: seq, ContentType: pipeline.ReadingType, Payload: pipeline.MarshalReading(pipeline.Reading{Value: int64(seq)})}
		if _, err := tr.Deliver(context.Background(), env); err != nil {
			t.Fatal(err)
		}
	}
	if err := durable.MkdirAll(fsys, "/app"); err != nil {
		t.Fatal(err)
	}
	deliver(1)
	if err := tr.Save(); err != nil {
		t.Fatal(err)
	}
	deliver(2)
	fsys.SetSpace(fsys.Used())
	if err := tr.Save(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Save on a full disk: %v, want ENOSPC", err)
	}
	if err := tr.Ready(); err == nil || !strings.Contains(err.Error(), "checkpoint not saved") {
		t.Fatalf("Ready() = %v, want the checkpoint failure", err)
	}
	deliver(3) // still applying, in memory
	if s := tr.Status(); len(s) != 1 || s[0].Applied != 3 {
		t.Fatalf("status %+v", s)
	}
	fsys.SetSpace(-1)
	if err := tr.Save(); err != nil {
		t.Fatalf("Save once space is back: %v", err)
	}
	if err := tr.Ready(); err != nil {
		t.Fatalf("Ready() after the save: %v", err)
	}
	tr2, err := NewTracker(newAppState(), TrackerOptions{CheckpointPath: "/app/checkpoint.json", FS: fsys})
	if err != nil {
		t.Fatal(err)
	}
	if s := tr2.Status(); len(s) != 1 || s[0].Applied != 3 {
		t.Fatalf("reloaded checkpoint %+v, want 3 applied", s)
	}
}
