package replay

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/tracing"
)

// The consumer side of the protocol, the Tracker, by job:
//
//   - tracker.go: the type, its options, live delivery (Deliver, and the
//     bound on live sequences) and Run's loop;
//   - tracker_core.go: one stream's exactly-once bookkeeping (applied set,
//     parts, markers, gaps, the bound), with no lock, network or disk;
//   - tracker_recovery.go: asking the owners through a Client (tails,
//     replays, snapshots), with backoff and dead-lettering;
//   - tracker_checkpoint.go: the checkpoint file;
//   - tracker_status.go: Status, Ready and GET /streams.

// Applier is the consumer's state, as the tracker drives it. Every method is
// called with the stream's lock held, so per stream they never run
// concurrently; different streams may run in parallel.
type Applier interface {
	// Apply applies one message. It is called at most once per (stream,
	// seq) over the consumer's life (checkpoint included). env.Payload is
	// only valid during the call.
	Apply(stream string, env envelope.Envelope) error
	// ApplySnapshot replaces the stream's state by the owner's fold over
	// 1..seq.
	ApplySnapshot(stream string, seq uint64, state []byte) error
	// ExportState encodes the stream's state for the checkpoint, as JSON
	// (or nil). It is also called for streams never applied to (the
	// tracker exports every stream it knows of): the empty state, not an
	// error, which would fail the whole checkpoint.
	ExportState(stream string) ([]byte, error)
	// ImportState restores the stream's state from the checkpoint; state
	// is what ExportState gave, "null" for nil.
	ImportState(stream string, state []byte) error
}

// replaytest (svckit/replay/replaytest) checks an Applier, a Fold and a
// stage's transform and snapshot mapper against these contracts.

// TrackerOptions configures a Tracker. Zero values take the defaults named
// on each field.
type TrackerOptions struct {
	// Tracer, if set, makes a process span of every replayed message the
	// tracker applies (svckit.delivery "replay", or "relayed" through a
	// stage), in the message's
	// original trace; Topic and Channel name its destination and group,
	// as the live deliveries' spans do (svckit/tracing).
	Tracer         *tracing.Tracer
	Topic, Channel string
	// CheckpointPath is where applied sets and state are saved together
	// (atomically); "" keeps everything in memory.
	CheckpointPath     string
	CheckpointInterval time.Duration // default 1s
	// FS holds CheckpointPath; nil is the OS's (tests cut the power with
	// crashfs).
	FS durable.FS
	// Owners are the passing instances of the owner service (a
	// *discovery.Watcher); an owner of stream S carries the tag "stream=S"
	// (see OwnerTag).
	Owners Instances
	// GapGrace is how long a gap must stay open before it is requested: NSQ
	// does not order messages, so most gaps close by themselves. Default 2s.
	GapGrace     time.Duration
	MaxBatch     int           // most sequences per replay request; default 10000
	TailInterval time.Duration // how often owners are asked for their last seq; default 5s
	RetryMin     time.Duration // default 200ms
	RetryMax     time.Duration // default 10s
	Secret       string        // the owners' shared secret, if any
	// MaxAhead is how far past the last sequence the owner is known to
	// have published a live message may be and still be applied at once.
	// Beyond it the tracker asks the owner first, and a sequence the owner
	// never published is rejected (dead-lettered by the consumer): a forged
	// or corrupt sequence must not reach the state, nor open a gap that
	// never closes. Default 1,000,000: with the tail checked every 5s, a
	// stream must run above 200k msg/s to ever wait for the owner.
	MaxAhead uint64
	// DeadLetter keeps a replayed message that cannot be applied (its
	// Transform or Apply failed for good), so replay continues past it;
	// the sequence then counts as handled (StreamStatus.DeadLettered) and
	// is applied if it ever arrives live again. nil: the message is only
	// logged and counted; it stays in the owner's log.
	DeadLetter func(ctx context.Context, stream string, seq uint64, frame []byte, reason string) error
	// MaxAttempts is how often a replayed message whose Apply fails (not
	// permanently) is tried before it is dead-lettered; default 5.
	MaxAttempts int
	// Timeout bounds each request to an owner other than a replay
	// (/streams, /snapshot): a hung owner must not hold up checkpoints or
	// live messages. Default 5s.
	Timeout time.Duration
	// Transform maps a replayed owner message onto what Apply expects, for
	// consumers downstream of a stateless step (the app receives results,
	// the sensor replays readings). nil = identity.
	Transform func(envelope.Envelope) (envelope.Envelope, error)
	HTTP      *http.Client // nil = a client with a 60s timeout
	Logger    *slog.Logger // nil = discard
	Metrics   *Metrics     // nil = NewMetrics on a registry of its own (not exported)
}

