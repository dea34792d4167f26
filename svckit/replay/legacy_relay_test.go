package replay

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/envelope"
)

// damagedRelay is a stage's relay whose upstream reports 3 damaged: it
// emits 1, 2, 4, 5 and returns a *DamagedError, as Stage.Replay does.
type damagedRelay struct{}

func (damagedRelay) Streams(context.Context) ([]Status, error) { return nil, nil }
func (damagedRelay) Snapshot(context.Context, string) (uint64, []byte, error) {
	return 5, []byte("{}"), nil
}
func (damagedRelay) Replay(ctx context.Context, stream string, from, to uint64, since time.Time, emit func([]byte) error) error {
	for s := from; s <= to; s++ {
		if s == 3 {
			continue
		}
		env := envelope.Envelope{Stream: stream, Seq: s, ContentType: "x", Payload: []byte("p")}
		b, err := env.Append(nil)
		if err != nil {
			return err
		}
		if err := emit(b); err != nil {
			return err
		}
	}
	if from <= 3 && 3 <= to {
		return &DamagedError{Stream: stream, Ranges: [][2]uint64{{3, 3}}}
	}
	return nil
}

// A client without Svckit-Accept-Damaged (from before damage was reported)
// asking a stage's relay for a range with damage gets 410, which it answers
// with a snapshot: at once when nothing reached the wire yet, else when it
// asks again. (Every attempt was a cut connection: a relayed stream had no
// known damage; found by a hostile review.)
func TestLegacyClientThroughARelayGets410(t *testing.T) {
	mux := http.NewServeMux()
	s := NewServer("", NewMetrics(prometheus.NewRegistry()))
	s.SetRelay(damagedRelay{})
	s.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for i := 0; i < 2; i++ {
		resp, err := http.Get(srv.URL + "/replay?stream=relayed&from=3&to=5")
		if err != nil {
			t.Logf("attempt %d: %v", i, err)
			continue
		}
		_, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("attempt %d: %s, body read: %v", i, resp.Status, rerr)
		if resp.StatusCode == http.StatusGone {
			return
		}
	}
	t.Errorf("2 legacy attempts, never 410: the old client retries for ever")
}
