package pubsub

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/metrics"
	"github.com/svckit/svckit/svckit/tracing"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// ConsumerOptions configures a Consumer. Zero values take the defaults
// named on each field.
type ConsumerOptions struct {
	Topic   string
	Channel string
	// Ephemeral makes the channel "<channel>#ephemeral": nsqd keeps nothing
	// for it while no consumer is connected (replay recovers what was missed).
	Ephemeral bool

	NSQ         *nsq.Config // nil = nsq.NewConfig(); MaxInFlight, LookupdPollInterval, MsgTimeout are taken from it
	Concurrency int         // handler goroutines; default 4
	MaxPayload  int         // envelope payload limit; 0 = envelope.DefaultMaxPayload

	// Retry is the Retry middleware's policy; zero fields take
	// DefaultRetryOptions'.
	Retry RetryOptions
	// DeadLetters keeps undecodable, rejected and exhausted messages (see
	// DeadLetter). nil = a sink the consumer makes itself, publishing to
	// "<topic>.dead" over the nsqd watcher it is given: nothing is dropped
	// unless DropDeadLetters says so. svckit/service gives every consumer
	// its service's sink, which falls back to <data-dir>/deadletters.
	DeadLetters *deadletter.Sink
	// DeadLetterRequeueDelay is how long a message waits when no dead
	// letter could be kept; default Retry's MaxDelay.
	DeadLetterRequeueDelay time.Duration
	// DropDeadLetters logs, counts and finishes what would be
	// dead-lettered instead of keeping it. Opt-in, and named for what it
	// does: the message is lost.
	DropDeadLetters bool
	// AutoTouch touches messages whose handler runs longer than half of
	// nsqd's message timeout, so long handlers do not get redelivered.
	AutoTouch bool
	// Tracer, if set, makes a process span of every delivery it decoded,
	// until its outcome (an Async completion included); the handler's ctx
	// carries it (svckit/tracing).
	Tracer *tracing.Tracer
	// Middleware wraps the handler inside svckit's delivery policy: the
	// first is the outermost. Each sees decoded envelopes; a panic passes
	// through them to Recover, outside them (see the package's Middleware).
	Middleware []Middleware

	Logger  *slog.Logger
	Metrics *metrics.Metrics
}

// Consumer consumes one topic/channel from the nsqds that the nsqlookupd
// instances found in Consul know about, and follows lookupd changes.
type Consumer struct {
	o        ConsumerOptions
	channel  string  // full channel name (with #ephemeral)
	h        Handler // the handler in its delivery policy
	route    route
	lookupds *discovery.Watcher
	nsqds    *discovery.Watcher
	nsq      *nsq.Consumer
	dec      envelope.Decoder
	http     *http.Client
	epoch    time.Time // Message.start counts from here

	ownProd *Producer // the dead-letter producer made here, stopped with the consumer

	handlerCtx    context.Context
	cancelHandler context.CancelFunc
	followCancel  context.CancelFunc
	followDone    chan struct{}

	mu       sync.Mutex
	lookupd  map[string]bool   // connected lookupd HTTP addresses
	prepared map[string]bool   // nsqd HTTP addresses with the topic/channel created
	refusing map[string]string // nsqd TCP address → why it will refuse our IDENTIFY

	spans                      *tracing.Destination // nil: tracing off
	consumed, failed, requeued prometheus.Counter
	handlerSecs                prometheus.Observer
}

var channelUnsafe = regexp.MustCompile(`[^.a-zA-Z0-9_-]`)

// InstanceChannel makes a per-instance channel name from a base and an
// instance id, valid for NSQ (64 characters, [.a-zA-Z0-9_-]).
func InstanceChannel(base, instance string) string {
	c := base + "-" + channelUnsafe.ReplaceAllString(instance, "_")
	if len(c) > 54 { // room for "#ephemeral"
		c = c[:54]
	}
	return c
}

