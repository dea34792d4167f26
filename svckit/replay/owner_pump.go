package replay

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/svckit/svckit/svckit/retainlog"
)

// The pump: Run reads the log from the oldest message nsqd has not
// acknowledged and hands what is durable to the publisher, at most
// MaxInFlight at a time; nsqd's answers settle sequences (acked), and a
// failed one makes the pump resend what is unacknowledged.

// signal wakes the pump.
func (w *Owner) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run publishes what is in the log and not yet acknowledged (from the
// last stop, then everything published), and saves the snapshot and the
// published watermark periodically, until ctx ends or Close.
func (w *Owner) Run(ctx context.Context) error {
	w.mu.Lock()
	if w.closed || w.pumping {
		w.mu.Unlock()
		return ErrOwnerClosed
	}
	pctx, stop := context.WithCancel(ctx)
	w.stopPump, w.pumpDone, w.pumping = stop, make(chan struct{}), true
	w.mu.Unlock()
	go func() {
		defer close(w.pumpDone)
		w.pump(pctx)
	}()
	t := time.NewTicker(w.o.SnapshotInterval)
	defer t.Stop()
	for {
		select {
		case <-pctx.Done():
			return nil
		case <-t.C:
			if err := w.save(); err != nil {
				w.o.Logger.Error("saving stream state", "err", err)
			}
		}
	}
}

// pump hands the log's unacknowledged, durable records to the publisher,
// oldest first, keeping at most MaxInFlight unanswered.
func (w *Owner) pump(ctx context.Context) {
	w.pumpMu.Lock()
	w.mu.Lock()
	w.pumpNext = w.acked.Contiguous() + 1
	w.mu.Unlock()
	w.pumpCtx = ctx
	if n := w.log.LastSeq() - (w.pumpNext - 1); n > 0 {
		w.o.Logger.Info("publishing messages not acknowledged before the last stop", "from", w.pumpNext, "to", w.log.LastSeq())
	}
	w.pumpMu.Unlock()
	defer func() {
		w.pumpMu.Lock()
		w.pumpCtx = nil
		w.pumpMu.Unlock()
	}()
	retryDelay := 100 * time.Millisecond
	for ctx.Err() == nil {
		w.pumpMu.Lock()
		idle, err := w.pumpStep(ctx, 0)
		w.pumpMu.Unlock()
		switch {
		case err != nil && ctx.Err() == nil:
			w.o.Logger.Error("publishing the retained log", "err", err)
			w.sleep(ctx, &retryDelay)
		case idle:
			select {
			case <-ctx.Done():
			case <-w.wake:
			}
		default:
			retryDelay = 100 * time.Millisecond
		}
	}
}

// directHandOverMax bounds what a publisher hands over itself (see
// handOverNow) in one go.
const directHandOverMax = 64

// handOverNow is called by a publisher whose messages just became durable.
// When nothing is in flight and the hand-over is free, the publisher hands
// what is durable to the batcher itself: waking the pump costs each message
// a goroutine hand-over (tens of microseconds, and far more at the tail on
// a busy machine) between its fsync and its publish. Only through
// TryPublishAsync, which never waits: an nsqd outage, whatever the batcher's
// queue holds, never holds a publisher up here. The pump is woken when
// anything is left for it.
func (w *Owner) handOverNow() {
	if w.tryPub != nil && w.inflight.Load() == 0 && w.pumpMu.TryLock() {
		done := false
		if ctx := w.pumpCtx; ctx != nil && w.inflight.Load() == 0 {
			if _, err := w.pumpStep(ctx, directHandOverMax); err != nil {
				w.o.Logger.Debug("handing messages over directly; the pump will retry", "err", err)
			}
			w.mu.Lock()
			done = !w.resend && w.pumpNext > w.log.LastSeq()
			w.mu.Unlock()
		}
		w.pumpMu.Unlock()
		if done {
			return // a publisher appending meanwhile wakes the pump itself
		}
	}
	w.signal()
}

// pumpStep hands over what is durable from pumpNext on, at most max records
// (0: up to MaxInFlight in flight), and reports whether there was nothing
// to do. A step that is not the pump's own (max > 0) hands over only what
// is already durable, never waiting. Caller holds pumpMu.
func (w *Owner) pumpStep(ctx context.Context, max uint64) (idle bool, err error) {
	w.mu.Lock()
	if w.resend && w.inflight.Load() == 0 {
		// Every answer is in: start again from the oldest
		// unacknowledged message (acknowledged ones are skipped).
		w.resend = false
		w.pumpNext = w.acked.Contiguous() + 1
	}
	resending := w.resend
	w.mu.Unlock()
	next := w.pumpNext
	last := w.log.LastSeq()
	room := int64(w.o.MaxInFlight) - w.inflight.Load()
	if resending || next > last || room <= 0 {
		return true, nil
	}
	if first := w.log.FirstSeq(); next < first {
		// Only a log restored by hand gets here (retention keeps
		// what is unacknowledged): consumers recover the rest from a
		// snapshot.
		w.o.Logger.Warn("messages never acknowledged are no longer in the log; skipping them", "from", next, "to", first-1)
		w.mu.Lock()
		w.acked.AddRange(next, first-1) // settled: the watermark moves past them
		w.mu.Unlock()
		next = first
		w.pumpNext = next
	}
	upTo := min(last, next+uint64(room)-1)
	// Nobody sees a message before it is durable: one a consumer
	// applied and a power loss then took would have its sequence
	// number given to another message.
	if max > 0 {
		upTo = min(upTo, next+max-1, w.log.VisibleSeq())
		if upTo < next {
			return true, nil
		}
	} else if err := w.log.WaitDurable(ctx, upTo); err != nil {
		if ctx.Err() != nil {
			return false, nil
		}
		return false, fmt.Errorf("waiting for the retained log to become durable: %w", err)
	}
	n, err := w.handOver(ctx, next, upTo, max > 0)
	var damaged *retainlog.DamagedError
	if errors.As(err, &damaged) {
		// Every intact record was handed over; the damaged ones can
		// never be: consumers recover them through the snapshot.
		w.skipDamaged(damaged.Ranges)
		n, err = upTo-next+1, nil
	}
	w.pumpNext = next + n
	if err != nil {
		return false, fmt.Errorf("reading the retained log from %d to publish it: %w", w.pumpNext, err)
	}
	return false, nil
}

// errQueueFull stops a hand-over that may not wait (see handOver).
var errQueueFull = errors.New("the publisher's queue is full")

// handOver reads [from, to] and hands each record not yet acknowledged to
// the publisher; it returns how many sequences it covered. With try, it
// queues only through TryPublishAsync and stops, without an error, at the
// first record the publisher cannot take at once.
func (w *Owner) handOver(ctx context.Context, from, to uint64, try bool) (uint64, error) {
	// The bodies go into one arena per call: the publisher keeps a body
	// until it answers, and an arena is one allocation for many messages.
	// Sized for the range (a few hundred bytes a message), so that a
	// message or two at a time, the pump's lot at low rates, does not
	// cost 64 KiB of garbage each.
	arena := make([]byte, 0, min(64<<10, (to-from+1)*512))
	var n uint64
	err := w.log.Read(ctx, from, to, func(r retainlog.Record) error {
		w.mu.Lock()
		skip := w.acked.Contains(r.Seq)
		w.mu.Unlock()
		if skip {
			n++
			return nil
		}
		start := len(arena)
		arena = append(arena, r.Data...)
		body := arena[start:len(arena):len(arena)]
		seq := r.Seq
		w.inflight.Add(1)
		settle := func(err error) { w.settle(seq, err) }
		if !try {
			w.pub.PublishAsync(ctx, body, settle)
		} else if !w.tryPub.TryPublishAsync(body, settle) {
			w.inflight.Add(-1)
			return errQueueFull
		}
		n++
		return nil
	})
	if errors.Is(err, errQueueFull) {
		err = nil
	}
	return n, err
}

// skipDamaged counts damaged sequences as settled: nsqd can never have
// them, and the watermark (and retention) must move past them.
func (w *Owner) skipDamaged(ranges [][2]uint64) {
	w.mu.Lock()
	for _, r := range ranges {
		w.acked.AddRange(r[0], r[1])
	}
	unpublished := w.seq - w.acked.Contiguous()
	w.mu.Unlock()
	w.unpublished.Set(float64(unpublished))
	w.o.Logger.Error("damaged records are not published; consumers that need them recover through the snapshot", "damaged", retainlog.FormatRanges(ranges))
	w.signal()
}

// settle records nsqd's answer for seq.
func (w *Owner) settle(seq uint64, err error) {
	w.mu.Lock()
	switch {
	case err == nil:
		w.acked.Add(seq)
	case isPermanent(err):
		// nsqd will never take it (too large for its --max-msg-size, say).
		// It stays in the log: consumers that notice the gap replay it.
		// Counting it as settled lets the watermark, and retention, move on.
		w.acked.Add(seq)
		w.o.Metrics.Unpublishable.WithLabelValues(w.o.Stream).Inc()
		w.o.Logger.Error("nsqd refuses the message for good; consumers get it by replay only", "seq", seq, "err", err)
	default:
		if !w.closed && !w.resend {
			w.o.Logger.Warn("message not acknowledged by nsqd; publishing again from the retained log", "seq", seq, "err", err)
		}
		w.resend = true
	}
	unpublished := w.seq - w.acked.Contiguous()
	w.mu.Unlock()
	w.unpublished.Set(float64(unpublished))
	w.inflight.Add(-1)
	w.signal()
}

// isPermanent reports whether err says retrying cannot help: an error type
// with a Permanent method (pubsub.PermanentError) that returns true.
func isPermanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}

func (w *Owner) sleep(ctx context.Context, delay *time.Duration) {
	t := time.NewTimer(*delay/2 + rand.N(*delay/2+1))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	*delay = min(*delay*2, 5*time.Second)
}
