package pubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/metrics"
)

// Delivery policy as middleware. The Consumer keeps the transport (nsqd
// connections, decoding, FIN/REQ/TOUCH); what becomes of a message whose
// handler fails is decided by the middleware it wraps the handler in:
//
//	DeadLetter → Retry → (decode, count) → AutoTouch → Recover → your Middleware… → handler
//
// A handler's error travels outwards through that chain, each layer free
// to change it, and the consumer answers nsqd from what comes out:
//
//	nil             FIN, counted as consumed
//	Requeue(e, d)   REQ with delay d (without backoff: one poison message
//	                must not throttle the whole consumer)
//	Finish(e)       FIN, not counted as consumed (kept elsewhere, or dropped)
//	any other error REQ with go-nsq's default delay (DefaultRequeueDelay ×
//	                attempts, at most MaxRequeueDelay)
//
// Requeue and Finish count only as the outcome itself, not wrapped in
// another error. A handler that went Async reports its outcome later;
// OnOutcome layers see that outcome too, in the same order, so Retry and
// DeadLetter treat an asynchronous failure exactly like a returned one.

// Middleware wraps a Handler, in the way of Watermill's router middleware.
// A Middleware returns only after the next handler returned (the layers
// outside it may register for the message's outcome meanwhile), and
// calls it at most once per message.
type Middleware func(Handler) Handler

// Chain wraps h in mws; the first is the outermost (it sees the message
// first and the outcome last). Order matters: DeadLetter goes outside
// Retry, or every failure is dead-lettered on its first attempt.
func Chain(h Handler, mws ...Middleware) Handler {
	for i := len(mws) - 1; i >= 0; i-- {
		h = mws[i](h)
	}
	return h
}

// OnOutcome makes a Middleware that sees a message's outcome and may
// change it: the error the inner handler returned or, when the handler
// went Async and returned nil, the error it completed with later (then f
// runs on the completing goroutine, with this layer's context, which may
// have ended). f runs at most once per message: not at all when the inner
// handler panicked, or when a layer outside decided the outcome before an
// Async completion came. Retry and DeadLetter are built on it; use it for
// a policy of your own.
func OnOutcome(f func(ctx context.Context, m *Message, err error) error) Middleware {
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, m *Message) error {
			err := next.HandleMessage(ctx, m)
			if err == nil && m.isAsync() {
				m.later(ctx, f)
				return nil
			}
			m.returned(err)
			return f(ctx, m, err)
		})
	}
}

// requeueError asks the consumer to requeue a message after Delay.
type requeueError struct {
	Err   error
	Delay time.Duration
}

func (e *requeueError) Error() string { return e.Err.Error() }
func (e *requeueError) Unwrap() error { return e.Err }

// Requeue is an outcome: requeue the message after delay (a negative one
// is 0: nsqd closes the connection on a negative delay). Retry still
// bounds the attempts: at MaxAttempts, a Requeue from inside it is
// dead-lettered instead.
func Requeue(err error, delay time.Duration) error {
	return &requeueError{Err: err, Delay: max(delay, 0)}
}

// finishError is an outcome: finish the message although it was not
// handled (it was kept elsewhere, such as a dead letter, or is dropped on
// purpose), so it is not counted as consumed. Returned by a handler, it
// drops the message: nothing keeps it.
type finishError struct{ Err error }

func (e *finishError) Error() string { return e.Err.Error() }
func (e *finishError) Unwrap() error { return e.Err }

// Finish is an outcome: finish the message, which was not handled (and
// is dropped unless something kept it).
func Finish(err error) error { return &finishError{Err: err} }

// Reject marks a handler error as permanent: the message is dead-lettered
// without further attempts (input that can never be handled).
func Reject(err error) error { return PermanentError{err} }

// IsPermanent reports whether err says retrying cannot help: a
// PermanentError, or any error with a Permanent method that returns true
// (replay's, which cannot import this package).
func IsPermanent(err error) bool {
	var perm interface{ Permanent() bool }
	return errors.As(err, &perm) && perm.Permanent()
}

// decodeError is why a message's body is not an envelope. It is permanent.
type decodeError struct{ Err error }

