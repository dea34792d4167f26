package tracing

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/svckit/svckit/svckit/envelope"
)

// BenchmarkHop is what tracing costs one message on one hop: the
// publisher's send span and its context in the envelope, the envelope's
// 25 more bytes encoded and decoded, and the consumer's process span;
// "off" is the same path with tracing off. The SDK is set up as
// svckit/tracing/otlp sets it up (a batching span processor, the default
// sampler), exporting to nothing.
func BenchmarkHop(b *testing.B) {
	for _, c := range []struct {
		name string
		tr   func(b *testing.B) *Tracer
	}{
		{"off", func(*testing.B) *Tracer { return nil }},
		{"on", func(b *testing.B) *Tracer {
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
			b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			return New(tp)
		}},
		{"on, unsampled", func(b *testing.B) *Tracer {
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()),
				sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
			b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			return New(tp)
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			tr := c.tr(b)
			pub, sub := tr.Topic("readings", ""), tr.Topic("readings", "workers")
			ctx := context.Background()
			payload := make([]byte, 200)
			buf := make([]byte, 0, 512)
			var in envelope.Envelope
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				env := envelope.Envelope{Stream: "bench", Seq: uint64(i + 1), Payload: payload}
				_, send := pub.Send(ctx)
				send.Created(&env)
				send.Messages(env.Stream, env.Seq, env.Seq)
				buf, _ = env.Append(buf[:0])
				send.End(nil)
				if err := (envelope.Decoder{}).DecodeInto(&in, buf); err != nil {
					b.Fatal(err)
				}
				_, p := sub.Process(ctx, &in, Live, 1)
				p.End(nil)
			}
		})
	}
}
