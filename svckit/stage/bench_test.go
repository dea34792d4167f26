package stage

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// nopDelegate stands in for go-nsq's connection: the benchmark measures
// svckit's path for one input (decode, policy, transform, publish, the
// completion), not the network.
type nopDelegate struct{}

func (nopDelegate) OnFinish(*nsq.Message)                       {}
func (nopDelegate) OnRequeue(*nsq.Message, time.Duration, bool) {}
func (nopDelegate) OnTouch(*nsq.Message)                        {}

// ackAtOnce acknowledges every publish as it is made, on the caller's
// goroutine: the input completes inside HandleMessage, the case where the
// stage's own bookkeeping weighs most.
type ackAtOnce struct{}

func (ackAtOnce) PublishEnvelopeAsync(_ context.Context, _ envelope.Envelope, done func(error)) {
	done(nil)
}
func (ackAtOnce) PublishEnvelopesAsync(_ context.Context, _ []envelope.Envelope, done func(error)) {
	done(nil)
}

// benchStagePath runs inputs of one stream through a consumer (its whole
// delivery policy, without nsqd) whose handler is a stage passing each
// 200-byte payload on as one output.
func benchStagePath(b *testing.B, parallel bool) {
	pass := func(_ context.Context, in envelope.Envelope, outs []Output, buf []byte) ([]Output, []byte, error) {
		return append(outs, Output{ContentType: in.ContentType, Payload: in.Payload}), buf, nil
	}
	st, err := New(Options{Name: "bench", Append: pass, Out: ackAtOnce{}})
	if err != nil {
		b.Fatal(err)
	}
	c, err := pubsub.NewConsumer(nil, nil, st, pubsub.ConsumerOptions{Topic: "bench", Channel: "bench", DropDeadLetters: true})
	if err != nil {
		b.Fatal(err)
	}
	// Every input its own sequence, as a live stream's are; the bodies are
	// encoded before the timer starts.
	const distinct = 1 << 12
	bodies := make([][]byte, distinct)
	idSrc := envelope.NewIDSource()
	now := time.Now()
	for i := range bodies {
		env := envelope.Envelope{ID: idSrc.Next(), Stream: "sensor-1", Seq: uint64(i + 1), Created: now,
			ContentType: "application/x-reading", Payload: make([]byte, 200)}
		if bodies[i], err = env.Marshal(); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Uint64
	one := func() {
		var id nsq.MessageID
		m := nsq.NewMessage(id, bodies[next.Add(1)%distinct])
		m.Delegate = nopDelegate{}
		m.Attempts = 1
		if err := c.HandleMessage(m); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(bodies[0])))
	b.ResetTimer()
	if !parallel {
		for i := 0; i < b.N; i++ {
			one()
		}
		return
	}
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			one()
		}
	})
}

// BenchmarkStagePath: one input through a consumer whose handler is the
// stage, its output acknowledged at once.
func BenchmarkStagePath(b *testing.B) { benchStagePath(b, false) }

// BenchmarkStagePathParallel: the same from GOMAXPROCS goroutines, all on
// one stream (what contends for the stream's bookkeeping).
func BenchmarkStagePathParallel(b *testing.B) { benchStagePath(b, true) }

// BenchmarkLagBookPerInput: what the lag costs an input on its own: the
// stream's lookup when it arrives, and the lookup and the lock that move
// the position when it is finished.
func BenchmarkLagBookPerInput(b *testing.B) {
	book := newLagBook(replay.NewMetrics(prometheus.NewRegistry()))
	created := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		seq := uint64(i + 1)
		book.arrived("sensor-1", seq, created)
		book.finished("sensor-1", seq, created)
	}
}

// BenchmarkLagBookPerInputParallel: the same from GOMAXPROCS goroutines
// on one stream, its lock contended.
func BenchmarkLagBookPerInputParallel(b *testing.B) {
	book := newLagBook(replay.NewMetrics(prometheus.NewRegistry()))
	created := time.Now()
	var next atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			seq := next.Add(1)
			book.arrived("sensor-1", seq, created)
			book.finished("sensor-1", seq, created)
		}
	})
}
