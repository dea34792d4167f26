// Package pubsub wraps go-nsq for svckit: a producer that publishes to a healthy
// nsqd found in Consul and fails over to another, a batching publisher (MPUB),
// and a consumer that follows the nsqlookupd instances found in Consul.
package pubsub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/metrics"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// ErrNoNSQD means discovery knows no passing nsqd.
var ErrNoNSQD = errors.New("no passing nsqd in Consul")

// ErrProducerStopped is returned by a publish after Stop (and by one that
// was waiting when Stop came): nothing will be published any more, so it
// is not retried.
var ErrProducerStopped = errors.New("producer stopped")

// ProducerOptions configures a Producer. Zero values take the defaults
// named on each field.
type ProducerOptions struct {
	NSQ        *nsq.Config   // nil = nsq.NewConfig()
	PreferNode string        // Consul node name to prefer (the local agent's): publish to the local nsqd
	RetryMin   time.Duration // first retry delay; default 50ms
	RetryMax   time.Duration // cap; default 2s
	// BadFor is how long an nsqd that failed is avoided when others exist; default 5s.
	BadFor  time.Duration
	Logger  *slog.Logger     // nil = discard
	Metrics *metrics.Metrics // nil = metrics.Nop()
}

// Producer publishes to one nsqd at a time, chosen among the passing nsqd
// instances in Consul (the local node's first), and moves to another when a
// publish fails or its nsqd leaves the passing set.
type Producer struct {
	nsqds *discovery.Watcher
	o     ProducerOptions

	mu      sync.Mutex
	cur     *nsqdConn
	bad     map[string]time.Time
	stopped bool

	pubCounters sync.Map // topic → *pubCounters
}

// NewProducer returns a producer over the nsqd watcher.
func NewProducer(nsqds *discovery.Watcher, o ProducerOptions) *Producer {
	def := nsq.NewConfig()
	if o.NSQ == nil {
		o.NSQ = def
	}
	// Output buffering is about messages nsqd sends to a consumer; a
	// producer receives none. Asking for a consumer's flush here would
	// only let an nsqd with a higher --min-output-buffer-timeout refuse the
	// connection (or log a slow flush), so a producer asks for go-nsq's
	// defaults.
	cfg := *o.NSQ
	cfg.OutputBufferSize, cfg.OutputBufferTimeout = def.OutputBufferSize, def.OutputBufferTimeout
	o.NSQ = &cfg
	if o.RetryMin <= 0 {
		o.RetryMin = 50 * time.Millisecond
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 2 * time.Second
	}
	if o.BadFor <= 0 {
		o.BadFor = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = logging.Discard()
	}
	if o.Metrics == nil {
		o.Metrics = metrics.Nop()
	}
	return &Producer{nsqds: nsqds, o: o, bad: map[string]time.Time{}}
}

// PermanentError is a publish failure that retrying cannot fix (bad topic,
// message too large): it is returned at once instead of retried.
type PermanentError struct{ Err error }

func (e PermanentError) Error() string { return e.Err.Error() }
func (e PermanentError) Unwrap() error { return e.Err }

// Permanent reports true: packages that must not import pubsub (replay)
// recognise a permanent failure by this method.
func (e PermanentError) Permanent() bool { return true }

func isPermanent(err error) bool {
	var pe nsq.ErrProtocol
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Reason, "E_BAD_") || strings.HasPrefix(pe.Reason, "E_INVALID")
	}
	return false
}

// Publish publishes one message, retrying (and failing over) until it is
// acknowledged by an nsqd or ctx ends.
func (p *Producer) Publish(ctx context.Context, topic string, body []byte) error {
	return p.MultiPublish(ctx, topic, [][]byte{body})
}

// MultiPublish publishes the bodies in one MPUB, retrying (and failing over)
// until an nsqd acknowledges all of them or ctx ends. A retried batch may be
// published twice if the first ack was lost: consumers deduplicate by
// (stream, seq).
func (p *Producer) MultiPublish(ctx context.Context, topic string, bodies [][]byte) error {
	if len(bodies) == 0 {
		return nil
	}
	if len(bodies) == 1 {
		return p.publish(ctx, topic, 1, nsq.Publish(topic, bodies[0]))
	}
	cmd, err := nsq.MultiPublish(topic, bodies)
	if err != nil {
		return fmt.Errorf("publishing %d messages to %q: %w", len(bodies), topic, err)
	}
	return p.publish(ctx, topic, len(bodies), cmd)
}

// multiPublishEncoded is MultiPublish for a body already in MPUB's layout
// (a big-endian u32 count, then each message as a u32 length and its
// bytes): the Batcher encodes batches that way into a buffer it reuses, and
// nothing is copied on the way to the socket.
func (p *Producer) multiPublishEncoded(ctx context.Context, topic string, n int, body []byte) error {
	return p.publish(ctx, topic, n, &nsq.Command{Name: []byte("MPUB"), Params: [][]byte{[]byte(topic)}, Body: body})
}

