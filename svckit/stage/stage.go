// Package stage is a pipeline's middle: consume a topic, transform each
// input into zero, one or several outputs, publish them, and finish the
// input only once every output was acknowledged. The user's code is the
// transform; svckit/service's Service.Stage wires the rest.
//
// A stage keeps its input's identity. Outputs carry the input's (stream,
// seq): one output is a whole message, N outputs are parts 0..N-1 of it,
// and no output is a marker, so a tracking consumer downstream knows when
// (stream, seq) is complete and detects gaps exactly. An input the stage
// dead-letters (its transform refused it for good) also leaves a marker,
// carrying the reason, so downstream does not wait for it forever.
//
// A stage keeps no state and still serves the replay protocol (/streams,
// /replay, /snapshot) for every stream it outputs: it relays a request to
// its upstream (another stage, or the stream's owner, found in Consul),
// runs the frames through the same transform and streams the outputs back
// (Relay). Any passing instance can serve, so downstream consumers recover
// what they missed from their direct upstream, and chains of stages work:
// app → stage → stage → sensor.
//
// A stage also knows its lag in every stream it sees (lag.go): its
// position (just before the lowest input it holds unfinished, else the
// highest it finished) against the last sequence its upstream reports,
// exported as a tracking consumer's lag is (svckit_stream_lag_messages,
// svckit_stream_lag_seconds) and served on GET /stage. Keeping it costs an
// input two lock-free map lookups and two short locks of its stream.
package stage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/tracing"
)

// Output is one message a transform makes of its input.
type Output struct {
	ContentType string
	Payload     []byte
}

// Transform makes the outputs of one input: none (the input is filtered
// out), one, or several. It must depend on the input alone: a replay runs
// it again on the same input and must get the same outputs. An error
// wrapped by pubsub.Reject is permanent (the input is dead-lettered); any
// other error is retried.
type Transform func(ctx context.Context, in envelope.Envelope) ([]Output, error)

// AppendTransform is a Transform that allocates nothing per input: it
// appends the outputs of in to outs and their payloads to buf (an output's
// Payload a part of buf), and returns both. The stage hands it slices it
// reuses where it can: a relayed replay encodes each input's outputs
// before the next one, so for replay it runs with the same memory
// throughout (profiled: a relaying worker spent about a third of its CPU
// collecting the garbage of one small allocation per message). Live inputs
// get fresh slices, which must then live until the outputs are published.
// The rules of Transform apply otherwise.
type AppendTransform func(ctx context.Context, in envelope.Envelope, outs []Output, buf []byte) ([]Output, []byte, error)

// SnapshotMapper maps the upstream's snapshot of a stream (its fold over
// 1..seq) onto what this stage's downstream expects of a snapshot.
type SnapshotMapper func(stream string, seq uint64, upstream []byte) ([]byte, error)

// OutputPublisher is where a stage's outputs go: a *pubsub.Batcher.
type OutputPublisher interface {
	PublishEnvelopeAsync(ctx context.Context, env envelope.Envelope, done func(error))
	PublishEnvelopesAsync(ctx context.Context, envs []envelope.Envelope, done func(error))
}

// Options configures a Stage. Out and one of Transform and Append are
// required; other zero values take the defaults named on each field.
type Options struct {
	// Name names the stage in markers' reasons and logs; default "stage".
	Name      string
	Transform Transform
	// Append, if set instead of Transform, is the transform in its
	// allocation-free form.
	Append AppendTransform
	// Snapshot, if set, lets the stage serve snapshots of its outputs;
	// without it a snapshot request is answered 501 (the consumer says so
	// in /ready and a metric, and does not loop on it).
	Snapshot SnapshotMapper
	Out      OutputPublisher
	// Upstream is the live set of upstream instances (a *discovery.Watcher
	// of the upstream service), asked when relaying replay requests.
	Upstream replay.Instances
	Secret   string       // the upstream's replay secret
	HTTP     *http.Client // for the upstream; default: a client with a 60s timeout
	Logger   *slog.Logger // nil = discard
	// TailInterval is how often Run asks the upstream for its streams'
	// last sequences, for the stage's lag; default 5s, as a Tracker's
	// (replay.TrackerOptions.TailInterval).
	TailInterval time.Duration
	// Metrics gets the stage's lag (LagMessages, LagSeconds, by stream);
	// nil = replay.NewMetrics on a registry of its own (not exported).
	// Service.Stage gives the service's, shared with its other replay
	// roles: the collectors are registered once per registry.
	Metrics *replay.Metrics
}

