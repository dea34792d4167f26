package replay

import (
	"context"
	"errors"
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
	w.mu.Lock()
	next := w.acked.Contiguous() + 1
	w.mu.Unlock()
	if n := w.log.LastSeq() - (next - 1); n > 0 {
		w.o.Logger.Info("publishing messages not acknowledged before the last stop", "from", next, "to", w.log.LastSeq())
	}
	retryDelay := 100 * time.Millisecond
	for ctx.Err() == nil {
		w.mu.Lock()
		if w.resend && w.inflight.Load() == 0 {
			// Every answer is in: start again from the oldest
			// unacknowledged message (acknowledged ones are skipped).
			w.resend = false
			next = w.acked.Contiguous() + 1
		}
		resending := w.resend
		w.mu.Unlock()
		last := w.log.LastSeq()
		room := int64(w.o.MaxInFlight) - w.inflight.Load()
		if resending || next > last || room <= 0 {
			select {
			case <-ctx.Done():
			case <-w.wake:
			}
			continue
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
		}
		upTo := min(last, next+uint64(room)-1)
		// Nobody sees a message before it is durable: one a consumer
		// applied and a power loss then took would have its sequence
		// number given to another message.
		if err := w.log.WaitDurable(ctx, upTo); err != nil {
			if ctx.Err() == nil {
				w.o.Logger.Error("waiting for the retained log to become durable", "err", err)
				w.sleep(ctx, &retryDelay)
			}
			continue
		}
		n, err := w.handOver(ctx, next, upTo)
		var damaged *retainlog.DamagedError
		if errors.As(err, &damaged) {
			// Every intact record was handed over; the damaged ones can
			// never be: consumers recover them through the snapshot.
			w.skipDamaged(damaged.Ranges)
			n, err = upTo-next+1, nil
		}
		next += n
		if err != nil && ctx.Err() == nil {
			w.o.Logger.Error("reading the retained log to publish it", "from", next, "err", err)
			w.sleep(ctx, &retryDelay)
			continue
		}
		retryDelay = 100 * time.Millisecond
	}
}

// handOver reads [from, to] and hands each record not yet acknowledged to
// the publisher; it returns how many sequences it covered.
func (w *Owner) handOver(ctx context.Context, from, to uint64) (uint64, error) {
	// The bodies go into one arena per call: the publisher keeps a body
	// until it answers, and an arena is one allocation for many messages.
	// Sized for the range (a few hundred bytes a message), so that a
	// message or two at a time, the pump's lot at low rates, does not
	// cost 64 KiB of garbage each.
	arena := make([]byte, 0, min(64<<10, (to-from+1)*512))
	var n uint64
	err := w.log.Read(ctx, from, to, func(r retainlog.Record) error {
		n++
		w.mu.Lock()
		skip := w.acked.Contains(r.Seq)
		w.mu.Unlock()
		if skip {
			return nil
		}
		start := len(arena)
		arena = append(arena, r.Data...)
		body := arena[start:len(arena):len(arena)]
		seq := r.Seq
		w.inflight.Add(1)
		w.pub.PublishAsync(ctx, body, func(err error) { w.settle(seq, err) })
		return nil
	})
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
