package replay

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"testing"

	"github.com/svckit/svckit/svckit/envelope"
)

// bodyTransport answers every request with 200 and the given body: the
// replay client's frame reader is then fed arbitrary bytes, as a broken or
// hostile owner could send them.
type bodyTransport []byte

func (b bodyTransport) RoundTrip(*http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Body: io.NopCloser(bytes.NewReader(b)), Header: http.Header{}}, nil
}

func frame(e envelope.Envelope) []byte {
	body, _ := e.Marshal()
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// FuzzReplayFrames: the client never panics, never hands fn an envelope
// outside the request, and either ends cleanly or returns an error.
func FuzzReplayFrames(f *testing.F) {
	ok := append(frame(envelope.Envelope{Stream: "s", Seq: 1, Payload: []byte("a")}), frame(envelope.Envelope{Stream: "s", Seq: 2})...)
	f.Add(ok)
	f.Add(ok[:len(ok)-3])
	f.Add([]byte{0, 0, 0, 5, 'S', 'K', 1})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add(frame(envelope.Envelope{Stream: "other", Seq: 1}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		c := Client{HTTP: &http.Client{Transport: bodyTransport(body)}}
		_, _ = c.Replay(context.Background(), "owner.invalid:1", Request{Stream: "s", From: 1, To: 10}, func(e envelope.Envelope, _ int) error {
			if e.Stream != "s" || e.Seq < 1 || e.Seq > 10 {
				t.Fatalf("client passed on (%s, %d) outside the request", e.Stream, e.Seq)
			}
			return nil
		})
	})
}