// Stage is a running stage: a pubsub.Handler for its input, a
// replay.Source relaying for its outputs, and its lag in every stream
// (lag.go).
type Stage struct {
	o   Options
	lag *lagBook
	// outTraces: Out makes send spans, which give outputs their context.
	outTraces bool
	// h is handle inside the OnOutcome layer that moves a stream's
	// position when an input is finished.
	h pubsub.Handler
}

// New checks the options and returns the stage.
func New(o Options) (*Stage, error) {
	if (o.Transform == nil) == (o.Append == nil) || o.Out == nil {
		return nil, errors.New("stage: Out and one of Transform and Append are required")
	}
	if o.Name == "" {
		o.Name = "stage"
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: 60 * time.Second}
	}
	if o.Logger == nil {
		o.Logger = logging.Discard()
	}
	if o.TailInterval <= 0 {
		o.TailInterval = 5 * time.Second
	}
	if o.Metrics == nil {
		o.Metrics = replay.NewMetrics(prometheus.NewRegistry())
	}
	s := &Stage{o: o, lag: newLagBook(o.Metrics), outTraces: traces(o.Out)}
	s.h = pubsub.OnOutcome(s.finishedHook)(pubsub.HandlerFunc(s.handle))
	return s, nil
}

// traces reports whether out makes send spans that give outputs their
// creation context (a *pubsub.Batcher with a Tracer).
func traces(out OutputPublisher) bool {
	t, ok := out.(interface{ Traces() bool })
	return ok && t.Traces()
}

// errNestedSplit: a stage may keep a split input's parts 1:1, not split
// them again (a part's outputs would need parts of their own).
var errNestedSplit = errors.New("an input that is a part of a split message may make at most one output")

// outputs turns in into the envelopes the stage publishes for it: the only
// one in *one (returning nil: the usual case costs no slice), else the
// slice.
func (s *Stage) outputs(ctx context.Context, in envelope.Envelope, one *envelope.Envelope, sc *scratch) ([]envelope.Envelope, error) {
	if in.Marker {
		*one = in // nothing to transform: pass it on
		return nil, nil
	}
	var outs []Output
	var err error
	if s.o.Append != nil {
		if sc != nil {
			sc.outs, sc.buf, err = s.o.Append(ctx, in, sc.outs[:0], sc.buf[:0])
			outs = sc.outs
		} else {
			// A live input's outputs live until published: fresh memory,
			// in one allocation for the usual one small output.
			fresh := new(struct {
				outs [1]Output
				buf  [64]byte
			})
			outs, _, err = s.o.Append(ctx, in, fresh.outs[:0], fresh.buf[:0])
		}
	} else {
		outs, err = s.o.Transform(ctx, in)
	}
	if err != nil {
		return nil, err
	}
	if in.Parts > 1 && len(outs) > 1 {
		return nil, pubsub.Reject(fmt.Errorf("%s: %w (part %d of %d of %s/%d made %d)", s.o.Name, errNestedSplit, in.Part, in.Parts, in.Stream, in.Seq, len(outs)))
	}
	id := envelope.Envelope{Stream: in.Stream, Seq: in.Seq, Created: in.Created, CorrelationID: in.CorrelationID,
		Part: in.Part, Parts: in.Parts}
	switch len(outs) {
	case 0:
		*one = id
		one.Marker = true
		return nil, nil
	case 1:
		*one = id
		one.ContentType, one.Payload = outs[0].ContentType, outs[0].Payload
		return nil, nil
	}
	envs := make([]envelope.Envelope, len(outs))
	for i, o := range outs {
		e := id
		e.ContentType, e.Payload = o.ContentType, o.Payload
		e.Part, e.Parts = uint32(i), uint32(len(outs))
		envs[i] = e
	}
	return envs, nil
}

