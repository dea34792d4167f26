// Package tracing follows one message through every hop with OpenTelemetry
// spans, carrying the trace context in the envelope (NSQ messages have no
// headers). It depends on the OpenTelemetry API only; svckit/tracing/otlp
// makes the SDK's provider that exports the spans, from the standard
// OTEL_* environment variables.
//
// A nil *Tracer is tracing off: every method returns at once, allocates
// nothing and adds no byte to an envelope.
//
// # Spans
//
// The spans follow the OpenTelemetry semantic conventions for messaging,
// version 1.43.0 (SemconvVersion), which are still in development status:
//
//   - send <topic> (PRODUCER): a publish. For a stream's owner it covers
//     the wait for the durable append (CLIENT for a batch, whose messages
//     get create spans as their creation contexts); for a batching
//     publisher, the wait for nsqd's acknowledgement. Its context is the message's creation
//     context, written into the envelope, unless the envelope already
//     carries one (a relayed or re-published message): then the span
//     links to that context and leaves it as it is.
//   - create <topic> (PRODUCER): one message of a batch a stream's owner
//     publishes (PublishBatch of several): the root of that message's
//     own trace, linked to and from the batch's send span, and its
//     creation context. It ends with the send span.
//   - process <topic> (CONSUMER): one delivery handed to a handler, until
//     its outcome (an asynchronous handler included), or one replayed
//     message applied by a tracking consumer (svckit.delivery "replay",
//     or "relayed" when it came through a stage's relay).
//     It links to the message's creation context and, since it processes
//     one message pushed to it, is also that context's child: the
//     conventions allow the parent for a single message and require the
//     link. A reading is then one trace (sensor's send, a worker's
//     process and send, the app's process), sampled or not as a whole.
//
// Attributes: messaging.system "nsq" (the conventions list no value for
// NSQ, so a custom one), messaging.operation.name and .type,
// messaging.destination.name (the topic), messaging.consumer.group.name
// (the channel), messaging.message.id ("<stream>/<seq>", svckit's identity
// of a message), messaging.batch.message_count for a batch, and
// messaging.nsq.message.attempts for a delivery.
package tracing

import (
	"context"
	"slices"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/svckit/svckit/svckit/envelope"
)

// SemconvVersion is the version of the OpenTelemetry semantic conventions
// the spans follow (messaging, in development status at that version).
const SemconvVersion = "1.43.0"

// System is the messaging.system attribute's value.
const System = "nsq"

// instrumentationName names svckit's tracer in every span it makes.
const instrumentationName = "github.com/svckit/svckit"

// The attribute keys, as the conventions name them.
const (
	keySystem        = attribute.Key("messaging.system")
	keyOperationName = attribute.Key("messaging.operation.name")
	keyOperationType = attribute.Key("messaging.operation.type")
	keyDestination   = attribute.Key("messaging.destination.name")
	keyGroup         = attribute.Key("messaging.consumer.group.name")
	keyMessageID     = attribute.Key("messaging.message.id")
	keyBatchCount    = attribute.Key("messaging.batch.message_count")
	keyAttempts      = attribute.Key("messaging.nsq.message.attempts")
	keyErrorType     = attribute.Key("error.type")
	// KeyDelivery is "live" for a delivery from nsqd, and "replay" or
	// "relayed" for a message a tracking consumer recovered by a replay
	// request to the stream's owner or through a relay stage.
	KeyDelivery = attribute.Key("svckit.delivery")
)

// Tracer makes svckit's spans. A nil *Tracer is tracing off.
type Tracer struct {
	tr trace.Tracer
}

// New returns a Tracer over tp, or nil (tracing off) when tp is nil.
func New(tp trace.TracerProvider) *Tracer {
	if tp == nil {
		return nil
	}
	return &Tracer{tr: tp.Tracer(instrumentationName,
		trace.WithSchemaURL("https://opentelemetry.io/schemas/"+SemconvVersion))}
}

// Span is one of svckit's spans. The zero Span (tracing off) does nothing;
// one in an unsampled trace is only that trace's context (svckit makes no
// span there), which it passes on.
type Span struct {
	s  trace.Span        // the span svckit made, or nil
	sc trace.SpanContext // the context when svckit made no span
}

func (s Span) spanContext() trace.SpanContext {
	if s.s != nil {
		return s.s.SpanContext()
	}
	return s.sc
}

// Context is the span's context as an envelope carries it; zero when
// tracing is off.
func (s Span) Context() envelope.TraceContext {
	sc := s.spanContext()
	if !sc.IsValid() {
		return envelope.TraceContext{}
	}
	return envelope.TraceContext{TraceID: sc.TraceID(), SpanID: sc.SpanID(), Flags: byte(sc.TraceFlags())}
}

