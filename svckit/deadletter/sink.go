package deadletter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/metrics"
)

// TopicPublisher publishes one message and returns once nsqd acknowledged it or
// ctx ended. *pubsub.Producer is one.
type TopicPublisher interface {
	Publish(ctx context.Context, topic string, body []byte) error
}

// DefaultMaxMsgSize is nsqd's default --max-msg-size (1 MiB).
const DefaultMaxMsgSize = 1 << 20

// DefaultPublishTimeout bounds the publish of one dead letter.
const DefaultPublishTimeout = 10 * time.Second

// Options configures a Sink. It needs a Publisher or a Store; other zero
// values take the defaults named on each field.
type Options struct {
	// Publisher publishes to "<topic>.dead"; nil = keep every dead letter
	// in Store.
	Publisher TopicPublisher
	// Store keeps what nsqd does not take; nil = no local fallback (Send
	// then fails for such a letter).
	Store *Store
	// MaxMsgSize is nsqd's --max-msg-size; default DefaultMaxMsgSize. A
	// larger dead letter is not sent at all: nsqd would answer it with a
	// fatal error and close the connection, failing every other publish
	// in flight on it.
	MaxMsgSize int
	// PublishTimeout is how long a publish may take (the Publisher retries
	// and fails over meanwhile) before the letter goes to Store; default
	// DefaultPublishTimeout. It also bounds how long a consumer's handler
	// goroutine is held by a dead letter while nsqd is away.
	PublishTimeout time.Duration
	Logger         *slog.Logger // nil = discard
	// Registry receives svckit_dead_letters_total{topic,stored} and
	// svckit_dead_letter_failures_total{topic}; Sinks sharing a registry
	// share the counters. nil = not exported.
	Registry prometheus.Registerer
}

// Sink is the one path every dead letter takes: publish it to
// "<topic>.dead" if nsqd can take it, else keep it in the local store.
type Sink struct {
	o        Options
	kept     *prometheus.CounterVec
	failures *prometheus.CounterVec
}

// NewSink returns a sink; it needs a Publisher or a Store.
func NewSink(o Options) (*Sink, error) {
	if o.Publisher == nil && o.Store == nil {
		return nil, errors.New("dead-letter sink: neither a publisher nor a store")
	}
	if o.MaxMsgSize <= 0 {
		o.MaxMsgSize = DefaultMaxMsgSize
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = DefaultPublishTimeout
	}
	if o.Logger == nil {
		o.Logger = logging.Discard()
	}
	s := &Sink{o: o}
	s.kept = counterVec(o.Registry, "dead_letters_total", "Dead letters kept, by where: nsqd (<topic>.dead) or local (the service's data directory).", "topic", "stored")
	s.failures = counterVec(o.Registry, "dead_letter_failures_total", "Dead letters neither nsqd nor the local store took (the message was requeued).", "topic")
	return s, nil
}

// counterVec registers a counter vector, or returns the one a Sink
// registered before in the same registry.
func counterVec(reg prometheus.Registerer, name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metrics.Namespace, Name: name, Help: help}, labels)
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if prev, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return prev
			}
		}
	}
	return c
}

// ErrTooLarge is why a dead letter above MaxMsgSize was not published.
var ErrTooLarge = errors.New("dead letter above nsqd's --max-msg-size")

// Send keeps l: published to "<l.Topic>.dead" when it fits nsqd's
// --max-msg-size and nsqd acknowledges it within PublishTimeout, else in
// the store. It returns where l went, or an error if neither took it (the
// caller must then keep the message some other way: a consumer requeues
// it).
func (s *Sink) Send(ctx context.Context, l Letter) (Stored, error) {
	body, err := l.Marshal()
	if err != nil {
		return "", err
	}
	dest := Topic(l.Topic)
	var pubErr error
	switch {
	case s.o.Publisher == nil:
		pubErr = errors.New("no publisher")
	case len(body) > s.o.MaxMsgSize:
		// Checked here, before anything is sent: nsqd closes the
		// connection of a publish above its limit, and every other publish
		// in flight on that connection fails with it.
		pubErr = fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(body), s.o.MaxMsgSize)
	default:
		pctx, cancel := context.WithTimeout(ctx, s.o.PublishTimeout)
		pubErr = s.o.Publisher.Publish(pctx, dest, body)
		cancel()
		if pubErr == nil {
			s.kept.WithLabelValues(l.Topic, string(StoredNSQD)).Inc()
			return StoredNSQD, nil
		}
	}
	if s.o.Store == nil {
		s.failures.WithLabelValues(l.Topic).Inc()
		return "", fmt.Errorf("dead letter of %s: not published to %s (%v), and there is no local store", l.Topic, dest, pubErr)
	}
	in, err := s.o.Store.putEncoded(l.Meta, body)
	if err != nil {
		s.failures.WithLabelValues(l.Topic).Inc()
		return "", fmt.Errorf("dead letter of %s: not published to %s (%v), and the local store failed: %w", l.Topic, dest, pubErr, err)
	}
	s.kept.WithLabelValues(l.Topic, string(StoredLocal)).Inc()
	s.o.Logger.Warn("dead letter kept in the local store (list and requeue it with `svckit deadletter`)",
		"topic", l.Topic, "id", in.ID, "size", len(body), "dir", s.o.Store.Dir(), "why", pubErr)
	return StoredLocal, nil
}

// TrackerFunc returns a function for replay.TrackerOptions.DeadLetter that
// sends a replayed message the tracker cannot apply through this sink, as
// a dead letter of topic/channel (the consumer's, so that it is listed and
// requeued with the consumer's own).
func (s *Sink) TrackerFunc(topic, channel string) func(ctx context.Context, stream string, seq uint64, frame []byte, reason string) error {
	return func(ctx context.Context, stream string, seq uint64, frame []byte, reason string) error {
		where, err := s.Send(ctx, Letter{
			Meta: Meta{Topic: topic, Channel: channel, Reason: reason, Time: time.Now().UTC(), Stream: stream, Seq: seq},
			// The tracker may reuse frame's buffer once this returns;
			// Send is done with it by then.
			Original: frame,
		})
		if err != nil {
			return err
		}
		s.o.Logger.Warn("replayed message dead-lettered", "topic", topic, "stream", stream, "seq", seq, "stored", where)
		return nil
	}
}
