package pubsub

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/envelope"
)

// BenchmarkBatcherEncode: a batch of 100 envelopes (200-byte payloads)
// encoded into the buffer that becomes the MPUB body, reused batch after
// batch as the Batcher reuses it. Reported per message.
func BenchmarkBatcherEncode(b *testing.B) {
	const batch = 100
	bt := &Batcher{topic: "bench"}
	ids := envelope.NewIDSource()
	items := make([]batchItem, batch)
	for i := range items {
		items[i] = batchItem{kind: kindEnv, done: func(error) {}, env: envelope.Envelope{ID: ids.Next(), Stream: "sensor-1",
			Seq: uint64(i + 1), Created: time.Now(), ContentType: "application/x-reading", Payload: make([]byte, 200)}}
	}
	arena, n, _ := bt.encode(nil, items)
	if n != batch || binary.BigEndian.Uint32(arena) != batch {
		b.Fatalf("encoded %d messages, count field %d", n, binary.BigEndian.Uint32(arena))
	}
	b.SetBytes(int64(len(arena) / batch))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += batch {
		arena, _, _ = bt.encode(arena[:0], items)
	}
}