// Messages names the messages the span is about: one (first == last) sets
// messaging.message.id, several messaging.batch.message_count.
func (s Span) Messages(stream string, first, last uint64) {
	if s.s == nil || !s.s.IsRecording() {
		return
	}
	if first == last {
		if stream != "" || first != 0 {
			s.s.SetAttributes(keyMessageID.String(MessageID(stream, first)))
		}
		return
	}
	s.Batch(int(last - first + 1))
}

// Traced reports whether ctx is in a trace (a span's, or a message's
// creation context): a stage then leaves its outputs' context to its send
// span, and otherwise passes its input's on.
func Traced(ctx context.Context) bool { return trace.SpanContextFromContext(ctx).IsValid() }

// Batch says the span is about n messages (messaging.batch.message_count).
func (s Span) Batch(n int) {
	if s.s == nil || !s.s.IsRecording() {
		return
	}
	s.s.SetAttributes(keyBatchCount.Int(n))
}

// End ends the span with the operation's outcome.
func (s Span) End(err error) {
	if s.s == nil {
		return
	}
	if err != nil && s.s.IsRecording() {
		s.s.SetStatus(codes.Error, err.Error())
		s.s.SetAttributes(keyErrorType.String("_OTHER"))
	}
	s.s.End()
}

// MessageID is the messaging.message.id of (stream, seq).
func MessageID(stream string, seq uint64) string {
	return stream + "/" + strconv.FormatUint(seq, 10)
}

// Remote is an envelope's trace context as a remote span context; invalid
// when tc is zero.
func Remote(tc envelope.TraceContext) trace.SpanContext {
	if tc.IsZero() {
		return trace.SpanContext{}
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tc.TraceID, SpanID: tc.SpanID,
		TraceFlags: trace.TraceFlags(tc.Flags), Remote: true})
}

// Created gives env its creation context: the send span's, unless env
// already has one (a message re-published or relayed keeps its own, as
// the conventions ask), which the span then links to.
func (s Span) Created(env *envelope.Envelope) {
	if env.Trace == nil || env.Trace.IsZero() {
		if tc := s.Context(); !tc.IsZero() {
			// Allocated here only: with tracing off nothing escapes.
			p := new(envelope.TraceContext)
			*p = tc
			env.Trace = p
		}
		return
	}
	s.Link(*env.Trace)
}

// Link links the span to a message's own creation context, which it keeps.
func (s Span) Link(tc envelope.TraceContext) {
	if s.s != nil && s.s.IsRecording() && !tc.IsZero() {
		s.s.AddLink(trace.Link{SpanContext: Remote(tc)})
	}
}

// unsampled reports a context whose trace was not sampled: svckit makes
// no span in it and asks no sampler again, so a reading unsampled where it
// was created is unsampled at every hop. A parent-based sampler (the
// SDK's default, and the parentbased_* ones) would decide the same; any
// other sampler is not asked for an unsampled reading's later hops. A span
// that does not record still cost about half a microsecond and several
// allocations. The context still travels, so the decision does too.
func unsampled(sc trace.SpanContext) bool { return sc.IsValid() && !sc.IsSampled() }

// Delivery says how a message reached its consumer.
type Delivery uint8

const (
	Live    Delivery = iota // from nsqd
	Replay                  // recovered by a replay request to the stream's owner
	Relayed                 // recovered by a replay request through a relay (a stage)
)

func (d Delivery) String() string {
	switch d {
	case Replay:
		return "replay"
	case Relayed:
		return "relayed"
	}
	return "live"
}

// Destination is the spans of one topic (and, for a consumer, its
// channel): their names and fixed attributes, made once rather than for
// every message. A nil *Destination (tracing off) makes no spans.
type Destination struct {
	tr                    trace.Tracer
	send, create, process string
	// The spans' start options: kind and fixed attributes (an option is
	// an allocation each time it is made).
	sendOpts, batchOpts, createOpts, procOpts []trace.SpanStartOption
	// createAttrs are set only on a create span that records: an
	// unsampled one (most, with a ratio sampler, and there is one per
	// message of a batch) skips copying them.
	createAttrs []attribute.KeyValue
}

