package replay

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/retainlog"
)

// ackAll is a PumpPublisher that acknowledges at once. These tests are about
// the replay protocol between an owner and a tracker; delivery through real
// nsqd is covered by the e2e tests.
type ackAll struct{}

func (ackAll) PublishAsync(_ context.Context, _ []byte, done func(error)) { done(nil) }
func (ackAll) Close(context.Context) error                                { return nil }

// staticOwners is a fixed owner set standing in for the Consul watcher.
type staticOwners []discovery.Instance

func (s staticOwners) Instances() []discovery.Instance { return s }
func (s staticOwners) Service() string                 { return "sensor" }

// appState is a minimal Applier: the reference pipeline's aggregate over
// readings, so snapshots map onto it directly.
type appState struct {
	mu sync.Mutex
	m  map[string]*pipeline.Aggregate
}

func newAppState() *appState { return &appState{m: map[string]*pipeline.Aggregate{}} }

func (a *appState) get(s string) *pipeline.Aggregate {
	if a.m[s] == nil {
		a.m[s] = &pipeline.Aggregate{}
	}
	return a.m[s]
}
func (a *appState) Apply(stream string, env envelope.Envelope) error {
	r, err := pipeline.UnmarshalReading(env.Payload)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.get(stream).Add(env.Seq, r)
	a.mu.Unlock()
	return nil
}
func (a *appState) ApplySnapshot(stream string, _ uint64, st []byte) error {
	agg, err := pipeline.UnmarshalAggregate(st)
	a.mu.Lock()
	*a.get(stream) = agg
	a.mu.Unlock()
	return err
}
func (a *appState) ExportState(stream string) ([]byte, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.get(stream).Marshal(), nil
}
func (a *appState) ImportState(stream string, b []byte) error { return a.ApplySnapshot(stream, 0, b) }

type fixture struct {
	owner *Owner
	fold  *pipeline.ReadingFold
	srv   *httptest.Server
	inst  discovery.Instance
}

func newOwner(t testing.TB, stream string, lo retainlog.Options, secret string) *fixture {
	return newOwnerFold(t, stream, lo, secret, &pipeline.ReadingFold{})
}

func newOwnerFold(t testing.TB, stream string, lo retainlog.Options, secret string, fold *pipeline.ReadingFold) *fixture {
	t.Helper()
	f := &fixture{fold: fold}
	var of Fold
	if fold != nil {
		of = fold
	}
	o, err := OpenOwner(OwnerOptions{Stream: stream, Dir: t.TempDir(), Log: lo, ContentType: pipeline.ReadingType, Fold: of,
		SnapshotInterval: 20 * time.Millisecond}, ackAll{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); o.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-ran; o.Close(context.Background()) })
	f.owner = o
	mux := http.NewServeMux()
	NewServer(secret, o.o.Metrics, o).Register(mux)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	host, port, _ := net.SplitHostPort(f.srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	f.inst = discovery.Instance{ID: "sensor-1", Address: host, Port: p, Tags: []string{OwnerTag(stream)}}
	return f
}

