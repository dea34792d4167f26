package replay

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/internal/sharedsecret"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/retainlog"
)

// authSecret is distinctive: a test looks for its bytes on the wire.
const authSecret = "s3cr3t-Sesame-4242"

// seen is what a server was sent, and what it answered with, for one
// request.
type seen struct {
	Method, RequestURI, URL string
	Header                  http.Header
	Status                  int
	Answer                  http.Header
}

// recorder wraps a handler and keeps every request's headers and URL and
// the answer's status and headers.
type recorder struct {
	mu   sync.Mutex
	reqs []seen
	h    http.Handler
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	rec.h.ServeHTTP(sw, r)
	rec.mu.Lock()
	rec.reqs = append(rec.reqs, seen{r.Method, r.RequestURI, r.URL.String(), r.Header.Clone(), sw.status, w.Header().Clone()})
	rec.mu.Unlock()
}

func (rec *recorder) all() []seen {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]seen(nil), rec.reqs...)
}

// count is how many requests for path it saw.
func (rec *recorder) count(path string) int {
	n := 0
	for _, s := range rec.all() {
		if strings.HasPrefix(s.RequestURI, path) {
			n++
		}
	}
	return n
}

type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// instanceOf is the discovery entry of srv as the owner of stream.
func instanceOf(t *testing.T, srv *httptest.Server, id, stream string) discovery.Instance {
	t.Helper()
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	return discovery.Instance{ID: id, Address: host, Port: p, Tags: []string{OwnerTag(stream)}}
}

// secretIn reports whether the secret, raw or in a usual encoding, is in s.
func secretIn(s string) bool {
	for _, enc := range []string{authSecret, base64.StdEncoding.EncodeToString([]byte(authSecret)),
		base64.RawURLEncoding.EncodeToString([]byte(authSecret)), fmt.Sprintf("%x", authSecret)} {
		if strings.Contains(s, enc) {
			return true
		}
	}
	return false
}

// impostor is an upstream that does not know the secret and answers as an
// owner of stream would: its frames are valid, its positions plausible.
// With gone, it answers every replay with 410, which would send a
// tracker to a snapshot; with status, it answers everything with it.
func impostor(t *testing.T, stream string, gone bool, status int) (*httptest.Server, *recorder) {
	t.Helper()
	rec := &recorder{h: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if status != 0 {
			http.Error(w, "replay: whatever", status)
			return
		}
		switch r.URL.Path {
		case "/streams":
			writeJSON(w, []Status{{Stream: stream, LastSeq: 100}})
		case "/snapshot":
			forged := pipeline.Aggregate{Count: 1_000_000, Sum: 666}
			writeJSON(w, snapshotFile{Stream: stream, Seq: 100, State: forged.Marshal()})
		case "/replay":
			if gone {
				http.Error(w, "replay: trimmed: use a snapshot", http.StatusGone)
				return
			}
			q := r.URL.Query()
			from, _ := strconv.ParseUint(q.Get("from"), 10, 64)
			to, _ := strconv.ParseUint(q.Get("to"), 10, 64)
			w.Header().Set("Content-Type", FramesContentType)
			// A proof made up, or made for another request: neither helps.
			w.Header().Set(sharedsecret.ProofHeader, base64.RawURLEncoding.EncodeToString([]byte("trust me, I am the owner")))
			for s := from; s <= to && s <= 100; s++ {
				w.Write(frame(envelope.Envelope{Stream: stream, Seq: s, ContentType: pipeline.ReadingType,
					Payload: pipeline.MarshalReading(pipeline.Reading{Value: 666})}))
			}
		default:
			http.NotFound(w, r)
		}
	})}
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	return srv, rec
}

