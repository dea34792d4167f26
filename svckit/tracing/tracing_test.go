package tracing

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/svckit/svckit/svckit/envelope"
)

func recorder(t *testing.T, opts ...sdktrace.TracerProviderOption) (*Tracer, *tracetest.SpanRecorder) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(append(opts, sdktrace.WithSpanProcessor(rec))...)
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return New(tp), rec
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, a := range s.Attributes() {
		if string(a.Key) == key {
			return a.Value.Emit()
		}
	}
	return ""
}

// Tracing off is a nil *Tracer: nothing is made, nothing allocated, and an
// envelope gets no context.
func TestOffIsFree(t *testing.T) {
	var tr *Tracer
	if New(nil) != nil {
		t.Fatal("New(nil) is not nil")
	}
	d := tr.Topic("readings", "workers")
	if d != nil {
		t.Fatal("a nil Tracer's Topic is not nil")
	}
	ctx := context.Background()
	env := envelope.Envelope{Stream: "s", Seq: 1}
	failed := errors.New("x")
	allocs := testing.AllocsPerRun(100, func() {
		_, send := d.Send(ctx)
		send.Created(&env)
		send.Messages("s", 1, 1)
		send.End(nil)
		_, p := d.Process(ctx, &env, Live, 1)
		p.End(failed)
		d.Create(ctx, send).End(nil)
	})
	if allocs != 0 {
		t.Fatalf("tracing off allocates %v times per message", allocs)
	}
	if env.Trace != nil {
		t.Fatalf("tracing off gave the envelope a context: %x", env.CreationContext())
	}
}

// A send span is the creation context of an envelope without one; an
// envelope with one keeps it, and the span links to it.
func TestSendCreationContext(t *testing.T) {
	tr, rec := recorder(t)
	ctx, send := tr.Topic("readings", "").Send(context.Background())
	env := envelope.Envelope{Stream: "s", Seq: 7}
	send.Created(&env)
	send.Messages("s", 7, 7)
	if got, want := env.CreationContext(), send.Context(); got != want || got.IsZero() {
		t.Fatalf("envelope's context %x, want the span's %x", got, want)
	}
	if sc := trace.SpanContextFromContext(ctx); sc.SpanID() != send.Context().SpanID || !Traced(ctx) {
		t.Fatal("the send span is not in its context")
	}
	original := envelope.TraceContext{TraceID: [16]byte{1}, SpanID: [8]byte{2}, Flags: 1}
	kept := envelope.Envelope{Stream: "s", Seq: 8, Trace: &original}
	send.Created(&kept)
	if kept.CreationContext() != original {
		t.Fatalf("a message's own creation context was replaced: %x", kept.CreationContext())
	}
	send.End(errors.New("nsqd refused"))
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	s := spans[0]
	if s.Name() != "send readings" || s.SpanKind() != trace.SpanKindProducer || attr(s, "messaging.system") != "nsq" ||
		attr(s, "messaging.operation.type") != "send" || attr(s, "messaging.destination.name") != "readings" ||
		attr(s, "messaging.message.id") != "s/7" || attr(s, "error.type") != "_OTHER" || s.Status().Code != codes.Error {
		t.Fatalf("send span: %s %v %v %v", s.Name(), s.SpanKind(), s.Attributes(), s.Status())
	}
	if len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != original.SpanID {
		t.Fatalf("send span's links %v, want the kept context", s.Links())
	}
}

// A process span is the child of its message's creation context and links
// to it; a replayed one says so.
func TestProcessChildAndLink(t *testing.T) {
	tr, rec := recorder(t)
	d := tr.Topic("readings", "workers")
	_, send := d.Send(context.Background())
	env := envelope.Envelope{Stream: "s", Seq: 9}
	send.Created(&env)
	send.End(nil)
	// The envelope crosses a process boundary: only its bytes do.
	b, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := envelope.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	_, p := d.Process(context.Background(), &got, Replay, 3)
	p.End(nil)
	spans := rec.Ended()
	s := spans[len(spans)-1]
	sc := Remote(env.CreationContext())
	if s.Parent().SpanID() != sc.SpanID() || s.SpanContext().TraceID() != sc.TraceID() || !s.Parent().IsRemote() {
		t.Fatalf("process span's parent %v, want the creation context %v", s.Parent(), sc)
	}
	if len(s.Links()) != 1 || s.Links()[0].SpanContext.SpanID() != sc.SpanID() {
		t.Fatalf("process span's links %v", s.Links())
	}
	if s.Name() != "process readings" || s.SpanKind() != trace.SpanKindConsumer || attr(s, "messaging.consumer.group.name") != "workers" ||
		attr(s, "messaging.operation.type") != "process" || attr(s, "messaging.message.id") != "s/9" ||
		attr(s, "svckit.delivery") != "replay" || attr(s, "messaging.nsq.message.attempts") != "3" {
		t.Fatalf("process span: %s %v %v", s.Name(), s.SpanKind(), s.Attributes())
	}
	// A message without a context starts a trace of its own.
	_, root := d.Process(context.Background(), &envelope.Envelope{Stream: "s", Seq: 10}, Live, 1)
	root.End(nil)
	spans = rec.Ended()
	if s := spans[len(spans)-1]; s.Parent().IsValid() || len(s.Links()) != 0 {
		t.Fatalf("a message without a context: parent %v, links %v", s.Parent(), s.Links())
	}
}