func (f *fixture) publish(t testing.TB, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if _, err := f.owner.Publish(context.Background(), pipeline.MarshalReading(pipeline.Reading{Value: int64(i%1000 + 1)}), ""); err != nil {
			t.Fatal(err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

func TestTrackerRecoversGapAndTail(t *testing.T) {
	f := newOwner(t, "s1", retainlog.DefaultOptions(""), "")
	f.publish(t, 500)
	st := newAppState()
	tr, err := NewTracker(st, TrackerOptions{Owners: staticOwners{f.inst}, GapGrace: 50 * time.Millisecond, TailInterval: 100 * time.Millisecond, MaxBatch: 64})
	if err != nil {
		t.Fatal(err)
	}
	// Live delivery of a few messages only: 10 and 20..30.
	deliver := func(seq uint64) {
		var env envelope.Envelope
		f.owner.Log().Read(context.Background(), seq, seq, func(r retainlog.Record) error {
			env, err = envelope.Decode(append([]byte(nil), r.Data...))
			return err
		})
		if _, err := tr.Deliver(context.Background(), env); err != nil {
			t.Fatal(err)
		}
	}
	deliver(10)
	for s := uint64(20); s <= 30; s++ {
		deliver(s)
	}
	deliver(25) // a duplicate
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tr.Run(ctx)
	waitFor(t, "all 500 applied", func() bool {
		s := tr.Status()
		return len(s) == 1 && s[0].Applied == 500 && s[0].LastContiguous == 500
	})
	s := tr.Status()[0]
	if s.Duplicates < 1 || len(s.Gaps) != 0 || s.LagMessages != 0 || s.LagSeconds != 0 || s.LastError != "" {
		t.Fatalf("status %+v", s)
	}
	waitFor(t, "the recovery to end", func() bool { return tr.Status()[0].Replay == nil })
	waitFor(t, "the lag metric at 0", func() bool { return gaugeValue(tr.o.Metrics.LagMessages.WithLabelValues("s1")) == 0 })
	if got, want := st.m["s1"].Marshal(), f.fold.A.Marshal(); string(got) != string(want) {
		t.Fatalf("state %s, owner fold %s", got, want)
	}
}

func TestTrackerSnapshotWhenTrimmed(t *testing.T) {
	lo := retainlog.DefaultOptions("")
	lo.SegmentBytes = 4096
	lo.RetainMessages = 50
	f := newOwner(t, "s2", lo, "")
	f.publish(t, 1000)
	// Retention keeps what nsqd has not acknowledged: wait for the pump's
	// answers to be saved, then publish more so that retention runs.
	waitFor(t, "the watermark to pass 1000", func() bool {
		b, _ := os.ReadFile(filepath.Join(f.owner.o.Dir, "published.seq"))
		return strings.TrimSpace(string(b)) == "1000"
	})
	f.publish(t, 1000)
	waitFor(t, "retention to trim", func() bool { return f.owner.Log().FirstSeq() > 1 })
	st := newAppState()
	tr, _ := NewTracker(st, TrackerOptions{Owners: staticOwners{f.inst}, GapGrace: 20 * time.Millisecond, TailInterval: 50 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tr.Run(ctx)
	waitFor(t, "recovered to 2000", func() bool {
		s := tr.Status()
		return len(s) == 1 && s[0].LastContiguous == 2000
	})
	f.publish(t, 100) // more after the snapshot arrive by replay of the tail
	waitFor(t, "2100 applied", func() bool { return tr.Status()[0].Applied == 2100 })
	if got, want := st.m["s2"].Marshal(), f.fold.A.Marshal(); string(got) != string(want) {
		t.Fatalf("state %s, owner fold %s", got, want)
	}
}

func TestServerErrors(t *testing.T) {
	f := newOwner(t, "s3", retainlog.DefaultOptions(""), "sesame")
	f.publish(t, 10)
	c := Client{Secret: "sesame"}
	addr := f.inst.Addr()
	nop := func(envelope.Envelope, int) error { return nil }
	if _, err := c.Replay(context.Background(), addr, Request{Stream: "s3", From: 11, To: 20}, nop); !errors.Is(err, ErrNeverHad) {
		t.Fatalf("beyond last: %v", err)
	}
	if _, err := c.Replay(context.Background(), addr, Request{Stream: "nope", From: 1, To: 2}, nop); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unknown stream: %v", err)
	}
	if _, err := (Client{Secret: "wrong"}).Replay(context.Background(), addr, Request{Stream: "s3", From: 1, To: 2}, nop); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("wrong secret: %v", err)
	}
	if _, err := (Client{}).Replay(context.Background(), addr, Request{Stream: "s3", From: 1, To: 2}, nop); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("no secret: %v", err)
	}
	n, err := c.Replay(context.Background(), addr, Request{Stream: "s3", From: 3, To: 7}, nop)
	if err != nil || n != 5 {
		t.Fatalf("range: %d %v", n, err)
	}
	n, err = c.Replay(context.Background(), addr, Request{Stream: "s3", Since: time.Now().Add(-time.Hour)}, nop)
	if err != nil || n != 10 {
		t.Fatalf("since: %d %v", n, err)
	}
}

func TestOwnerRestartContinuesSequenceAndFold(t *testing.T) {
	dir := t.TempDir()
	open := func() (*Owner, *pipeline.ReadingFold) {
		fold := &pipeline.ReadingFold{}
		o, err := OpenOwner(OwnerOptions{Stream: "s4", Dir: dir, Log: retainlog.DefaultOptions(""), Fold: fold}, ackAll{})
		if err != nil {
			t.Fatal(err)
		}
		return o, fold
	}
	o, fold := open()
	for i := 1; i <= 100; i++ {
		o.Publish(context.Background(), pipeline.MarshalReading(pipeline.Reading{Value: int64(i)}), "")
	}
	want := fold.A
	// No Close: as after SIGKILL, only the log (written through) survives;
	// the fold must be rebuilt from it.
	o.log.Close()
	o2, fold2 := open()
	defer o2.Close(context.Background())
	if fold2.A != want {
		t.Fatalf("fold after restart %+v, want %+v", fold2.A, want)
	}
	seq, err := o2.Publish(context.Background(), pipeline.MarshalReading(pipeline.Reading{Value: 7}), "")
	if err != nil || seq != 101 {
		t.Fatalf("next seq %d %v, want 101", seq, err)
	}
}

// TestOwnerPublishBatch: a batch gets contiguous sequence numbers after
// single publishes, lands in the log whole, is folded and published in order.
func TestOwnerPublishBatch(t *testing.T) {
	fold := &pipeline.ReadingFold{}
	pub := &recordingPublisher{}
	o, err := OpenOwner(OwnerOptions{Stream: "batch", Dir: t.TempDir(), Log: retainlog.DefaultOptions(""), Fold: fold}, pub)
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close(context.Background())
	if seq, err := o.Publish(context.Background(), pipeline.MarshalReading(pipeline.Reading{Value: 1}), "c-1"); err != nil || seq != 1 {
		t.Fatalf("Publish = %d, %v; want 1", seq, err)
	}
	var batch [][]byte
	for v := int64(2); v <= 5; v++ {
		batch = append(batch, pipeline.MarshalReading(pipeline.Reading{Value: v}))
	}
	if last, err := o.PublishBatch(context.Background(), batch); err != nil || last != 5 {
		t.Fatalf("PublishBatch = %d, %v; want 5", last, err)
	}
	if last, err := o.PublishBatch(context.Background(), nil); err != nil || last != 5 {
		t.Fatalf("empty PublishBatch = %d, %v; want 5 (the last seq)", last, err)
	}
	if got := o.Log().LastSeq(); got != 5 {
		t.Fatalf("log ends at %d, want 5", got)
	}
	if fold.A.Count != 5 || fold.A.Sum != 15 {
		t.Fatalf("fold %+v, want 5 readings summing to 15", fold.A)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go o.Run(ctx)
	waitFor(t, "the pump to publish 5 messages", func() bool { return len(pub.published()) >= 5 })
	if n := len(pub.published()); n != 5 {
		t.Fatalf("published %d messages, want 5", n)
	}
	for i, b := range pub.published() {
		env, err := envelope.Decode(b)
		if err != nil || env.Seq != uint64(i+1) || env.Stream != "batch" {
			t.Fatalf("message %d: seq %d stream %q err %v", i, env.Seq, env.Stream, err)
		}
	}
}

type recordingPublisher struct {
	mu     sync.Mutex
	bodies [][]byte
}

func (p *recordingPublisher) PublishAsync(_ context.Context, b []byte, done func(error)) {
	p.mu.Lock()
	p.bodies = append(p.bodies, b)
	p.mu.Unlock()
	done(nil)
}

func (p *recordingPublisher) Close(context.Context) error { return nil }

func (p *recordingPublisher) published() [][]byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([][]byte(nil), p.bodies...)
}

// BenchmarkReplay measures replay throughput from the retained log to a
// consumer's tracker over real HTTP on loopback (200-byte payloads).
func BenchmarkReplay(b *testing.B) {
	const total = 100_000
	f := newOwnerFold(b, "bench", retainlog.DefaultOptions(""), "", nil)
	payload := make([]byte, 200)
	for i := 0; i < total; i++ {
		if _, err := f.owner.Publish(context.Background(), payload, ""); err != nil {
			b.Fatal(err)
		}
	}
	c := Client{}
	b.ResetTimer()
	start := time.Now()
	var n uint64
	for i := 0; i < b.N; i++ {
		tr, _ := NewTracker(nopApplier{}, TrackerOptions{Owners: staticOwners{f.inst}})
		got, err := c.Replay(context.Background(), f.inst.Addr(), Request{Stream: "bench", From: 1, To: total}, func(env envelope.Envelope, _ int) error {
			_, err := tr.Deliver(context.Background(), env)
			return err
		})
		if err != nil || got != total {
			b.Fatalf("replayed %d: %v", got, err)
		}
		n += got
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkOwnerPublish measures sequencing + log append + fold per message
// under the default (interval) fsync policy.
func BenchmarkOwnerPublish(b *testing.B) {
	for _, policy := range []string{"interval", "always"} {
		b.Run(policy, func(b *testing.B) {
			lo := retainlog.DefaultOptions("")
			lo.Fsync, _ = retainlog.ParseFsyncPolicy(policy)
			o, err := OpenOwner(OwnerOptions{Stream: "bench", Dir: b.TempDir(), Log: lo}, ackAll{})
			if err != nil {
				b.Fatal(err)
			}
			defer o.Close(context.Background())
			payload := make([]byte, 200)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < b.N; i++ {
				if _, err := o.Publish(context.Background(), payload, ""); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
	// PublishBatch of 100, as the sensor publishes when behind its rate.
	b.Run("interval-batch100", func(b *testing.B) {
		o, err := OpenOwner(OwnerOptions{Stream: "bench", Dir: b.TempDir(), Log: retainlog.DefaultOptions("")}, ackAll{})
		if err != nil {
			b.Fatal(err)
		}
		defer o.Close(context.Background())
		batch := make([][]byte, 100)
		for i := range batch {
			batch[i] = make([]byte, 200)
		}
		b.ResetTimer()
		start := time.Now()
		n := 0
		for n < b.N {
			if _, err := o.PublishBatch(context.Background(), batch[:min(len(batch), b.N-n)]); err != nil {
				b.Fatal(err)
			}
			n += min(len(batch), b.N-n)
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
	})
}

type nopApplier struct{}

func (nopApplier) Apply(string, envelope.Envelope) error      { return nil }
func (nopApplier) ApplySnapshot(string, uint64, []byte) error { return nil }
func (nopApplier) ExportState(string) ([]byte, error)         { return nil, nil }
func (nopApplier) ImportState(string, []byte) error           { return nil }

// countingApplier counts Apply calls per (stream, seq, part).
type countingApplier struct {
	mu sync.Mutex
	n  map[[2]uint64]int
}

func (a *countingApplier) Apply(_ string, env envelope.Envelope) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n == nil {
		a.n = map[[2]uint64]int{}
	}
	a.n[[2]uint64{env.Seq, uint64(env.Part)}]++
	return nil
}
func (a *countingApplier) ApplySnapshot(string, uint64, []byte) error { return nil }
func (a *countingApplier) ExportState(string) ([]byte, error)         { return []byte("{}"), nil }
func (a *countingApplier) ImportState(string, []byte) error           { return nil }

// A sequence is complete once all its parts were applied, or its marker
// seen; parts are deduplicated on their own; a marker with a reason parks
// its sequence until its message comes; all of it survives a checkpoint.
func TestTrackerPartsAndMarkers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cp.json")
	a := &countingApplier{}
	tr, err := NewTracker(a, TrackerOptions{CheckpointPath: path})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	deliver := func(tr *Tracker, env envelope.Envelope) {
		t.Helper()
		env.Stream = "s"
		if _, err := tr.Deliver(ctx, env); err != nil {
			t.Fatal(err)
		}
	}
	deliver(tr, envelope.Envelope{Seq: 1})
	deliver(tr, envelope.Envelope{Seq: 2, Part: 2, Parts: 3})
	deliver(tr, envelope.Envelope{Seq: 2, Part: 0, Parts: 3})
	deliver(tr, envelope.Envelope{Seq: 2, Part: 0, Parts: 3}) // a duplicate part
	deliver(tr, envelope.Envelope{Seq: 3, Marker: true})
	deliver(tr, envelope.Envelope{Seq: 4, Marker: true, Payload: []byte("dead-lettered upstream")})
	deliver(tr, envelope.Envelope{Seq: 5})
	st := tr.Status()[0]
	if st.LastContiguous != 1 || !slices.Equal(st.Gaps, [][2]uint64{{2, 2}}) {
		t.Fatalf("with part 1 of seq 2 missing: %+v, want contiguous 1 and the gap [2 2]", st)
	}
	if err := tr.Save(); err != nil {
		t.Fatal(err)
	}
	// A restart from the checkpoint knows parts 0 and 2 of seq 2.
	tr2, err := NewTracker(a, TrackerOptions{CheckpointPath: path})
	if err != nil {
		t.Fatal(err)
	}
	deliver(tr2, envelope.Envelope{Seq: 2, Part: 2, Parts: 3}) // applied before the restart
	deliver(tr2, envelope.Envelope{Seq: 2, Part: 1, Parts: 3})
	st = tr2.Status()[0]
	if st.LastContiguous != 5 || len(st.Gaps) != 0 || st.Applied != 4 || !slices.Equal(st.DeadLettered, [][2]uint64{{4, 4}}) {
		t.Fatalf("after the last part: %+v, want 1..5 complete, 4 of them applied, 4 dead-lettered", st)
	}
	// The dead-lettered message, requeued, applies once.
	deliver(tr2, envelope.Envelope{Seq: 4})
	deliver(tr2, envelope.Envelope{Seq: 4})
	deliver(tr2, envelope.Envelope{Seq: 3, Marker: true}) // a marker again: a duplicate
	st = tr2.Status()[0]
	if st.Applied != 5 || len(st.DeadLettered) != 0 {
		t.Fatalf("after the requeued message: %+v, want 5 applied and nothing dead-lettered", st)
	}
	for k, n := range a.n {
		if n != 1 {
			t.Errorf("seq %d part %d applied %d times", k[0], k[1], n)
		}
	}
	if len(a.n) != 6 { // 1, 2/0, 2/1, 2/2, 4, 5
		t.Errorf("applied %d (seq, part) pairs, want 6: %v", len(a.n), a.n)
	}
	// Parts that disagree on how many there are: refused for good.
	_, err = tr2.Deliver(ctx, envelope.Envelope{Stream: "s", Seq: 9, Part: 0, Parts: 2})
	if err == nil {
		_, err = tr2.Deliver(ctx, envelope.Envelope{Stream: "s", Seq: 9, Part: 1, Parts: 3})
	}
	if !isPermanent(err) {
		t.Fatalf("parts of seq 9 disagreeing on their count: %v, want a permanent error", err)
	}
}

// rejectingApplier is appState refusing some sequences: for good
// (permanent) or always failing (transient).
type rejectingApplier struct {
	*appState
	permanent, transient uint64
}

type permErr struct{ error }

func (permErr) Permanent() bool { return true }

func (a rejectingApplier) Apply(stream string, env envelope.Envelope) error {
	switch env.Seq {
	case a.permanent:
		return permErr{errors.New("bad record")}
	case a.transient:
		return errors.New("the database is away")
	}
	return a.appState.Apply(stream, env)
}

// A replayed record that cannot be applied is dead-lettered with its
// reason (for good at once, failing MaxAttempts times otherwise), and
// replay goes on past it: the stream ends complete, those two counted as
// dead-lettered, and nothing else is lost.
func TestTrackerDeadLettersReplayedRecordAndGoesOn(t *testing.T) {
	f := newOwner(t, "s5", retainlog.DefaultOptions(""), "")
	f.publish(t, 50)
	var mu sync.Mutex
	dead := map[uint64]string{}
	a := rejectingApplier{appState: newAppState(), permanent: 10, transient: 20}
	tr, err := NewTracker(a, TrackerOptions{Owners: staticOwners{f.inst}, GapGrace: 20 * time.Millisecond, TailInterval: 50 * time.Millisecond,
		RetryMin: time.Millisecond, RetryMax: 10 * time.Millisecond, MaxAttempts: 3,
		DeadLetter: func(_ context.Context, stream string, seq uint64, frame []byte, reason string) error {
			env, err := envelope.Decode(frame)
			if err != nil || env.Seq != seq || stream != "s5" {
				t.Errorf("dead letter of %s/%d holds %+v (%v)", stream, seq, env, err)
			}
			mu.Lock()
			dead[seq] = reason
			mu.Unlock()
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tr.Run(ctx)
	waitFor(t, "1..50 complete", func() bool {
		s := tr.Status()
		return len(s) == 1 && s[0].LastContiguous == 50
	})
	s := tr.Status()[0]
	if s.Applied != 48 || !slices.Equal(s.DeadLettered, [][2]uint64{{10, 10}, {20, 20}}) {
		t.Fatalf("status %+v, want 48 applied and 10, 20 dead-lettered", s)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(dead[10], "bad record") || !strings.Contains(dead[20], "database is away") || len(dead) != 2 {
		t.Fatalf("dead letters %v", dead)
	}
}

// An owner that accepts connections and never answers holds up neither
// the checkpoint nor live messages.
func TestTrackerHungOwnerDelaysNothing(t *testing.T) {
	hung := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hung:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(hung)
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	owner := discovery.Instance{ID: "hung", Address: host, Port: p, Tags: []string{OwnerTag("s6")}}
	path := filepath.Join(t.TempDir(), "cp.json")
	st := newAppState()
	tr, err := NewTracker(st, TrackerOptions{CheckpointPath: path, CheckpointInterval: 20 * time.Millisecond,
		Owners: staticOwners{owner}, GapGrace: 10 * time.Millisecond, TailInterval: 10 * time.Millisecond, Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); tr.Run(ctx) }()
	// Live messages, one with a gap before it, apply while the owner hangs.
	for _, seq := range []uint64{1, 2, 5} {
		env := envelope.Envelope{Stream: "s6", Seq: seq, Payload: pipeline.MarshalReading(pipeline.Reading{Value: 1})}
		if _, err := tr.Deliver(ctx, env); err != nil {
			t.Fatal(err)
		}
	}
	// The stream is behind by 3 (3, 4 missing; the live 5 is the highest
	// known), and the recovery of 3..4 shows, waiting on the owner: in
	// the status and in the metrics.
	waitFor(t, "a recovery of 2 sequences in progress", func() bool {
		s := tr.Status()
		return len(s) == 1 && s[0].LagMessages == 3 &&
			s[0].Replay != nil && s[0].Replay.Requested == 2 && s[0].Replay.Received == 0
	})
	waitFor(t, "the metrics to say so", func() bool {
		return gaugeValue(tr.o.Metrics.LagMessages.WithLabelValues("s6")) == 3 &&
			gaugeValue(tr.o.Metrics.ReplayRequested.WithLabelValues("s6")) == 2
	})
	// The checkpoint holds them, though every request to the owner hangs.
	waitFor(t, "a checkpoint with the live messages", func() bool {
		b, err := os.ReadFile(path)
		return err == nil && strings.Contains(string(b), "[5,5]")
	})
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return with its context ended while the owner hangs")
	}
}

// A split sequence parked because a part was dead-lettered upstream takes
// that part when it comes again, and no other part a second time; parking
// a replayed part parks only that part.
func TestTrackerParkedSplitSequence(t *testing.T) {
	a := &countingApplier{}
	tr, err := NewTracker(a, TrackerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	deliver := func(env envelope.Envelope) {
		t.Helper()
		env.Stream = "s"
		if _, err := tr.Deliver(ctx, env); err != nil {
			t.Fatal(err)
		}
	}
	deliver(envelope.Envelope{Seq: 1, Part: 0, Parts: 3})
	deliver(envelope.Envelope{Seq: 1, Part: 1, Parts: 3, Marker: true, Payload: []byte("dead-lettered by stage2")})
	deliver(envelope.Envelope{Seq: 1, Part: 2, Parts: 3})
	st := tr.Status()[0]
	if st.LastContiguous != 1 || !slices.Equal(st.DeadLettered, [][2]uint64{{1, 1}}) {
		t.Fatalf("after all parts, one dead: %+v", st)
	}
	deliver(envelope.Envelope{Seq: 1, Part: 0, Parts: 3}) // redelivered: a duplicate
	deliver(envelope.Envelope{Seq: 1, Part: 1, Parts: 3}) // the dead part, requeued: applies
	deliver(envelope.Envelope{Seq: 1, Part: 1, Parts: 3}) // and only once
	st = tr.Status()[0]
	if len(st.DeadLettered) != 0 || st.Applied != 1 {
		t.Fatalf("after the requeued part: %+v", st)
	}
	for k, n := range a.n {
		if n != 1 {
			t.Errorf("seq %d part %d applied %d times", k[0], k[1], n)
		}
	}

	// A replayed part that cannot be applied: the others are still wanted.
	s := tr.stream("s")
	if err := tr.park(ctx, s, envelope.Envelope{Stream: "s", Seq: 2, Part: 0, Parts: 3}, nil, "bad"); err != nil {
		t.Fatal(err)
	}
	if st := tr.Status()[0]; st.LastContiguous != 1 || !slices.Equal(st.Gaps, [][2]uint64(nil)) && len(st.Gaps) != 0 {
		t.Fatalf("one part of seq 2 parked: %+v, want seq 2 still incomplete", st)
	}
	deliver(envelope.Envelope{Seq: 2, Part: 1, Parts: 3})
	deliver(envelope.Envelope{Seq: 2, Part: 2, Parts: 3})
	if st := tr.Status()[0]; st.LastContiguous != 2 || !slices.Equal(st.DeadLettered, [][2]uint64{{2, 2}}) {
		t.Fatalf("seq 2 with one part parked and two applied: %+v", st)
	}
}

// What a forger can do: a stream's message without a sequence is refused;
// forged sequences within MaxAhead of what the owner said cannot move the
// bound; the first beyond it is asked about and refused.
func TestTrackerForgedSequences(t *testing.T) {
	f := newOwner(t, "s7", retainlog.DefaultOptions(""), "")
	f.publish(t, 10)
	tr, err := NewTracker(newAppState(), TrackerOptions{Owners: staticOwners{f.inst}, MaxAhead: 100})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	reading := pipeline.MarshalReading(pipeline.Reading{Value: 1000})
	if _, err := tr.Deliver(ctx, envelope.Envelope{Stream: "s7", Payload: reading}); !isPermanent(err) {
		t.Fatalf("sequence 0 of a stream: %v, want refused for good", err)
	}
	// The owner says 10; 110 is within the bound (and cannot be told from
	// a real message), 210 is not, whatever was applied meanwhile.
	if _, err := tr.Deliver(ctx, envelope.Envelope{Stream: "s7", Seq: 50, Payload: reading}); err != nil {
		t.Fatalf("within the bound of a stream the owner has not named yet: %v", err)
	}
	if _, err := tr.askLast(ctx, "s7"); err != nil {
		t.Fatal(err)
	}
	tr.refreshOwnerLast(ctx, tr.stream("s7"), time.Now())
	if _, err := tr.Deliver(ctx, envelope.Envelope{Stream: "s7", Seq: 110, Payload: reading}); err != nil {
		t.Fatalf("within the bound: %v", err)
	}
	_, err = tr.Deliver(ctx, envelope.Envelope{Stream: "s7", Seq: 210, Payload: reading})
	var never NeverPublishedError
	if !errors.As(err, &never) || never.OwnerLast != 10 || !isPermanent(err) {
		t.Fatalf("past the bound after forgeries within it: %v, want NeverPublishedError with the owner's last 10", err)
	}
}

// A range that fails does not hold up the others: the tail still comes.
func TestTrackerFailingGapDoesNotBlockTheRest(t *testing.T) {
	f := newOwner(t, "s8", retainlog.DefaultOptions(""), "")
	f.publish(t, 20)
	a := rejectingApplier{appState: newAppState(), transient: 5}
	tr, err := NewTracker(a, TrackerOptions{Owners: staticOwners{f.inst}, GapGrace: 10 * time.Millisecond, TailInterval: 20 * time.Millisecond,
		RetryMin: time.Hour, RetryMax: time.Hour, MaxAttempts: 1000})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, seq := range []uint64{1, 2, 3, 4, 6, 7} {
		var env envelope.Envelope
		f.owner.Log().Read(ctx, seq, seq, func(r retainlog.Record) error {
			env, err = envelope.Decode(append([]byte(nil), r.Data...))
			return err
		})
		if _, err := tr.Deliver(ctx, env); err != nil {
			t.Fatal(err)
		}
	}
	go tr.Run(ctx)
	// 5 keeps failing (and is retried only in an hour); 8..20 must come.
	waitFor(t, "the tail past the failing gap", func() bool {
		s := tr.Status()
		return len(s) == 1 && s[0].Applied == 19
	})
	if st := tr.Status()[0]; !slices.Equal(st.Gaps, [][2]uint64{{5, 5}}) {
		t.Fatalf("%+v, want only 5 missing", st)
	}
}

// After an operator moved a damaged log aside, the owner continues after
// its snapshot, and its watermark moves on from there: published.seq is
// written again, retention trims, and a restart publishes nothing twice.
func TestOwnerAfterLogMovedAside(t *testing.T) {
	dir := t.TempDir()
	lo := retainlog.DefaultOptions("")
	lo.SegmentBytes = 1024
	lo.RetainMessages = 10
	run := func(pub PumpPublisher, n int) *Owner {
		t.Helper()
		o, err := OpenOwner(OwnerOptions{Stream: "m", Dir: dir, Log: lo, Fold: &pipeline.ReadingFold{}, SnapshotInterval: 10 * time.Millisecond}, pub)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		ran := make(chan struct{})
		go func() { defer close(ran); o.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-ran })
		for range n {
			if _, err := o.Publish(context.Background(), pipeline.MarshalReading(pipeline.Reading{Value: 1}), ""); err != nil {
				t.Fatal(err)
			}
		}
		return o
	}
	watermark := func() string {
		b, _ := os.ReadFile(filepath.Join(dir, "published.seq"))
		return strings.TrimSpace(string(b))
	}
	// nsqd never answers the first run: its snapshot (50) is ahead of
	// its watermark (0), as it usually is.
	o := run(silentPublisher{}, 50)
	if err := o.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if seq, _ := pipetestSavedSnapshot(dir); seq != 50 || watermark() != "" {
		t.Fatalf("before the move: snapshot %d, watermark %q", seq, watermark())
	}
	if err := os.Rename(filepath.Join(dir, "log"), filepath.Join(dir, "log.damaged")); err != nil {
		t.Fatal(err)
	}
	pub := &recordingPublisher{}
	o = run(pub, 100)
	waitFor(t, "the watermark to move past the moved log", func() bool { return watermark() == "150" })
	waitFor(t, "retention to trim", func() bool { return o.Log().FirstSeq() > 51 })
	if err := o.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	again := &recordingPublisher{}
	o = run(again, 0)
	defer o.Close(context.Background())
	if n := len(again.published()); n != 0 {
		t.Fatalf("a clean restart published %d messages again", n)
	}
	if got := len(pub.published()); got != 100 {
		t.Fatalf("published %d messages after the log was moved aside, want 100", got)
	}
}

// silentPublisher never answers (nsqd away).
type silentPublisher struct{}

func (silentPublisher) PublishAsync(context.Context, []byte, func(error)) {}
func (silentPublisher) Close(context.Context) error                       { return nil }

func pipetestSavedSnapshot(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, "snapshot.json"))
	if err != nil {
		return 0, err
	}
	var snap snapshotFile
	err = json.Unmarshal(b, &snap)
	return snap.Seq, err
}

// gaugeValue reads a gauge's current value.
func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		return -1
	}
	return m.GetGauge().GetValue()
}
