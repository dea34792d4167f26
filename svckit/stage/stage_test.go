package stage

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
)

// splitOdd filters 0, passes even values and splits odd ones in two.
func splitOdd(_ context.Context, in envelope.Envelope) ([]Output, error) {
	if len(in.Payload) != 8 {
		return nil, pubsub.Reject(fmt.Errorf("want 8 bytes, got %d", len(in.Payload)))
	}
	v := binary.BigEndian.Uint64(in.Payload)
	switch {
	case v == 0:
		return nil, nil
	case v%2 == 0:
		return []Output{{ContentType: "x", Payload: in.Payload}}, nil
	}
	return []Output{{ContentType: "x", Payload: []byte("a")}, {ContentType: "x", Payload: []byte("b")}}, nil
}

func value(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

type nopOut struct{}

func (nopOut) PublishEnvelopeAsync(context.Context, envelope.Envelope, func(error))    {}
func (nopOut) PublishEnvelopesAsync(context.Context, []envelope.Envelope, func(error)) {}

// Outputs keep the input's identity: one output is a whole message,
// several are its parts, none is a marker; a marker passes through; a part
// may not be split again.
func TestOutputsKeepIdentity(t *testing.T) {
	s, err := New(Options{Transform: splitOdd, Out: nopOut{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	in := func(v uint64) envelope.Envelope { return envelope.Envelope{Stream: "s", Seq: 7, Payload: value(v)} }
	var one envelope.Envelope
	if envs, err := s.outputs(ctx, in(0), &one, nil); err != nil || envs != nil || !one.Marker || one.Seq != 7 || one.Stream != "s" {
		t.Fatalf("filtered: %v %v %+v, want a marker of s/7", envs, err, one)
	}
	if envs, err := s.outputs(ctx, in(4), &one, nil); err != nil || envs != nil || one.Marker || one.Parts != 0 || one.Seq != 7 {
		t.Fatalf("one output: %v %v %+v, want a whole s/7", envs, err, one)
	}
	envs, err := s.outputs(ctx, in(3), &one, nil)
	if err != nil || len(envs) != 2 || envs[0].Part != 0 || envs[1].Part != 1 || envs[0].Parts != 2 || envs[1].Seq != 7 {
		t.Fatalf("split: %+v %v, want parts 0 and 1 of 2 of s/7", envs, err)
	}
	marker := envelope.Envelope{Stream: "s", Seq: 9, Marker: true, Payload: []byte("why")}
	if envs, err := s.outputs(ctx, marker, &one, nil); err != nil || envs != nil || !one.Marker || string(one.Payload) != "why" {
		t.Fatalf("a marker in: %v %v %+v, want it passed on", envs, err, one)
	}
	part := in(3)
	part.Part, part.Parts = 1, 3
	if _, err := s.outputs(ctx, part, &one, nil); !errors.Is(err, errNestedSplit) {
		t.Fatalf("splitting a part: %v, want errNestedSplit", err)
	}
	part = in(4)
	part.Part, part.Parts = 1, 3
	if envs, err := s.outputs(ctx, part, &one, nil); err != nil || envs != nil || one.Part != 1 || one.Parts != 3 {
		t.Fatalf("a part with one output: %+v %v, want part 1 of 3 kept", one, err)
	}
}

type staticUpstream []discovery.Instance

func (u staticUpstream) Instances() []discovery.Instance { return u }
func (u staticUpstream) Service() string                 { return "upstream" }

type ackAll struct{}

func (ackAll) PublishAsync(_ context.Context, _ []byte, done func(error)) { done(nil) }
func (ackAll) Close(context.Context) error                                { return nil }

type sumFold struct{ n, sum uint64 }

func (f *sumFold) Apply(_ uint64, p []byte) error {
	f.n++
	f.sum += binary.BigEndian.Uint64(p)
	return nil
}
func (f *sumFold) State() []byte        { return fmt.Appendf(nil, `{"n":%d,"sum":%d}`, f.n, f.sum) }
func (f *sumFold) Restore([]byte) error { return nil }

// serve runs h on a loopback HTTP server and returns it as an instance.
// serveRelay serves st's relay of the replay protocol, as a relaying
// instance.
func serveRelay(t *testing.T, st *Stage) discovery.Instance {
	m := http.NewServeMux()
	srv := replay.NewServer("", replay.NewMetrics(prometheus.NewRegistry()))
	srv.SetRelay(st)
	srv.Register(m)
	return serve(t, m, replay.RelayTag)
}

func serve(t *testing.T, h http.Handler, tags ...string) discovery.Instance {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	host, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	p, _ := strconv.Atoi(port)
	return discovery.Instance{ID: srv.URL, Address: host, Port: p, Tags: tags}
}

// A stage relays the replay protocol to its upstream through its
// transform, and chains: a consumer asking the second stage of owner →
// stage → stage gets what the second stage would have published live.
// Trimmed ranges stay 410, snapshots are mapped, or 501 without a mapper.
func TestRelayChains(t *testing.T) {
	lo := retainlog.DefaultOptions("")
	lo.SegmentBytes = 4096
	o, err := replay.OpenOwner(replay.OwnerOptions{Stream: "s", Dir: t.TempDir(), Log: lo, Fold: &sumFold{}}, ackAll{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close(context.Background())
	ctx := context.Background()
	for v := uint64(0); v < 10; v++ {
		if _, err := o.Publish(ctx, value(v), ""); err != nil {
			t.Fatal(err)
		}
	}
	mux := http.NewServeMux()
	replay.NewServer("", replay.NewMetrics(prometheus.NewRegistry()), o).Register(mux)
	owner := serve(t, mux, replay.OwnerTag("s"))

	pass := func(_ context.Context, in envelope.Envelope) ([]Output, error) {
		return []Output{{ContentType: "x", Payload: in.Payload}}, nil
	}
	first, err := New(Options{Name: "first", Transform: pass, Out: nopOut{}, Upstream: staticUpstream{owner},
		Snapshot: func(_ string, _ uint64, up []byte) ([]byte, error) {
			return append([]byte(`{"mapped":`), append(up, '}')...), nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	relay1 := serveRelay(t, first)

	second, err := New(Options{Name: "second", Transform: splitOdd, Out: nopOut{}, Upstream: staticUpstream{relay1}})
	if err != nil {
		t.Fatal(err)
	}
	relay2 := serveRelay(t, second)

	var got []envelope.Envelope
	c := replay.Client{}
	n, err := c.Replay(ctx, relay2.Addr(), replay.Request{Stream: "s", From: 1, To: 10}, func(env envelope.Envelope, _ int) error {
		env.Payload = append([]byte(nil), env.Payload...)
		got = append(got, env)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Values 0..9 at seqs 1..10: 0 a marker, 5 odd ones two parts each, 4 even ones whole.
	markers, parts, whole := 0, 0, 0
	for _, e := range got {
		switch {
		case e.Marker:
			markers++
			if e.Seq != 1 {
				t.Errorf("marker for seq %d, want 1 (value 0)", e.Seq)
			}
		case e.Parts == 2:
			parts++
		default:
			whole++
		}
	}
	if n != 15 || markers != 1 || parts != 10 || whole != 4 {
		t.Fatalf("relayed %d frames: %d markers, %d parts, %d whole; want 15: 1, 10, 4", n, markers, parts, whole)
	}

	st, err := c.Streams(ctx, relay2.Addr())
	if err != nil || len(st) != 1 || st[0].Stream != "s" || st[0].LastSeq != 10 {
		t.Fatalf("relayed /streams: %+v %v", st, err)
	}
	if seq, state, err := c.Snapshot(ctx, relay1.Addr(), "s"); err != nil || seq != 10 || string(state) != `{"mapped":{"n":10,"sum":45}}` {
		t.Fatalf("mapped snapshot: %d %s %v", seq, state, err)
	}
	if _, _, err := c.Snapshot(ctx, relay2.Addr(), "s"); !errors.Is(err, replay.ErrNoSnapshot) {
		t.Fatalf("snapshot from a stage without a mapper: %v, want ErrNoSnapshot", err)
	}
	if _, err := c.Replay(ctx, relay2.Addr(), replay.Request{Stream: "s", From: 11, To: 20}, func(envelope.Envelope, int) error { return nil }); !errors.Is(err, replay.ErrNeverHad) {
		t.Fatalf("beyond the owner's last, through two relays: %v, want ErrNeverHad", err)
	}
	if _, err := c.Replay(ctx, relay2.Addr(), replay.Request{Stream: "nope", From: 1, To: 2}, func(envelope.Envelope, int) error { return nil }); err == nil {
		t.Fatal("an unknown stream through two relays: no error")
	}
}

// What the owner no longer retains is 410 through relays too: the
// consumer then asks for a snapshot.
func TestRelayPassesGone(t *testing.T) {
	dir := t.TempDir()
	// An owner whose log was moved aside after 100 published messages:
	// it answers 410 below 101.
	if err := os.WriteFile(filepath.Join(dir, "published.seq"), []byte("100\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := replay.OpenOwner(replay.OwnerOptions{Stream: "s", Dir: dir, Log: retainlog.DefaultOptions("")}, ackAll{})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close(context.Background())
	mux := http.NewServeMux()
	replay.NewServer("", replay.NewMetrics(prometheus.NewRegistry()), o).Register(mux)
	owner := serve(t, mux, replay.OwnerTag("s"))
	st, err := New(Options{Transform: splitOdd, Out: nopOut{}, Upstream: staticUpstream{owner}})
	if err != nil {
		t.Fatal(err)
	}
	relay := serveRelay(t, st)
	_, err = replay.Client{}.Replay(context.Background(), relay.Addr(), replay.Request{Stream: "s", From: 1, To: 50}, func(envelope.Envelope, int) error { return nil })
	if !errors.Is(err, replay.ErrGone) {
		t.Fatalf("a trimmed range through a relay: %v, want ErrGone", err)
	}
}

// An input the transform refuses for good leaves a marker with the reason
// downstream (published before the input is dead-lettered), so a consumer
// downstream does not wait for it forever.
func TestDeadInputLeavesAMarker(t *testing.T) {
	out := &capturingOut{}
	s, err := New(Options{Name: "st", Transform: splitOdd, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	in := envelope.Envelope{Stream: "s", Seq: 3, Payload: []byte("not 8 bytes")}
	marker := s.deadMarker(in, pubsub.Reject(errors.New("want 8 bytes")))
	if !marker.Marker || marker.Seq != 3 || !strings.Contains(string(marker.Payload), "dead-lettered by st") {
		t.Fatalf("dead marker %+v", marker)
	}
	var one envelope.Envelope
	if _, err := s.outputs(context.Background(), in, &one, nil); err == nil {
		t.Fatal("a refused input made outputs")
	}
}

type capturingOut struct{ nopOut }

// servedOwner is the owner of stream "s" holding payloads (sequences
// 1..len), serving the replay protocol on loopback.
func servedOwner(t *testing.T, payloads [][]byte) discovery.Instance {
	t.Helper()
	o, err := replay.OpenOwner(replay.OwnerOptions{Stream: "s", Dir: t.TempDir(), Log: retainlog.DefaultOptions("")}, ackAll{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close(context.Background()) })
	if _, err := o.PublishBatch(context.Background(), payloads); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	replay.NewServer("", replay.NewMetrics(prometheus.NewRegistry()), o).Register(mux)
	return serve(t, mux, replay.OwnerTag("s"))
}

// splitOddAppend is splitOdd as an AppendTransform.
func splitOddAppend(ctx context.Context, in envelope.Envelope, outs []Output, buf []byte) ([]Output, []byte, error) {
	made, err := splitOdd(ctx, in)
	if err != nil {
		return outs, buf, err
	}
	for _, o := range made {
		start := len(buf)
		buf = append(buf, o.Payload...)
		outs = append(outs, Output{ContentType: o.ContentType, Payload: buf[start:]})
	}
	return outs, buf, nil
}

// recordingOut keeps every envelope published, encoded at once (as the
// Batcher encodes it later: the memory must stay valid until then, so it
// is encoded again at the end and compared).
type recordingOut struct {
	envs []envelope.Envelope
	now  [][]byte
}

func (r *recordingOut) PublishEnvelopeAsync(_ context.Context, env envelope.Envelope, done func(error)) {
	r.PublishEnvelopesAsync(context.Background(), []envelope.Envelope{env}, done)
}

func (r *recordingOut) PublishEnvelopesAsync(_ context.Context, envs []envelope.Envelope, done func(error)) {
	for _, e := range envs {
		b, _ := e.Marshal()
		r.envs, r.now = append(r.envs, e), append(r.now, b)
	}
	// done is not called: a Message made by a test has no consumer to
	// answer, and the outputs stay "in flight", which is what is checked.
}

// An AppendTransform makes the same outputs as its Transform, live and
// relayed (where the stage reuses its memory from frame to frame), and a
// live input's outputs keep their bytes until published.
func TestAppendTransformSameOutputs(t *testing.T) {
	ctx := context.Background()
	var values [][]byte
	for v := uint64(0); v < 50; v++ {
		values = append(values, value(v))
	}
	owner := servedOwner(t, values)
	frames := func(opts Options) [][]byte {
		t.Helper()
		opts.Out, opts.Upstream = nopOut{}, staticUpstream{owner}
		st, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		var got [][]byte
		if err := st.Replay(ctx, "s", 1, 50, time.Time{}, func(f []byte) error { got = append(got, bytes.Clone(f)); return nil }); err != nil {
			t.Fatal(err)
		}
		return got
	}
	want, got := frames(Options{Transform: splitOdd}), frames(Options{Append: splitOddAppend})
	if len(want) != 75 || !slices.EqualFunc(want, got, bytes.Equal) {
		t.Fatalf("relayed: %d frames with Append, %d with Transform (want 75), or different bytes", len(got), len(want))
	}

	live := func(opts Options) *recordingOut {
		t.Helper()
		out := &recordingOut{}
		opts.Out = out
		st, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		for v := uint64(0); v < 50; v++ {
			m := &pubsub.Message{Envelope: envelope.Envelope{Stream: "s", Seq: v + 1, Payload: value(v)}}
			if err := st.HandleMessage(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		return out
	}
	lw, lg := live(Options{Transform: splitOdd}), live(Options{Append: splitOddAppend})
	if !slices.EqualFunc(lw.now, lg.now, bytes.Equal) {
		t.Fatalf("live: Append and Transform published different envelopes (%d and %d)", len(lg.now), len(lw.now))
	}
	for i, e := range lg.envs {
		if b, _ := e.Marshal(); !bytes.Equal(b, lg.now[i]) {
			t.Fatalf("live output %d changed after it was handed over: its memory was reused", i)
		}
	}
	if _, err := New(Options{Transform: splitOdd, Append: splitOddAppend, Out: nopOut{}}); err == nil {
		t.Fatal("New took both Transform and Append")
	}
}

// A relay running an AppendTransform allocates nothing per message (the
// claim in the README and docs/architecture.md): the allocations of a
// replay of 2000 messages less those of 200, per extra message, are
// about zero (the Transform form allocates at least one per message).
func TestRelayAppendAllocatesNothingPerMessage(t *testing.T) {
	ctx := context.Background()
	values := make([][]byte, 0, 2000)
	for v := uint64(0); v < 2000; v++ {
		values = append(values, value(2*v+2)) // even and non-zero: one output each
	}
	owner := servedOwner(t, values)
	perMessage := func(opts Options) float64 {
		opts.Out, opts.Upstream = nopOut{}, staticUpstream{owner}
		st, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		allocs := func(to uint64) float64 {
			return testing.AllocsPerRun(5, func() {
				if err := st.Replay(ctx, "s", 1, to, time.Time{}, func([]byte) error { return nil }); err != nil {
					t.Fatal(err)
				}
			})
		}
		return (allocs(2000) - allocs(200)) / 1800
	}
	// Passes each payload on, allocating nothing of its own.
	pass := func(_ context.Context, in envelope.Envelope, outs []Output, buf []byte) ([]Output, []byte, error) {
		start := len(buf)
		buf = append(buf, in.Payload...)
		return append(outs, Output{ContentType: "x", Payload: buf[start:]}), buf, nil
	}
	if got := perMessage(Options{Append: pass}); got > 0.05 {
		t.Errorf("a relay with an AppendTransform allocated %.2f times per message, want none", got)
	}
	if got := perMessage(Options{Transform: splitOdd}); got < 0.9 {
		t.Errorf("the Transform form allocated %.2f times per message: this test cannot tell the forms apart", got)
	}
}