// TestClientRefusesUnprovenUpstream: a client with the secret takes
// nothing from a server that cannot prove it knows it (not a frame, a
// position, a snapshot or a verdict), and that server never learns the
// secret. A 401 is still ErrUnauthorized.
func TestClientRefusesUnprovenUpstream(t *testing.T) {
	srv, rec := impostor(t, "s", false, 0)
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	c := Client{Secret: authSecret}
	called := 0
	n, err := c.Replay(ctx, addr, Request{Stream: "s", From: 1, To: 10}, func(envelope.Envelope, int) error { called++; return nil })
	if !errors.Is(err, ErrUpstreamUnproven) || n != 0 || called != 0 {
		t.Fatalf("Replay from an impostor = %d frames, %d callbacks, %v; want ErrUpstreamUnproven and nothing", n, called, err)
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("the error does not name the upstream %s: %v", addr, err)
	}
	if _, err := c.Streams(ctx, addr); !errors.Is(err, ErrUpstreamUnproven) {
		t.Errorf("Streams from an impostor: %v", err)
	}
	if _, _, err := c.Snapshot(ctx, addr, "s"); !errors.Is(err, ErrUpstreamUnproven) {
		t.Errorf("Snapshot from an impostor: %v", err)
	}
	if resp, err := c.Get(ctx, addr, "/streams", nil); !errors.Is(err, ErrUpstreamUnproven) || resp != nil {
		t.Errorf("Get from an impostor: %v, %v", resp, err)
	}
	// Its verdicts are not taken either: a 410 would send a tracker to a
	// snapshot, a 501 would stop it asking for one. A 401 only fails.
	for status, want := range map[int]error{
		http.StatusGone: ErrUpstreamUnproven, http.StatusNotFound: ErrUpstreamUnproven,
		http.StatusRequestedRangeNotSatisfiable: ErrUpstreamUnproven, http.StatusNotImplemented: ErrUpstreamUnproven,
		http.StatusUnauthorized: ErrUnauthorized,
	} {
		srv, _ := impostor(t, "s", false, status)
		_, err := c.Replay(ctx, strings.TrimPrefix(srv.URL, "http://"), Request{Stream: "s", From: 1, To: 10}, func(envelope.Envelope, int) error { called++; return nil })
		if !errors.Is(err, want) || called != 0 {
			t.Errorf("impostor's HTTP %d: %v, want %v", status, err, want)
		}
	}
	// Another 5xx is a failure, whoever sent it (a proxy, perhaps).
	srv502, _ := impostor(t, "s", false, http.StatusBadGateway)
	if _, err := c.Streams(ctx, strings.TrimPrefix(srv502.URL, "http://")); err == nil || !strings.Contains(err.Error(), "HTTP 502") {
		t.Errorf("impostor's HTTP 502: %v", err)
	}
	for _, s := range rec.all() {
		if a := s.Header.Get("Authorization"); !strings.HasPrefix(a, sharedsecret.Scheme+" ") || secretIn(fmt.Sprint(s)) {
			t.Errorf("the impostor was sent %+v", s)
		}
	}
}

// impostorApplier counts what the tracker applied, snapshots too.
type impostorApplier struct {
	*appState
	applies, snapshots atomic.Int64
}

func (a *impostorApplier) Apply(stream string, env envelope.Envelope) error {
	a.applies.Add(1)
	return a.appState.Apply(stream, env)
}

func (a *impostorApplier) ApplySnapshot(stream string, seq uint64, st []byte) error {
	a.snapshots.Add(1)
	return a.appState.ApplySnapshot(stream, seq, st)
}

