package stage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
)

// A stage's lag, per stream it has seen: how far its position (the
// highest input sequence whose outputs were all acknowledged) is behind
// the last sequence its upstream reports, as a tracking consumer's lag
// is measured (replay's StreamStatus), exported on the same metrics
// (svckit_stream_lag_messages, svckit_stream_lag_seconds) and served on
// GET /stage (StatusPath).
//
// A stage takes its inputs out of order, and its instances share one
// channel, so an instance cannot know a contiguous position: it knows the
// highest sequence it finished. Each instance reports its own figures; the
// stage as a whole is as far as its furthest instance (the console shows
// the stage so, and a query over the metrics takes the minimum of the
// instances' lags). An instance that only gets a stream's messages now and
// then (another instance got the rest) shows a lag of a few messages
// meanwhile.

// StatusPath is the path of a stage's GET endpoint of its streams' lag
// (StreamLag), served by Service.Stage behind the replay secret.
const StatusPath = "/stage"

// StreamLag is one stream's entry in a stage's GET /stage.
type StreamLag struct {
	Stream string `json:"stream"`
	// Position is the highest input sequence whose outputs were all
	// acknowledged by nsqd (finished); before one is, the sequence before
	// the lowest input that arrived.
	Position uint64 `json:"position"`
	// UpstreamLast is the last sequence the upstream reported (its
	// /streams, asked every TailInterval); 0 before it answered.
	UpstreamLast uint64 `json:"upstream_last"`
	// LagMessages is max(UpstreamLast, Position) - Position; LagSeconds,
	// while it is not 0, how long ago the input at the position was
	// created (an upper bound, by at most the time between two inputs),
	// as a tracking consumer's lag is.
	LagMessages uint64  `json:"lag_messages"`
	LagSeconds  float64 `json:"lag_seconds"`
	// LastError is why the stream's last sequence could not be asked of
	// the upstream at the last try ("" when it was): UpstreamLast is then
	// the last one known.
	LastError string `json:"last_error"`
}

// lagBook keeps the positions of the streams a stage has seen and what
// its upstream last said of them. Inputs only touch their stream's
// position: a lock-free lookup and a short lock, no allocation (save the
// first input of a stream), nothing that waits for the network.
type lagBook struct {
	m *replay.Metrics

	mu      sync.Mutex
	streams map[string]*stageStream
	// byID is a copy of streams read without a lock, replaced when a
	// stream is added: every input looks its stream up twice, from every
	// handler goroutine, and a shared lock would be a cache line they all
	// write to (the Tracker does the same).
	byID atomic.Pointer[map[string]*stageStream]
	// upstream is the upstream's last sequence of every stream it
	// reported (seen here or not yet), only ever raised: a failed or
	// partial answer leaves the last known values.
	upstream map[string]uint64
	// upErr is why the last refresh could not learn a stream's last
	// sequence, by stream ("" key: the whole upstream failed).
	upErr map[string]string
}

// stageStream is one stream's position.
type stageStream struct {
	id string
	// done: an input of the stream was finished; until then its
	// position is an estimate, just before the lowest input that arrived,
	// which an input arriving lower lowers (inputs arrive out of order:
	// the first to arrive need not be the lowest).
	done atomic.Bool
	mu   sync.Mutex
	pos  uint64
	// at is when the input at pos was created (its envelope's time, in
	// Unix nanoseconds), for the lag in seconds; when the envelope has
	// none, when the stage saw it. Before an input is finished, the
	// lowest arrived input's (the one before it is no younger).
	at int64
	// The stream's gauges, looked up once (WithLabelValues hashes).
	lagN, lagS prometheus.Gauge
}

func newLagBook(m *replay.Metrics) *lagBook {
	return &lagBook{m: m, streams: map[string]*stageStream{}, upstream: map[string]uint64{}, upErr: map[string]string{}}
}

// An input is known to the book by its envelope's stream, sequence and
// creation time, passed as values: a closure that kept the whole envelope
// for them would move it to the heap for every input.

// tracked says whether an input counts for a stream's position:
// unsequenced envelopes belong to no stream.
func tracked(stream string, seq uint64) bool { return stream != "" && seq != 0 }