// NewConsumer validates the options and creates the consumer.
func NewConsumer(lookupds, nsqds *discovery.Watcher, h Handler, o ConsumerOptions) (*Consumer, error) {
	if !nsq.IsValidTopicName(o.Topic) {
		return nil, fmt.Errorf("topic %q: invalid NSQ topic name (1-64 of [.a-zA-Z0-9_-])", o.Topic)
	}
	ch := o.Channel
	if o.Ephemeral {
		ch += "#ephemeral"
	}
	if !nsq.IsValidChannelName(ch) {
		return nil, fmt.Errorf("channel %q: invalid NSQ channel name (1-64 of [.a-zA-Z0-9_-], optional #ephemeral)", ch)
	}
	if o.NSQ == nil {
		o.NSQ = nsq.NewConfig()
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.DeadLetterRequeueDelay <= 0 {
		o.DeadLetterRequeueDelay = o.Retry.withDefaults().MaxDelay
	}
	if o.Logger == nil {
		o.Logger = logging.Discard()
	}
	if o.Metrics == nil {
		o.Metrics = metrics.Nop()
	}
	lg := o.Logger.With("topic", o.Topic, "channel", ch)
	// The dead-letter path first: it can fail, and go-nsq's consumer starts
	// a goroutine as soon as it exists.
	var ownProd *Producer
	sink := o.DeadLetters
	if !o.DropDeadLetters && sink == nil {
		if nsqds == nil {
			return nil, fmt.Errorf("consumer %s/%s: no dead-letter destination: give DeadLetters or an nsqd watcher, or set DropDeadLetters", o.Topic, ch)
		}
		// The nsqds found in Consul, as every producer publishes to
		// (the consumer's nsq.Config carries TLS and auth).
		ownProd = NewProducer(nsqds, ProducerOptions{NSQ: o.NSQ, Logger: lg, Metrics: o.Metrics})
		var err error
		sink, err = deadletter.NewSink(deadletter.Options{Publisher: ownProd, Logger: o.Logger, Registry: o.Metrics.Registry})
		if err != nil {
			return nil, fmt.Errorf("consumer %s/%s: %w", o.Topic, ch, err)
		}
	}
	if o.DropDeadLetters {
		sink = nil
	}
	cfg := *o.NSQ // our copy: we change MaxAttempts
	// svckit enforces MaxAttempts itself so that exhausted messages reach the
	// dead-letter topic; go-nsq would only log and finish them.
	cfg.MaxAttempts = 0
	nc, err := nsq.NewConsumer(o.Topic, ch, &cfg)
	if err != nil {
		return nil, fmt.Errorf("creating consumer for %s/%s: %w", o.Topic, ch, err)
	}
	nc.SetLogger(logging.NSQLogger{L: lg}, logging.NSQLevel(lg))
	c := &Consumer{
		o: o, channel: ch, lookupds: lookupds, nsqds: nsqds, nsq: nc, ownProd: ownProd,
		dec:      envelope.Decoder{MaxPayload: o.MaxPayload, Strings: &envelope.StringCache{}},
		http:     &http.Client{Timeout: 5 * time.Second},
		epoch:    time.Now(),
		lookupd:  map[string]bool{},
		prepared: map[string]bool{},
		refusing: map[string]string{},
	}
	c.o.Logger = lg
	c.consumed = o.Metrics.Consumed.WithLabelValues(o.Topic, ch)
	c.failed = o.Metrics.Failed.WithLabelValues(o.Topic, ch)
	c.requeued = o.Metrics.Requeued.WithLabelValues(o.Topic, ch)
	c.handlerSecs = o.Metrics.HandlerSeconds.WithLabelValues(o.Topic, ch)
	c.handlerCtx, c.cancelHandler = context.WithCancel(context.Background())
	c.spans = o.Tracer.Topic(o.Topic, ch)
	c.route = route{topic: o.Topic, channel: ch, respond: c.respond}
	c.h = c.policy(h, sink, lg)
	nc.AddConcurrentHandlers(c, o.Concurrency)
	return c, nil
}

// Channel is the full channel name.
func (c *Consumer) Channel() string { return c.channel }

// Start prepares the topic and channel on every known nsqd (so a durable
// channel collects messages from now on, and nsqlookupd knows the topic at
// once), connects to the lookupds known now (waiting for the first discovery
// answer within ctx), and follows changes until Stop.
func (c *Consumer) Start(ctx context.Context) error {
	if err := c.lookupds.WaitReady(ctx); err != nil {
		return err
	}
	if c.nsqds != nil {
		if err := c.nsqds.WaitReady(ctx); err != nil {
			return err
		}
		c.prepare(ctx, c.nsqds.Instances())
	}
	c.updateLookupds(c.lookupds.Instances())
	fctx, cancel := context.WithCancel(context.Background())
	c.followCancel = cancel
	c.followDone = make(chan struct{})
	go c.follow(fctx)
	return nil
}

func (c *Consumer) follow(ctx context.Context) {
	defer close(c.followDone)
	lch, lcancel := c.lookupds.Subscribe()
	defer lcancel()
	var nch <-chan []discovery.Instance
	if c.nsqds != nil {
		ch, ncancel := c.nsqds.Subscribe()
		defer ncancel()
		nch = ch
	}
	// nsqds whose preparation failed are retried on a timer, not only when
	// the set changes.
	retry := time.NewTicker(5 * time.Second)
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case set := <-lch:
			c.updateLookupds(set)
		case set := <-nch:
			c.prepare(ctx, set)
		case <-retry.C:
			if c.nsqds != nil {
				c.prepare(ctx, c.nsqds.Instances())
			}
		}
	}
}

