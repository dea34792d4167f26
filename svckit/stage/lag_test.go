package stage

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
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
	"github.com/svckit/svckit/svckit/testenv"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// heldOut keeps every publish's completion for the test to call: nsqd's
// acknowledgements, in the order and with the outcome the test chooses.
type heldOut struct {
	mu    sync.Mutex
	dones map[uint64][]func(error) // by the input's sequence, oldest first
}

func (h *heldOut) PublishEnvelopeAsync(_ context.Context, env envelope.Envelope, done func(error)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dones == nil {
		h.dones = map[uint64][]func(error){}
	}
	h.dones[env.Seq] = append(h.dones[env.Seq], done)
}

func (h *heldOut) PublishEnvelopesAsync(ctx context.Context, envs []envelope.Envelope, done func(error)) {
	h.PublishEnvelopeAsync(ctx, envs[0], done)
}

// ack completes the oldest publish in flight of seq's outputs with err.
func (h *heldOut) ack(t *testing.T, seq uint64, err error) {
	t.Helper()
	h.mu.Lock()
	var done func(error)
	if q := h.dones[seq]; len(q) > 0 {
		done, h.dones[seq] = q[0], q[1:]
	}
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

// A stage's position in a stream is just before the lowest input it holds
// unfinished, else the highest whose outputs were all acknowledged,
// whatever the order they finish in; its lag is how far that is behind the
// highest sequence known to exist, in messages and in the age of the
// input after the position; a failing upstream leaves the last known
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
	// is just before it, and the inputs that arrived exist: behind by 4,
	// since 1 was created.
	for seq := uint64(1); seq <= 4; seq++ {
		deliver(t, st, in(seq))
	}
	l := lagOfStream(t, st, "s")
	if l.Position != 0 || l.InFlight != 4 || l.UpstreamLast != 0 || l.LagMessages != 4 || l.LastError != "" ||
		math.Abs(l.LagSeconds-time.Since(in(1).Created).Seconds()) > 5 {
		t.Fatalf("before any acknowledgement or upstream answer: %+v, want position 0, 4 in flight, lag 4 since 1's creation", l)
	}
	st.refreshUpstream(ctx)
	l = lagOfStream(t, st, "s")
	if l.UpstreamLast != 10 || l.Position != 0 || l.LagMessages != 10 || l.LastError != "" {
		t.Fatalf("after the upstream said 10: %+v, want position 0, lag 10", l)
	}

	// Out of order: 3 then 1. 2 is not finished: the position is 1, its
	// lag in seconds 2's age.
	out.ack(t, 3, nil)
	out.ack(t, 1, nil)
	l = lagOfStream(t, st, "s")
	wantSecs := time.Since(in(2).Created).Seconds()
	if l.Position != 1 || l.InFlight != 2 || l.LagMessages != 9 || math.Abs(l.LagSeconds-wantSecs) > 5 {
		t.Fatalf("after 3 and 1 finished: %+v, want position 1, 2 and 4 in flight, lag 9 and about %.0fs", l, wantSecs)
	}
	// A failed publish finishes nothing: the input comes again, and holds
	// the position back meanwhile.
	out.ack(t, 4, errors.New("nsqd went away"))
	out.ack(t, 2, nil)
	l = lagOfStream(t, st, "s")
	if wantSecs := time.Since(in(4).Created).Seconds(); l.Position != 3 || l.InFlight != 1 || l.LagMessages != 7 ||
		math.Abs(l.LagSeconds-wantSecs) > 5 {
		t.Fatalf("2 finished, 4 failed: %+v, want position 3, 4 in flight, lag 7 and about %.0fs", l, wantSecs)
	}
	// Caught up: lag 0, in seconds too.
	for seq := uint64(4); seq <= 10; seq++ {
		deliver(t, st, in(seq))
		out.ack(t, seq, nil)
	}
	if l := lagOfStream(t, st, "s"); l.Position != 10 || l.InFlight != 0 || l.LagMessages != 0 || l.LagSeconds != 0 {
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

// An input dead-lettered by the stage counts as finished once its marker
// was acknowledged (downstream has it), not before; unsequenced inputs and
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
	out.ack(t, 5, nil)
	if l := lagOfStream(t, st, "d"); l.Position != 5 || l.InFlight != 1 {
		t.Fatalf("a dead marker not acknowledged: %+v, want position 5, 6 in flight (it comes again)", l)
	}
	bad = deliver(t, st, envelope.Envelope{Stream: "d", Seq: 6, Payload: []byte("not 8 bytes")})
	if l := lagOfStream(t, st, "d"); l.Position != 5 || l.InFlight != 1 {
		t.Fatalf("6 delivered again: %+v, want it counted once", l)
	}
	out.ack(t, 6, nil)
	if l := lagOfStream(t, st, "d"); l.Position != 6 || l.InFlight != 0 {
		t.Fatalf("a dead-lettered input whose marker was acknowledged: %+v, want position 6, nothing in flight", l)
	}
	bad.mu.Lock()
	if bad.finished == bad.requeued {
		t.Errorf("the dead-lettered input was answered finished=%v requeued=%v", bad.finished, bad.requeued)
	}
	bad.mu.Unlock()
	// A marker from upstream passes through and counts.
	deliver(t, st, envelope.Envelope{Stream: "d", Seq: 8, Marker: true})
	out.ack(t, 8, nil)
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

// Inputs arrive out of order (handled concurrently): the position is just
// before the lowest that arrived and is not finished, even one that
// arrives long after higher ones were finished (nsqd delivering it again):
// it is not finished.
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
	if l := lagOfStream(t, st, "o"); l.Position != 10 || l.InFlight != 2 {
		t.Fatalf("12 finished, 11 and 13 not: %+v, want position 10", l)
	}
	out.ack(t, 11, nil)
	out.ack(t, 13, nil)
	deliver(t, st, envelope.Envelope{Stream: "o", Seq: 5, Payload: value(2)}) // redelivered, from long ago
	if l := lagOfStream(t, st, "o"); l.Position != 4 || l.InFlight != 1 || l.LagMessages != 9 {
		t.Fatalf("13 finished, then 5 arrived: %+v, want position 4, lag 9", l)
	}
	out.ack(t, 5, nil)
	if l := lagOfStream(t, st, "o"); l.Position != 13 || l.InFlight != 0 || l.LagMessages != 0 {
		t.Fatalf("5 finished: %+v, want position 13, lag 0", l)
	}
}

// lagOf is the tracker's definition: behind the highest sequence known
// to exist (the upstream's last, or one seen here), in messages, and in
// the age of the input after the position while behind; never negative.
func TestLagOf(t *testing.T) {
	now := time.Unix(1000, 0)
	at := time.Unix(990, 0).UnixNano()
	for _, c := range []struct {
		pos, highest, up uint64
		n                uint64
		secs             float64
	}{
		{0, 0, 0, 0, 0},
		{5, 5, 0, 0, 0},  // the upstream never answered
		{5, 5, 3, 0, 0},  // ahead of a stale or lowered answer
		{5, 5, 5, 0, 0},  // caught up
		{5, 5, 9, 4, 10}, // behind
		{2, 5, 0, 3, 10}, // an input past the position seen, the upstream silent
		{2, 5, 4, 3, 10}, // the same, the upstream's answer older than 5
	} {
		if n, secs := lagOf(c.pos, c.highest, at, c.up, now); n != c.n || secs != c.secs {
			t.Errorf("lagOf(%d, highest %d, up %d) = %d, %v; want %d, %v", c.pos, c.highest, c.up, n, secs, c.n, c.secs)
		}
	}
	// A clock ahead of ours: never negative.
	if _, secs := lagOf(1, 1, time.Unix(2000, 0).UnixNano(), 2, now); secs != 0 {
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
	want := []string{"in_flight", "lag_messages", "lag_seconds", "last_error", "position", "stream", "upstream_last"}
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
	testenv.WaitFor(t, 30*time.Second, what, cond)
}

// A stuck input holds the position back: inputs 1 to 5 arrive, all but 3
// finish, and the stage is at 2, one input in flight, 3 behind the
// upstream's 5, for as long as 3 is not finished (a delivery still running
// never stops counting). Once it is, the stage is at 5.
func TestStageLagStuckInputHoldsThePosition(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := replay.NewMetrics(reg)
	out := &heldOut{}
	st, err := New(Options{Transform: splitOdd, Out: out, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Minute)
	in := func(seq uint64) envelope.Envelope {
		return envelope.Envelope{Stream: "s", Seq: seq, Created: base.Add(time.Duration(seq) * time.Second), Payload: value(2)}
	}
	for seq := uint64(1); seq <= 5; seq++ {
		deliver(t, st, in(seq))
	}
	st.lag.learn("upstream", []upstreamAnswer{{in: "owner", st: []replay.Status{{Stream: "s", LastSeq: 5}}}}, time.Now())
	for _, seq := range []uint64{1, 2, 4, 5} {
		out.ack(t, seq, nil)
	}
	l := lagOfStream(t, st, "s")
	wantSecs := time.Since(in(3).Created).Seconds()
	if l.Position != 2 || l.InFlight != 1 || l.UpstreamLast != 5 || l.LagMessages != 3 || math.Abs(l.LagSeconds-wantSecs) > 5 {
		t.Fatalf("1, 2, 4, 5 finished, 3 stuck: %+v, want position 2, 1 in flight, lag 3 and about %.0fs", l, wantSecs)
	}
	st.lag.export(time.Now())
	if n := gaugeValue(t, m.LagMessages.WithLabelValues("s")); n != 3 {
		t.Fatalf("svckit_stream_lag_messages = %v with 3 stuck, want 3", n)
	}
	// An hour later, still running: still holding the stream back.
	if ls := st.lag.status(time.Now().Add(time.Hour)); len(ls) != 1 || ls[0].Position != 2 || ls[0].InFlight != 1 {
		t.Fatalf("3 stuck for an hour: %+v, want position 2", ls)
	}
	out.ack(t, 3, nil)
	if l := lagOfStream(t, st, "s"); l.Position != 5 || l.InFlight != 0 || l.LagMessages != 0 || l.LagSeconds != 0 {
		t.Fatalf("3 finished: %+v, want position 5, lag 0", l)
	}
}

// nsqd delivers an input again while it is in flight (its timeout passed
// while its transform hung): it is one input, counted once, in flight
// until one of its deliveries finishes. Once none runs (they failed), it
// counts until its retry is due (retryHold), then no longer: it may have
// gone to another instance.
func TestStageLagRedeliveredInputCountsOnce(t *testing.T) {
	out := &heldOut{}
	st, err := New(Options{Transform: splitOdd, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	in := func(seq uint64) envelope.Envelope { return envelope.Envelope{Stream: "r", Seq: seq, Payload: value(2)} }
	for seq := uint64(1); seq <= 5; seq++ {
		deliver(t, st, in(seq))
	}
	deliver(t, st, in(3)) // again, while the first is in flight
	for _, seq := range []uint64{1, 2, 4, 5} {
		out.ack(t, seq, nil)
	}
	if l := lagOfStream(t, st, "r"); l.Position != 2 || l.InFlight != 1 {
		t.Fatalf("3 delivered twice, in flight: %+v, want position 2, 1 in flight", l)
	}
	// The first delivery fails; the second still runs, and never expires.
	out.ack(t, 3, errors.New("nsqd went away"))
	if ls := st.lag.status(time.Now().Add(time.Hour)); len(ls) != 1 || ls[0].Position != 2 || ls[0].InFlight != 1 {
		t.Fatalf("3's first delivery failed, its second runs: %+v, want position 2 even an hour on", ls)
	}
	// The second fails too: 3 waits for its retry, counted meanwhile...
	out.ack(t, 3, errors.New("nsqd went away"))
	now := time.Now()
	if ls := st.lag.status(now.Add(retryHold(1) - time.Second)); ls[0].Position != 2 || ls[0].InFlight != 1 {
		t.Fatalf("3 waiting for its retry: %+v, want position 2", ls)
	}
	// ... and not after it was due (and the grace).
	if ls := st.lag.status(now.Add(retryHold(1) + time.Second)); ls[0].Position != 5 || ls[0].InFlight != 0 {
		t.Fatalf("3's retry overdue: %+v, want position 5, nothing in flight", ls)
	}
	// It comes here after all: in flight again, then finished.
	deliver(t, st, in(3))
	if l := lagOfStream(t, st, "r"); l.Position != 2 || l.InFlight != 1 {
		t.Fatalf("3 delivered once more: %+v, want position 2", l)
	}
	out.ack(t, 3, nil)
	if l := lagOfStream(t, st, "r"); l.Position != 5 || l.InFlight != 0 {
		t.Fatalf("3 finished: %+v, want position 5", l)
	}
	// A retry's hold follows the default policy's delays, capped.
	if a, b, c := retryHold(1), retryHold(3), retryHold(100); a != time.Second+retryGrace || b != 4*time.Second+retryGrace ||
		c != time.Minute+retryGrace {
		t.Errorf("retryHold(1, 3, 100) = %s, %s, %s", a, b, c)
	}
}

// The upstream's last sequence is its latest answer, even lower than the
// one before (the stream restarted): the stage's position follows it down,
// so that the restarted stream's inputs move it again and the lag is 0
// when they are finished, not the old position's distance for ever.
func TestStageLagFollowsALoweredUpstream(t *testing.T) {
	b := newLagBook(replay.NewMetrics(prometheus.NewRegistry()))
	created := time.Now()
	answer := func(last uint64) []upstreamAnswer {
		return []upstreamAnswer{{in: "owner", st: []replay.Status{{Stream: "s", LastSeq: last}}}}
	}
	one := func() StreamLag {
		t.Helper()
		ls := b.status(time.Now())
		if len(ls) != 1 {
			t.Fatalf("streams: %+v, want s alone", ls)
		}
		return ls[0]
	}
	b.arrived("s", 990, created)
	b.finished("s", 990, created)
	b.learn("upstream", answer(1000), time.Now())
	if l := one(); l.Position != 990 || l.UpstreamLast != 1000 || l.LagMessages != 10 {
		t.Fatalf("at 990 of 1000: %+v, want lag 10", l)
	}
	b.learn("upstream", answer(1), time.Now()) // restarted
	if l := one(); l.Position != 1 || l.UpstreamLast != 1 || l.LagMessages != 0 || l.LagSeconds != 0 {
		t.Fatalf("the upstream restarted at 1: %+v, want position 1, lag 0", l)
	}
	b.arrived("s", 2, created)
	if l := one(); l.Position != 1 || l.LagMessages != 1 || l.InFlight != 1 {
		t.Fatalf("the restarted stream's 2 in flight: %+v, want position 1, lag 1", l)
	}
	b.finished("s", 2, created)
	if l := one(); l.Position != 2 || l.LagMessages != 0 {
		t.Fatalf("the restarted stream's 2 finished: %+v, want position 2, lag 0", l)
	}
	b.learn("upstream", answer(3), time.Now())
	if l := one(); l.UpstreamLast != 3 || l.LagMessages != 1 {
		t.Fatalf("the upstream at 3: %+v, want lag 1", l)
	}
}

// A stream the upstream answers without, twice in a row, with nothing of
// it in flight, is forgotten, its gauge series deleted; one with an input
// in flight, or whose owner did not answer, or when no upstream answered,
// is kept. Forgotten, it comes back with its next input.
func TestStageLagForgetsStreamsTheUpstreamNoLongerReports(t *testing.T) {
	reg := prometheus.NewRegistry()
	b := newLagBook(replay.NewMetrics(reg))
	created := time.Now()
	for _, id := range []string{"gone", "kept", "busy", "ownerfailed"} {
		b.arrived(id, 1, created)
		if id != "busy" {
			b.finished(id, 1, created)
		}
	}
	series := func() []string {
		t.Helper()
		b.export(time.Now())
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, mf := range mfs {
			if mf.GetName() != "svckit_stream_lag_messages" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "stream" {
						ids = append(ids, l.GetValue())
					}
				}
			}
		}
		slices.Sort(ids)
		return ids
	}
	streams := func() []string {
		var ids []string
		for _, l := range b.status(time.Now()) {
			ids = append(ids, l.Stream)
		}
		return ids
	}
	all := []string{"busy", "gone", "kept", "ownerfailed"}
	if got := series(); !slices.Equal(got, all) {
		t.Fatalf("series %v, want %v", got, all)
	}
	answers := []upstreamAnswer{
		{in: "owner-of-kept", own: []string{"kept"}, st: []replay.Status{{Stream: "kept", LastSeq: 1}}},
		{in: "owner-of-ownerfailed", own: []string{"ownerfailed"}, err: errors.New("connection refused")},
	}
	// No upstream, or none answering: nothing is learnt, nothing forgotten.
	for range 3 {
		b.learn("upstream", nil, time.Now())
		b.learn("upstream", answers[1:], time.Now())
	}
	b.learn("upstream", answers, time.Now())
	if got := streams(); !slices.Equal(got, all) {
		t.Fatalf("after one refresh without gone and busy: %v, want all kept", got)
	}
	b.learn("upstream", answers, time.Now())
	want := []string{"busy", "kept", "ownerfailed"}
	if got := streams(); !slices.Equal(got, want) {
		t.Fatalf("after two refreshes without gone and busy: %v, want %v", got, want)
	}
	if got := series(); !slices.Equal(got, want) {
		t.Fatalf("series after gone was forgotten: %v, want %v", got, want)
	}
	// busy finished: forgotten at the next refresh without it.
	b.finished("busy", 1, created)
	b.learn("upstream", answers, time.Now())
	want = []string{"kept", "ownerfailed"}
	if got := streams(); !slices.Equal(got, want) {
		t.Fatalf("busy finished, unreported: %v, want %v", got, want)
	}
	// gone's next input brings it back, from just before it.
	b.arrived("gone", 7, created)
	b.finished("gone", 7, created)
	for _, l := range b.status(time.Now()) {
		if l.Stream == "gone" && l.Position != 7 {
			t.Fatalf("gone back: %+v, want position 7", l)
		}
	}
	if got := series(); !slices.Equal(got, []string{"gone", "kept", "ownerfailed"}) {
		t.Fatalf("series with gone back: %v", got)
	}
}

// Inputs of a stream that the book drops meanwhile are not lost: one that
// found the stream before it was dropped looks it up again.
func TestStageLagArrivalRacingAForget(t *testing.T) {
	b := newLagBook(replay.NewMetrics(prometheus.NewRegistry()))
	created := time.Now()
	b.arrived("s", 1, created)
	b.finished("s", 1, created)
	stale := b.byID.Load() // as an input that looked s up before the drop
	none := []upstreamAnswer{{in: "owner", st: []replay.Status{}}}
	b.learn("upstream", none, time.Now())
	b.learn("upstream", none, time.Now())
	if got := b.status(time.Now()); len(got) != 0 {
		t.Fatalf("s not forgotten: %+v", got)
	}
	b.byID.Store(stale) // the input goes on from the stale copy
	b.arrived("s", 2, created)
	if got := b.status(time.Now()); len(got) != 1 || got[0].Position != 1 || got[0].InFlight != 1 {
		t.Fatalf("an arrival from a stale lookup: %+v, want s back, 2 in flight", got)
	}
}

// Inputs from many goroutines while refreshes forget the stream: nothing
// races (go test -race), and nothing is left in flight once every input
// finished.
func TestStageLagConcurrentInputsAndForgets(t *testing.T) {
	b := newLagBook(replay.NewMetrics(prometheus.NewRegistry()))
	created := time.Now()
	none := []upstreamAnswer{{in: "owner", st: []replay.Status{}}}
	stop := make(chan struct{})
	forgot := make(chan struct{})
	go func() {
		defer close(forgot)
		for {
			select {
			case <-stop:
				return
			default:
				b.learn("upstream", none, time.Now())
				b.status(time.Now())
			}
		}
	}()
	var wg sync.WaitGroup
	for g := range uint64(4) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(1); i <= 2000; i++ {
				seq := i*4 + g
				b.arrived("s", seq, created)
				if i%7 == 0 {
					b.failed("s", seq, 1, time.Now())
					b.arrived("s", seq, created)
				}
				b.finished("s", seq, created)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-forgot
	for _, l := range b.status(time.Now()) {
		if l.InFlight != 0 {
			t.Fatalf("every input finished, yet %+v", l)
		}
	}
}

// The in-flight table agrees with a map through random additions and
// deletions: a window of consecutive sequences, as a stream's inputs are,
// some left behind for long (stuck inputs), growing to a few hundred and
// shrinking again, and deletions of sequences not in it.
func TestFlightSetAgreesWithAMap(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var set flightSet
	ref := map[uint64]bool{}
	var in []uint64 // ref's keys, for picking one at random
	del := func(i int) {
		set.del(in[i])
		delete(ref, in[i])
		in[i] = in[len(in)-1]
		in = in[:len(in)-1]
	}
	check := func(step int) {
		t.Helper()
		if set.n != len(ref) {
			t.Fatalf("step %d: %d in the table, %d in the map", step, set.n, len(ref))
		}
		for seq := range ref {
			if f := set.find(seq); f == nil || f.seq != seq {
				t.Fatalf("step %d: %d not found", step, seq)
			}
		}
		n := 0
		for _, f := range set.slots {
			if f.seq != 0 {
				n++
				if !ref[f.seq] {
					t.Fatalf("step %d: %d in the table, deleted", step, f.seq)
				}
			}
		}
		if n != len(ref) {
			t.Fatalf("step %d: %d slots used, want %d", step, n, len(ref))
		}
	}
	next := uint64(1)
	for step := range 60000 {
		// Phases of 5000 steps: arrivals ahead of finishes, then behind.
		arriving := 6
		if step/5000%2 == 1 {
			arriving = 4
		}
		switch op := r.IntN(10); {
		case op < arriving || len(in) == 0:
			set.add(inFlight{seq: next})
			ref[next] = true
			in = append(in, next)
			next++
		case op < 9: // a recent one finishes (the last few added)
			del(len(in) - 1 - r.IntN(min(len(in), 8)))
		default: // any, or one that is not in
			if r.IntN(2) == 0 {
				del(r.IntN(len(in)))
			} else {
				set.del(next + uint64(r.IntN(100)))
			}
		}
		if step%53 == 0 {
			check(step)
		}
	}
	check(-1)
}

// BenchmarkLagBookPerInputWindow: BenchmarkLagBookPerInput with 256
// inputs of the stream in flight throughout (a busy stream whose outputs
// are being published), one of them stuck.
func BenchmarkLagBookPerInputWindow(b *testing.B) {
	book := newLagBook(replay.NewMetrics(prometheus.NewRegistry()))
	created := time.Now()
	const window = 256
	for seq := uint64(1); seq <= window; seq++ {
		book.arrived("sensor-1", seq, created)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		seq := uint64(i) + 2 // 1 stays in flight
		book.arrived("sensor-1", seq+window, created)
		book.finished("sensor-1", seq, created)
	}
}
