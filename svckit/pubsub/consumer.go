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
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/metrics"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// Message is one delivery handed to a Handler.
type Message struct {
	Envelope envelope.Envelope
	NSQ      *nsq.Message

	c *Consumer
	// start is when the handler was called, on the consumer's monotonic
	// clock: 8 bytes where a time.Time takes 24, which moves Message to a
	// smaller size class (one is allocated per message).
	start     time.Duration
	async     atomic.Bool
	responded atomic.Bool
	stopTouch chan struct{} // AutoTouch: closed when the message is responded to
}

// Attempts is the delivery attempt (1 on first delivery).
func (m *Message) Attempts() uint16 { return m.NSQ.Attempts }

// Touch resets nsqd's timeout for this message (long-running handlers).
func (m *Message) Touch() { m.NSQ.Touch() }

// LogAttrs are the attributes identifying the message in log records.
func (m *Message) LogAttrs() []any {
	a := []any{"stream", m.Envelope.Stream, "seq", m.Envelope.Seq, "nsq_id", string(m.NSQ.ID[:])}
	if m.Envelope.ID != (envelope.ID{}) {
		a = append(a, "msg_id", m.Envelope.ID.String())
	}
	if m.Envelope.CorrelationID != "" {
		a = append(a, "correlation_id", m.Envelope.CorrelationID)
	}
	return a
}

// Async takes the response over from the handler: the consumer will not
// respond when the handler returns, and the returned func must be called
// exactly once, from any goroutine: nil finishes the message, an error
// requeues it (or dead-letters it after MaxAttempts). The worker uses this to
// finish a reading only when the result's batch was acknowledged, without
// holding a handler goroutine per message.
func (m *Message) Async() func(error) {
	m.async.Store(true)
	return m.complete
}

func (m *Message) complete(err error) {
	// A CAS, not a sync.Once: this runs for every message.
	if m.responded.CompareAndSwap(false, true) {
		if m.stopTouch != nil {
			close(m.stopTouch)
		}
		m.c.respond(m, err)
	}
}

// Handler handles one message. Returning nil finishes it; an error requeues it
// with backoff, and after MaxAttempts moves it to the dead-letter topic; a
// PermanentError (see Reject) moves it there at once.
type Handler interface {
	HandleMessage(ctx context.Context, m *Message) error
}

// HandlerFunc adapts a func to Handler.
type HandlerFunc func(ctx context.Context, m *Message) error

// HandleMessage calls f.
func (f HandlerFunc) HandleMessage(ctx context.Context, m *Message) error { return f(ctx, m) }

// ConsumerOptions configures a Consumer.
type ConsumerOptions struct {
	Topic   string
	Channel string
	// Ephemeral makes the channel "<channel>#ephemeral": nsqd keeps nothing
	// for it while no consumer is connected (replay recovers what was missed).
	Ephemeral bool

	NSQ             *nsq.Config // nil = nsq.NewConfig(); MaxInFlight, LookupdPollInterval, MsgTimeout are taken from it
	Concurrency     int         // handler goroutines; default 4
	MaxAttempts     uint16      // default 5
	RequeueDelay    time.Duration
	MaxRequeueDelay time.Duration
	// AutoTouch touches messages whose handler runs longer than half of
	// nsqd's message timeout, so long handlers do not get redelivered.
	AutoTouch  bool
	MaxPayload int // envelope payload limit; 0 = envelope.DefaultMaxPayload

	// DeadLetter publishes undecodable, rejected and exhausted messages to
	// "<topic>.dead" (see package deadletter for the format). nil = a
	// producer the consumer makes itself over the nsqd watcher it is given:
	// nothing is dropped unless DropDeadLetters says so.
	DeadLetter *Producer
	// DeadLetterStore keeps the dead letters nsqd does not take: above
	// MaxMsgSize, or not acknowledged within DeadLetterTimeout. nil = such
	// a message is requeued with MaxRequeueDelay (and logged as an error)
	// until it can be kept. svckit/service gives every consumer its
	// service's <data-dir>/deadletters.
	DeadLetterStore *deadletter.Store
	// MaxMsgSize is nsqd's --max-msg-size; default 1 MiB. A dead letter
	// above it goes to DeadLetterStore without being sent: nsqd would close
	// the producer's connection, failing every publish in flight on it.
	MaxMsgSize int
	// DeadLetterTimeout bounds the publish of one dead letter; default 10s.
	DeadLetterTimeout time.Duration
	// DropDeadLetters logs, counts and finishes what would be
	// dead-lettered instead of keeping it. Opt-in, and named for what it
	// does: the message is lost.
	DropDeadLetters bool

	Logger  *slog.Logger
	Metrics *metrics.Metrics
}

