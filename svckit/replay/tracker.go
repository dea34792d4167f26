package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/logging"
)

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

// TrackerOptions configures a Tracker.
type TrackerOptions struct {
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
	HTTP      *http.Client
	Logger    *slog.Logger
	Metrics   *Metrics
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

// Tracker applies every (stream, seq) exactly once and recovers what is missing.
type Tracker struct {
	a Applier
	o TrackerOptions

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

type trackedStream struct {
	id string
	mu sync.Mutex
	// applied holds every handled sequence: applied to the state, or
	// dead-lettered (those are in parked too). Gaps are what it lacks.
	applied    SeqSet
	parked     SeqSet
	partial    map[uint64]*partialSeq // split sequences not complete yet
	duplicates uint64
	snapshots  uint64
	ownerLast  uint64 // last_seq the owner reported
	// refresh is closed when the owner query in flight (started at
	// refreshAt) ends; nil when none is.
	refresh    chan struct{}
	refreshAt  time.Time
	refreshErr error
	// noSnapshot: the stream needs a snapshot and its upstream offers none.
	noSnapshot error
	// failSeq failed to apply failures times in a row (replay).
	failSeq    uint64
	failures   int
	gapSeen    map[uint64]time.Time // gap start → when first seen open
	fetching   bool
	retryAt    time.Time
	retryDelay time.Duration
	counted    map[uint64]bool // gap starts already counted in GapsDetected
	dups       prometheus.Counter
}

// StreamStatus is a stream's entry in the consumer's GET /streams.
type StreamStatus struct {
	Stream         string      `json:"stream"`
	LastContiguous uint64      `json:"last_contiguous"`
	Applied        uint64      `json:"applied"`
	Duplicates     uint64      `json:"duplicates"`
	Gaps           [][2]uint64 `json:"gaps"`
	// OwnerLast is the last sequence the owner reported: gaps never reach
	// beyond it.
	OwnerLast uint64 `json:"owner_last"`
	// DeadLettered are sequences handled by dead-lettering, not applied.
	DeadLettered [][2]uint64 `json:"dead_lettered"`
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
	t := &Tracker{a: a, o: o, streams: map[string]*trackedStream{}}
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
	return &trackedStream{id: id, gapSeen: map[uint64]time.Time{}, counted: map[uint64]bool{}, partial: map[uint64]*partialSeq{},
		dups: t.o.Metrics.Duplicates.WithLabelValues(id)}
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

// apply applies env once. Replayed messages come here straight: the owner
// serves only what it published.
//
// A sequence is complete when its message was applied, or all its parts
// (a stage split its input), or its marker seen (a stage made nothing of
// it). A marker that carries a reason (the input was dead-lettered
// upstream) parks the sequence: complete for gap detection, and applied
// should its message ever arrive (requeued by an operator).
func (t *Tracker) apply(s *trackedStream, env envelope.Envelope) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := env.Seq
	parked := s.parked.Contains(seq)
	if s.applied.Contains(seq) && (!parked || env.Marker) && s.partial[seq] == nil {
		s.duplicates++
		s.dups.Inc()
		return false, nil
	}
	if env.Parts > 1 {
		return t.applyPart(s, env)
	}
	if s.partial[seq] != nil {
		return false, permanentError{fmt.Errorf("stream %s seq %d: a whole message for a sequence sent in parts", s.id, seq)}
	}
	switch {
	case env.Marker && len(env.Payload) > 0:
		s.applied.Add(seq)
		s.parked.Add(seq)
		return false, nil
	case env.Marker:
		s.applied.Add(seq)
		return false, nil
	}
	if err := t.a.Apply(env.Stream, env); err != nil {
		return false, err
	}
	// A dead-lettered sequence sent again applies now: no longer parked.
	s.parked.Remove(seq)
	s.applied.Add(seq)
	return true, nil
}

// applyPart applies one part of a split sequence once. Called with s.mu
// held. The sequence is complete when every part was applied or marked;
// if some were dead-lettered upstream it is parked, and its record kept, so
// that exactly those parts apply should they come again (requeued), and
// no other part twice.
func (t *Tracker) applyPart(s *trackedStream, env envelope.Envelope) (bool, error) {
	seq, part := env.Seq, uint64(env.Part)+1 // SeqSet has no 0
	p := s.partial[seq]
	if p == nil {
		p = &partialSeq{parts: env.Parts}
		s.partial[seq] = p
	} else if p.parts != env.Parts {
		return false, permanentError{fmt.Errorf("stream %s seq %d: part %d of %d, but earlier parts said %d", s.id, seq, env.Part, env.Parts, p.parts)}
	}
	if p.got.Contains(part) && (env.Marker || !p.dead.Contains(part)) {
		s.duplicates++
		s.dups.Inc()
		return false, nil
	}
	applied := false
	switch {
	case env.Marker && len(env.Payload) > 0:
		p.dead.Add(part) // dead-lettered upstream
	case env.Marker:
	default:
		if err := t.a.Apply(env.Stream, env); err != nil {
			return false, err
		}
		applied = true
		p.dead.Remove(part)
	}
	p.got.Add(part)
	t.settlePartsLocked(s, seq, p)
	return applied, nil
}

// settlePartsLocked completes seq once every part is handled: parked while
// some part is dead, else done with. Called with s.mu held.
func (t *Tracker) settlePartsLocked(s *trackedStream, seq uint64, p *partialSeq) {
	if p.got.Count() < uint64(p.parts) {
		return
	}
	s.applied.Add(seq)
	if p.dead.Count() > 0 {
		s.parked.Add(seq)
		return
	}
	s.parked.Remove(seq)
	delete(s.partial, seq)
}

// partialSeq is a sequence split into parts, some applied.
type partialSeq struct {
	parts uint32
	got   SeqSet // part index + 1: handled (applied or marked)
	dead  SeqSet // part index + 1: handled by dead-lettering
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

// checkPublished lets seq through when it is within MaxAhead of what the
// owner is known to have published (its last answer, kept in the
// checkpoint), and otherwise asks the owner. Within the bound a forged
// message cannot be told from a real one: who may publish is nsqd's
// authorization's to decide (svckit/nsqauth).
func (t *Tracker) checkPublished(ctx context.Context, s *trackedStream, seq uint64) error {
	if t.o.Owners == nil {
		return nil // no owner to ask (and no replay)
	}
	arrived := time.Now()
	s.mu.Lock()
	// Only what the owner said counts: what this consumer applied could
	// be a forgery within the bound, which must not move it.
	known := s.ownerLast
	s.mu.Unlock()
	if seq <= known+t.o.MaxAhead {
		return nil
	}
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

// refreshOwnerLast asks the stream's owner for its last sequence. Callers
// share a query, but only one that started after their message arrived:
// an answer from before could predate the message's publication.
func (t *Tracker) refreshOwnerLast(ctx context.Context, s *trackedStream, arrived time.Time) (uint64, error) {
	for {
		s.mu.Lock()
		if ch := s.refresh; ch != nil {
			usable := !s.refreshAt.Before(arrived)
			s.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return 0, ctx.Err()
			}
			if usable {
				s.mu.Lock()
				last, err := s.ownerLast, s.refreshErr
				s.mu.Unlock()
				return last, err
			}
			continue
		}
		ch := make(chan struct{})
		s.refresh, s.refreshAt = ch, time.Now()
		s.mu.Unlock()
		last, err := t.askLast(ctx, s.id)
		s.mu.Lock()
		if err == nil {
			s.ownerLast = max(s.ownerLast, last)
		}
		last, s.refreshErr, s.refresh = s.ownerLast, err, nil
		s.mu.Unlock()
		close(ch)
		return last, err
	}
}

// askLast asks stream's owner for the stream's last published sequence.
func (t *Tracker) askLast(ctx context.Context, stream string) (uint64, error) {
	in, err := t.owner(stream)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, t.o.Timeout)
	defer cancel()
	var st []Status
	if err := t.getJSON(ctx, in, "/streams", nil, &st); err != nil {
		return 0, fmt.Errorf("asking %s for its streams: %w", in.ID, err)
	}
	for _, x := range st {
		if x.Stream == stream {
			return x.LastSeq, nil
		}
	}
	return 0, nil // the owner answered, and never published anything of it
}

// Status reports every stream (sorted by id).
func (t *Tracker) Status() []StreamStatus {
	t.mu.RLock()
	ids := slices.Sorted(maps.Keys(t.streams))
	ss := make([]*trackedStream, len(ids))
	for i, id := range ids {
		ss[i] = t.streams[id]
	}
	t.mu.RUnlock()
	out := make([]StreamStatus, len(ss))
	for i, s := range ss {
		s.mu.Lock()
		gaps := s.applied.Gaps()
		if gaps == nil {
			gaps = [][2]uint64{}
		}
		parked := s.parked.Intervals()
		if parked == nil {
			parked = [][2]uint64{}
		}
		out[i] = StreamStatus{Stream: s.id, LastContiguous: s.applied.Contiguous(), Applied: s.applied.Count() - s.parked.Count(),
			Duplicates: s.duplicates, Gaps: gaps, OwnerLast: s.ownerLast, DeadLettered: parked}
		s.mu.Unlock()
	}
	return out
}

// Ready is nil unless a stream cannot be made complete (it needs a
// snapshot its upstream does not offer) or the checkpoint cannot be
// written (a readiness check).
func (t *Tracker) Ready() error {
	t.mu.RLock()
	ss := slices.Collect(maps.Values(t.streams))
	t.mu.RUnlock()
	var errs []error
	t.saveMu.Lock()
	if t.saveErr != nil {
		errs = append(errs, fmt.Errorf("checkpoint not saved (state kept in memory, retried): %w", t.saveErr))
	}
	t.saveMu.Unlock()
	for _, s := range ss {
		s.mu.Lock()
		if s.noSnapshot != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w", s.id, s.noSnapshot))
		}
		s.mu.Unlock()
	}
	return errors.Join(errs...)
}

// ServeStreams is the consumer's GET /streams handler.
func (t *Tracker) ServeStreams(w http.ResponseWriter, _ *http.Request) { writeJSON(w, t.Status()) }

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

// watchTails asks the owners for their streams' last sequences at once
// (what was published while the consumer was away) and every TailInterval.
func (t *Tracker) watchTails(ctx context.Context) {
	tick := time.NewTicker(t.o.TailInterval)
	defer tick.Stop()
	for {
		t.checkTails(ctx)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// checkTails asks each owner for its streams' last sequence numbers.
func (t *Tracker) checkTails(ctx context.Context) {
	for _, in := range t.o.Owners.Instances() {
		var st []Status
		rctx, cancel := context.WithTimeout(ctx, t.o.Timeout)
		err := t.getJSON(rctx, in, "/streams", nil, &st)
		cancel()
		if err != nil {
			t.o.Logger.Debug("asking owner for its streams", "owner", in.ID, "err", err)
			continue
		}
		for _, x := range st {
			if x.LastSeq == 0 {
				continue
			}
			s := t.stream(x.Stream)
			s.mu.Lock()
			s.ownerLast = max(s.ownerLast, x.LastSeq)
			s.mu.Unlock()
		}
	}
}

// missing lists the stream's missing ranges, the tail up to what the owner
// reported included. Called with s.mu held.
func missing(s *trackedStream) [][2]uint64 {
	gaps := s.applied.Gaps()
	if top := s.applied.Max(); s.ownerLast > top {
		gaps = append(gaps, [2]uint64{top + 1, s.ownerLast})
	}
	return gaps
}

func (t *Tracker) scan(ctx context.Context, wg *sync.WaitGroup) {
	now := time.Now()
	t.mu.RLock()
	ss := slices.Collect(maps.Values(t.streams))
	t.mu.RUnlock()
	for _, s := range ss {
		s.mu.Lock()
		gaps := missing(s)
		var n uint64
		due := false
		open := make(map[uint64]bool, len(gaps))
		for _, g := range gaps {
			n += g[1] - g[0] + 1
			open[g[0]] = true
			seen, ok := s.gapSeen[g[0]]
			if !ok {
				s.gapSeen[g[0]] = now
				continue
			}
			if now.Sub(seen) >= t.o.GapGrace {
				due = true
				if !s.counted[g[0]] {
					s.counted[g[0]] = true
					t.o.Metrics.GapsDetected.WithLabelValues(s.id).Inc()
					t.o.Logger.Info("gap detected; requesting replay", "stream", s.id, "from", g[0], "to", g[1])
				}
			}
		}
		for k := range s.gapSeen {
			if !open[k] {
				delete(s.gapSeen, k)
				delete(s.counted, k)
			}
		}
		t.o.Metrics.Missing.WithLabelValues(s.id).Set(float64(n))
		start := due && !s.fetching && !now.Before(s.retryAt)
		if start {
			s.fetching = true
		}
		s.mu.Unlock()
		if start {
			wg.Add(1)
			go func() { defer wg.Done(); t.recover(ctx, s) }()
		}
	}
}

// recover fetches every missing range of s that has been open past the grace.
func (t *Tracker) recover(ctx context.Context, s *trackedStream) {
	err := t.recoverOnce(ctx, s)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fetching = false
	if err == nil {
		s.retryDelay = 0
		if s.noSnapshot != nil {
			s.noSnapshot = nil
			t.o.Metrics.SnapshotUnavailable.WithLabelValues(s.id).Set(0)
		}
		return
	}
	if errors.Is(err, ErrNoSnapshot) {
		// Asking again soon would get the same answer: until someone
		// gives the upstream a snapshot, say so (log once, /ready, the
		// metric) and look again only now and then.
		if s.noSnapshot == nil {
			t.o.Logger.Error("the stream needs a snapshot its upstream does not offer; it stays incomplete", "stream", s.id, "err", err)
		}
		s.noSnapshot = err
		t.o.Metrics.SnapshotUnavailable.WithLabelValues(s.id).Set(1)
		s.retryDelay = max(t.o.RetryMax, time.Minute)
		s.retryAt = time.Now().Add(s.retryDelay)
		return
	}
	if s.retryDelay == 0 {
		s.retryDelay = t.o.RetryMin
	} else {
		s.retryDelay = min(s.retryDelay*2, t.o.RetryMax)
	}
	s.retryAt = time.Now().Add(s.retryDelay/2 + rand.N(s.retryDelay/2+1))
	if ctx.Err() == nil {
		t.o.Logger.Warn("replay failed; retrying with backoff", "stream", s.id, "retry_in", time.Until(s.retryAt).Round(time.Millisecond), "err", err)
	}
}

func (t *Tracker) recoverOnce(ctx context.Context, s *trackedStream) error {
	now := time.Now()
	s.mu.Lock()
	var due [][2]uint64
	for _, g := range missing(s) {
		if seen, ok := s.gapSeen[g[0]]; ok && now.Sub(seen) >= t.o.GapGrace {
			due = append(due, g)
		}
	}
	s.mu.Unlock()
	// A range that fails does not hold up the others (the tail above all):
	// the first error is returned once every range was tried.
	var first error
	for _, g := range due {
		for from := g[0]; from <= g[1]; {
			to := min(g[1], from+uint64(t.o.MaxBatch)-1)
			high, err := t.fetch(ctx, s, from, to)
			if errors.Is(err, ErrGone) || errors.Is(err, ErrDamaged) {
				// Trimmed, or damaged on the owner's disk: either way
				// only a snapshot brings those sequences back.
				if errors.Is(err, ErrDamaged) {
					t.o.Logger.Warn("the upstream's disk damaged sequences this stream needs; recovering through its snapshot", "stream", s.id, "err", err)
				}
				return t.recoverSnapshot(ctx, s)
			}
			if err != nil {
				if first == nil {
					first = err
				}
				break
			}
			if high < from {
				break // the owner has nothing more in this range now
			}
			from = high + 1
		}
	}
	return first
}

// owner finds the passing instance that owns stream.
//
// The stream's origin owner carries the tag stream=<id>; a stage relays
// every stream its upstream has (RelayTag), from any of its instances.
func (t *Tracker) owner(stream string) (discovery.Instance, error) {
	if t.o.Owners == nil {
		return discovery.Instance{}, errors.New("no owner service configured")
	}
	tag := OwnerTag(stream)
	var relays []discovery.Instance
	for _, in := range t.o.Owners.Instances() {
		if in.HasTag(tag) {
			return in, nil
		}
		if in.HasTag(RelayTag) {
			relays = append(relays, in)
		}
	}
	if len(relays) > 0 {
		return relays[rand.N(len(relays))], nil
	}
	return discovery.Instance{}, fmt.Errorf("no passing instance of %q carries tag %q or %q", t.o.Owners.Service(), tag, RelayTag)
}

// fetch replays [from, to] of stream from its owner and applies it, and
// returns the highest sequence the response carried (0 if none). A frame
// that cannot be applied for good is dead-lettered and replay goes on past
// it.
func (t *Tracker) fetch(ctx context.Context, s *trackedStream, from, to uint64) (uint64, error) {
	var high uint64
	res, _, err := t.fetchFrames(ctx, s.id, from, to, func(env envelope.Envelope, frame []byte, terr error) error {
		high = max(high, env.Seq)
		if terr == nil {
			_, terr = t.apply(s, env)
		}
		if terr == nil {
			return nil
		}
		if !isPermanent(terr) && !t.failedTooOften(s, env.Seq) {
			return terr // the recovery backs off and asks again
		}
		return t.park(ctx, s, env, frame, terr.Error())
	})
	t.o.Metrics.Requests.WithLabelValues(res).Inc()
	return high, err
}

// failedTooOften counts a failure to apply seq and reports whether it
// failed MaxAttempts times in a row: a replayed message, like a live one,
// is not retried forever.
func (t *Tracker) failedTooOften(s *trackedStream, seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failSeq != seq {
		s.failSeq, s.failures = seq, 0
	}
	s.failures++
	return s.failures >= t.o.MaxAttempts
}

// permanentError marks a failure retrying cannot fix.
type permanentError struct{ error }

func (e permanentError) Unwrap() error   { return e.error }
func (e permanentError) Permanent() bool { return true }

// park dead-letters a replayed frame that cannot be applied and counts its
// sequence as handled, so that it is not requested again.
func (t *Tracker) park(ctx context.Context, s *trackedStream, env envelope.Envelope, frame []byte, reason string) error {
	seq := env.Seq
	reason = fmt.Sprintf("replayed message %d of stream %s cannot be applied: %s", seq, s.id, reason)
	if t.o.DeadLetter != nil {
		if err := t.o.DeadLetter(ctx, s.id, seq, frame, reason); err != nil {
			return fmt.Errorf("dead-lettering replayed message %d of %s: %w", seq, s.id, err)
		}
	}
	s.mu.Lock()
	switch {
	case env.Parts > 1:
		// Only this part: its siblings still come, or are asked for.
		p := s.partial[seq]
		if p == nil {
			p = &partialSeq{parts: env.Parts}
			s.partial[seq] = p
		}
		if part := uint64(env.Part) + 1; !p.got.Contains(part) {
			p.got.Add(part)
			p.dead.Add(part)
			t.settlePartsLocked(s, seq, p)
		}
	case !s.applied.Contains(seq):
		s.applied.Add(seq)
		s.parked.Add(seq)
	}
	s.mu.Unlock()
	t.o.Metrics.DeadLettered.WithLabelValues(s.id).Inc()
	t.o.Logger.Error("replayed message dead-lettered; replay goes on past it", "stream", s.id, "seq", seq, "reason", reason)
	return nil
}

// Fetch asks stream's owner for [from, to] and calls fn for every envelope
// (after Transform). It returns a result class for metrics, the number of
// frames received, and an error (errGone-wrapped when trimmed). A Transform
// error ends it.
func (t *Tracker) Fetch(ctx context.Context, stream string, from, to uint64, fn func(envelope.Envelope) error) (string, uint64, error) {
	return t.fetchFrames(ctx, stream, from, to, func(env envelope.Envelope, _ []byte, terr error) error {
		if terr != nil {
			return terr
		}
		return fn(env)
	})
}

// fetchFrames is Fetch handing fn each frame's bytes too, and the Transform
// error instead of ending the replay with it.
func (t *Tracker) fetchFrames(ctx context.Context, stream string, from, to uint64, fn func(env envelope.Envelope, frame []byte, terr error) error) (string, uint64, error) {
	in, err := t.owner(stream)
	if err != nil {
		return "no_owner", 0, err
	}
	start := time.Now()
	c := Client{HTTP: t.o.HTTP, Secret: t.o.Secret, Audience: in.Service}
	var bytes uint64
	n, err := c.ReplayFrames(ctx, in.Addr(), Request{Stream: stream, From: from, To: to}, func(env envelope.Envelope, frame []byte) error {
		var terr error
		if t.o.Transform != nil {
			if env, terr = t.o.Transform(env); terr != nil {
				// A transform is a mapping: what fails once fails always.
				terr = permanentError{fmt.Errorf("transform: %w", terr)}
			}
		}
		bytes += uint64(len(frame)) + 4
		return fn(env, frame, terr)
	})
	t.o.Metrics.ReplayedMessages.Add(float64(n))
	t.o.Metrics.ReplayedBytes.Add(float64(bytes))
	t.o.Metrics.ReplaySeconds.Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		return "ok", n, nil
	case errors.Is(err, ErrGone):
		return "gone", n, err
	case errors.Is(err, ErrDamaged):
		return "damaged", n, err
	default:
		return "error", n, fmt.Errorf("from %s: %w", in.ID, err)
	}
}

// recoverSnapshot replaces the stream's state by the owner's snapshot.
func (t *Tracker) recoverSnapshot(ctx context.Context, s *trackedStream) error {
	in, err := t.owner(s.id)
	if err != nil {
		return err
	}
	var snap snapshotFile
	sctx, cancel := context.WithTimeout(ctx, max(t.o.Timeout, 30*time.Second))
	defer cancel()
	if err := t.getJSON(sctx, in, "/snapshot", url.Values{"stream": {s.id}}, &snap); err != nil {
		t.o.Metrics.Requests.WithLabelValues("error").Inc()
		return fmt.Errorf("fetching snapshot of %s: %w", s.id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if snap.Seq <= s.applied.Contiguous() {
		return nil // we are already past it: nothing to gain
	}
	if err := t.a.ApplySnapshot(s.id, snap.Seq, snap.State); err != nil {
		return fmt.Errorf("applying snapshot of %s at %d: %w", s.id, snap.Seq, err)
	}
	// Sequences above the snapshot that were applied are no longer in the
	// state: forget them too, so they are replayed (they are recent, so
	// retained) instead of counted twice or lost.
	s.applied.Reset(snap.Seq)
	s.parked.Reset(0)
	clear(s.partial)
	s.snapshots++
	t.o.Metrics.SnapshotRecoveries.WithLabelValues(s.id).Inc()
	t.o.Logger.Info("recovered stream from the owner's snapshot", "stream", s.id, "seq", snap.Seq)
	return nil
}

func (t *Tracker) getJSON(ctx context.Context, in discovery.Instance, path string, q url.Values, v any) error {
	return Client{HTTP: t.o.HTTP, Secret: t.o.Secret, Audience: in.Service}.getJSON(ctx, in.Addr(), path, q, v)
}

// checkpoint is the file format of the consumer's checkpoint.
type checkpoint struct {
	Version int                         `json:"version"`
	Streams map[string]streamCheckpoint `json:"streams"`
}

type partialCheckpoint struct {
	Parts uint32      `json:"parts"`
	Got   [][2]uint64 `json:"got"`
	Dead  [][2]uint64 `json:"dead,omitempty"`
}

type streamCheckpoint struct {
	Applied [][2]uint64 `json:"applied"`
	Parked  [][2]uint64 `json:"dead_lettered,omitempty"`
	// Partial: split sequences with some parts applied (seq → parts and
	// the applied part indices + 1).
	Partial    map[uint64]partialCheckpoint `json:"partial,omitempty"`
	Duplicates uint64                       `json:"duplicates"`
	State      json.RawMessage              `json:"state"`
	// OwnerLast is the owner's last answer: the bound of live sequences
	// must not start again from 0 after a restart.
	OwnerLast uint64 `json:"owner_last,omitempty"`
}

// Save writes the checkpoint: per stream, the applied set and the state,
// taken together under the stream's lock. A failure (a full disk) loses
// nothing: the state stays in memory, the previous checkpoint on disk,
// Ready reports it and the next Save tries again.
func (t *Tracker) Save() error {
	err := t.save()
	t.saveMu.Lock()
	switch {
	case err != nil && t.saveErr == nil:
		t.o.Logger.Error("the checkpoint cannot be written; keeping the state in memory and trying again", "err", err)
	case err == nil && t.saveErr != nil:
		t.o.Logger.Info("the checkpoint is written again")
	}
	t.saveErr = err
	t.saveMu.Unlock()
	return err
}

func (t *Tracker) save() error {
	if t.o.CheckpointPath == "" {
		return nil
	}
	t.mu.RLock()
	ss := slices.Collect(maps.Values(t.streams))
	t.mu.RUnlock()
	cp := checkpoint{Version: 1, Streams: make(map[string]streamCheckpoint, len(ss))}
	for _, s := range ss {
		s.mu.Lock()
		state, err := t.a.ExportState(s.id)
		sc := streamCheckpoint{Applied: s.applied.Intervals(), Parked: s.parked.Intervals(), Duplicates: s.duplicates, State: state, OwnerLast: s.ownerLast}
		for seq, p := range s.partial {
			if sc.Partial == nil {
				sc.Partial = map[uint64]partialCheckpoint{}
			}
			sc.Partial[seq] = partialCheckpoint{Parts: p.parts, Got: p.got.Intervals(), Dead: p.dead.Intervals()}
		}
		s.mu.Unlock()
		if err != nil {
			return fmt.Errorf("exporting state of stream %s: %w", s.id, err)
		}
		cp.Streams[s.id] = sc
	}
	b, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encoding checkpoint: %w", err)
	}
	return durable.WriteFileAtomic(t.o.FS, t.o.CheckpointPath, b)
}

func (t *Tracker) load() error {
	if t.o.CheckpointPath == "" {
		return nil
	}
	b, err := durable.ReadFile(t.o.FS, t.o.CheckpointPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading checkpoint %s: %w", t.o.CheckpointPath, err)
	}
	var cp checkpoint
	if err := json.Unmarshal(b, &cp); err != nil {
		return fmt.Errorf("decoding checkpoint %s: %w", t.o.CheckpointPath, err)
	}
	if cp.Version != 1 {
		return fmt.Errorf("checkpoint %s: unknown version %d", t.o.CheckpointPath, cp.Version)
	}
	for id, sc := range cp.Streams {
		s := t.newStream(id) // the lookup map is published once, below: not a copy per stream
		t.streams[id] = s
		s.applied.SetIntervals(sc.Applied)
		s.parked.SetIntervals(sc.Parked)
		s.ownerLast = sc.OwnerLast
		for seq, p := range sc.Partial {
			ps := &partialSeq{parts: p.Parts}
			ps.got.SetIntervals(p.Got)
			ps.dead.SetIntervals(p.Dead)
			s.partial[seq] = ps
		}
		s.duplicates = sc.Duplicates
		if err := t.a.ImportState(id, sc.State); err != nil {
			return fmt.Errorf("restoring stream %s from checkpoint %s: %w", id, t.o.CheckpointPath, err)
		}
	}
	byID := maps.Clone(t.streams)
	t.byID.Store(&byID)
	t.o.Logger.Info("checkpoint loaded", "path", t.o.CheckpointPath, "streams", len(cp.Streams))
	return nil
}