// updateLookupds connects to new lookupds and drops vanished ones. An empty
// set (nsqlookupd down or Consul answering nothing) changes nothing: the
// consumer keeps its nsqd connections and the lookupds it knows.
func (c *Consumer) updateLookupds(set []discovery.Instance) {
	want := map[string]bool{}
	for _, in := range set {
		if a, ok := in.MetaAddr("http_port"); ok {
			want[a] = true
		}
	}
	if len(want) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for a := range want {
		if !c.lookupd[a] {
			if err := c.nsq.ConnectToNSQLookupd(a); err != nil && !errors.Is(err, nsq.ErrAlreadyConnected) {
				c.o.Logger.Warn("connecting to nsqlookupd", "lookupd", a, "err", err)
				continue
			}
			c.lookupd[a] = true
			c.o.Logger.Info("following nsqlookupd", "lookupd", a)
		}
	}
	for a := range c.lookupd {
		if !want[a] {
			if err := c.nsq.DisconnectFromNSQLookupd(a); err != nil {
				continue // go-nsq keeps the last one; so do we
			}
			delete(c.lookupd, a)
			c.o.Logger.Info("dropped nsqlookupd", "lookupd", a)
		}
	}
}

// prepare creates the topic (and, for durable channels, the channel) on nsqds
// not prepared yet, and connects to them at once: nsqlookupd would only report
// them on its next poll (go-nsq polls every LookupdPollInterval), and a
// consumer that started before the topic existed would idle until then.
// Best effort: failures are retried on the next change.
func (c *Consumer) prepare(ctx context.Context, set []discovery.Instance) {
	for _, in := range set {
		a, ok := in.MetaAddr("http_port")
		if !ok {
			continue
		}
		c.mu.Lock()
		done := c.prepared[a]
		c.mu.Unlock()
		if done {
			continue
		}
		if err := c.createOn(ctx, a); err != nil {
			c.o.Logger.Warn("preparing topic/channel on nsqd", "nsqd_http", a, "err", err)
			continue
		}
		c.mu.Lock()
		c.prepared[a] = true
		c.mu.Unlock()
		c.checkOutputBuffer(ctx, a, in.Addr())
		if err := c.nsq.ConnectToNSQD(in.Addr()); err != nil && !errors.Is(err, nsq.ErrAlreadyConnected) {
			c.o.Logger.Debug("connecting to nsqd directly; nsqlookupd will report it", "nsqd", in.Addr(), "err", err)
		}
	}
}

