package replay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/tracing"
)

// Publishing: a batch gets contiguous sequence numbers, is appended to the
// retained log in one write and folded, and Publish returns once it is
// durable. A failed write (a full disk) takes nothing and is not final; a
// failed fold is, until a restart rebuilds the fold from the log.

// Publish assigns the next sequence number, appends the message to the
// retained log and folds it. It returns the sequence number once the
// message is durable (the log's fsync policy; concurrent publishers share
// an fsync): from then on it survives a crash or a power loss, and the
// pump publishes it to nsqd as soon as nsqd takes it.
//
// An error with sequence 0 means nothing was published. An error with a
// sequence means the message is in the log and will be published anyway
// (its fold failed, or its fsync): do not publish it again.
func (w *Owner) Publish(ctx context.Context, payload []byte, correlationID string) (uint64, error) {
	return w.publishBatch(ctx, [][]byte{payload}, correlationID)
}

// PublishBatch is Publish for several messages at once: they get contiguous
// sequence numbers (the last is returned) and reach the retained log in one
// write, which is what a publisher producing faster than one message per
// system call wants.
func (w *Owner) PublishBatch(ctx context.Context, payloads [][]byte) (uint64, error) {
	return w.publishBatch(ctx, payloads, "")
}

func (w *Owner) publishBatch(ctx context.Context, payloads [][]byte, correlationID string) (uint64, error) {
	if len(payloads) == 0 {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.seq, nil
	}
	if w.o.Fence != nil {
		if err := w.o.Fence.Hold(ctx); err != nil {
			return 0, fmt.Errorf("stream %s: not assigning sequence numbers: %w", w.o.Stream, err)
		}
	}
	// The spans start before the envelopes are made: their contexts are
	// the messages' creation contexts.
	var span tracing.Span
	if len(payloads) == 1 {
		ctx, span = w.spans.Send(ctx)
	} else {
		ctx, span = w.spans.SendBatch(ctx) // its messages get create spans
	}
	created, traces := w.createSpans(ctx, span, len(payloads))
	first, last, appended, err := w.append(payloads, correlationID, traces)
	if !appended {
		endSpans(span, created, err)
		return 0, err
	}
	span.Messages(w.o.Stream, first, last)
	for i, c := range created {
		c.Messages(w.o.Stream, first+uint64(i), first+uint64(i))
	}
	w.signal()
	// Once appended the messages will be published whatever happens: the
	// wait for their fsync is not cut short by ctx (it is bounded by the
	// fsync policy), so that an error here never means "not published".
	if werr := w.log.WaitDurable(context.WithoutCancel(ctx), last); werr != nil {
		err = errors.Join(err, fmt.Errorf("making messages %d-%d of stream %s durable: %w", first, last, w.o.Stream, werr))
	}
	endSpans(span, created, err)
	if err != nil {
		return last, err
	}
	return last, nil
}

// createSpans gives each of n messages its creation context: the send
// span's for one message, a create span's each for several (so that each
// has a trace of its own). Nothing when tracing is off.
func (w *Owner) createSpans(ctx context.Context, send tracing.Span, n int) ([]tracing.Span, []envelope.TraceContext) {
	if w.spans == nil {
		return nil, nil
	}
	if n == 1 {
		return nil, []envelope.TraceContext{send.Context()}
	}
	created := make([]tracing.Span, n)
	traces := make([]envelope.TraceContext, n)
	for i := range created {
		created[i] = w.spans.Create(ctx, send)
		traces[i] = created[i].Context()
	}
	return created, traces
}

func endSpans(send tracing.Span, created []tracing.Span, err error) {
	for _, c := range created {
		c.End(err)
	}
	send.End(err)
}

// append appends under mu; appended reports whether the messages are in
// the log (then they will be published, even with an error).
func (w *Owner) append(payloads [][]byte, correlationID string, traces []envelope.TraceContext) (first, last uint64, appended bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock() // a panic below must not leave the owner locked
	before := w.seq
	first, last, err = w.appendLocked(payloads, correlationID, traces)
	return first, last, w.seq > before, err
}

// appendLocked encodes, appends and folds one batch; traces, if not nil,
// are the messages' creation contexts. Caller holds mu.
func (w *Owner) appendLocked(payloads [][]byte, correlationID string, traces []envelope.TraceContext) (first, last uint64, err error) {
	switch {
	case w.closed:
		return 0, 0, ErrOwnerClosed
	case w.failed != nil:
		return 0, 0, w.failed
	}
	now := time.Now()
	first = w.seq + 1
	last = first + uint64(len(payloads)) - 1
	// Envelopes go into one buffer the owner reuses (the log copies them
	// into its write buffer): no allocation per message.
	buf := w.buf[:0]
	recs := w.recs[:0]
	for i, payload := range payloads {
		seq := first + uint64(i)
		// No message id: (stream, seq) identifies the message.
		env := envelope.Envelope{Stream: w.o.Stream, Seq: seq, Created: now,
			ContentType: w.o.ContentType, CorrelationID: correlationID, Payload: payload}
		if traces != nil {
			env.Trace = &traces[i] // encoded below, while traces lives
		}
		start := len(buf)
		if buf, err = env.Append(buf); err != nil {
			return 0, 0, fmt.Errorf("encoding message %d of stream %s: %w", seq, w.o.Stream, err)
		}
		recs = append(recs, retainlog.Record{Seq: seq, Time: now, Data: buf[start:]})
	}
	err = w.log.AppendNoWait(recs...)
	clear(recs) // the records alias buf; keep neither reachable through recs
	w.recs = recs[:0]
	if cap(buf) <= 1<<20 {
		w.buf = buf
	}
	if err != nil {
		if errors.Is(err, retainlog.ErrWrite) && w.log.Err() == nil {
			// A write that failed (a full disk) and was undone: nothing
			// was taken, and the next append tries again.
			if w.notAccepting == nil {
				w.o.Logger.Error("the retained log cannot be written; not accepting messages until it can", "err", err)
			}
			w.notAccepting = err
			w.o.Metrics.WriteFailures.WithLabelValues(w.o.Stream).Inc()
			return 0, 0, fmt.Errorf("stream %s: %w: %w", w.o.Stream, ErrNotAccepting, err)
		}
		return 0, 0, fmt.Errorf("appending messages %d-%d to the retained log of %s: %w", first, last, w.o.Stream, err)
	}
	if w.notAccepting != nil {
		w.o.Logger.Info("the retained log can be written again; accepting messages", "seq", first)
		w.notAccepting = nil
	}
	w.seq = last
	if w.o.Fold != nil {
		for i, payload := range payloads {
			seq := first + uint64(i)
			if err := w.o.Fold.Apply(seq, payload); err != nil {
				// The message is in the log and will be published, but
				// the fold no longer matches the log: a snapshot taken
				// now would be wrong. Refuse to publish more; a restart
				// rebuilds the fold from the log (and names the message
				// if it fails again).
				w.failed = fmt.Errorf("stream %s: folding message %d failed, publishing stopped until a restart rebuilds the fold from the log: %w", w.o.Stream, seq, err)
				w.o.Logger.Error("fold failed; refusing to publish more", "seq", seq, "err", err)
				return first, last, w.failed
			}
			w.foldSeq = seq
		}
	}
	return first, last, nil
}