// Instances is the live set of owner instances; *discovery.Watcher is one.
type Instances interface {
	Instances() []discovery.Instance
	Service() string
}

// OwnerTag is the Consul tag an owner of stream carries.
func OwnerTag(stream string) string { return "stream=" + stream }

// PublishesTag is the Consul tag of a service that publishes topic: an
// owner of a stream on it, or a stage whose outputs go there.
func PublishesTag(topic string) string { return "publishes=" + topic }

// RelayTag is the Consul tag of a stage: it serves the replay protocol for
// every stream its upstream has, through its transform.
const RelayTag = "replay-relay"

// TrackerTag is the Consul tag of a tracking consumer: its GET /streams
// reports each stream's position, lag and recovery (StreamStatus).
const TrackerTag = "replay-tracker"

// ConsumesTag is the Consul tag of a tracking consumer or a stage that
// consumes topic: with PublishesTag, what draws the pipeline.
func ConsumesTag(topic string) string { return "consumes=" + topic }

// Tracker applies every (stream, seq) exactly once and recovers what is missing.
type Tracker struct {
	a Applier
	o TrackerOptions
	// spans are the replayed messages' process spans (nil: tracing off).
	spans *tracing.Destination

	mu      sync.RWMutex
	streams map[string]*trackedStream
	// byID is a copy of streams for Deliver, replaced on each new stream:
	// read without a lock, since every handler goroutine looks its stream
	// up for every message and t.mu's read lock was a cache line they all
	// wrote to.
	byID atomic.Pointer[map[string]*trackedStream]

	// saveErr is why the last checkpoint could not be written (a full
	// disk), nil once one is: the state stays in memory and Run tries
	// again every CheckpointInterval.
	saveMu  sync.Mutex
	saveErr error
}

// trackedStream is one stream as the Tracker keeps it: its core (the
// applied set, parts, gaps, the owner's last answer; tracker_core.go) and
// the recovery's state, under one lock.
type trackedStream struct {
	mu sync.Mutex
	streamCore
	// refresh is closed when the owner query in flight (started at
	// refreshAt) ends; nil when none is.
	refresh    chan struct{}
	refreshAt  time.Time
	refreshErr error
	// noSnapshot: the stream needs a snapshot and its upstream offers none.
	noSnapshot error
	// failSeq failed to apply failures times in a row (replay).
	failSeq  uint64
	failures int
	// fetching: a recovery runs; retryAt, retryDelay: its backoff.
	fetching   bool
	retryAt    time.Time
	retryDelay time.Duration
	// replayRequested, replayReceived: the running recovery's progress;
	// lastErr: the last recovery's failure (nil after a success).
	replayRequested, replayReceived uint64
	lastErr                         error
	dups                            prometheus.Counter
}

