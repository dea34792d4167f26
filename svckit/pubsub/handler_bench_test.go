package pubsub

import (
	"context"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/envelope"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// nopDelegate stands in for go-nsq's connection when a message is finished:
// this benchmark measures svckit's handler path (decode, handler, metrics,
// response), not the network.
type nopDelegate struct{}

func (nopDelegate) OnFinish(*nsq.Message)                       {}
func (nopDelegate) OnRequeue(*nsq.Message, time.Duration, bool) {}
func (nopDelegate) OnTouch(*nsq.Message)                        {}

// BenchmarkHandlerPath: one delivery through Consumer.HandleMessage with a
// 200-byte envelope payload and a handler that does nothing.
func BenchmarkHandlerPath(b *testing.B) {
	c, err := NewConsumer(nil, nil, HandlerFunc(func(context.Context, *Message) error { return nil }),
		// Nothing is dead-lettered here, and there is no nsqd to do it.
		ConsumerOptions{Topic: "bench", Channel: "bench", DropDeadLetters: true})
	if err != nil {
		b.Fatal(err)
	}
	env := envelope.Envelope{ID: envelope.NewIDSource().Next(), Stream: "sensor-1", Seq: 1, Created: time.Now(),
		ContentType: "application/x-reading", Payload: make([]byte, 200)}
	body, _ := env.Marshal()
	var id nsq.MessageID
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := nsq.NewMessage(id, body)
		m.Delegate = nopDelegate{}
		m.Attempts = 1
		if err := c.HandleMessage(m); err != nil {
			b.Fatal(err)
		}
	}
}