// checkOutputBuffer asks nsqd for its --min-output-buffer-timeout: nsqd
// refuses an IDENTIFY asking for less, and go-nsq then only logs a failed
// connection and retries forever. Saying which flag to change, once, and in
// Ready, saves an operator the search. (A timeout below 1ms goes as 0,
// nsqd's own --output-buffer-timeout, which nsqd never refuses: the
// connection checks what nsqd gave it, in go-nsq's IDENTIFY.)
func (c *Consumer) checkOutputBuffer(ctx context.Context, httpAddr, tcpAddr string) {
	want := c.o.NSQ.OutputBufferTimeout
	if c.o.NSQ.OutputBufferSize == -1 || want < time.Millisecond {
		return
	}
	var floor time.Duration
	if err := c.get(ctx, httpAddr, "/config/min_output_buffer_timeout", &floor); err != nil {
		return // an nsqd without /config: the connection will tell
	}
	if want >= floor {
		return
	}
	why := fmt.Sprintf("nsqd %s refuses an output buffer timeout of %s (its --min-output-buffer-timeout is %s): start nsqd with --min-output-buffer-timeout=%s, or set --nsq-output-buffer-timeout=%s or --nsq-output-buffer-size=-1",
		tcpAddr, want, floor, want, floor)
	c.mu.Lock()
	c.refusing[tcpAddr] = why
	c.mu.Unlock()
	c.o.Logger.Error("consumer cannot connect to nsqd", "nsqd", tcpAddr, "err", why)
}

func (c *Consumer) get(ctx context.Context, httpAddr, path string, v any) error {
	return c.call(ctx, http.MethodGet, "http://"+httpAddr+path, func(body io.Reader) error {
		return json.NewDecoder(io.LimitReader(body, 4096)).Decode(v)
	})
}

// call sends a request to nsqd's HTTP API and hands a 200 answer's body to
// read (nil: ignore it); any other status is an error quoting nsqd's answer.
func (c *Consumer) call(ctx context.Context, method, url string, read func(io.Reader) error) error {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		return fmt.Errorf("%s %s: HTTP %d: %s", method, req.URL.Path, resp.StatusCode, bytes.TrimSpace(msg))
	}
	if read == nil {
		return nil
	}
	return read(resp.Body)
}

// createOn creates the topic, then (for a durable channel) the channel: nsqd
// answers /channel/create with 404 TOPIC_NOT_FOUND for a topic it lacks.
func (c *Consumer) createOn(ctx context.Context, httpAddr string) error {
	if err := c.post(ctx, httpAddr, "/topic/create", url.Values{"topic": {c.o.Topic}}); err != nil {
		return err
	}
	if c.o.Ephemeral {
		return nil
	}
	return c.post(ctx, httpAddr, "/channel/create", url.Values{"topic": {c.o.Topic}, "channel": {c.channel}})
}

func (c *Consumer) post(ctx context.Context, httpAddr, path string, q url.Values) error {
	return c.call(ctx, http.MethodPost, "http://"+httpAddr+path+"?"+q.Encode(), nil)
}

// Ready is nil while the consumer has at least one nsqd connection.
func (c *Consumer) Ready() error {
	if c.nsq.Stats().Connections == 0 {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, why := range c.refusing {
			return fmt.Errorf("consumer %s/%s: no nsqd connection: %s", c.o.Topic, c.channel, why)
		}
		return fmt.Errorf("consumer %s/%s: no nsqd connection", c.o.Topic, c.channel)
	}
	return nil
}

// Stats are go-nsq's consumer statistics.
func (c *Consumer) Stats() *nsq.ConsumerStats { return c.nsq.Stats() }

// Stop stops taking messages and waits until every message in flight was
// responded to, or ctx ends (then handlers see their context cancelled).
func (c *Consumer) Stop(ctx context.Context) error {
	if c.followCancel != nil {
		c.followCancel()
		<-c.followDone
	}
	c.nsq.Stop()
	// The consumer's own dead-letter producer goes last: the messages in
	// flight may still need it.
	defer func() {
		if c.ownProd != nil {
			c.ownProd.Stop()
		}
	}()
	select {
	case <-c.nsq.StopChan:
		c.cancelHandler()
		return nil
	case <-ctx.Done():
		c.cancelHandler()
		return fmt.Errorf("stopping consumer %s/%s: in-flight messages did not finish: %w", c.o.Topic, c.channel, context.Cause(ctx))
	}
}

