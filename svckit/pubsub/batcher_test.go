package pubsub

import (
	"bytes"
	"encoding/binary"
	"errors"
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
	arena, n := bt.encode(nil, items)
	if n != 5 {
		t.Fatalf("encoded %d messages, want 5", n)
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
