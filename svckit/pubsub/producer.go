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

	"github.com/nsqio/go-nsq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/metrics"
)

// ErrNoNSQD means discovery knows no passing nsqd.
var ErrNoNSQD = errors.New("no passing nsqd in Consul")

// ProducerOptions configures a Producer.
type ProducerOptions struct {
	NSQ        *nsq.Config   // nil = nsq.NewConfig()
	PreferNode string        // Consul node name to prefer (the local agent's): publish to the local nsqd
	RetryMin   time.Duration // first retry delay; default 50ms
	RetryMax   time.Duration // cap; default 2s
	// BadFor is how long an nsqd that failed is avoided when others exist; default 5s.
	BadFor  time.Duration
	Logger  *slog.Logger
	Metrics *metrics.Metrics
}

// Producer publishes to one nsqd at a time, chosen among the passing nsqd
// instances in Consul (the local node's first), and moves to another when a
// publish fails or its nsqd leaves the passing set.
type Producer struct {
	nsqds *discovery.Watcher
	o     ProducerOptions

	mu      sync.Mutex
	cur     *nsq.Producer
	curAddr string
	bad     map[string]time.Time
	stopped bool

	pubCounters sync.Map // topic → prometheus.Counter
}

// NewProducer returns a producer over the nsqd watcher.
func NewProducer(nsqds *discovery.Watcher, o ProducerOptions) *Producer {
	def := nsq.NewConfig()
	if o.NSQ == nil {
		o.NSQ = def
	}
	// Output buffering is about messages nsqd sends to a consumer; a
	// producer receives none. Asking for a consumer's 1ms flush here would
	// only let an nsqd with a higher --min-output-buffer-timeout refuse the
	// connection, so a producer asks for go-nsq's defaults.
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
			return fmt.Errorf("publishing %d message(s) to %q: %w (last error: %v)", len(bodies), topic, context.Cause(ctx), lastErr)
		}
		prod, addr, err := p.conn()
		if err == nil {
			if len(bodies) == 1 {
				err = prod.Publish(topic, bodies[0])
			} else {
				err = prod.MultiPublish(topic, bodies)
			}
			if err == nil {
				p.published(topic).Add(float64(len(bodies)))
				return nil
			}
			p.o.Metrics.PublishErrors.WithLabelValues(topic).Inc()
			if isPermanent(err) {
				return PermanentError{fmt.Errorf("publishing to %q on nsqd %s: %w", topic, addr, err)}
			}
			p.markBad(addr, prod, err)
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

func (p *Producer) published(topic string) prometheus.Counter {
	if c, ok := p.pubCounters.Load(topic); ok {
		return c.(prometheus.Counter)
	}
	c := p.o.Metrics.Published.WithLabelValues(topic)
	p.pubCounters.Store(topic, c)
	return c
}

// Addr is the nsqd currently published to ("" if none).
func (p *Producer) Addr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.curAddr
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

// conn returns the current go-nsq producer, choosing a new nsqd when there is
// none or the current one left the passing set.
func (p *Producer) conn() (*nsq.Producer, string, error) {
	set := p.nsqds.Instances()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return nil, "", errors.New("producer stopped")
	}
	if p.cur != nil {
		if len(set) == 0 || containsAddr(set, p.curAddr) {
			return p.cur, p.curAddr, nil
		}
		p.o.Logger.Info("nsqd left the passing set; moving", "nsqd", p.curAddr)
		p.cur.Stop()
		p.cur, p.curAddr = nil, ""
	}
	addr := p.choose(set)
	if addr == "" {
		return nil, "", ErrNoNSQD
	}
	prod, err := nsq.NewProducer(addr, p.o.NSQ)
	if err != nil {
		return nil, "", fmt.Errorf("creating nsq producer for %s: %w", addr, err)
	}
	prod.SetLogger(logging.NSQLogger{L: p.o.Logger.With("nsqd", addr)}, logging.NSQLevel(p.o.Logger))
	p.cur, p.curAddr = prod, addr
	p.o.Logger.Debug("publishing to nsqd", "nsqd", addr)
	return prod, addr, nil
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

func (p *Producer) markBad(addr string, prod *nsq.Producer, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bad[addr] = time.Now().Add(p.o.BadFor)
	if p.cur == prod {
		p.o.Logger.Warn("publish failed; moving to another nsqd", "nsqd", addr, "err", err)
		p.cur.Stop()
		p.cur, p.curAddr = nil, ""
	}
}

// Stop closes the connection. Publishing after Stop fails.
func (p *Producer) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = true
	if p.cur != nil {
		p.cur.Stop()
		p.cur, p.curAddr = nil, ""
	}
}
