package pubsub_test

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/testenv"
	"github.com/svckit/svckit/svckit/tracing"
)

// TestTracingTwoHops runs a stage's shape over a real nsqd with tracing
// on: a batcher publishes to "in"; a consumer of "in" publishes its output
// to "out" from its handler, Async, finishing the input when nsqd took the
// output; a consumer of "out" takes it. The spans form one trace: send in
// → process in → send out → process out, each the child of the one
// before, and the process span of "in" lasts until its Async outcome,
// after the send it waited for.
func TestTracingTwoHops(t *testing.T) {
	stack := testenv.StartStack(t)
	e := newEnv(t, stack, 1)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tr := tracing.New(tp)

	p := e.producer(t, nil)
	in := p.NewBatcher("trace-in", pubsub.BatcherOptions{Tracer: tr})
	out := p.NewBatcher("trace-out", pubsub.BatcherOptions{Tracer: tr})
	t.Cleanup(func() { closeBatcher(t, in); closeBatcher(t, out) })
	createTopic(t, stack.NSQD, "trace-in")
	createTopic(t, stack.NSQD, "trace-out")

	e.startConsumer(t, pubsub.HandlerFunc(func(ctx context.Context, m *pubsub.Message) error {
		res := m.Envelope
		res.Trace = nil // a new message: its context is the stage's send
		res.Payload = append([]byte("result of "), m.Envelope.Payload...)
		out.PublishEnvelopeAsync(ctx, res, m.Async())
		return nil
	}), pubsub.ConsumerOptions{Topic: "trace-in", Channel: "stage", NSQ: nsqConfig(10), Tracer: tr})
	got := make(chan envelope.Envelope, 1)
	e.startConsumer(t, pubsub.HandlerFunc(func(_ context.Context, m *pubsub.Message) error {
		got <- m.Envelope
		return nil
	}), pubsub.ConsumerOptions{Topic: "trace-out", Channel: "app", NSQ: nsqConfig(10), Tracer: tr})

	done := make(chan error, 1)
	in.PublishEnvelopeAsync(context.Background(), envelope.Envelope{Stream: "s", Seq: 1, Payload: []byte("reading")},
		func(err error) { done <- err })
	awaitDone(t, done, 1)
	var res envelope.Envelope
	select {
	case res = <-got:
	case <-time.After(waitLong):
		t.Fatal("no result")
	}
	if res.CreationContext().IsZero() {
		t.Fatal("the result carries no trace context")
	}
	want := []string{"send trace-in", "process trace-in", "send trace-out", "process trace-out"}
	var spans map[string]sdktrace.ReadOnlySpan
	if !testenv.Eventually(waitLong, func() bool {
		spans = map[string]sdktrace.ReadOnlySpan{}
		for _, s := range rec.Ended() {
			spans[s.Name()] = s
		}
		return len(spans) == len(want)
	}) {
		t.Fatalf("spans ended: %v", spans)
	}
	for i := 1; i < len(want); i++ {
		parent, child := spans[want[i-1]], spans[want[i]]
		if child.Parent().SpanID() != parent.SpanContext().SpanID() || child.SpanContext().TraceID() != parent.SpanContext().TraceID() {
			t.Errorf("%s: parent %s, want %s (%s)", want[i], child.Parent().SpanID(), parent.SpanContext().SpanID(), want[i-1])
		}
	}
	for _, name := range []string{"process trace-in", "process trace-out"} {
		s := spans[name]
		if s.SpanKind() != trace.SpanKindConsumer || len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != s.Parent().SpanID() {
			t.Errorf("%s: kind %v, links %v; want a consumer span linked to its parent", name, s.SpanKind(), s.Links())
		}
	}
	if spans["process trace-in"].EndTime().Before(spans["send trace-out"].EndTime()) {
		t.Error("the input's process span ended before the send it waited for")
	}
	if got := tracing.Remote(res.CreationContext()).SpanID(); got != spans["send trace-out"].SpanContext().SpanID() {
		t.Errorf("the result's creation context %s, want its send span's %s", got, spans["send trace-out"].SpanContext().SpanID())
	}

	// A group published with tracing on: the caller's envelopes are only
	// read (the same slice may go to several topics).
	group := []envelope.Envelope{{Stream: "g", Seq: 1, Payload: []byte("a")}, {Stream: "g", Seq: 2, Payload: []byte("b")}}
	done = make(chan error, 1)
	out.PublishEnvelopesAsync(context.Background(), group, func(err error) { done <- err })
	awaitDone(t, done, 1)
	for _, e := range group {
		if e.Trace != nil {
			t.Errorf("the caller's envelope %s/%d was given a context", e.Stream, e.Seq)
		}
	}
}