// Consumer consumes one topic/channel from the nsqds that the nsqlookupd
// instances found in Consul know about, and follows lookupd changes.
type Consumer struct {
	o        ConsumerOptions
	channel  string // full channel name (with #ephemeral)
	h        Handler
	lookupds *discovery.Watcher
	nsqds    *discovery.Watcher
	nsq      *nsq.Consumer
	dec      envelope.Decoder
	http     *http.Client
	epoch    time.Time // Message.start counts from here

	dead    *deadletter.Sink // nil with DropDeadLetters
	ownProd *Producer        // the dead-letter producer made here, stopped with the consumer

	handlerCtx    context.Context
	cancelHandler context.CancelFunc
	followCancel  context.CancelFunc
	followDone    chan struct{}

	mu       sync.Mutex
	lookupd  map[string]bool   // connected lookupd HTTP addresses
	prepared map[string]bool   // nsqd HTTP addresses with the topic/channel created
	refusing map[string]string // nsqd TCP address → why it will refuse our IDENTIFY

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
	if o.MaxAttempts == 0 {
		o.MaxAttempts = 5
	}
	if o.RequeueDelay <= 0 {
		o.RequeueDelay = time.Second
	}
	if o.MaxRequeueDelay <= 0 {
		o.MaxRequeueDelay = time.Minute
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
	var dead *deadletter.Sink
	var ownProd *Producer
	if !o.DropDeadLetters {
		var pub deadletter.TopicPublisher
		switch {
		case o.DeadLetter != nil:
			pub = o.DeadLetter
		case nsqds != nil:
			// The nsqds found in Consul, as every producer publishes to
			// (the consumer's nsq.Config carries TLS and auth).
			ownProd = NewProducer(nsqds, ProducerOptions{NSQ: o.NSQ, Logger: lg, Metrics: o.Metrics})
			pub = ownProd
		case o.DeadLetterStore == nil:
			return nil, fmt.Errorf("consumer %s/%s: no dead-letter destination: give DeadLetter, an nsqd watcher or DeadLetterStore, or set DropDeadLetters", o.Topic, ch)
		}
		var err error
		dead, err = deadletter.NewSink(deadletter.Options{
			Publisher: pub, Store: o.DeadLetterStore, MaxMsgSize: o.MaxMsgSize,
			PublishTimeout: o.DeadLetterTimeout, Logger: o.Logger, Registry: o.Metrics.Registry,
		})
		if err != nil {
			return nil, fmt.Errorf("consumer %s/%s: %w", o.Topic, ch, err)
		}
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
		o: o, channel: ch, h: h, lookupds: lookupds, nsqds: nsqds, nsq: nc, dead: dead, ownProd: ownProd,
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
// Ready, saves an operator the search.
func (c *Consumer) checkOutputBuffer(ctx context.Context, httpAddr, tcpAddr string) {
	want := c.o.NSQ.OutputBufferTimeout
	if c.o.NSQ.OutputBufferSize == -1 || want <= 0 {
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

// HandleMessage implements nsq.Handler.
func (c *Consumer) HandleMessage(nm *nsq.Message) error {
	nm.DisableAutoResponse()
	m := &Message{NSQ: nm, c: c, start: time.Since(c.epoch)}
	if err := c.dec.DecodeInto(&m.Envelope, nm.Body); err != nil {
		c.deadLetterOrRequeue(nm, nil, "decode: "+err.Error())
		return nil
	}
	if c.o.AutoTouch {
		if half := c.o.NSQ.MsgTimeout / 2; half > 0 {
			// Touch every half timeout until the message is responded
			// to: when the handler returns, or later if it went Async.
			stop := make(chan struct{})
			m.stopTouch = stop
			go func() {
				t := time.NewTicker(half)
				defer t.Stop()
				for {
					select {
					case <-stop:
						return
					case <-t.C:
						nm.Touch()
					}
				}
			}()
		}
	}
	err := c.safeHandle(m)
	if !m.async.Load() || err != nil {
		m.complete(err)
	}
	return nil
}

func (c *Consumer) safeHandle(m *Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return c.h.HandleMessage(c.handlerCtx, m)
}

func (c *Consumer) respond(m *Message, err error) {
	c.handlerSecs.Observe((time.Since(c.epoch) - m.start).Seconds())
	nm := m.NSQ
	if err == nil {
		c.consumed.Inc()
		nm.Finish()
		return
	}
	c.failed.Inc()
	// Any error that says it is permanent (PermanentError, or one of
	// replay's, which cannot import this package): retrying cannot help.
	var perm interface{ Permanent() bool }
	if errors.As(err, &perm) && perm.Permanent() {
		c.o.Logger.Error("message cannot be handled; dead-lettering", append(m.LogAttrs(), "err", err)...)
		c.deadLetterOrRequeue(nm, &m.Envelope, "rejected: "+err.Error())
		return
	}
	if nm.Attempts >= c.o.MaxAttempts {
		c.o.Logger.Error("message failed its last attempt; dead-lettering", append(m.LogAttrs(), "attempts", nm.Attempts, "err", err)...)
		c.deadLetterOrRequeue(nm, &m.Envelope, fmt.Sprintf("handler failed %d times: %v", nm.Attempts, err))
		return
	}
	delay := c.o.RequeueDelay << min(nm.Attempts-1, 16)
	delay = min(delay, c.o.MaxRequeueDelay)
	c.o.Logger.Warn("handler failed; requeueing", append(m.LogAttrs(), "attempts", nm.Attempts, "delay", delay, "err", err)...)
	c.requeued.Inc()
	// Without backoff: one poison message must not throttle the whole
	// consumer; the per-message delay grows with the attempt instead.
	nm.RequeueWithoutBackoff(delay)
}

// DeadLetter is a dead letter as published to "<topic>.dead" or kept in a
// local store: see package deadletter (deadletter.Decode reads one).
type DeadLetter = deadletter.Letter

// DeadLetterTopic is where a topic's dead letters go.
func DeadLetterTopic(topic string) string { return deadletter.Topic(topic) }

// deadLetterOrRequeue keeps a message as a dead letter (in "<topic>.dead",
// or in the local store when nsqd does not take it) and finishes it. Only
// if neither takes it is the message requeued, with the longest delay:
// nothing accepted is dropped, unless DropDeadLetters asked for it.
func (c *Consumer) deadLetterOrRequeue(nm *nsq.Message, env *envelope.Envelope, reason string) {
	if c.deadLetter(nm, env, reason) {
		nm.Finish()
		return
	}
	c.requeued.Inc()
	nm.RequeueWithoutBackoff(c.o.MaxRequeueDelay)
}

func (c *Consumer) deadLetter(nm *nsq.Message, env *envelope.Envelope, reason string) bool {
	counter := c.o.Metrics.DeadLettered.WithLabelValues(c.o.Topic, c.channel, reasonClass(reason))
	if c.dead == nil {
		counter.Inc()
		c.o.Logger.Error("dropping message (DropDeadLetters)", "nsq_id", string(nm.ID[:]), "reason", reason)
		return true
	}
	l := deadletter.Letter{
		Meta: deadletter.Meta{Topic: c.o.Topic, Channel: c.channel, Reason: reason, Attempts: nm.Attempts,
			Time: time.Now().UTC(), NSQID: string(nm.ID[:])},
		Original: nm.Body,
	}
	if env != nil {
		l.Stream, l.Seq = env.Stream, env.Seq
	}
	// handlerCtx ends when Stop gives up waiting: the publish then fails
	// at once and the letter goes to the local store.
	where, err := c.dead.Send(c.handlerCtx, l)
	if err != nil {
		c.o.Logger.Error("dead letter kept nowhere; requeueing the message with the longest delay", "nsq_id", string(nm.ID[:]),
			"reason", reason, "delay", c.o.MaxRequeueDelay, "err", err)
		return false
	}
	counter.Inc()
	c.o.Logger.Warn("message dead-lettered", "nsq_id", string(nm.ID[:]), "dead_topic", DeadLetterTopic(c.o.Topic), "stored", where, "reason", reason)
	return true
}

// Reject marks a handler error as permanent: the message is dead-lettered
// without further attempts (input that can never be handled).
func Reject(err error) error { return PermanentError{err} }

func reasonClass(reason string) string {
	for _, c := range []string{"decode", "rejected"} {
		if len(reason) >= len(c) && reason[:len(c)] == c {
			return c
		}
	}
	return "handler"
}