// NewTracker loads the checkpoint (if any) into a and returns the tracker.
func NewTracker(a Applier, o TrackerOptions) (*Tracker, error) {
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = time.Second
	}
	if o.GapGrace <= 0 {
		o.GapGrace = 2 * time.Second
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 10000
	}
	if o.TailInterval <= 0 {
		o.TailInterval = 5 * time.Second
	}
	if o.RetryMin <= 0 {
		o.RetryMin = 200 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 10 * time.Second
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: 60 * time.Second}
	}
	if o.MaxAhead == 0 {
		o.MaxAhead = 1_000_000
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	if o.Logger == nil {
		o.Logger = logging.Discard()
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	o.FS = durable.Or(o.FS)
	t := &Tracker{a: a, o: o, streams: map[string]*trackedStream{}, spans: o.Tracer.Topic(o.Topic, o.Channel)}
	if err := t.load(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Tracker) stream(id string) *trackedStream {
	if m := t.byID.Load(); m != nil {
		if s := (*m)[id]; s != nil {
			return s
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.streams[id]; s != nil { // added while we waited for the lock
		return s
	}
	s := t.newStream(id)
	t.streams[id] = s
	byID := maps.Clone(t.streams)
	t.byID.Store(&byID)
	return s
}

func (t *Tracker) newStream(id string) *trackedStream {
	return &trackedStream{streamCore: newStreamCore(id), dups: t.o.Metrics.Duplicates.WithLabelValues(id)}
}

// Deliver applies a live env unless its (stream, seq) was handled before;
// it reports whether it applied. Unsequenced envelopes (seq 0) are applied
// without tracking. An Apply error leaves the sequence unhandled (the
// consumer requeues the message, or dead-letters it when the error is
// permanent). A sequence more than MaxAhead past what the owner is known to
// have published is checked with the owner first (ctx bounds that); one
// the owner never published is refused with a NeverPublishedError.
func (t *Tracker) Deliver(ctx context.Context, env envelope.Envelope) (bool, error) {
	switch {
	case env.Stream == "" && env.Seq == 0:
		return true, t.a.Apply(env.Stream, env) // not a stream's: not tracked
	case env.Stream == "" || env.Seq == 0:
		// No publisher of a stream writes these: applying one untracked
		// would let anyone add to a stream's state.
		return false, permanentError{fmt.Errorf("stream %q, sequence %d: a stream's message without a stream or a sequence", env.Stream, env.Seq)}
	}
	s := t.stream(env.Stream)
	if err := t.checkPublished(ctx, s, env.Seq); err != nil {
		return false, err
	}
	return t.apply(s, env)
}

// apply applies env once, through the stream's core. Replayed messages
// come here straight: the owner serves only what it published.
func (t *Tracker) apply(s *trackedStream, env envelope.Envelope) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	applied, duplicate, err := s.streamCore.apply(t.a, env)
	if duplicate {
		s.dups.Inc()
	}
	return applied, err
}

// NeverPublishedError refuses a live message whose sequence the stream's
// owner says it never published (forged, or corrupt). It is permanent:
// consumers dead-letter the message.
type NeverPublishedError struct {
	Stream    string
	Seq       uint64
	OwnerLast uint64
}

func (e NeverPublishedError) Error() string {
	return fmt.Sprintf("stream %s: sequence %d was never published (the owner's last is %d)", e.Stream, e.Seq, e.OwnerLast)
}

// Permanent reports true: retrying cannot make the owner have published it.
func (e NeverPublishedError) Permanent() bool { return true }

// permanentError marks a failure retrying cannot fix.
type permanentError struct{ error }

func (e permanentError) Unwrap() error   { return e.error }
func (e permanentError) Permanent() bool { return true }

// checkPublished lets seq through when it is within MaxAhead of what the
// owner is known to have published (its last answer, kept in the
// checkpoint), and otherwise asks the owner. Within the bound a forged
// message cannot be told from a real one: who may publish is nsqd's
// authorization's to decide (svckit/nsqauth).
func (t *Tracker) checkPublished(ctx context.Context, s *trackedStream, seq uint64) error {
	if t.o.Owners == nil {
		return nil // no owner to ask (and no replay)
	}
	s.mu.Lock()
	// Only what the owner said counts (see pastBound).
	known, past := s.ownerLast, s.pastBound(seq, t.o.MaxAhead)
	s.mu.Unlock()
	if !past {
		return nil
	}
	// Taken here, not on entry: a clock read per message was a tenth of
	// a consumer's CPU on a VM's clock. Later is only stricter: an owner's
	// answer must postdate it to be trusted for this message.
	arrived := time.Now()
	last, err := t.refreshOwnerLast(ctx, s, arrived)
	if err != nil {
		// Not a verdict: the message is requeued and asked about again.
		return fmt.Errorf("stream %s: sequence %d is more than %d past the owner's last known %d, and asking the owner failed: %w", s.id, seq, t.o.MaxAhead, known, err)
	}
	if seq > last {
		t.o.Metrics.NeverPublished.WithLabelValues(s.id).Inc()
		return NeverPublishedError{Stream: s.id, Seq: seq, OwnerLast: last}
	}
	return nil
}

// Run detects gaps, asks owners for what is missing and checkpoints, until
// ctx ends; it returns after the recoveries it started. Call Save after the
// consumer drained for the final checkpoint. Owners are asked from
// goroutines of their own, so a hung owner never holds up a checkpoint.
func (t *Tracker) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	if t.o.Owners != nil {
		wg.Add(1)
		go func() { defer wg.Done(); t.watchTails(ctx) }()
	}
	scan := time.NewTicker(max(min(t.o.GapGrace/4, 250*time.Millisecond), 10*time.Millisecond))
	defer scan.Stop()
	save := time.NewTicker(t.o.CheckpointInterval)
	defer save.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-save.C:
			_ = t.Save() // a failure is logged once and reported by Ready
		case <-scan.C:
			t.scan(ctx, &wg)
		}
	}
}
