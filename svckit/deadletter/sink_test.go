package deadletter

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/svckit/svckit/svckit/durable/crashfs"
)

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// recorder is a TopicPublisher that records what it was given and answers with
// err, or waits for ctx when block is set. (The integration test publishes
// through a real nsqd; this one checks the choice of path.)
type recorder struct {
	mu     sync.Mutex
	topics []string
	bodies [][]byte
	err    error
	block  bool
}

func (r *recorder) Publish(ctx context.Context, topic string, body []byte) error {
	r.mu.Lock()
	r.topics = append(r.topics, topic)
	r.bodies = append(r.bodies, bytes.Clone(body))
	r.mu.Unlock()
	if r.block {
		<-ctx.Done()
		return ctx.Err()
	}
	return r.err
}

func (r *recorder) calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.topics)
}

func newStore(t *testing.T) *Store {
	st, err := NewStore(StoreOptions{Dir: filepath.Join(t.TempDir(), "deadletters")})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestSinkPublishesWhatFits(t *testing.T) {
	pub := &recorder{}
	st := newStore(t)
	reg := prometheus.NewRegistry()
	s, err := NewSink(Options{Publisher: pub, Store: st, MaxMsgSize: 4096, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	l := sampleLetter(bytes.Repeat([]byte("x"), 3000))
	where, err := s.Send(context.Background(), l)
	if err != nil || where != StoredNSQD {
		t.Fatalf("Send = %q, %v; want nsqd", where, err)
	}
	if pub.calls() != 1 || pub.topics[0] != "orders.dead" {
		t.Fatalf("published to %v", pub.topics)
	}
	got, err := Decode(pub.bodies[0])
	if err != nil || !bytes.Equal(got.Original, l.Original) {
		t.Fatalf("published letter: %v", err)
	}
	if list, _ := st.List(""); len(list) != 0 {
		t.Errorf("the local store holds %d letters", len(list))
	}
	if v := counterValue(t, s.kept.WithLabelValues("orders", "nsqd")); v != 1 {
		t.Errorf("svckit_dead_letters_total{stored=nsqd} = %v", v)
	}
	// A second sink on the same registry shares the counters.
	s2, err := NewSink(Options{Publisher: pub, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	if v := counterValue(t, s2.kept.WithLabelValues("orders", "nsqd")); v != 1 {
		t.Errorf("a second sink's counter = %v, want the first's", v)
	}
}

// A letter above MaxMsgSize is never handed to the publisher (nsqd would
// close its connection) and goes to the store.
func TestSinkKeepsTooLargeLocally(t *testing.T) {
	pub := &recorder{}
	st := newStore(t)
	s, _ := NewSink(Options{Publisher: pub, Store: st, MaxMsgSize: 4096})
	orig := bytes.Repeat([]byte("y"), 4000) // fits; its letter does not
	where, err := s.Send(context.Background(), sampleLetter(orig))
	if err != nil || where != StoredLocal {
		t.Fatalf("Send = %q, %v; want local", where, err)
	}
	if pub.calls() != 0 {
		t.Fatalf("a letter above MaxMsgSize was handed to the publisher")
	}
	list, _ := st.List("orders")
	if len(list) != 1 {
		t.Fatalf("store holds %d letters", len(list))
	}
	enc, _ := st.Get("orders", list[0].ID)
	if l, err := Decode(enc); err != nil || !bytes.Equal(l.Original, orig) {
		t.Fatalf("stored letter: %v", err)
	}
}

// A publish that fails, or is not acknowledged within PublishTimeout, ends
// in the store.
func TestSinkFallsBackToStore(t *testing.T) {
	for name, pub := range map[string]*recorder{
		"error":   {err: errors.New("E_BAD_TOPIC")},
		"timeout": {block: true},
	} {
		t.Run(name, func(t *testing.T) {
			st := newStore(t)
			s, _ := NewSink(Options{Publisher: pub, Store: st, PublishTimeout: 50 * time.Millisecond})
			start := time.Now()
			where, err := s.Send(context.Background(), sampleLetter([]byte("z")))
			if err != nil || where != StoredLocal {
				t.Fatalf("Send = %q, %v; want local", where, err)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Send took %s", d)
			}
			if list, _ := st.List("orders"); len(list) != 1 {
				t.Fatalf("store holds %d letters", len(list))
			}
		})
	}
}

// When nothing takes the letter, Send says so: the caller keeps the message.
func TestSinkFailsWhenNothingTakesIt(t *testing.T) {
	s, _ := NewSink(Options{Publisher: &recorder{}, MaxMsgSize: 1024})
	if _, err := s.Send(context.Background(), sampleLetter(make([]byte, 2000))); err == nil {
		t.Error("a too-large letter without a store: Send returned nil")
	}
	cfs := crashfs.New()
	st, _ := NewStore(StoreOptions{Dir: "/d", FS: cfs})
	cfs.StopAfter(0) // every write fails
	s, _ = NewSink(Options{Publisher: &recorder{err: errors.New("down")}, Store: st})
	if _, err := s.Send(context.Background(), sampleLetter([]byte("x"))); err == nil || !strings.Contains(err.Error(), "local store failed") {
		t.Errorf("publisher and store failing: Send error %v", err)
	}
	if _, err := NewSink(Options{}); err == nil {
		t.Error("NewSink without a publisher or a store succeeded")
	}
}

func TestTrackerFunc(t *testing.T) {
	pub := &recorder{}
	s, _ := NewSink(Options{Publisher: pub})
	frame := []byte("replayed frame")
	if err := s.TrackerFunc("results", "app")(context.Background(), "sensor-1", 77, frame, "cannot apply"); err != nil {
		t.Fatal(err)
	}
	l, err := Decode(pub.bodies[0])
	if err != nil {
		t.Fatal(err)
	}
	if pub.topics[0] != "results.dead" || l.Topic != "results" || l.Channel != "app" || l.Stream != "sensor-1" || l.Seq != 77 ||
		l.Reason != "cannot apply" || !bytes.Equal(l.Original, frame) || l.Time.IsZero() {
		t.Errorf("tracker dead letter %+v to %s", l.Meta, pub.topics[0])
	}
}

func TestHTTP(t *testing.T) {
	st := newStore(t)
	mux := http.NewServeMux()
	st.Register(mux, "s3cret", "orders-svc")
	srv := httptest.NewServer(mux)
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	orig := bytes.Repeat([]byte{0, 0xff}, 1000)
	in, err := st.Put(sampleLetter(orig))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (Client{}).List(ctx, addr, "orders"); err == nil {
		t.Error("listing without the secret succeeded")
	}
	c := Client{Secret: "s3cret"}
	list, err := c.List(ctx, addr, "orders")
	if err != nil || len(list) != 1 || list[0].ID != in.ID || list[0].Stored != StoredLocal || list[0].Size != len(orig) {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if other, err := c.List(ctx, addr, "other"); err != nil || len(other) != 0 {
		t.Fatalf("List(other) = %+v, %v", other, err)
	}
	l, err := c.Get(ctx, addr, "orders", in.ID)
	if err != nil || !bytes.Equal(l.Original, orig) {
		t.Fatalf("Get: %v", err)
	}
	if err := c.Delete(ctx, addr, "orders", in.ID); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, addr, "orders", in.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
	if _, err := c.Get(ctx, addr, "orders", in.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
}
