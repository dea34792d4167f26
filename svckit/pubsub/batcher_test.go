package pubsub

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/svckit/svckit/svckit/envelope"
)

// encode lays a batch out as MPUB's body: a u32 count, then each message as
// a u32 length and its bytes. An envelope that cannot be encoded is answered
// with its error and left out, with the rest of its group; raw bodies are
// copied as they are.
func TestBatcherEncodeIsAnMPUBBody(t *testing.T) {
	bt := &Batcher{topic: "t"}
	var badErr, badGroupErr error
	tooLong := strings.Repeat("x", 300)
	items := []batchItem{
		{kind: kindEnv, env: envelope.Envelope{Stream: "s", Seq: 1, Payload: []byte("one")}, done: func(error) {}},
		{kind: kindBody, env: envelope.Envelope{Payload: []byte("raw body")}, done: func(error) {}},
		{kind: kindEnv, env: envelope.Envelope{Stream: tooLong, Seq: 2}, done: func(err error) { badErr = err }},
		{kind: kindEnvs, envs: []envelope.Envelope{{Stream: "s", Seq: 10}, {Stream: tooLong, Seq: 11}}, done: func(err error) { badGroupErr = err }},
		{kind: kindEnvs, envs: []envelope.Envelope{{Stream: "s", Seq: 4}, {Stream: "s", Seq: 5}}, done: func(error) {}},
		{kind: kindEnv, env: envelope.Envelope{Stream: "s", Seq: 3, Payload: []byte("three")}, done: func(error) {}},
	}
	arena, n, used := bt.encode(nil, items)
	if n != 5 || used != len(items) {
		t.Fatalf("encoded %d messages of %d items, want 5 of %d", n, used, len(items))
	}
	if !errors.Is(badErr, envelope.ErrFieldTooLong) || items[2].done != nil {
		t.Fatalf("the unencodable envelope: done(%v), done left %v; want ErrFieldTooLong and nil", badErr, items[2].done != nil)
	}
	if !errors.Is(badGroupErr, envelope.ErrFieldTooLong) || items[3].done != nil {
		t.Fatalf("the group with an unencodable envelope: done(%v), done left %v; want ErrFieldTooLong and nil", badGroupErr, items[3].done != nil)
	}
	if got := binary.BigEndian.Uint32(arena); got != 5 {
		t.Fatalf("count field %d, want 5", got)
	}
	rest := arena[4:]
	var bodies [][]byte
	for len(rest) > 0 {
		if len(rest) < 4 {
			t.Fatalf("%d trailing bytes", len(rest))
		}
		l := binary.BigEndian.Uint32(rest)
		if uint32(len(rest)-4) < l {
			t.Fatalf("length %d, only %d bytes left", l, len(rest)-4)
		}
		bodies = append(bodies, rest[4:4+l])
		rest = rest[4+l:]
	}
	if len(bodies) != 5 {
		t.Fatalf("%d bodies, want 5", len(bodies))
	}
	for i, want := range []uint64{1, 0, 4, 5, 3} {
		if want == 0 {
			if !bytes.Equal(bodies[i], []byte("raw body")) {
				t.Errorf("body %d = %q, want the raw body", i, bodies[i])
			}
			continue
		}
		e, err := envelope.Decode(bodies[i])
		if err != nil || e.Seq != want {
			t.Errorf("body %d: seq %d, %v; want seq %d", i, e.Seq, err, want)
		}
	}
}

// An MPUB body stays within MaxBytes: encode stops before the item that
// would pass it, but always takes one message, even an oversized one (nsqd
// then refuses that one alone).
func TestBatcherEncodeStopsAtMaxBytes(t *testing.T) {
	bt := &Batcher{topic: "t", o: BatcherOptions{MaxBytes: 100}}
	body := func(n int) batchItem {
		return batchItem{kind: kindBody, env: envelope.Envelope{Payload: make([]byte, n)}, done: func(error) {}}
	}
	items := []batchItem{body(30), body(30), body(30), body(200), body(10)}
	var parts [][2]int // messages, body bytes
	for rest := items; len(rest) > 0; {
		arena, n, used := bt.encode(nil, rest)
		if used == 0 {
			t.Fatal("encode used no item")
		}
		if got := binary.BigEndian.Uint32(arena); int(got) != n {
			t.Fatalf("count field %d, want %d", got, n)
		}
		parts = append(parts, [2]int{n, len(arena)})
		rest = rest[used:]
	}
	// 4 + 34 + 34 = 72 (a third would make 106); 4 + 34; 4 + 204 alone; 4 + 14.
	want := [][2]int{{2, 72}, {1, 38}, {1, 208}, {1, 18}}
	if fmt.Sprint(parts) != fmt.Sprint(want) {
		t.Errorf("MPUBs (messages, bytes) %v, want %v", parts, want)
	}
}