func (e *decodeError) Error() string   { return "decode: " + e.Err.Error() }
func (e *decodeError) Unwrap() error   { return e.Err }
func (e *decodeError) Permanent() bool { return true }

// RetryOptions configures Retry.
type RetryOptions struct {
	// MaxAttempts is the delivery that is the last: its failure is
	// passed on (to DeadLetter) instead of requeued.
	MaxAttempts uint16
	// Delay is the first requeue's delay; each further attempt doubles it,
	// up to MaxDelay.
	Delay, MaxDelay time.Duration
	Logger          *slog.Logger
}

// DefaultRetryOptions: 5 attempts, 1s doubling up to 1 minute.
func DefaultRetryOptions() RetryOptions {
	return RetryOptions{MaxAttempts: 5, Delay: time.Second, MaxDelay: time.Minute}
}

// withDefaults fills zero fields from DefaultRetryOptions.
func (o RetryOptions) withDefaults() RetryOptions {
	d := DefaultRetryOptions()
	if o.MaxAttempts == 0 {
		o.MaxAttempts = d.MaxAttempts
	}
	if o.Delay <= 0 {
		o.Delay = d.Delay
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = d.MaxDelay
	}
	if o.Logger == nil {
		o.Logger = logging.Discard()
	}
	return o
}

// exhaustedError is a failure on the last attempt Retry allows.
type exhaustedError struct {
	Attempts uint16
	Err      error
}

func (e *exhaustedError) Error() string {
	return fmt.Sprintf("handler failed %d times: %v", e.Attempts, e.Err)
}
func (e *exhaustedError) Unwrap() error { return e.Err }

// Retry requeues a failed message with a delay that grows with its attempt
// number, until MaxAttempts: that failure, like a permanent one, is passed
// on (as the last attempt's failure), for DeadLetter to keep. Zero fields take
// DefaultRetryOptions' values.
func Retry(o RetryOptions) Middleware {
	o = o.withDefaults()
	return OnOutcome(func(_ context.Context, m *Message, err error) error {
		if err == nil || IsPermanent(err) || isFinish(err) {
			return err
		}
		n := m.Attempts()
		if rq, ok := err.(*requeueError); ok {
			// A requeue asked for inside is bounded like any failure:
			// a message must not cycle for ever.
			if n >= o.MaxAttempts {
				return &exhaustedError{Attempts: n, Err: rq.Err}
			}
			return err
		}
		if n >= o.MaxAttempts {
			return &exhaustedError{Attempts: n, Err: err}
		}
		delay := min(o.Delay<<min(max(n, 1)-1, 16), o.MaxDelay)
		o.Logger.Warn("handler failed; requeueing", append(m.LogAttrs(), "attempts", n, "delay", delay, "err", err)...)
		return Requeue(err, delay)
	})
}

// isOutcome: err already says what to do with the message.
func isOutcome(err error) bool {
	_, rq := err.(*requeueError)
	return rq || isFinish(err)
}

// DeadLetterOptions configures DeadLetter. Zero values: the defaults
// named on the fields, a discarding logger, no metrics; without a Sink
// nothing is kept and nothing dropped (see Sink).
type DeadLetterOptions struct {
	// Sink keeps the letters (nsqd's "<topic>.dead", else a local store).
	// nil keeps none: each such message is requeued with RequeueDelay
	// and logged as an error, unless Drop.
	Sink *deadletter.Sink
	// Drop finishes what would be dead-lettered, without a Sink: logged,
	// counted, and lost. Opt-in (ConsumerOptions.DropDeadLetters).
	Drop bool
	// RequeueDelay is how long a message waits before its next attempt
	// when the sink took nothing (nothing accepted is dropped); default
	// one minute.
	RequeueDelay time.Duration
	Logger       *slog.Logger
	Metrics      *metrics.Metrics
}

