package stage

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// heldOut keeps every publish's completion for the test to call: nsqd's
// acknowledgements, in the order and with the outcome the test chooses.
type heldOut struct {
	mu    sync.Mutex
	dones map[uint64]func(error) // by the input's sequence
}

func (h *heldOut) PublishEnvelopeAsync(_ context.Context, env envelope.Envelope, done func(error)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dones == nil {
		h.dones = map[uint64]func(error){}
	}
	h.dones[env.Seq] = done
}

func (h *heldOut) PublishEnvelopesAsync(ctx context.Context, envs []envelope.Envelope, done func(error)) {
	h.PublishEnvelopeAsync(ctx, envs[0], done)
}

// ack completes the publish of seq's outputs with err.
func (h *heldOut) ack(t *testing.T, seq uint64, err error) {
	t.Helper()
	h.mu.Lock()
	done := h.dones[seq]
	delete(h.dones, seq)
	h.mu.Unlock()
	if done == nil {
		t.Fatalf("no publish in flight for seq %d", seq)
	}
	done(err)
}

// swappableUpstream is an upstream whose instances the test replaces.
type swappableUpstream struct {
	mu  sync.Mutex
	ins []discovery.Instance
}

func (u *swappableUpstream) set(ins ...discovery.Instance) {
	u.mu.Lock()
	u.ins = ins
	u.mu.Unlock()
}

func (u *swappableUpstream) Instances() []discovery.Instance {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.ins)
}

func (u *swappableUpstream) Service() string { return "upstream" }

// deliver runs st on one input as a consumer does (pubsub.Deliver: the
// Async completion goes through the OnOutcome layers) and returns what
// nsqd was answered, once it is.
func deliver(t *testing.T, st *Stage, env envelope.Envelope) *answer {
	t.Helper()
	a := &answer{}
	nm := nsq.NewMessage(nsq.MessageID{}, nil)
	nm.Delegate = a
	pubsub.Deliver(context.Background(), st, pubsub.NewMessage("in", "c", nm, env))
	return a
}

// answer records what nsqd was told of a message.
type answer struct {
	mu                 sync.Mutex
	finished, requeued bool
}

func (a *answer) OnFinish(*nsq.Message) { a.mu.Lock(); a.finished = true; a.mu.Unlock() }
func (a *answer) OnRequeue(*nsq.Message, time.Duration, bool) {
	a.mu.Lock()
	a.requeued = true
	a.mu.Unlock()
}
func (a *answer) OnTouch(*nsq.Message) {}

// openOwner is servedOwner, with the owner, for publishing more.
func openOwner(t *testing.T, payloads [][]byte) (*replay.Owner, discovery.Instance) {
	t.Helper()
	o, err := replay.OpenOwner(replay.OwnerOptions{Stream: "s", Dir: t.TempDir(), Log: retainlog.DefaultOptions("")}, ackAll{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close(context.Background()) })
	if _, err := o.PublishBatch(context.Background(), payloads); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	replay.NewServer("", replay.NewMetrics(prometheus.NewRegistry()), o).Register(mux)
	return o, serve(t, mux, replay.OwnerTag("s"))
}

// gaugeValue reads g.
func gaugeValue(t *testing.T, g prometheus.Gauge) float64 {
	t.Helper()
	var m dto.Metric
	if err := g.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetGauge().GetValue()
}

func lagOfStream(t *testing.T, st *Stage, stream string) StreamLag {
	t.Helper()
	for _, l := range st.Lag() {
		if l.Stream == stream {
			return l
		}
	}
	t.Fatalf("stream %s not in the stage's lag: %+v", stream, st.Lag())
	return StreamLag{}
}