// publish sends cmd (n messages) until an nsqd acknowledges it or ctx ends.
func (p *Producer) publish(ctx context.Context, topic string, n int, cmd *nsq.Command) error {
	if !nsq.IsValidTopicName(topic) {
		return PermanentError{fmt.Errorf("publishing to topic %q: invalid NSQ topic name", topic)}
	}
	delay := p.o.RetryMin
	var lastErr error
	for attempt := 0; ; attempt++ {
		if err := ctx.Err(); err != nil {
			if lastErr == nil {
				lastErr = err
			}
			return fmt.Errorf("publishing %d message(s) to %q: %w (last error: %v)", n, topic, context.Cause(ctx), lastErr)
		}
		conn, err := p.conn()
		switch {
		case errors.Is(err, ErrProducerStopped):
			return fmt.Errorf("publishing %d message(s) to %q: %w", n, topic, err)
		case err != nil && !errors.Is(err, ErrNoNSQD):
			// An nsqd that could not be connected to: a failed publish, as
			// when go-nsq's Producer connected inside Publish.
			p.o.Metrics.PublishErrors.WithLabelValues(topic).Inc()
		}
		if err == nil {
			if err = conn.do(ctx, cmd); err == nil {
				pc := p.published(topic)
				pc.msgs.Add(float64(n))
				pc.cmds.Inc()
				return nil
			}
			if ctx.Err() != nil {
				continue // the loop reports it
			}
			p.o.Metrics.PublishErrors.WithLabelValues(topic).Inc()
			if isPermanent(err) {
				return PermanentError{fmt.Errorf("publishing to %q on nsqd %s: %w", topic, conn.addr, err)}
			}
			p.markBad(conn, err)
		}
		lastErr = err
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		delay = min(delay*2, p.o.RetryMax)
	}
}

// pubCounters are one topic's publish counters, looked up once per topic
// instead of hashing the label values on every publish.
type pubCounters struct{ msgs, cmds prometheus.Counter }

func (p *Producer) published(topic string) *pubCounters {
	if c, ok := p.pubCounters.Load(topic); ok {
		return c.(*pubCounters)
	}
	c := &pubCounters{p.o.Metrics.Published.WithLabelValues(topic), p.o.Metrics.PublishCmds.WithLabelValues(topic)}
	p.pubCounters.Store(topic, c)
	return c
}

// Addr is the nsqd currently published to ("" if none).
func (p *Producer) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil {
		return ""
	}
	return p.cur.addr
}

// Ready is nil when a passing nsqd is known.
func (p *Producer) Ready() error {
	if p.nsqds == nil {
		return ErrNoNSQD
	}
	if err := p.nsqds.Healthy(); err != nil && len(p.nsqds.Instances()) == 0 {
		return err
	}
	if len(p.nsqds.Instances()) == 0 {
		return ErrNoNSQD
	}
	return nil
}

// conn returns the connection to the current nsqd, choosing a new nsqd when
// there is none, it closed, or it left the passing set.
func (p *Producer) conn() (*nsqdConn, error) {
	set := p.nsqds.Instances()
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return nil, ErrProducerStopped
	}
	if p.cur != nil {
		if !p.cur.isClosed() && (len(set) == 0 || containsAddr(set, p.cur.addr)) {
			c := p.cur
			p.mu.Unlock()
			return c, nil
		}
		if !p.cur.isClosed() {
			p.o.Logger.Info("nsqd left the passing set; moving", "nsqd", p.cur.addr)
		}
		p.cur.Close()
		p.cur = nil
	}
	addr := p.choose(set)
	p.mu.Unlock()
	if addr == "" {
		return nil, ErrNoNSQD
	}
	// Dialled without the lock: a slow nsqd must not hold up Addr or Stop.
	c, err := dialNSQD(addr, p.o.NSQ, p.o.Logger.With("nsqd", addr))
	if err != nil {
		p.mu.Lock()
		p.bad[addr] = time.Now().Add(p.o.BadFor)
		p.mu.Unlock()
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.stopped:
		c.Close()
		return nil, ErrProducerStopped
	case p.cur != nil && !p.cur.isClosed(): // another publish connected meanwhile
		c.Close()
		return p.cur, nil
	}
	p.cur = c
	p.o.Logger.Debug("publishing to nsqd", "nsqd", addr)
	return c, nil
}

// choose prefers the local node's nsqd, then any not recently failed, then
// any at all (a recently failed nsqd beats none).
func (p *Producer) choose(set []discovery.Instance) string {
	now := time.Now()
	var local, ok, any []string
	for _, in := range set {
		a := in.Addr()
		any = append(any, a)
		if until, bad := p.bad[a]; bad && now.Before(until) {
			continue
		}
		if p.o.PreferNode != "" && in.Node == p.o.PreferNode {
			local = append(local, a)
		}
		ok = append(ok, a)
	}
	for _, c := range [][]string{local, ok, any} {
		if len(c) > 0 {
			return c[rand.N(len(c))]
		}
	}
	return ""
}

func containsAddr(set []discovery.Instance, addr string) bool {
	for _, in := range set {
		if in.Addr() == addr {
			return true
		}
	}
	return false
}

func (p *Producer) markBad(c *nsqdConn, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bad[c.addr] = time.Now().Add(p.o.BadFor)
	if p.cur == c {
		p.o.Logger.Warn("publish failed; moving to another nsqd", "nsqd", c.addr, "err", err)
		p.cur.Close()
		p.cur = nil
	}
}

// Stop closes the connection. Publishing after Stop fails.
func (p *Producer) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	if p.cur != nil {
		p.cur.Close()
		p.cur = nil
	}
}
