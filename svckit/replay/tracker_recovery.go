package replay

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/tracing"
)

// The tracker's recovery: everything it asks the owners for, through a
// Client — their streams' last sequences (the tail, and the bound on live
// sequences), replays of what the core finds missing past the grace, and
// snapshots when a range is gone — with the backoff and dead-lettering
// around it. The core (tracker_core.go) decides what is missing and what
// is applied; this file only fetches.

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

// client is the replay Client for asking in.
func (t *Tracker) client(in discovery.Instance) Client {
	return Client{HTTP: t.o.HTTP, Secret: t.o.Secret, Audience: in.Service}
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
			s.noteOwnerLast(last)
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
	st, err := t.client(in).Streams(ctx, in.Addr())
	if err != nil {
		return 0, fmt.Errorf("asking %s for its streams: %w", in.ID, err)
	}
	for _, x := range st {
		if x.Stream == stream {
			return x.LastSeq, nil
		}
	}
	return 0, nil // the owner answered, and never published anything of it
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
		rctx, cancel := context.WithTimeout(ctx, t.o.Timeout)
		st, err := t.client(in).Streams(rctx, in.Addr())
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
			s.noteOwnerLast(x.LastSeq)
			s.mu.Unlock()
		}
	}
}

// scan has every stream's core note its gaps, and starts a recovery (on wg)
// for each stream with a gap open past the grace, unless one is running or
// backing off.
func (t *Tracker) scan(ctx context.Context, wg *sync.WaitGroup) {
	now := time.Now()
	t.mu.RLock()
	ss := slices.Collect(maps.Values(t.streams))
	t.mu.RUnlock()
	for _, s := range ss {
		s.mu.Lock()
		n, due, detected := s.scanGaps(now, t.o.GapGrace)
		for _, g := range detected {
			t.o.Metrics.GapsDetected.WithLabelValues(s.id).Inc()
			t.o.Logger.Info("gap detected; requesting replay", "stream", s.id, "from", g[0], "to", g[1])
		}
		t.o.Metrics.Missing.WithLabelValues(s.id).Set(float64(n))
		lagN, lagS := s.lag(now)
		t.o.Metrics.LagMessages.WithLabelValues(s.id).Set(float64(lagN))
		t.o.Metrics.LagSeconds.WithLabelValues(s.id).Set(lagS)
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
	s.replayRequested, s.replayReceived = 0, 0
	t.o.Metrics.ReplayRequested.WithLabelValues(s.id).Set(0)
	t.o.Metrics.ReplayReceived.WithLabelValues(s.id).Set(0)
	s.lastErr = err
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
	due := s.dueGaps(now, t.o.GapGrace)
	var requested uint64
	for _, g := range due {
		requested += g[1] - g[0] + 1
	}
	s.replayRequested, s.replayReceived = requested, 0
	s.mu.Unlock()
	t.o.Metrics.ReplayRequested.WithLabelValues(s.id).Set(float64(requested))
	t.o.Metrics.ReplayReceived.WithLabelValues(s.id).Set(0)
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

// fetch replays [from, to] of stream from its owner and applies it, and
// returns the highest sequence the response carried (0 if none). A frame
// that cannot be applied for good is dead-lettered and replay goes on past
// it.
func (t *Tracker) fetch(ctx context.Context, s *trackedStream, from, to uint64) (uint64, error) {
	var high uint64
	received := t.o.Metrics.ReplayReceived.WithLabelValues(s.id)
	res, _, err := t.fetchFrames(ctx, s.id, from, to, func(env envelope.Envelope, frame []byte, terr error, how tracing.Delivery) error {
		high = max(high, env.Seq)
		s.mu.Lock()
		s.replayReceived++
		s.mu.Unlock()
		received.Inc()
		if terr == nil {
			_, span := t.spans.Process(ctx, &env, how, 0)
			_, terr = t.apply(s, env)
			span.End(terr)
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
	s.streamCore.park(env)
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
	return t.fetchFrames(ctx, stream, from, to, func(env envelope.Envelope, _ []byte, terr error, _ tracing.Delivery) error {
		if terr != nil {
			return terr
		}
		return fn(env)
	})
}

// fetchFrames is Fetch handing fn each frame's bytes too, the Transform
// error instead of ending the replay with it, and how the frames came:
// from the stream's owner (tracing.Replay) or through a relay.
func (t *Tracker) fetchFrames(ctx context.Context, stream string, from, to uint64, fn func(env envelope.Envelope, frame []byte, terr error, how tracing.Delivery) error) (string, uint64, error) {
	in, err := t.owner(stream)
	if err != nil {
		return "no_owner", 0, err
	}
	how := tracing.Replay
	if !in.HasTag(OwnerTag(stream)) {
		how = tracing.Relayed
	}
	start := time.Now()
	var bytes uint64
	n, err := t.client(in).ReplayFrames(ctx, in.Addr(), Request{Stream: stream, From: from, To: to}, func(env envelope.Envelope, frame []byte) error {
		var terr error
		if t.o.Transform != nil {
			if env, terr = t.o.Transform(env); terr != nil {
				// A transform is a mapping: what fails once fails always.
				terr = permanentError{fmt.Errorf("transform: %w", terr)}
			}
		}
		bytes += uint64(len(frame)) + 4
		return fn(env, frame, terr, how)
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
	sctx, cancel := context.WithTimeout(ctx, max(t.o.Timeout, 30*time.Second))
	defer cancel()
	seq, state, err := t.client(in).Snapshot(sctx, in.Addr(), s.id)
	if err != nil {
		t.o.Metrics.Requests.WithLabelValues("error").Inc()
		return fmt.Errorf("fetching snapshot of %s: %w", s.id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	applied, err := s.applySnapshot(t.a, seq, state)
	if !applied {
		return err // nil when the stream is already past it: nothing to gain
	}
	t.o.Metrics.SnapshotRecoveries.WithLabelValues(s.id).Inc()
	t.o.Logger.Info("recovered stream from the owner's snapshot", "stream", s.id, "seq", seq)
	return nil
}