// Topic prepares the spans of messages to or from topic, consumed on
// channel ("" for a publisher); nil when tracing is off.
func (t *Tracer) Topic(topic, channel string) *Destination {
	if t == nil {
		return nil
	}
	common := []attribute.KeyValue{keySystem.String(System), keyDestination.String(topic)}
	attrs := func(op string, more ...attribute.KeyValue) trace.SpanStartOption {
		return trace.WithAttributes(append(append(slices.Clip(common), keyOperationName.String(op), keyOperationType.String(op)), more...)...)
	}
	var group []attribute.KeyValue
	if channel != "" {
		group = append(group, keyGroup.String(channel))
	}
	producer, consumer := trace.WithSpanKind(trace.SpanKindProducer), trace.WithSpanKind(trace.SpanKindConsumer)
	// "{operation} {destination}", or the operation alone without one.
	name := func(op string) string { return strings.TrimSpace(op + " " + topic) }
	return &Destination{tr: t.tr, send: name("send"), create: name("create"), process: name("process"),
		sendOpts:    []trace.SpanStartOption{producer, attrs("send")},
		batchOpts:   []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient), attrs("send")},
		createOpts:  []trace.SpanStartOption{trace.WithNewRoot(), producer},
		createAttrs: append(slices.Clip(common), keyOperationName.String("create"), keyOperationType.String("create")),
		procOpts:    []trace.SpanStartOption{consumer, attrs("process", group...)},
	}
}

// Send starts the send span of messages published to the topic, as a
// child of ctx's span. Give it the envelopes (Created); call End with the
// outcome.
func (d *Destination) Send(ctx context.Context) (context.Context, Span) {
	if d == nil {
		return ctx, Span{}
	}
	if psc := trace.SpanContextFromContext(ctx); unsampled(psc) && !trace.SpanFromContext(ctx).IsRecording() {
		return ctx, Span{sc: psc}
	}
	ctx, s := d.tr.Start(ctx, d.send, d.sendOpts...)
	return ctx, Span{s: s}
}

// SendBatch is Send for a batch whose messages get create spans (Create)
// as their creation contexts: by the conventions its kind is then CLIENT,
// not PRODUCER.
func (d *Destination) SendBatch(ctx context.Context) (context.Context, Span) {
	if d == nil {
		return ctx, Span{}
	}
	ctx, s := d.tr.Start(ctx, d.send, d.batchOpts...)
	return ctx, Span{s: s}
}

// Create starts the create span of one message of a batch that send
// publishes: a new trace's root, so that every message of the batch has a
// creation context (and a trace, sampled or not) of its own, as the
// conventions ask of batch publishing. It links to the send span and the
// send span to it (up to the SDK's link limit, 128 by default). End it
// when the send span ends.
func (d *Destination) Create(ctx context.Context, send Span) Span {
	if d == nil {
		return Span{}
	}
	opts := d.createOpts
	if send.s != nil {
		opts = append(slices.Clip(opts), trace.WithLinks(trace.Link{SpanContext: send.s.SpanContext()}))
	}
	_, s := d.tr.Start(ctx, d.create, opts...)
	if s.IsRecording() {
		s.SetAttributes(d.createAttrs...)
	}
	if send.s != nil && send.s.IsRecording() {
		send.s.AddLink(trace.Link{SpanContext: s.SpanContext()})
	}
	return Span{s: s}
}

// Process starts the process span of one message: a child of the
// message's creation context (when it has one) that also links to it.
// attempts is nsqd's delivery count (0 for a replay).
func (d *Destination) Process(ctx context.Context, env *envelope.Envelope, how Delivery, attempts uint16) (context.Context, Span) {
	if d == nil {
		return ctx, Span{}
	}
	opts := d.procOpts
	if env.Trace != nil { // else no creation context: a trace of its own
		if created := Remote(*env.Trace); created.IsValid() {
			ctx = trace.ContextWithRemoteSpanContext(ctx, created)
			if unsampled(created) {
				return ctx, Span{sc: created}
			}
			opts = append(slices.Clip(opts), trace.WithLinks(trace.Link{SpanContext: created}))
		}
	}
	ctx, s := d.tr.Start(ctx, d.process, opts...)
	// The message's own attributes only for a span that records: an
	// unsampled one costs no more than the SDK's own work.
	if s.IsRecording() {
		attrs := make([]attribute.KeyValue, 0, 3)
		attrs = append(attrs, KeyDelivery.String(how.String()))
		if env.Stream != "" || env.Seq != 0 {
			attrs = append(attrs, keyMessageID.String(MessageID(env.Stream, env.Seq)))
		}
		if attempts > 0 {
			attrs = append(attrs, keyAttempts.Int(int(attempts)))
		}
		s.SetAttributes(attrs...)
	}
	return ctx, Span{s: s}
}