// Each message of a batch gets a create span: the root of its own trace,
// linked to and from the batch's send span.
func TestCreateSpansOfABatch(t *testing.T) {
	tr, rec := recorder(t)
	d := tr.Topic("readings", "")
	ctx, send := d.Send(context.Background())
	var creates []Span
	for range 3 {
		creates = append(creates, d.Create(ctx, send))
	}
	traces := map[trace.TraceID]bool{}
	for i, c := range creates {
		c.Messages("s", uint64(i+1), uint64(i+1))
		traces[c.s.SpanContext().TraceID()] = true
		c.End(nil)
	}
	send.Batch(3)
	send.End(nil)
	if len(traces) != 3 || traces[send.s.SpanContext().TraceID()] {
		t.Fatalf("create spans share traces: %d distinct, send's among them %v", len(traces), traces[send.s.SpanContext().TraceID()])
	}
	spans := rec.Ended()
	s := spans[len(spans)-1]
	if s.Name() != "send readings" || len(s.Links()) != 3 || attr(s, "messaging.batch.message_count") != "3" {
		t.Fatalf("send span of a batch: %s, %d links, %v", s.Name(), len(s.Links()), s.Attributes())
	}
	for _, c := range spans[:3] {
		if c.Name() != "create readings" || c.Parent().IsValid() || len(c.Links()) != 1 ||
			c.Links()[0].SpanContext.SpanID() != send.s.SpanContext().SpanID() || attr(c, "messaging.operation.type") != "create" {
			t.Fatalf("create span: %s parent %v links %v attrs %v", c.Name(), c.Parent(), c.Links(), c.Attributes())
		}
	}
}

// An unsampled creation context travels (flags 0), and no later hop makes
// a span in its trace, whatever its own sampler (here one that samples
// every root): svckit asks no sampler again. The context passes on
// through the process span to the next send.
func TestSamplingFollowsTheReading(t *testing.T) {
	tr, rec := recorder(t, sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
	_, send := tr.Topic("readings", "").Send(context.Background())
	env := envelope.Envelope{Stream: "s", Seq: 1}
	send.Created(&env)
	send.End(nil)
	if tc := env.CreationContext(); tc.IsZero() || tc.Flags&1 != 0 {
		t.Fatalf("an unsampled send gave %x", tc)
	}
	tr2, rec2 := recorder(t, sdktrace.WithSampler(sdktrace.AlwaysSample())) // downstream samples everything
	ctx, p := tr2.Topic("readings", "workers").Process(context.Background(), &env, Live, 1)
	_, out := tr2.Topic("results", "").Send(ctx)
	res := envelope.Envelope{Stream: "s", Seq: 1}
	out.Created(&res)
	out.End(nil)
	p.End(nil)
	if n := len(rec.Ended()) + len(rec2.Ended()); n != 0 {
		t.Fatalf("%d spans recorded of an unsampled reading", n)
	}
	if res.CreationContext() != env.CreationContext() {
		t.Fatalf("the result's context %x, want the reading's unsampled %x", res.CreationContext(), env.CreationContext())
	}
}

// countingSpan is a caller's span that does not record, counting what is
// done to it.
type countingSpan struct {
	trace.Span
	sc    trace.SpanContext
	calls int
}

func (c *countingSpan) SpanContext() trace.SpanContext      { return c.sc }
func (c *countingSpan) IsRecording() bool                   { return false }
func (c *countingSpan) End(...trace.SpanEndOption)          { c.calls++ }
func (c *countingSpan) AddLink(trace.Link)                  { c.calls++ }
func (c *countingSpan) SetAttributes(...attribute.KeyValue) { c.calls++ }
func (c *countingSpan) SetStatus(codes.Code, string)        { c.calls++ }

// In an unsampled trace svckit makes no span and touches none it does not
// own: a publisher given the caller's span ends, links and annotates
// nothing of it, and still passes its context on.
func TestUnsampledCallersSpanUntouched(t *testing.T) {
	tr, rec := recorder(t)
	sc := Remote(envelope.TraceContext{TraceID: [16]byte{3}, SpanID: [8]byte{4}}) // flags 0: not sampled
	caller := &countingSpan{sc: sc}
	ctx := trace.ContextWithSpan(context.Background(), caller)
	_, send := tr.Topic("readings", "").Send(ctx)
	env := envelope.Envelope{Stream: "s", Seq: 1}
	send.Created(&env)
	send.Messages("s", 1, 1)
	send.Link(envelope.TraceContext{TraceID: [16]byte{5}, SpanID: [8]byte{6}})
	send.End(errors.New("refused"))
	if caller.calls != 0 || len(rec.Ended()) != 0 {
		t.Fatalf("the caller's span was touched %d times; %d spans made", caller.calls, len(rec.Ended()))
	}
	if env.CreationContext().SpanID != sc.SpanID() {
		t.Fatalf("the envelope's context %x, want the caller's", env.CreationContext())
	}
}