// createdAt is an input's creation time in Unix nanoseconds, or now's when
// it has none (an envelope from a publisher that did not stamp it).
func createdAt(created time.Time) int64 {
	if created.IsZero() {
		return time.Now().UnixNano()
	}
	return created.UnixNano()
}

// stream finds an input's stream, adding it on its first input: its
// position starts just before that input (see arrived). What came before
// it was finished before this process started, by another instance, or
// before the channel existed; counting it as missing would show a stage
// that was just deployed, or restarted with its channel drained, as
// behind by the whole history of the stream.
func (b *lagBook) stream(id string, seq uint64, created time.Time) *stageStream {
	if m := b.byID.Load(); m != nil {
		if s := (*m)[id]; s != nil {
			return s
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.streams[id]; s != nil { // added while we waited
		return s
	}
	s := &stageStream{id: id, pos: seq - 1, at: createdAt(created),
		lagN: b.m.LagMessages.WithLabelValues(id), lagS: b.m.LagSeconds.WithLabelValues(id)}
	b.streams[id] = s
	byID := maps.Clone(b.streams)
	b.byID.Store(&byID)
	return s
}

// arrived notes an input before it is transformed: its stream is seen
// from now on, even while its transform has not returned (a stage whose
// transform hangs shows its lag rising).
//
// Until one of its inputs is finished, the stream's position is just
// before the lowest input that arrived: inputs are handled concurrently,
// and the first to get here need not be the first in the channel. Once
// one is finished, an arrival costs the lookup and an atomic load.
func (b *lagBook) arrived(stream string, seq uint64, created time.Time) {
	if !tracked(stream, seq) {
		return
	}
	s := b.stream(stream, seq, created)
	if s.done.Load() {
		return
	}
	s.mu.Lock()
	if !s.done.Load() && seq-1 < s.pos {
		s.pos, s.at = seq-1, createdAt(created)
	}
	s.mu.Unlock()
}

// finished moves the stream's position to seq if seq is past it: the
// input's outputs were all acknowledged.
func (b *lagBook) finished(stream string, seq uint64, created time.Time) {
	if !tracked(stream, seq) {
		return
	}
	s := b.stream(stream, seq, created)
	s.mu.Lock()
	// Past the estimate too: the input arrived, which put the estimate
	// below it.
	if seq > s.pos {
		s.pos = seq
		s.at = createdAt(created)
	}
	if !s.done.Load() {
		s.done.Store(true)
	}
	s.mu.Unlock()
}

// lagOf is a stream's lag against upstreamLast at now, by the tracker's
// definition: the messages between the position and the highest sequence
// known to exist, and while there are any, the age of the position's
// input.
func lagOf(pos uint64, at int64, upstreamLast uint64, now time.Time) (uint64, float64) {
	top := max(upstreamLast, pos)
	if top <= pos {
		return 0, 0
	}
	return top - pos, max(now.Sub(time.Unix(0, at)).Seconds(), 0)
}

// status is every seen stream's lag at now, sorted by stream.
func (b *lagBook) status(now time.Time) []StreamLag {
	out := b.each(now, nil)
	slices.SortFunc(out, func(a, b StreamLag) int { return strings.Compare(a.Stream, b.Stream) })
	return out
}

// export sets every seen stream's lag gauges.
func (b *lagBook) export(now time.Time) {
	b.each(now, func(s *stageStream, l StreamLag) {
		s.lagN.Set(float64(l.LagMessages))
		s.lagS.Set(l.LagSeconds)
	})
}

// each computes every seen stream's lag at now, hands it to fn (if not
// nil) and returns them all, in no order.
func (b *lagBook) each(now time.Time, fn func(*stageStream, StreamLag)) []StreamLag {
	b.mu.Lock()
	ss := slices.Collect(maps.Values(b.streams))
	up := make([]uint64, len(ss))
	errs := make([]string, len(ss))
	for i, s := range ss {
		up[i] = b.upstream[s.id]
		if errs[i] = b.upErr[s.id]; errs[i] == "" {
			errs[i] = b.upErr[""]
		}
	}
	b.mu.Unlock()
	out := make([]StreamLag, len(ss))
	for i, s := range ss {
		s.mu.Lock()
		pos, at := s.pos, s.at
		s.mu.Unlock()
		n, secs := lagOf(pos, at, up[i], now)
		out[i] = StreamLag{Stream: s.id, Position: pos, UpstreamLast: up[i], LagMessages: n, LagSeconds: secs, LastError: errs[i]}
		if fn != nil {
			fn(s, out[i])
		}
	}
	return out
}

// upstreamAnswer is one upstream instance's GET /streams.
type upstreamAnswer struct {
	in  string   // its id
	own []string // the streams it is the owner of (its stream= tags)
	st  []replay.Status
	err error
}

// learn takes a refresh's answers: every stream's last sequence is raised
// to the highest any instance reported, and each seen stream gets the
// reason it could not be learnt this time, if it could not (its owner
// failed, or no instance answered, or none reports it); a stream nobody
// answered for keeps its last known value.
func (b *lagBook) learn(service string, answers []upstreamAnswer) {
	reported := map[string]bool{}
	ownerErr := map[string]error{}
	var errs []error
	for _, a := range answers {
		if a.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", a.in, a.err))
			for _, id := range a.own {
				ownerErr[id] = a.err
			}
			continue
		}
		for _, x := range a.st {
			reported[x.Stream] = true
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, a := range answers {
		for _, x := range a.st {
			b.upstream[x.Stream] = max(b.upstream[x.Stream], x.LastSeq)
		}
	}
	clear(b.upErr)
	switch {
	case len(answers) == 0:
		b.upErr[""] = fmt.Sprintf("no passing instance of %q to ask for its streams' last sequences", service)
		return
	case len(errs) == len(answers):
		b.upErr[""] = fmt.Sprintf("asking %q for its streams' last sequences: %v", service, errors.Join(errs...))
		return
	}
	for id := range b.streams {
		switch {
		case reported[id]:
		case ownerErr[id] != nil:
			b.upErr[id] = "asking the stream's owner for its last sequence: " + ownerErr[id].Error()
		default:
			b.upErr[id] = "no instance of the upstream reports the stream (its owner is not registered, or not passing)"
		}
	}
}

// Lag is the stage's lag in every stream it has seen, sorted by stream.
func (s *Stage) Lag() []StreamLag { return s.lag.status(time.Now()) }

// ServeStatus is the stage's GET /stage handler (StatusPath): Lag as
// JSON. Service.Stage serves it behind the replay secret.
func (s *Stage) ServeStatus(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, s.Lag())
}

// Run keeps the stage's lag: it asks the upstream for its streams' last
// sequences at once and every TailInterval (from a goroutine of its own,
// bounded by the per-instance timeout of Streams: inputs never wait for
// it), and sets the lag gauges every second, until ctx ends.
// Service.Stage runs it.
func (s *Stage) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	if s.o.Upstream != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(s.o.TailInterval)
			defer tick.Stop()
			for {
				s.refreshUpstream(ctx)
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}()
	}
	tick := time.NewTicker(exportInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			s.lag.export(time.Now())
		}
	}
}

// exportInterval is how often the lag gauges are set: more often than
// Prometheus scrapes, less than every input.
const exportInterval = time.Second

// refreshUpstream asks the upstream for its streams' last sequences once.
func (s *Stage) refreshUpstream(ctx context.Context) {
	answers := s.askUpstream(ctx)
	if ctx.Err() != nil {
		return // stopping: a cut answer is not news
	}
	s.lag.learn(s.o.Upstream.Service(), answers)
	s.lag.export(time.Now())
}

// finishedHook is the OnOutcome layer a stage wraps itself in: an input
// whose outcome is nil had all its outputs acknowledged. It sees the
// outcome of the Async completion without a closure per input (the
// consumer's own layers already made the message's hook list; a fourth
// hook fits in it without an allocation).
func (s *Stage) finishedHook(_ context.Context, m *pubsub.Message, err error) error {
	if err == nil {
		s.lag.finished(m.Envelope.Stream, m.Envelope.Seq, m.Envelope.Created)
	}
	return err
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	// An error is the client gone mid-answer: nothing to tell it.
	_ = json.NewEncoder(w).Encode(v)
}