// scratch is memory an AppendTransform reuses from one input to the next,
// when the outputs are done with before the next input (a relay).
type scratch struct {
	outs []Output
	buf  []byte
}

// deadMarker stands for an input the stage dead-letters: downstream counts
// (stream, seq) as handled, with the reason, and applies its message should
// it come after all (the input requeued by an operator).
func (s *Stage) deadMarker(in envelope.Envelope, err error) envelope.Envelope {
	return envelope.Envelope{Stream: in.Stream, Seq: in.Seq, Created: in.Created, CorrelationID: in.CorrelationID,
		Part: in.Part, Parts: in.Parts, Marker: true,
		Payload: fmt.Appendf(nil, "dead-lettered by %s: %v", s.o.Name, err)}
}

// HandleMessage implements pubsub.Handler: the input is finished when
// nsqd acknowledged all its outputs, so a crash means redelivery, never
// loss. Its stream's position moves then (lag.go).
func (s *Stage) HandleMessage(ctx context.Context, m *pubsub.Message) error {
	return s.h.HandleMessage(ctx, m)
}

func (s *Stage) handle(ctx context.Context, m *pubsub.Message) error {
	in := m.Envelope
	s.lag.arrived(in.Stream, in.Seq, in.Created)
	// The outputs' creation context: in a traced delivery, with a
	// publisher that traces, its send span gives them its own (left zero
	// here); otherwise they carry the input's on, so a reading's trace
	// survives a stage that does not trace. (A relay always keeps the
	// record's: see Replay.)
	var carry *envelope.TraceContext
	if !tracing.Traced(ctx) || !s.outTraces {
		carry = in.Trace
	}
	var one envelope.Envelope
	envs, err := s.outputs(ctx, in, &one, nil)
	if err != nil {
		var perm pubsub.PermanentError
		if !errors.As(err, &perm) || in.Seq == 0 {
			return err
		}
		// Dead-lettered here: tell downstream first, then let the
		// consumer dead-letter the input.
		done := m.Async()
		stream, seq, created := in.Stream, in.Seq, in.Created
		marker := s.deadMarker(in, err)
		marker.Trace = carry
		s.o.Out.PublishEnvelopeAsync(ctx, marker, func(merr error) {
			if merr != nil {
				done(merr) // the input comes again; so will the marker
				return
			}
			// Handled, for downstream: the marker stands for it (the
			// outcome is an error, which the position's hook skips).
			s.lag.finished(stream, seq, created)
			done(err)
		})
		return nil
	}
	if envs == nil {
		one.Trace = carry
		s.o.Out.PublishEnvelopeAsync(ctx, one, m.Async())
		return nil
	}
	for i := range envs {
		envs[i].Trace = carry
	}
	s.o.Out.PublishEnvelopesAsync(ctx, envs, m.Async())
	return nil
}

// Streams implements replay.Source: the upstream's streams, as this stage
// outputs them (the same sequences).
func (s *Stage) Streams(ctx context.Context) ([]replay.Status, error) {
	if s.o.Upstream == nil {
		return nil, nil
	}
	answers := s.askUpstream(ctx)
	last := map[string]replay.Status{}
	var errs []error
	answered := false
	for _, a := range answers {
		if a.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.in, a.err))
			continue
		}
		answered = true
		for _, x := range a.st {
			if cur, ok := last[x.Stream]; !ok || x.LastSeq > cur.LastSeq {
				last[x.Stream] = replay.Status{Stream: x.Stream, LastSeq: x.LastSeq}
			}
		}
	}
	if !answered && len(errs) > 0 {
		return nil, fmt.Errorf("asking %s for its streams: %w", s.o.Upstream.Service(), errors.Join(errs...))
	}
	out := make([]replay.Status, 0, len(last))
	for _, x := range last {
		out = append(out, x)
	}
	return out, nil
}