// A stage's position in a stream is the highest input whose outputs were
// all acknowledged, whatever the order they finish in; its lag is how far
// that is behind what the upstream last reported, in messages and in the
// age of the position's input; a failing upstream leaves the last known
// value and says why.
func TestStageLagFollowsAcknowledgements(t *testing.T) {
	ctx := context.Background()
	var values [][]byte
	for v := uint64(0); v < 10; v++ {
		values = append(values, value(2*v+2)) // one output each
	}
	o, owner := openOwner(t, values) // stream "s", sequences 1..10
	up := &swappableUpstream{}
	up.set(owner)
	reg := prometheus.NewRegistry()
	m := replay.NewMetrics(reg)
	out := &heldOut{}
	st, err := New(Options{Name: "st", Transform: splitOdd, Out: out, Upstream: up, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Hour)
	in := func(seq uint64) envelope.Envelope {
		return envelope.Envelope{Stream: "s", Seq: seq, Created: base.Add(time.Duration(seq) * time.Second), Payload: value(2*seq + 2)}
	}

	// Seen as soon as an input arrives: nothing finished, so the position
	// is just before it.
	for seq := uint64(1); seq <= 4; seq++ {
		deliver(t, st, in(seq))
	}
	if l := lagOfStream(t, st, "s"); l.Position != 0 || l.UpstreamLast != 0 || l.LagMessages != 0 || l.LagSeconds != 0 || l.LastError != "" {
		t.Fatalf("before any acknowledgement or upstream answer: %+v", l)
	}
	st.refreshUpstream(ctx)
	l := lagOfStream(t, st, "s")
	if l.UpstreamLast != 10 || l.Position != 0 || l.LagMessages != 10 || l.LastError != "" {
		t.Fatalf("after the upstream said 10: %+v, want position 0, lag 10", l)
	}

	// Out of order: 3 then 1. The position is 3, its age 3's.
	out.ack(t, 3, nil)
	out.ack(t, 1, nil)
	now := time.Now()
	l = lagOfStream(t, st, "s")
	wantSecs := now.Sub(in(3).Created).Seconds()
	if l.Position != 3 || l.LagMessages != 7 || math.Abs(l.LagSeconds-wantSecs) > 5 {
		t.Fatalf("after 3 and 1 finished: %+v, want position 3, lag 7 and about %.0fs", l, wantSecs)
	}
	// A failed publish finishes nothing (the input comes again).
	out.ack(t, 4, errors.New("nsqd went away"))
	if l := lagOfStream(t, st, "s"); l.Position != 3 {
		t.Fatalf("a failed publish moved the position: %+v", l)
	}
	// Caught up: lag 0, in seconds too.
	out.ack(t, 2, nil)
	for seq := uint64(4); seq <= 10; seq++ {
		deliver(t, st, in(seq))
		out.ack(t, seq, nil)
	}
	if l := lagOfStream(t, st, "s"); l.Position != 10 || l.LagMessages != 0 || l.LagSeconds != 0 {
		t.Fatalf("caught up: %+v, want position 10, lag 0", l)
	}

	// The gauges, shared with the tracker's names, say the same.
	st.lag.export(time.Now())
	if n, s := gaugeValue(t, m.LagMessages.WithLabelValues("s")), gaugeValue(t, m.LagSeconds.WithLabelValues("s")); n != 0 || s != 0 {
		t.Fatalf("gauges when caught up: %v messages, %v s", n, s)
	}

	// The upstream fails: the last known value stays, with the reason.
	failing := serve(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	}), replay.OwnerTag("s"))
	up.set(failing)
	st.refreshUpstream(ctx)
	if l := lagOfStream(t, st, "s"); l.UpstreamLast != 10 || l.LastError == "" || l.LagMessages != 0 {
		t.Fatalf("upstream failing: %+v, want upstream_last kept at 10 and an error", l)
	}
	up.set()
	st.refreshUpstream(ctx)
	if l := lagOfStream(t, st, "s"); l.UpstreamLast != 10 || l.LastError == "" {
		t.Fatalf("no upstream instance: %+v, want upstream_last kept and an error", l)
	}

	// The upstream is back, and ahead: the lag and the gauges rise.
	if _, err := o.PublishBatch(ctx, values[:5]); err != nil {
		t.Fatal(err)
	}
	up.set(owner)
	st.refreshUpstream(ctx)
	l = lagOfStream(t, st, "s")
	if l.UpstreamLast != 15 || l.LagMessages != 5 || l.LastError != "" || l.LagSeconds <= 0 {
		t.Fatalf("upstream at 15: %+v, want lag 5 and no error", l)
	}
	if n := gaugeValue(t, m.LagMessages.WithLabelValues("s")); n != 5 {
		t.Fatalf("svckit_stream_lag_messages = %v, want 5", n)
	}
	if s := gaugeValue(t, m.LagSeconds.WithLabelValues("s")); s <= 0 {
		t.Fatalf("svckit_stream_lag_seconds = %v while behind", s)
	}
}