// TestTrackerAppliesNothingFromAnImpostor: a tracker whose only owner is
// an impostor treats it as an unreachable upstream: it keeps asking, with
// backoff, and applies none of its frames, takes none of its positions,
// and never falls back to its snapshot, not even when told the range is
// gone.
func TestTrackerAppliesNothingFromAnImpostor(t *testing.T) {
	for _, gone := range []bool{false, true} {
		t.Run(fmt.Sprintf("gone=%v", gone), func(t *testing.T) {
			srv, rec := impostor(t, "s", gone, 0)
			st := &impostorApplier{appState: newAppState()}
			tr, err := NewTracker(st, TrackerOptions{Owners: staticOwners{instanceOf(t, srv, "impostor", "s")}, Secret: authSecret,
				GapGrace: 10 * time.Millisecond, TailInterval: 20 * time.Millisecond, RetryMin: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			// One real message, live: 1..4 are missing.
			live := envelope.Envelope{Stream: "s", Seq: 5, ContentType: pipeline.ReadingType, Payload: pipeline.MarshalReading(pipeline.Reading{Value: 7})}
			if ok, err := tr.Deliver(context.Background(), live); !ok || err != nil {
				t.Fatalf("Deliver = %v, %v", ok, err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			ran := make(chan struct{})
			go func() { defer close(ran); tr.Run(ctx) }()
			waitFor(t, "the tracker to ask the impostor again and again", func() bool {
				took := st.applies.Load() > 1 || st.snapshots.Load() > 0 // fails below at once
				return took || rec.count("/replay") >= 3 && rec.count("/streams") >= 3
			})
			cancel()
			<-ran
			if a, s := st.applies.Load(), st.snapshots.Load(); a != 1 || s != 0 {
				t.Fatalf("applied %d messages and %d snapshots; want only the live one", a, s)
			}
			if n := rec.count("/snapshot"); n != 0 {
				t.Errorf("the tracker asked the impostor for a snapshot %d times", n)
			}
			s := tr.Status()[0]
			if s.Applied != 1 || s.OwnerLast != 0 || len(s.Gaps) != 1 || s.Gaps[0] != [2]uint64{1, 4} {
				t.Fatalf("status %+v; want only 5 applied, 1..4 missing, no owner position", s)
			}
			if agg := st.m["s"]; agg.Count != 1 || agg.Sum != 7 {
				t.Fatalf("state %+v; want the live reading only", agg)
			}
		})
	}
}

// TestTrackerRecoversWithSecret: with the secret on both sides, signed
// requests and proven answers recover a stream as before.
func TestTrackerRecoversWithSecret(t *testing.T) {
	f := newOwner(t, "sec", retainlog.DefaultOptions(""), authSecret)
	f.publish(t, 300)
	st := newAppState()
	tr, err := NewTracker(st, TrackerOptions{Owners: staticOwners{f.inst}, Secret: authSecret, GapGrace: 20 * time.Millisecond,
		TailInterval: 50 * time.Millisecond, MaxBatch: 64})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go tr.Run(ctx)
	waitFor(t, "all 300 applied", func() bool {
		s := tr.Status()
		return len(s) == 1 && s[0].Applied == 300 && s[0].LastContiguous == 300
	})
	if got, want := st.m["sec"].Marshal(), f.fold.A.Marshal(); string(got) != string(want) {
		t.Fatalf("state %s, owner fold %s", got, want)
	}
}

// authServer serves f's owner behind a recorder, with secret.
func authServer(t *testing.T, f *fixture, secret string) (*Server, *httptest.Server, *recorder) {
	t.Helper()
	mux := http.NewServeMux()
	s := NewServer(secret, f.owner.o.Metrics, f.owner)
	s.SetAudience("sensor")
	s.Register(mux)
	rec := &recorder{h: mux}
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	return s, srv, rec
}

// TestSecretNeverOnTheWire: whatever a client and a tracker ask, the
// secret is in no request and no answer header; every request is signed
// and every answer, errors included, proven.
func TestSecretNeverOnTheWire(t *testing.T) {
	f := newOwner(t, "w", retainlog.DefaultOptions(""), "")
	f.publish(t, 50)
	waitFor(t, "a snapshot", func() bool { _, _, err := f.owner.Snapshot(); return err == nil })
	_, srv, rec := authServer(t, f, authSecret)
	addr := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()
	c := Client{Secret: authSecret}
	if st, err := c.Streams(ctx, addr); err != nil || len(st) != 1 || st[0].LastSeq != 50 {
		t.Fatalf("Streams = %+v, %v", st, err)
	}
	nop := func(envelope.Envelope, int) error { return nil }
	if n, err := c.Replay(ctx, addr, Request{Stream: "w", From: 1, To: 50}, nop); n != 50 || err != nil {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	if n, err := c.Replay(ctx, addr, Request{Stream: "w", Since: time.Now().Add(-time.Hour)}, nop); n != 50 || err != nil {
		t.Fatalf("Replay since = %d, %v", n, err)
	}
	if seq, _, err := c.Snapshot(ctx, addr, "w"); seq == 0 || err != nil {
		t.Fatalf("Snapshot = %d, %v", seq, err)
	}
	// The owner's refusals are proven too: they are taken as verdicts.
	if _, err := c.Replay(ctx, addr, Request{Stream: "w", From: 51, To: 60}, nop); !errors.Is(err, ErrNeverHad) {
		t.Fatalf("beyond last: %v", err)
	}
	if _, err := c.Replay(ctx, addr, Request{Stream: "nope", From: 1, To: 2}, nop); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unknown stream: %v", err)
	}
	st := newAppState()
	tr, err := NewTracker(st, TrackerOptions{Owners: staticOwners{instanceOf(t, srv, "sensor-1", "w")}, Secret: authSecret,
		GapGrace: 10 * time.Millisecond, TailInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go tr.Run(tctx)
	waitFor(t, "the tracker to recover 50", func() bool { s := tr.Status(); return len(s) == 1 && s[0].Applied == 50 })
	cancel()
	all := rec.all()
	if len(all) < 7 {
		t.Fatalf("only %d requests recorded", len(all))
	}
	for _, s := range all {
		if secretIn(fmt.Sprint(s)) {
			t.Errorf("the secret crossed the wire: %+v", s)
		}
		if a := s.Header.Get("Authorization"); !strings.HasPrefix(a, sharedsecret.Scheme+" ts=") {
			t.Errorf("%s %s: Authorization %q, want a signature", s.Method, s.RequestURI, a)
		}
		if s.Answer.Get(sharedsecret.ProofHeader) == "" {
			t.Errorf("%s %s: HTTP %d without a proof", s.Method, s.RequestURI, s.Status)
		}
	}
}

// TestReplayedSignedRequestRefused: a signed request captured and sent
// again is refused, as is its signature on another request.
func TestReplayedSignedRequestRefused(t *testing.T) {
	f := newOwner(t, "r", retainlog.DefaultOptions(""), "")
	f.publish(t, 10)
	_, srv, rec := authServer(t, f, authSecret)
	addr := strings.TrimPrefix(srv.URL, "http://")
	if _, err := (Client{Secret: authSecret}).Replay(context.Background(), addr, Request{Stream: "r", From: 1, To: 10},
		func(envelope.Envelope, int) error { return nil }); err != nil {
		t.Fatal(err)
	}
	captured := rec.all()[0]
	resend := func(uri string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+uri, nil)
		req.Header = captured.Header.Clone()
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if p := resp.Header.Get(sharedsecret.ProofHeader); p != "" {
			t.Errorf("a refusal carries a proof %q", p)
		}
		return resp.StatusCode, string(b)
	}
	if code, msg := resend(captured.RequestURI); code != http.StatusUnauthorized || !strings.Contains(msg, "already used") {
		t.Fatalf("the same request again: HTTP %d %q, want 401", code, msg)
	}
	if code, msg := resend("/replay?stream=r&from=1&to=9"); code != http.StatusUnauthorized {
		t.Fatalf("its signature on another request: HTTP %d %q, want 401", code, msg)
	}
	if code, msg := resend("/streams"); code != http.StatusUnauthorized || strings.Count(msg, "\n") != 1 {
		t.Fatalf("its signature on another path: HTTP %d %q, want 401 and one line", code, msg)
	}
}

// TestServerRefusesBearer: "Bearer <secret>", even the right one, is
// refused (it would cross the network in clear; svckit probe signs).
func TestServerRefusesBearer(t *testing.T) {
	f := newOwner(t, "b", retainlog.DefaultOptions(""), "")
	f.publish(t, 3)
	_, srv, _ := authServer(t, f, authSecret)
	for _, auth := range []string{"Bearer " + authSecret, "Bearer wrong"} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/streams", nil)
		req.Header.Set("Authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%q: HTTP %d, want 401", auth, resp.StatusCode)
		}
	}
}

// TestClientRefusesServerWithoutSecret: a client given a secret does not
// take the answers of a server run without one: nothing proves who it is.
func TestClientRefusesServerWithoutSecret(t *testing.T) {
	f := newOwner(t, "n", retainlog.DefaultOptions(""), "")
	f.publish(t, 3)
	if _, err := (Client{Secret: authSecret}).Streams(context.Background(), f.inst.Addr()); !errors.Is(err, ErrUpstreamUnproven) {
		t.Fatalf("Streams: %v, want ErrUpstreamUnproven", err)
	}
	if st, err := (Client{}).Streams(context.Background(), f.inst.Addr()); err != nil || len(st) != 1 {
		t.Fatalf("without secrets: %+v, %v", st, err)
	}
}

// TestServerNonceCapAnswers503: at the cap of remembered nonces, signed
// requests are turned away for now, not as unauthorized.
func TestServerNonceCapAnswers503(t *testing.T) {
	f := newOwner(t, "cap", retainlog.DefaultOptions(""), "")
	s, srv, _ := authServer(t, f, authSecret)
	s.verify.MaxNonces = 2
	addr := strings.TrimPrefix(srv.URL, "http://")
	c := Client{Secret: authSecret}
	for range 2 {
		if _, err := c.Streams(context.Background(), addr); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Streams(context.Background(), addr)
	if err == nil || !strings.Contains(err.Error(), "HTTP 503") || errors.Is(err, ErrUnauthorized) {
		t.Fatalf("over the cap: %v, want HTTP 503", err)
	}
}

// upstreamRelay is a stage's relay: it serves what a Client gets from the
// upstream at addr (as Stage.Replay does).
type upstreamRelay struct {
	c    Client
	addr string
}

func (u upstreamRelay) Streams(ctx context.Context) ([]Status, error) {
	return u.c.Streams(ctx, u.addr)
}
func (u upstreamRelay) Snapshot(ctx context.Context, stream string) (uint64, []byte, error) {
	return u.c.Snapshot(ctx, u.addr, stream)
}
func (u upstreamRelay) Replay(ctx context.Context, stream string, from, to uint64, _ time.Time, emit func([]byte) error) error {
	_, err := u.c.ReplayFrames(ctx, u.addr, Request{Stream: stream, From: from, To: to}, func(_ envelope.Envelope, frame []byte) error {
		return emit(frame)
	})
	return err
}

// TestRelayPassesNothingFromAnImpostor: a relay whose upstream is an
// impostor answers 502, and downstream gets no frame.
func TestRelayPassesNothingFromAnImpostor(t *testing.T) {
	up, _ := impostor(t, "s", false, 0)
	mux := http.NewServeMux()
	s := NewServer(authSecret, NewMetrics(prometheus.NewRegistry()))
	s.SetRelay(upstreamRelay{Client{Secret: authSecret}, strings.TrimPrefix(up.URL, "http://")})
	s.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	called := 0
	_, err := (Client{Secret: authSecret}).Replay(context.Background(), strings.TrimPrefix(srv.URL, "http://"), Request{Stream: "s", From: 1, To: 10},
		func(envelope.Envelope, int) error { called++; return nil })
	if err == nil || called != 0 || !strings.Contains(err.Error(), "HTTP 502") || !strings.Contains(err.Error(), "did not prove") {
		t.Fatalf("through a relay of an impostor: %d frames, %v; want HTTP 502 and none", called, err)
	}
}