// DeadLetter keeps every message whose outcome is an error that is not
// already an outcome (Requeue, Finish), as a dead letter of its topic and
// channel, and finishes it. Below a Retry, that is a permanent failure
// (Reject, an undecodable body) or the last attempt's; without one, any failure.
// If the sink takes nothing, the message is requeued with RequeueDelay.
func DeadLetter(o DeadLetterOptions) Middleware {
	if o.RequeueDelay <= 0 {
		o.RequeueDelay = time.Minute
	}
	if o.Logger == nil {
		o.Logger = logging.Discard()
	}
	if o.Metrics == nil {
		o.Metrics = metrics.Nop()
	}
	return OnOutcome(func(ctx context.Context, m *Message, err error) error {
		if err == nil || isOutcome(err) {
			return err
		}
		reason, class := deadReason(err)
		counter := o.Metrics.DeadLettered.WithLabelValues(m.Topic(), m.Channel(), class)
		nsqID := string(m.NSQ.ID[:])
		if o.Sink == nil {
			if !o.Drop {
				o.Logger.Error("no dead-letter sink; requeueing the message", "nsq_id", nsqID, "reason", reason, "delay", o.RequeueDelay)
				return Requeue(errors.New(reason), o.RequeueDelay)
			}
			counter.Inc()
			o.Logger.Error("dropping message (DropDeadLetters)", "nsq_id", nsqID, "reason", reason)
			return Finish(err)
		}
		l := deadletter.Letter{
			Meta: deadletter.Meta{Topic: m.Topic(), Channel: m.Channel(), Reason: reason, Attempts: m.NSQ.Attempts,
				Time: time.Now().UTC(), NSQID: nsqID},
			Original: m.NSQ.Body,
		}
		var de *decodeError
		var ex *exhaustedError
		switch {
		case errors.As(err, &de):
		case errors.As(err, &ex):
			l.Stream, l.Seq = m.Envelope.Stream, m.Envelope.Seq
			o.Logger.Error("message failed its last attempt; dead-lettering", append(m.LogAttrs(), "attempts", ex.Attempts, "err", ex.Err)...)
		default:
			l.Stream, l.Seq = m.Envelope.Stream, m.Envelope.Seq
			o.Logger.Error("message cannot be handled; dead-lettering", append(m.LogAttrs(), "err", err)...)
		}
		// ctx ends when the consumer's Stop gives up waiting: the publish
		// then fails at once and the letter goes to the local store.
		where, serr := o.Sink.Send(ctx, l)
		if serr != nil {
			o.Logger.Error("dead letter kept nowhere; requeueing the message with the longest delay", "nsq_id", nsqID,
				"reason", reason, "delay", o.RequeueDelay, "err", serr)
			return Requeue(fmt.Errorf("%s; keeping the dead letter: %w", reason, serr), o.RequeueDelay)
		}
		counter.Inc()
		o.Logger.Warn("message dead-lettered", "nsq_id", nsqID, "dead_topic", deadletter.Topic(m.Topic()), "stored", where, "reason", reason)
		return Finish(err)
	})
}

// deadReason is a dead letter's reason and its metric class.
func deadReason(err error) (reason, class string) {
	var de *decodeError
	var ex *exhaustedError
	switch {
	case errors.As(err, &de):
		return de.Error(), "decode"
	case IsPermanent(err):
		return "rejected: " + err.Error(), "rejected"
	case errors.As(err, &ex):
		return ex.Error(), "handler"
	default:
		return "handler failed: " + err.Error(), "handler"
	}
}

// Recover turns a handler's panic into an error (so the message is retried
// and, at last, dead-lettered) instead of a crashed process.
func Recover() Middleware {
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, m *Message) (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("handler panicked: %v", r)
				}
				m.returned(err)
			}()
			return next.HandleMessage(ctx, m)
		})
	}
}

// AutoTouch touches a message every interval until it is answered (when
// the handler returns, or later when it went Async; a panic too), so a
// long handler does not see it redelivered. Half of nsqd's message timeout
// is a good interval; 0 or less disables it.
func AutoTouch(every time.Duration) Middleware {
	if every <= 0 {
		return func(next Handler) Handler { return next }
	}
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, m *Message) error {
			stop := make(chan struct{})
			m.onAnswer(func() { close(stop) })
			go func() {
				t := time.NewTicker(every)
				defer t.Stop()
				for {
					select {
					case <-stop:
						return
					case <-t.C:
						m.Touch()
					}
				}
			}()
			return next.HandleMessage(ctx, m)
		})
	}
}