// PublishEnvelopesAsync's groups hold at most MaxBatch envelopes and, by
// an upper bound of their encoded size, at most MaxBytes.
func TestBatcherChunks(t *testing.T) {
	bt := &Batcher{o: BatcherOptions{MaxBatch: 3, MaxBytes: 1000}}
	envs := func(payloads ...int) []envelope.Envelope {
		var out []envelope.Envelope
		for i, p := range payloads {
			out = append(out, envelope.Envelope{Stream: "s", Seq: uint64(i + 1), Payload: make([]byte, p)})
		}
		return out
	}
	sizes := func(chunks [][]envelope.Envelope) []int {
		var out []int
		for _, c := range chunks {
			out = append(out, len(c))
		}
		return out
	}
	for _, c := range []struct {
		payloads []int
		want     []int
	}{
		{[]int{1}, []int{1}},
		{[]int{1, 1, 1, 1, 1, 1, 1}, []int{3, 3, 1}}, // MaxBatch
		{[]int{400, 400, 400, 10}, []int{2, 2}},      // MaxBytes: 4 + 2×(4+400+bound) < 1000 < three
		{[]int{2000, 10, 10}, []int{1, 2}},           // an oversized one alone
		{[]int{10, 2000, 10, 10, 10, 10}, []int{1, 1, 3, 1}},
	} {
		chunks := bt.chunks(envs(c.payloads...))
		if fmt.Sprint(sizes(chunks)) != fmt.Sprint(c.want) {
			t.Errorf("payloads %v: groups of %v, want %v", c.payloads, sizes(chunks), c.want)
		}
		for _, ch := range chunks {
			if cap(ch) != len(ch) {
				t.Errorf("payloads %v: a group's capacity reaches into the next", c.payloads)
			}
		}
	}
}

// A message over MaxMsgSize fails alone, permanently, before anything is
// sent: nsqd would close the connection and fail everything behind it.
func TestBatcherFailsOversizedMessageAlone(t *testing.T) {
	bt := &Batcher{topic: "t", o: BatcherOptions{MaxMsgSize: 100, MaxBytes: 1 << 20}}
	var bigErr error
	items := []batchItem{
		{kind: kindBody, env: envelope.Envelope{Payload: make([]byte, 50)}, done: func(error) {}},
		{kind: kindBody, env: envelope.Envelope{Payload: make([]byte, 101)}, done: func(err error) { bigErr = err }},
		{kind: kindEnv, env: envelope.Envelope{Stream: "s", Seq: 1, Payload: make([]byte, 10)}, done: func(error) {}},
	}
	_, n, used := bt.encode(nil, items)
	if n != 2 || used != 3 {
		t.Fatalf("encoded %d messages of %d items, want 2 of 3", n, used)
	}
	var perm PermanentError
	if !errors.As(bigErr, &perm) || !strings.Contains(bigErr.Error(), "--max-msg-size") || items[1].done != nil {
		t.Fatalf("oversized message: %v (answered: %v), want a PermanentError naming --max-msg-size", bigErr, items[1].done == nil)
	}
}

// An item answered while its batch was encoded (too large) is not encoded
// again when nsqd refused the batch and its items go one by one: its done
// is gone, and calling it was a nil call that crashed the publisher.
func TestBatcherPublishEachSkipsAnsweredItems(t *testing.T) {
	bt := &Batcher{topic: "t", o: BatcherOptions{MaxMsgSize: 100, MaxBytes: 1 << 20}}
	answers := 0
	items := []batchItem{{kind: kindBody, env: envelope.Envelope{Payload: make([]byte, 101)}, done: func(error) { answers++ }}}
	bt.encode(nil, items)
	bt.publishEach(nil, items) // no producer: nothing may be sent
	if answers != 1 {
		t.Fatalf("the oversized item was answered %d times, want once", answers)
	}
}
