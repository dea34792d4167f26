package stage

import (
	"context"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/tracing"
)

// A traced owner writes each message's creation context into its retained
// record: the send span's for a message published alone, a create span's
// of its own for each message of a batch. A relay serves the records'
// original contexts, not its own.
func TestTraceContextRetainedAndRelayed(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	o, err := replay.OpenOwner(replay.OwnerOptions{Stream: "s", Dir: t.TempDir(), Log: retainlog.DefaultOptions(""),
		Tracer: tracing.New(tp), Topic: "readings"}, ackAll{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close(context.Background())
	ctx := context.Background()
	if _, err := o.Publish(ctx, value(1), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := o.PublishBatch(ctx, [][]byte{value(2), value(3), value(4)}); err != nil {
		t.Fatal(err)
	}
	// Who made which context: message id → span context, from the spans.
	made := map[string]envelope.TraceContext{}
	for _, s := range rec.Ended() {
		for _, a := range s.Attributes() {
			if a.Key == "messaging.message.id" {
				sc := s.SpanContext()
				made[s.Name()+" "+a.Value.AsString()] = envelope.TraceContext{TraceID: sc.TraceID(), SpanID: sc.SpanID(), Flags: byte(sc.TraceFlags())}
			}
		}
	}
	want := map[uint64]envelope.TraceContext{1: made["send readings s/1"], 2: made["create readings s/2"],
		3: made["create readings s/3"], 4: made["create readings s/4"]}
	for seq, tc := range want {
		if tc.IsZero() {
			t.Fatalf("no span made the context of s/%d (spans: %v)", seq, made)
		}
	}
	if want[2].TraceID == want[3].TraceID || want[2].TraceID == want[1].TraceID {
		t.Fatal("messages of a batch share a trace")
	}

	mux := http.NewServeMux()
	replay.NewServer("", replay.NewMetrics(prometheus.NewRegistry()), o).Register(mux)
	owner := serve(t, mux, replay.OwnerTag("s"))
	pass := func(_ context.Context, in envelope.Envelope) ([]Output, error) {
		return []Output{{ContentType: "x", Payload: in.Payload}}, nil
	}
	st, err := New(Options{Name: "relay", Transform: pass, Out: nopOut{}, Upstream: staticUpstream{owner}})
	if err != nil {
		t.Fatal(err)
	}
	relay := serveRelay(t, st)
	for name, addr := range map[string]string{"owner": owner.Addr(), "relay": relay.Addr()} {
		n, err := replay.Client{}.Replay(ctx, addr, replay.Request{Stream: "s", From: 1, To: 4}, func(env envelope.Envelope, _ int) error {
			if env.CreationContext() != want[env.Seq] {
				t.Errorf("%s: s/%d carries %x, want %x", name, env.Seq, env.CreationContext(), want[env.Seq])
			}
			return nil
		})
		if err != nil || n != 4 {
			t.Fatalf("%s: replayed %d: %v", name, n, err)
		}
	}
}

// tracingOut is a recordingOut that says it makes send spans.
type tracingOut struct{ *recordingOut }

func (tracingOut) Traces() bool { return true }

// Live, a stage that does not trace passes its input's creation context on
// to every output (whole, parts, a marker), so a reading's trace survives
// it; in a traced delivery with a publisher that traces it leaves them
// none, for the publisher's send span to give them its own.
func TestLiveOutputsCarryTheInputsContext(t *testing.T) {
	tc := envelope.TraceContext{TraceID: [16]byte{9, 9}, SpanID: [8]byte{7}, Flags: 1}
	run := func(ctx context.Context, tracingPublisher bool) []envelope.Envelope {
		out := &recordingOut{}
		var pub OutputPublisher = out
		if tracingPublisher {
			pub = tracingOut{out}
		}
		st, err := New(Options{Transform: splitOdd, Out: pub})
		if err != nil {
			t.Fatal(err)
		}
		for v := uint64(0); v < 3; v++ { // a marker (0), a whole (2)... and two parts (1)
			m := &pubsub.Message{Envelope: envelope.Envelope{Stream: "s", Seq: v + 1, Payload: value(v), Trace: &tc}}
			if err := st.HandleMessage(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		if len(out.envs) != 4 {
			t.Fatalf("%d outputs, want 4", len(out.envs))
		}
		return out.envs
	}
	traced := trace.ContextWithSpanContext(context.Background(), tracing.Remote(tc))
	for name, ctx := range map[string]context.Context{"untraced": context.Background(), "traced, publisher not": traced} {
		for _, e := range run(ctx, name == "untraced") {
			if e.CreationContext() != tc {
				t.Errorf("%s: %s/%d part %d carries %x, want the input's %x", name, e.Stream, e.Seq, e.Part, e.CreationContext(), tc)
			}
		}
	}
	for _, e := range run(traced, true) {
		if e.Trace != nil {
			t.Errorf("traced: %s/%d part %d carries %x, want none (its send span's)", e.Stream, e.Seq, e.Part, e.CreationContext())
		}
	}
}