// An input dead-lettered by the stage counts once its marker was
// acknowledged (downstream has it), not before; unsequenced inputs and
// markers passing through are handled like any input.
func TestStageLagCountsDeadLetteredInputs(t *testing.T) {
	out := &heldOut{}
	st, err := New(Options{Transform: splitOdd, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	deliver(t, st, envelope.Envelope{Stream: "d", Seq: 5, Payload: value(2)})
	bad := deliver(t, st, envelope.Envelope{Stream: "d", Seq: 6, Payload: []byte("not 8 bytes")})
	if l := lagOfStream(t, st, "d"); l.Position != 4 {
		t.Fatalf("first seen at 5: %+v, want position 4", l)
	}
	out.ack(t, 6, errors.New("nsqd went away")) // the marker was not taken
	if l := lagOfStream(t, st, "d"); l.Position != 4 {
		t.Fatalf("a dead marker not acknowledged moved the position: %+v", l)
	}
	bad = deliver(t, st, envelope.Envelope{Stream: "d", Seq: 6, Payload: []byte("not 8 bytes")})
	out.ack(t, 6, nil)
	if l := lagOfStream(t, st, "d"); l.Position != 6 {
		t.Fatalf("a dead-lettered input whose marker was acknowledged: %+v, want position 6", l)
	}
	bad.mu.Lock()
	if bad.finished == bad.requeued {
		t.Errorf("the dead-lettered input was answered finished=%v requeued=%v", bad.finished, bad.requeued)
	}
	bad.mu.Unlock()
	// A marker from upstream passes through and counts.
	deliver(t, st, envelope.Envelope{Stream: "d", Seq: 8, Marker: true})
	out.ack(t, 8, nil)
	out.ack(t, 5, nil)
	if l := lagOfStream(t, st, "d"); l.Position != 8 {
		t.Fatalf("after the marker of 8: %+v, want position 8", l)
	}
	// No stream, no sequence: not tracked.
	deliver(t, st, envelope.Envelope{Payload: value(2)})
	out.ack(t, 0, nil)
	if got := st.Lag(); len(got) != 1 {
		t.Fatalf("streams tracked: %+v, want only d", got)
	}
}

// Inputs arrive out of order (handled concurrently): until one is
// finished, the position is just before the lowest that arrived; after,
// only a finished input moves it.
func TestStageLagFirstPositionIsBeforeTheLowestArrival(t *testing.T) {
	out := &heldOut{}
	st, err := New(Options{Transform: splitOdd, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{13, 11, 12} {
		deliver(t, st, envelope.Envelope{Stream: "o", Seq: seq, Payload: value(2)})
	}
	if l := lagOfStream(t, st, "o"); l.Position != 10 {
		t.Fatalf("13, 11, 12 arrived, none finished: %+v, want position 10", l)
	}
	out.ack(t, 12, nil)
	deliver(t, st, envelope.Envelope{Stream: "o", Seq: 5, Payload: value(2)}) // redelivered, from long ago
	if l := lagOfStream(t, st, "o"); l.Position != 12 {
		t.Fatalf("12 finished, then 5 arrived: %+v, want position 12", l)
	}
}

// lagOf is the tracker's definition: behind the highest sequence known
// to exist (the upstream's last, or the position itself), in messages,
// and in the age of the position's input while behind.
func TestLagOf(t *testing.T) {
	now := time.Unix(1000, 0)
	at := time.Unix(990, 0).UnixNano()
	for _, c := range []struct {
		pos, up uint64
		n       uint64
		secs    float64
	}{
		{0, 0, 0, 0},
		{5, 0, 0, 0},  // the upstream never answered
		{5, 3, 0, 0},  // ahead of a stale answer
		{5, 5, 0, 0},  // caught up
		{5, 9, 4, 10}, // behind
	} {
		if n, secs := lagOf(c.pos, at, c.up, now); n != c.n || secs != c.secs {
			t.Errorf("lagOf(%d, up %d) = %d, %v; want %d, %v", c.pos, c.up, n, secs, c.n, c.secs)
		}
	}
	// A clock ahead of ours: never negative.
	if _, secs := lagOf(1, time.Unix(2000, 0).UnixNano(), 2, now); secs != 0 {
		t.Errorf("lag seconds from the future: %v", secs)
	}
}

// GET /stage answers the JSON the console reads, one entry per stream,
// sorted.
func TestServeStatusShape(t *testing.T) {
	out := &heldOut{}
	st, err := New(Options{Transform: splitOdd, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"b", "a"} {
		deliver(t, st, envelope.Envelope{Stream: id, Seq: 1, Payload: value(2)})
	}
	rec := httptest.NewRecorder()
	st.ServeStatus(rec, httptest.NewRequest(http.MethodGet, StatusPath, nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var raw []map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &raw); err != nil || len(raw) != 2 {
		t.Fatalf("GET /stage: %s (%v)", rec.Body, err)
	}
	keys := func(m map[string]any) []string {
		var k []string
		for x := range m {
			k = append(k, x)
		}
		slices.Sort(k)
		return k
	}
	want := []string{"lag_messages", "lag_seconds", "last_error", "position", "stream", "upstream_last"}
	if got := keys(raw[0]); !slices.Equal(got, want) || raw[0]["stream"] != "a" || raw[1]["stream"] != "b" {
		t.Fatalf("GET /stage: %s, want keys %v, streams a then b", rec.Body, want)
	}
}

// A stage given the metrics a tracker of the same service also uses
// registers nothing more: nothing panics, and both write the same
// collectors.
func TestStageSharesReplayMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := replay.NewMetrics(reg)
	if _, err := replay.NewTracker(&nopApplier{}, replay.TrackerOptions{Metrics: m}); err != nil {
		t.Fatal(err)
	}
	st, err := New(Options{Transform: splitOdd, Out: &heldOut{}, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	deliver(t, st, envelope.Envelope{Stream: "x", Seq: 1, Payload: value(2)})
	st.lag.export(time.Now())
	mfs, err := reg.Gather()
	n := 0
	for _, mf := range mfs {
		if mf.GetName() == "svckit_stream_lag_messages" {
			n += len(mf.GetMetric())
		}
	}
	if err != nil || n != 1 {
		t.Fatalf("svckit_stream_lag_messages series: %d (%v), want 1", n, err)
	}
}

type nopApplier struct{}

func (nopApplier) Apply(string, envelope.Envelope) error      { return nil }
func (nopApplier) ApplySnapshot(string, uint64, []byte) error { return nil }
func (nopApplier) ExportState(string) ([]byte, error)         { return nil, nil }
func (nopApplier) ImportState(string, []byte) error           { return nil }

// Run asks the upstream at once and then once per TailInterval, not more,
// and an upstream that hangs holds up neither inputs nor GET /stage: a
// failing upstream only leaves the last value, with the reason.
func TestStageRunAsksUpstreamPeriodically(t *testing.T) {
	var mu sync.Mutex
	var asked []time.Time
	hang := make(chan struct{}) // closed at the end: a hanging upstream lets go
	var hanging bool
	upstream := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, time.Now())
		n, h := len(asked), hanging
		mu.Unlock()
		if h {
			select {
			case <-hang:
			case <-r.Context().Done():
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode([]replay.Status{{Stream: "s", LastSeq: uint64(100 + n)}})
	}), replay.OwnerTag("s"))
	defer close(hang)
	const every = 100 * time.Millisecond
	out := &heldOut{}
	st, err := New(Options{Transform: splitOdd, Out: out, Upstream: staticUpstream{upstream}, TailInterval: every})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	started := time.Now()
	go func() { defer close(done); st.Run(ctx) }()
	defer func() { cancel(); <-done }()
	deliver(t, st, envelope.Envelope{Stream: "s", Seq: 1, Payload: value(2)})
	out.ack(t, 1, nil)
	waitUntil(t, "the upstream asked 4 times", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(asked) >= 4
	})
	mu.Lock()
	n, elapsed := len(asked), time.Since(started)
	mu.Unlock()
	if most := int(elapsed/every) + 1; n > most {
		t.Fatalf("the upstream was asked %d times in %s: more than once per %s", n, elapsed, every)
	}
	waitUntil(t, "the upstream's last in the lag", func() bool {
		l := lagOfStream(t, st, "s")
		return l.UpstreamLast > 100 && l.LagMessages == l.UpstreamLast-1
	})

	// The upstream hangs: inputs and GET /stage go on meanwhile.
	mu.Lock()
	hanging = true
	before := len(asked)
	mu.Unlock()
	waitUntil(t, "a request to the hanging upstream", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(asked) > before
	})
	last := lagOfStream(t, st, "s").UpstreamLast
	t0 := time.Now()
	deliver(t, st, envelope.Envelope{Stream: "s", Seq: 2, Payload: value(2)})
	out.ack(t, 2, nil)
	if l := lagOfStream(t, st, "s"); l.Position != 2 || time.Since(t0) > time.Second {
		t.Fatalf("an input while the upstream hangs: %+v after %s", l, time.Since(t0))
	}
	// Past the per-instance timeout of 2 s: the reason, the value kept.
	waitUntil(t, "the hanging upstream's error", func() bool {
		l := lagOfStream(t, st, "s")
		return l.LastError != "" && l.UpstreamLast == last
	})
}

// waitUntil polls cond until it holds, for at most 30 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting 30s for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling, not synchronisation
	}
}