// policy wraps the user's handler in the consumer's delivery policy (see
// Middleware for the order and why).
func (c *Consumer) policy(h Handler, sink *deadletter.Sink, lg *slog.Logger) Handler {
	var touch time.Duration
	if c.o.AutoTouch {
		touch = c.o.NSQ.MsgTimeout / 2
	}
	ro := c.o.Retry
	if ro.Logger == nil {
		ro.Logger = lg
	}
	mws := []Middleware{
		DeadLetter(DeadLetterOptions{Sink: sink, Drop: c.o.DropDeadLetters, RequeueDelay: c.o.DeadLetterRequeueDelay, Logger: lg, Metrics: c.o.Metrics}),
		Retry(ro),
		c.decode,
		c.process,
		OnOutcome(c.count),
		AutoTouch(touch),
		Recover(),
	}
	if len(c.o.Middleware) > 0 {
		// Recover is innermost otherwise, and does the same.
		mws = append(append(mws, c.o.Middleware...), returnedOverridesAsync)
	}
	return Chain(h, mws...)
}

// returnedOverridesAsync is innermost: an error the handler returns after
// Async decides the outcome even when a middleware outside swallows it,
// and the handler's later completion does nothing.
func returnedOverridesAsync(next Handler) Handler {
	return HandlerFunc(func(ctx context.Context, m *Message) error {
		err := next.HandleMessage(ctx, m)
		m.returned(err)
		return err
	})
}

// decode fills the message's envelope; a body that is not one is a
// permanent failure (DeadLetter keeps it).
func (c *Consumer) decode(next Handler) Handler {
	return HandlerFunc(func(ctx context.Context, m *Message) error {
		if err := c.dec.DecodeInto(&m.Envelope, m.NSQ.Body); err != nil {
			return &decodeError{Err: err}
		}
		return next.HandleMessage(ctx, m)
	})
}

// process runs the rest in the delivery's process span, ended by its
// outcome (as OnOutcome sees it: an Async completion included); without a
// Tracer it is not there.
func (c *Consumer) process(next Handler) Handler {
	if c.spans == nil {
		return next
	}
	return HandlerFunc(func(ctx context.Context, m *Message) error {
		ctx, span := c.spans.Process(ctx, &m.Envelope, tracing.Live, m.NSQ.Attempts)
		end := OnOutcome(func(_ context.Context, _ *Message, err error) error {
			span.End(err)
			return err
		})
		return end(next).HandleMessage(ctx, m)
	})
}

// count counts the handler's failures, before Retry or DeadLetter turn
// them into outcomes, and times the handling (until its outcome, Async
// included; not the dead-lettering).
func (c *Consumer) count(_ context.Context, m *Message, err error) error {
	c.handlerSecs.Observe((time.Since(c.epoch) - m.start).Seconds())
	if err != nil {
		c.failed.Inc()
	}
	return err
}

// HandleMessage implements nsq.Handler.
func (c *Consumer) HandleMessage(nm *nsq.Message) error {
	nm.DisableAutoResponse()
	Deliver(c.handlerCtx, c.h, &Message{NSQ: nm, route: &c.route, start: time.Since(c.epoch)})
	return nil
}

// respond answers nsqd from a message's outcome (see Middleware).
func (c *Consumer) respond(m *Message, err error) {
	nm := m.NSQ
	switch {
	case err == nil:
		c.consumed.Inc()
		nm.Finish()
	case isFinish(err):
		nm.Finish()
	default:
		c.requeued.Inc()
		// Without backoff: one poison message must not throttle the whole
		// consumer; Retry's per-message delay grows with the attempt instead.
		nm.RequeueWithoutBackoff(requeueDelay(err))
	}
}

// DeadLetterTopic is where a topic's dead letters go.
func DeadLetterTopic(topic string) string { return deadletter.Topic(topic) }