// askUpstream asks every upstream instance for its /streams, all at once,
// each for at most 2 s (an asker's own timeout is longer): one upstream
// that does not answer must not hide the others' streams. Called with an
// upstream only.
func (s *Stage) askUpstream(ctx context.Context) []upstreamAnswer {
	c := s.client()
	ins := s.o.Upstream.Instances()
	answers := make([]upstreamAnswer, len(ins))
	var wg sync.WaitGroup
	for i, in := range ins {
		answers[i].in = in.ID
		for _, t := range in.Tags {
			if id, ok := strings.CutPrefix(t, replay.OwnerTag("")); ok {
				answers[i].own = append(answers[i].own, id)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			answers[i].st, answers[i].err = c.Streams(rctx, in.Addr())
		}()
	}
	wg.Wait()
	return answers
}

// upstream picks the instance that serves stream: its owner, else any
// stage (relay).
// client asks the upstream: its requests signed for the upstream's service.
func (s *Stage) client() replay.Client {
	c := replay.Client{HTTP: s.o.HTTP, Secret: s.o.Secret}
	if s.o.Upstream != nil {
		c.Audience = s.o.Upstream.Service()
	}
	return c
}

func (s *Stage) upstream(stream string) (string, error) {
	if s.o.Upstream == nil {
		return "", fmt.Errorf("%w: %s has no upstream to relay to", replay.ErrUnknown, s.o.Name)
	}
	tag := replay.OwnerTag(stream)
	var relays []string
	for _, in := range s.o.Upstream.Instances() {
		if in.HasTag(tag) {
			return in.Addr(), nil
		}
		if in.HasTag(replay.RelayTag) {
			relays = append(relays, in.Addr())
		}
	}
	if len(relays) == 0 {
		return "", fmt.Errorf("no passing instance of %q serves stream %s", s.o.Upstream.Service(), stream)
	}
	return relays[rand.N(len(relays))], nil
}

// Replay implements replay.Source: the upstream's frames for the range,
// each through the transform, as the stage publishes them live (an input
// it would dead-letter comes back as its marker).
func (s *Stage) Replay(ctx context.Context, stream string, from, to uint64, since time.Time, emit func([]byte) error) error {
	addr, err := s.upstream(stream)
	if err != nil {
		return err
	}
	c := s.client()
	var buf []byte
	single := make([]envelope.Envelope, 1) // reused: no slice per frame
	var sc scratch                         // each frame's outputs are encoded before the next
	_, err = c.ReplayFrames(ctx, addr, replay.Request{Stream: stream, From: from, To: to, Since: since}, func(in envelope.Envelope, _ []byte) error {
		var one envelope.Envelope
		envs, err := s.outputs(ctx, in, &one, &sc)
		if err != nil {
			var perm pubsub.PermanentError
			if !errors.As(err, &perm) {
				return fmt.Errorf("%s: transforming %s/%d: %w", s.o.Name, in.Stream, in.Seq, err)
			}
			one, envs = s.deadMarker(in, err), nil
		}
		if envs == nil {
			single[0] = one
			envs = single
		}
		for i := range envs {
			// A relayed output keeps the record's original creation
			// context: its trace is the reading's, not the relay's.
			envs[i].Trace = in.Trace
			if buf, err = envs[i].Append(buf[:0]); err != nil {
				return fmt.Errorf("%s: encoding the output of %s/%d: %w", s.o.Name, in.Stream, in.Seq, err)
			}
			if err := emit(buf); err != nil {
				return err
			}
		}
		return nil
	})
	return err
}

// Snapshot implements replay.Source: the upstream's snapshot of stream,
// through the stage's SnapshotMapper.
func (s *Stage) Snapshot(ctx context.Context, stream string) (uint64, []byte, error) {
	if s.o.Snapshot == nil {
		return 0, nil, fmt.Errorf("%w: stage %s maps no snapshots (give it a SnapshotMapper)", replay.ErrNoSnapshot, s.o.Name)
	}
	addr, err := s.upstream(stream)
	if err != nil {
		return 0, nil, err
	}
	seq, upstream, err := s.client().Snapshot(ctx, addr, stream)
	if err != nil {
		return 0, nil, fmt.Errorf("asking %s for the snapshot of %s: %w", addr, stream, err)
	}
	state, err := s.o.Snapshot(stream, seq, upstream)
	if err != nil {
		return 0, nil, fmt.Errorf("%s: mapping the snapshot of %s at %d: %w", s.o.Name, stream, seq, err)
	}
	return seq, state, nil
}
