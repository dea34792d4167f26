package pubsub_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/internal/skip"
	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/metrics"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/testenv"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// Generous: NSQ, consul and other test packages share a small, busy machine.
const waitLong = 60 * time.Second

// ---------------------------------------------------------------- helpers

// testLogger logs into a buffer printed if the test failed.
func testLogger(t *testing.T) *slog.Logger { return testenv.Logger(t) }

// env is discovery over a stack's consul plus the two NSQ watchers.
type env struct {
	stack    *testenv.Stack
	d        *discovery.Discovery
	lookupds *discovery.Watcher
	nsqds    *discovery.Watcher
}

func newEnv(t *testing.T, stack *testenv.Stack, nsqds int) *env {
	t.Helper()
	d := discovery.New(stack.Consul.Client, discovery.Options{MaxBackoff: time.Second})
	t.Cleanup(d.Stop)
	e := &env{stack: stack, d: d, lookupds: d.Watch("nsqlookupd"), nsqds: d.Watch("nsqd")}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := e.lookupds.WaitFor(ctx, func(s []discovery.Instance) bool { return len(s) >= 1 }); err != nil {
		t.Fatal(err)
	}
	if _, err := e.nsqds.WaitFor(ctx, func(s []discovery.Instance) bool { return len(s) >= nsqds }); err != nil {
		t.Fatal(err)
	}
	return e
}

func nsqConfig(maxInFlight int) *nsq.Config {
	c := nsq.NewConfig()
	c.LookupdPollInterval = time.Second
	c.MaxInFlight = maxInFlight
	return c
}

func (e *env) producer(t *testing.T, m *metrics.Metrics) *pubsub.Producer {
	t.Helper()
	p := pubsub.NewProducer(e.nsqds, pubsub.ProducerOptions{Logger: testLogger(t), Metrics: m})
	t.Cleanup(p.Stop)
	return p
}

// startConsumer creates and starts a consumer; it is stopped in cleanup.
func (e *env) startConsumer(t *testing.T, h pubsub.Handler, o pubsub.ConsumerOptions) *pubsub.Consumer {
	t.Helper()
	if o.Logger == nil {
		o.Logger = testLogger(t)
	}
	c, err := pubsub.NewConsumer(e.lookupds, e.nsqds, h, o)
	if err != nil {
		t.Fatalf("NewConsumer: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatalf("consumer Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("consumer Stop: %v", err)
		}
	})
	return c
}

var ids = envelope.NewIDSource()

func payloadOf(seq uint64) []byte { return fmt.Appendf(nil, "payload-%d", seq) }

// envBody is the encoded envelope of (stream, seq).
func envBody(t *testing.T, stream string, seq uint64) []byte {
	t.Helper()
	e := envelope.Envelope{
		ID: ids.Next(), Stream: stream, Seq: seq, Created: time.Now(),
		ContentType: "text/plain", CorrelationID: fmt.Sprint("corr-", seq), Payload: payloadOf(seq),
	}
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// seqSet is a concurrency-safe multiset of sequence numbers.
type seqSet struct {
	mu sync.Mutex
	m  map[uint64]int
}

func newSeqSet() *seqSet { return &seqSet{m: map[uint64]int{}} }

func (s *seqSet) add(seq uint64) {
	s.mu.Lock()
	s.m[seq]++
	s.mu.Unlock()
}

func (s *seqSet) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

func (s *seqSet) has(seq uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[seq] > 0
}

func (s *seqSet) keys() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]uint64, 0, len(s.m))
	for k := range s.m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// missing returns the numbers of 1..n not in the set (at most 20).
func (s *seqSet) missing(n uint64) []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []uint64
	for i := uint64(1); i <= n && len(out) < 20; i++ {
		if s.m[i] == 0 {
			out = append(out, i)
		}
	}
	return out
}

// waitAll waits until the set holds 1..n.
func (s *seqSet) waitAll(t *testing.T, n uint64, what string) {
	t.Helper()
	if !testenv.Eventually(waitLong, func() bool { return s.len() >= int(n) && len(s.missing(n)) == 0 }) {
		t.Fatalf("%s: %d of %d messages after %s; missing (first 20): %v", what, s.len(), n, waitLong, s.missing(n))
	}
}

// awaitDone waits for k done callbacks' results, failing at the first error.
func awaitDone(t *testing.T, results <-chan error, k int) {
	t.Helper()
	timeout := time.After(waitLong)
	for i := range k {
		select {
		case err := <-results:
			if err != nil {
				t.Fatalf("done callback: %v", err)
			}
		case <-timeout:
			t.Fatalf("only %d of %d done callbacks within %s", i, k, waitLong)
		}
	}
}

// closeBatcher closes b, failing if what it holds is not published in time.
func closeBatcher(t *testing.T, b *pubsub.Batcher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// collectEnvelopes creates topic and consumes it on channel, collecting
// the sequence numbers seen and what checkEnvelope found wrong.
func collectEnvelopes(t *testing.T, e *env, nsqd *testenv.NSQD, topic, channel, stream string) (*seqSet, *errList) {
	t.Helper()
	got := newSeqSet()
	var bad errList
	createTopic(t, nsqd, topic)
	e.startConsumer(t, pubsub.HandlerFunc(func(_ context.Context, msg *pubsub.Message) error {
		if err := checkEnvelope(msg, stream); err != nil {
			bad.add(err)
		}
		got.add(msg.Envelope.Seq)
		return nil
	}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(500)})
	return got, &bad
}

// checkEnvelope verifies what the producer put in the envelope.
func checkEnvelope(m *pubsub.Message, stream string) error {
	e := m.Envelope
	if e.Stream != stream {
		return fmt.Errorf("stream %q, want %q", e.Stream, stream)
	}
	if !bytes.Equal(e.Payload, payloadOf(e.Seq)) || e.CorrelationID != fmt.Sprint("corr-", e.Seq) || e.ContentType != "text/plain" {
		return fmt.Errorf("seq %d: payload %q corr %q ct %q", e.Seq, e.Payload, e.CorrelationID, e.ContentType)
	}
	return nil
}

// errList records handler-side problems; reported by the test goroutine.
type errList struct {
	mu   sync.Mutex
	errs []error
}

func (l *errList) add(err error) {
	l.mu.Lock()
	if len(l.errs) < 20 {
		l.errs = append(l.errs, err)
	}
	l.mu.Unlock()
}

func (l *errList) check(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, err := range l.errs {
		t.Error(err)
	}
}

// chanState is one channel's row in nsqd's /stats.
type chanState struct {
	found                      bool
	depth, inFlight, deferred  int64
	messages, requeues, tmouts uint64
	clients                    int
}

func channelState(t *testing.T, n *testenv.NSQD, topic, channel string) chanState {
	t.Helper()
	st, err := n.Stats()
	if err != nil {
		return chanState{}
	}
	for _, tp := range st.Topics {
		if tp.TopicName != topic {
			continue
		}
		for _, c := range tp.Channels {
			if c.ChannelName == channel {
				return chanState{
					found: true, depth: c.Depth, inFlight: int64(c.InFlightCount), deferred: int64(c.DeferredCount),
					messages: c.MessageCount, requeues: c.RequeueCount, tmouts: c.TimeoutCount, clients: c.ClientCount,
				}
			}
		}
	}
	return chanState{}
}

// waitDrained waits until nsqd holds nothing for the channel (no depth, none
// in flight or deferred) and returns its state.
func waitDrained(t *testing.T, n *testenv.NSQD, topic, channel string) chanState {
	t.Helper()
	var s chanState
	testenv.WaitFor(t, waitLong, fmt.Sprintf("channel %s/%s drained on nsqd %s", topic, channel, n.TCPAddr), func() bool {
		s = channelState(t, n, topic, channel)
		return s.found && s.depth == 0 && s.inFlight == 0 && s.deferred == 0
	})
	return s
}

func waitClients(t *testing.T, n *testenv.NSQD, topic, channel string, clients int) {
	t.Helper()
	testenv.WaitFor(t, waitLong, fmt.Sprintf("%d client(s) on %s/%s at nsqd %s", clients, topic, channel, n.TCPAddr), func() bool {
		return channelState(t, n, topic, channel).clients == clients
	})
}

// metricValue sums the counter name over the series whose labels include want.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// deadLetters consumes "<topic>.dead" with a plain go-nsq consumer connected
// straight to nsqd's TCP port.
func deadLetters(t *testing.T, nsqdTCP, topic string) <-chan deadletter.Letter {
	t.Helper()
	out := make(chan deadletter.Letter, 100)
	c, err := nsq.NewConsumer(pubsub.DeadLetterTopic(topic), "inspect", nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	c.SetLogger(nil, nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		dl, err := deadletter.Decode(m.Body)
		if err != nil {
			dl.Reason = fmt.Sprintf("TEST: not a dead letter (%v): %q", err, m.Body[:min(len(m.Body), 100)])
		}
		// Decode's Original aliases the body, which go-nsq may reuse.
		dl.Original = bytes.Clone(dl.Original)
		out <- dl
		return nil
	}))
	if err := c.ConnectToNSQD(nsqdTCP); err != nil {
		t.Fatalf("connecting the dead-letter inspector to %s: %v", nsqdTCP, err)
	}
	t.Cleanup(func() {
		c.Stop()
		select {
		case <-c.StopChan:
		case <-time.After(waitLong):
			t.Errorf("dead-letter inspector did not stop")
		}
	})
	return out
}

func receiveDeadLetter(t *testing.T, ch <-chan deadletter.Letter) deadletter.Letter {
	t.Helper()
	select {
	case dl := <-ch:
		return dl
	case <-time.After(waitLong):
		t.Fatalf("no dead letter within %s", waitLong)
		return deadletter.Letter{}
	}
}

// createTopic creates topic on nsqd (POST /topic/create).
//
// Workaround for a bug in Consumer.createOn (consumer.go): for a durable
// channel it POSTs only /channel/create, which nsqd answers with 404
// TOPIC_NOT_FOUND while the topic does not exist yet, so a consumer started
// before anything was published neither creates its channel nor connects
// until nsqlookupd reports the topic. TestConsumerStartCreatesTopicAndChannel
// covers that case; the other tests create the topic first, as a running
// producer would have.
func createTopic(t *testing.T, n *testenv.NSQD, topic string) {
	t.Helper()
	code, body, err := testenv.HTTPPost("http://"+n.HTTPAddr+"/topic/create?topic="+topic, "text/plain", nil)
	if err != nil || code != 200 {
		t.Fatalf("nsqd %s /topic/create?topic=%s: %d %q %v", n.HTTPAddr, topic, code, body, err)
	}
}

// ---------------------------------------------------------------- tests

// TestPubSub runs the scenarios that do not disturb the infrastructure on one
// shared stack, each on its own topic.
func TestPubSub(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t)
	e := newEnv(t, stack, 1)
	nsqd := stack.NSQD

	t.Run("ProducerToConsumerNoneLost", func(t *testing.T) {
		const topic, channel, stream, n = "ps-all", "all", "stream-all", 2000
		m := metrics.New("pubsubtest", "")
		p := e.producer(t, m)
		got := newSeqSet()
		var bad errList
		createTopic(t, nsqd, topic)
		c := e.startConsumer(t, pubsub.HandlerFunc(func(_ context.Context, msg *pubsub.Message) error {
			if err := checkEnvelope(msg, stream); err != nil {
				bad.add(err)
			}
			got.add(msg.Envelope.Seq)
			return nil
		}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(200), Concurrency: 8, Metrics: m})
		if c.Channel() != channel {
			t.Fatalf("Channel() = %q", c.Channel())
		}
		testenv.WaitFor(t, waitLong, "consumer connected", func() bool { return c.Ready() == nil })

		// Four concurrent publishers, one message per PUB.
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		var wg sync.WaitGroup
		var pubErrs errList
		for w := range 4 {
			wg.Go(func() {
				for seq := uint64(w + 1); seq <= n; seq += 4 {
					if err := p.Publish(ctx, topic, envBody(t, stream, seq)); err != nil {
						pubErrs.add(fmt.Errorf("publish %d: %w", seq, err))
						return
					}
				}
			})
		}
		wg.Wait()
		pubErrs.check(t)
		if t.Failed() {
			t.FailNow()
		}
		if p.Addr() != nsqd.TCPAddr {
			t.Errorf("producer Addr() = %q, want %q", p.Addr(), nsqd.TCPAddr)
		}
		if err := p.Ready(); err != nil {
			t.Errorf("producer Ready: %v", err)
		}
		got.waitAll(t, n, "consumer")
		bad.check(t)
		st := waitDrained(t, nsqd, topic, channel)
		if st.messages != n || st.requeues != 0 || st.tmouts != 0 {
			t.Errorf("nsqd channel: %d messages (want %d), %d requeued, %d timed out", st.messages, n, st.requeues, st.tmouts)
		}
		if v := metricValue(t, m.Registry, "svckit_messages_published_total", map[string]string{"topic": topic}); v != n {
			t.Errorf("published metric = %v, want %d", v, n)
		}
		if v := metricValue(t, m.Registry, "svckit_publish_commands_total", map[string]string{"topic": topic}); v != n {
			t.Errorf("publish commands metric = %v, want %d (one PUB per Publish)", v, n)
		}
		testenv.WaitFor(t, waitLong, "consumed metric", func() bool {
			return metricValue(t, m.Registry, "svckit_messages_consumed_total", map[string]string{"topic": topic}) >= n
		})
	})

	t.Run("BatcherPublishAsync", func(t *testing.T) {
		const topic, stream, n = "ps-batch", "stream-batch", 10000
		m := metrics.New("pubsubtest", "")
		p := e.producer(t, m)
		b := p.NewBatcher(topic, pubsub.BatcherOptions{})
		results := make(chan error, n)
		for seq := uint64(1); seq <= n; seq++ {
			b.PublishAsync(context.Background(), envBody(t, stream, seq), func(err error) { results <- err })
		}
		timeout := time.After(waitLong)
		var failed int
		for i := range n {
			select {
			case err := <-results:
				if err != nil {
					failed++
					if failed <= 5 {
						t.Errorf("done callback: %v", err)
					}
				}
			case <-timeout:
				t.Fatalf("only %d of %d done callbacks within %s", i, n, waitLong)
			}
		}
		if failed > 0 {
			t.Fatalf("%d of %d publishes failed", failed, n)
		}
		closeBatcher(t, b)
		// No callback ran twice.
		select {
		case err := <-results:
			t.Fatalf("extra done callback: %v", err)
		default:
		}
		var closedErr error
		b.PublishAsync(context.Background(), envBody(t, stream, n+1), func(err error) { closedErr = err })
		if !errors.Is(closedErr, pubsub.ErrBatcherClosed) {
			t.Errorf("PublishAsync after Close: %v, want ErrBatcherClosed", closedErr)
		}
		st, err := nsqd.Stats()
		if err != nil {
			t.Fatal(err)
		}
		depth, msgs, ok := st.TopicDepth(topic)
		if !ok || msgs != n || depth != n {
			t.Errorf("nsqd topic %s: ok %v, %d messages, depth %d; want %d", topic, ok, msgs, depth, n)
		}
		if v := metricValue(t, m.Registry, "svckit_publish_errors_total", nil); v != 0 {
			t.Errorf("publish errors = %v", v)
		}
		if v := metricValue(t, m.Registry, "svckit_messages_published_total", map[string]string{"topic": topic}); v != n {
			t.Errorf("published metric = %v, want %d", v, n)
		}
		// 10000 messages queued at once go in MPUBs of up to 200.
		if v := metricValue(t, m.Registry, "svckit_publish_commands_total", map[string]string{"topic": topic}); v < n/200 || v >= n {
			t.Errorf("publish commands metric = %v, want between %d and %d (batched)", v, n/200, n-1)
		}
	})

	t.Run("BatcherPublishEnvelopeAsync", func(t *testing.T) {
		// Envelopes encoded into the batcher's reused buffer arrive intact
		// and in their own bodies; one that cannot be encoded fails alone.
		const topic, channel, stream, n = "ps-batch-env", "all", "stream-batch-env", 5000
		p := e.producer(t, nil)
		got, bad := collectEnvelopes(t, e, nsqd, topic, channel, stream)
		b := p.NewBatcher(topic, pubsub.BatcherOptions{MaxBatch: 50})
		results := make(chan error, n+1)
		for seq := uint64(1); seq <= n; seq++ {
			b.PublishEnvelopeAsync(context.Background(), envelope.Envelope{ID: ids.Next(), Stream: stream, Seq: seq, Created: time.Now(),
				ContentType: "text/plain", CorrelationID: fmt.Sprint("corr-", seq), Payload: payloadOf(seq)}, func(err error) { results <- err })
			if seq == n/2 {
				b.PublishEnvelopeAsync(context.Background(), envelope.Envelope{Stream: strings.Repeat("s", 300), Seq: 1}, func(err error) {
					if err == nil {
						err = errors.New("an envelope with a 300-byte stream id was published")
					} else {
						err = nil
					}
					results <- err
				})
			}
		}
		awaitDone(t, results, n+1)
		got.waitAll(t, n, "consumer")
		bad.check(t)
		closeBatcher(t, b)
	})

	t.Run("BatcherPublishEnvelopesAsync", func(t *testing.T) {
		// Groups of envelopes, some larger than MaxBatch (split into
		// consecutive MPUBs), interleaved with single envelopes: every
		// message arrives once, and each group's done is called once, after
		// all of its MPUBs. A group with an unencodable envelope fails alone.
		const topic, channel, stream, n = "ps-batch-envs", "all", "stream-batch-envs", 3000
		m := metrics.New("pubsubtest", "")
		p := e.producer(t, m)
		got, bad := collectEnvelopes(t, e, nsqd, topic, channel, stream)
		b := p.NewBatcher(topic, pubsub.BatcherOptions{MaxBatch: 50})
		type answer struct {
			group int
			err   error
		}
		answers := make(chan answer, n+2)
		env := func(seq uint64) envelope.Envelope {
			return envelope.Envelope{Stream: stream, Seq: seq, Created: time.Now(), ContentType: "text/plain",
				CorrelationID: fmt.Sprint("corr-", seq), Payload: payloadOf(seq)}
		}
		sizes := []int{1, 7, 50, 120, 33, 51}
		calls := 0
		for seq := uint64(1); seq <= n; calls++ {
			group := calls
			if calls%3 == 2 { // every third call a single envelope
				b.PublishEnvelopeAsync(context.Background(), env(seq), func(err error) { answers <- answer{group, err} })
				seq++
				continue
			}
			var envs []envelope.Envelope
			for range sizes[calls%len(sizes)] {
				if seq <= n {
					envs = append(envs, env(seq))
					seq++
				}
			}
			b.PublishEnvelopesAsync(context.Background(), envs, func(err error) { answers <- answer{group, err} })
			if calls == 10 {
				broken := []envelope.Envelope{env(n + 1), {Stream: strings.Repeat("s", 300), Seq: n + 2}}
				b.PublishEnvelopesAsync(context.Background(), broken, func(err error) {
					if !errors.Is(err, envelope.ErrFieldTooLong) {
						err = fmt.Errorf("a group with a 300-byte stream id: done(%v), want ErrFieldTooLong", err)
					} else {
						err = nil
					}
					answers <- answer{-1, err}
				})
			}
		}
		b.PublishEnvelopesAsync(context.Background(), nil, func(err error) { answers <- answer{calls, err} })
		calls++
		seen := map[int]bool{}
		for i := 0; i <= calls; i++ { // calls, plus the broken group
			select {
			case a := <-answers:
				if a.err != nil {
					t.Fatalf("group %d: done: %v", a.group, a.err)
				}
				if seen[a.group] {
					t.Fatalf("group %d: done called twice", a.group)
				}
				seen[a.group] = true
			case <-time.After(waitLong):
				t.Fatalf("only %d of %d done callbacks", i, calls+1)
			}
		}
		got.waitAll(t, n, "consumer")
		bad.check(t)
		closeBatcher(t, b)
		select {
		case a := <-answers:
			t.Fatalf("extra done callback: group %d, %v", a.group, a.err)
		default:
		}
		if got.has(n+1) || got.has(n+2) {
			t.Errorf("a message of the group that failed to encode was published")
		}
		st, err := nsqd.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if _, msgs, ok := st.TopicDepth(topic); !ok || msgs != n {
			t.Errorf("nsqd topic %s: ok %v, %d messages; want %d", topic, ok, msgs, n)
		}
		if v := metricValue(t, m.Registry, "svckit_publish_commands_total", map[string]string{"topic": topic}); v < n/50 || v >= n/2 {
			t.Errorf("publish commands metric = %v, want between %d and %d (batched by up to 50)", v, n/50, n/2-1)
		}
	})

	t.Run("BatcherSplitsAtMaxBody", func(t *testing.T) {
		// 200 envelopes of 40 KB are 8 MB, past nsqd's default
		// --max-body-size (5 MiB), which refuses such an MPUB whole
		// (E_BAD_BODY, a permanent error for every message in it): the
		// Batcher sends them as several MPUBs, single and grouped alike.
		const topic, channel, stream, n = "ps-batch-big", "all", "stream-batch-big", 600
		m := metrics.New("pubsubtest", "")
		p := e.producer(t, m)
		got := newSeqSet()
		var bad errList
		payload := func(seq uint64) []byte { return bytes.Repeat([]byte{byte(seq)}, 40<<10) }
		createTopic(t, nsqd, topic)
		e.startConsumer(t, pubsub.HandlerFunc(func(_ context.Context, msg *pubsub.Message) error {
			if !bytes.Equal(msg.Envelope.Payload, payload(msg.Envelope.Seq)) {
				bad.add(fmt.Errorf("seq %d: payload of %d bytes differs", msg.Envelope.Seq, len(msg.Envelope.Payload)))
			}
			got.add(msg.Envelope.Seq)
			return nil
		}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(200)})
		b := p.NewBatcher(topic, pubsub.BatcherOptions{})
		env := func(seq uint64) envelope.Envelope {
			return envelope.Envelope{Stream: stream, Seq: seq, Payload: payload(seq)}
		}
		results := make(chan error, n)
		for seq := uint64(1); seq <= n/2; seq++ {
			b.PublishEnvelopeAsync(context.Background(), env(seq), func(err error) { results <- err })
		}
		var group []envelope.Envelope
		for seq := uint64(n/2 + 1); seq <= n; seq++ {
			group = append(group, env(seq))
		}
		b.PublishEnvelopesAsync(context.Background(), group, func(err error) { results <- err })
		awaitDone(t, results, n/2+1)
		got.waitAll(t, n, "consumer")
		bad.check(t)
		closeBatcher(t, b)
		// 24 MB in MPUBs of at most 5 MiB.
		if v := metricValue(t, m.Registry, "svckit_publish_commands_total", map[string]string{"topic": topic}); v < 5 {
			t.Errorf("publish commands metric = %v, want at least 5", v)
		}
	})

	t.Run("SharedChannelSplits", func(t *testing.T) {
		const topic, channel, stream, n = "ps-shared", "workers", "stream-shared", 1000
		p := e.producer(t, nil)
		union := newSeqSet()
		var count [2]atomic.Int64
		createTopic(t, nsqd, topic)
		for i := range 2 {
			e.startConsumer(t, pubsub.HandlerFunc(func(_ context.Context, msg *pubsub.Message) error {
				count[i].Add(1)
				union.add(msg.Envelope.Seq)
				return nil
			}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(20), Concurrency: 2})
		}
		waitClients(t, nsqd, topic, channel, 2)
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		for start := uint64(1); start <= n; start += 100 {
			var bodies [][]byte
			for seq := start; seq < start+100; seq++ {
				bodies = append(bodies, envBody(t, stream, seq))
			}
			if err := p.MultiPublish(ctx, topic, bodies); err != nil {
				t.Fatal(err)
			}
		}
		union.waitAll(t, n, "two consumers together")
		waitDrained(t, nsqd, topic, channel)
		c0, c1 := count[0].Load(), count[1].Load()
		t.Logf("split: %d + %d", c0, c1)
		if c0 == 0 || c1 == 0 {
			t.Fatalf("one consumer got nothing: %d and %d", c0, c1)
		}
		if c0+c1 < n {
			t.Fatalf("%d + %d < %d", c0, c1, n)
		}
	})

	t.Run("EphemeralChannel", func(t *testing.T) {
		const topic, stream, n = "ps-eph", "stream-eph", 300
		p := e.producer(t, nil)
		got := newSeqSet()
		c, err := pubsub.NewConsumer(e.lookupds, e.nsqds, pubsub.HandlerFunc(func(_ context.Context, msg *pubsub.Message) error {
			got.add(msg.Envelope.Seq)
			return nil
		}), pubsub.ConsumerOptions{Topic: topic, Channel: "eph", Ephemeral: true, NSQ: nsqConfig(50), Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if c.Channel() != "eph#ephemeral" {
			t.Fatalf("Channel() = %q", c.Channel())
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		stopped := false
		t.Cleanup(func() {
			if !stopped {
				_ = c.Stop(context.Background())
			}
		})
		waitClients(t, nsqd, topic, c.Channel(), 1)
		for seq := uint64(1); seq <= n; seq++ {
			if err := p.Publish(ctx, topic, envBody(t, stream, seq)); err != nil {
				t.Fatal(err)
			}
		}
		got.waitAll(t, n, "ephemeral consumer")
		waitDrained(t, nsqd, topic, c.Channel())
		stopped = true
		if err := c.Stop(ctx); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		// nsqd deletes an ephemeral channel when its last client leaves.
		testenv.WaitFor(t, waitLong, "the ephemeral channel to disappear from nsqd", func() bool {
			st, err := nsqd.Stats()
			if err != nil {
				return false
			}
			for _, tp := range st.Topics {
				if tp.TopicName == topic {
					for _, ch := range tp.Channels {
						if ch.ChannelName == c.Channel() {
							return false
						}
					}
					return true
				}
			}
			return false
		})
	})

	t.Run("HandlerErrorRequeues", func(t *testing.T) {
		const topic, channel = "ps-requeue", "c"
		m := metrics.New("pubsubtest", "")
		p := e.producer(t, m)
		attempts := make(chan uint16, 10)
		createTopic(t, nsqd, topic)
		e.startConsumer(t, pubsub.HandlerFunc(func(_ context.Context, msg *pubsub.Message) error {
			attempts <- msg.Attempts()
			if msg.Attempts() == 1 {
				return errors.New("transient failure")
			}
			return nil
		}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(10),
			Retry: pubsub.RetryOptions{Delay: 20 * time.Millisecond, MaxDelay: time.Second}, DeadLetters: sinkOf(t, p, nil, 0, m), Metrics: m})
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := p.Publish(ctx, topic, envBody(t, "s", 1)); err != nil {
			t.Fatal(err)
		}
		for want := uint16(1); want <= 2; want++ {
			select {
			case a := <-attempts:
				if a != want {
					t.Fatalf("delivery with Attempts() = %d, want %d", a, want)
				}
			case <-time.After(waitLong):
				t.Fatalf("no delivery #%d within %s", want, waitLong)
			}
		}
		st := waitDrained(t, nsqd, topic, channel)
		if st.requeues != 1 {
			t.Errorf("nsqd requeue count = %d, want 1", st.requeues)
		}
		lbl := map[string]string{"topic": topic}
		for name, want := range map[string]float64{
			"svckit_messages_requeued_total":      1,
			"svckit_messages_failed_total":        1,
			"svckit_messages_consumed_total":      1,
			"svckit_messages_dead_lettered_total": 0,
		} {
			if got := metricValue(t, m.Registry, name, lbl); got != want {
				t.Errorf("%s = %v, want %v", name, got, want)
			}
		}
		select {
		case a := <-attempts:
			t.Fatalf("unexpected delivery (attempt %d) after success", a)
		default:
		}
	})

	t.Run("UndecodableBodyDeadLettered", func(t *testing.T) {
		const topic, channel = "ps-garbage", "c"
		m := metrics.New("pubsubtest", "")
		p := e.producer(t, m)
		dead := deadLetters(t, nsqd.TCPAddr, topic)
		var calls atomic.Int64
		createTopic(t, nsqd, topic)
		e.startConsumer(t, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error {
			calls.Add(1)
			return nil
		}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(10), DeadLetters: sinkOf(t, p, nil, 0, m), Metrics: m})
		nsqd.Publish(t, topic, []byte("garbage"))
		dl := receiveDeadLetter(t, dead)
		if !strings.HasPrefix(dl.Reason, "decode") {
			t.Errorf("dead letter reason = %q, want decode…", dl.Reason)
		}
		if string(dl.Original) != "garbage" || dl.Topic != topic || dl.Channel != channel || dl.Attempts != 1 || dl.NSQID == "" || dl.Time.IsZero() {
			t.Errorf("dead letter = %+v", dl)
		}
		st := waitDrained(t, nsqd, topic, channel)
		if st.requeues != 0 || st.messages != 1 {
			t.Errorf("nsqd channel: %d messages, %d requeues; want 1, 0", st.messages, st.requeues)
		}
		if n := calls.Load(); n != 0 {
			t.Errorf("handler called %d times for an undecodable body", n)
		}
		if v := metricValue(t, m.Registry, "svckit_messages_dead_lettered_total", map[string]string{"topic": topic, "reason": "decode"}); v != 1 {
			t.Errorf("dead-lettered{reason=decode} = %v", v)
		}
	})

	t.Run("RejectDeadLettersAtOnce", func(t *testing.T) {
		const topic, channel = "ps-reject", "c"
		m := metrics.New("pubsubtest", "")
		p := e.producer(t, m)
		dead := deadLetters(t, nsqd.TCPAddr, topic)
		var calls atomic.Int64
		createTopic(t, nsqd, topic)
		e.startConsumer(t, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error {
			calls.Add(1)
			return pubsub.Reject(errors.New("unknown sensor kind"))
		}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(10), Retry: pubsub.RetryOptions{MaxAttempts: 5,
			Delay: 10 * time.Millisecond}, DeadLetters: sinkOf(t, p, nil, 0, m), Metrics: m})
		body := envBody(t, "s", 7)
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := p.Publish(ctx, topic, body); err != nil {
			t.Fatal(err)
		}
		dl := receiveDeadLetter(t, dead)
		if !strings.HasPrefix(dl.Reason, "rejected") || !strings.Contains(dl.Reason, "unknown sensor kind") {
			t.Errorf("reason = %q", dl.Reason)
		}
		if dl.Attempts != 1 || !bytes.Equal(dl.Original, body) || dl.Topic != topic {
			t.Errorf("dead letter = %+v", dl)
		}
		st := waitDrained(t, nsqd, topic, channel)
		if st.requeues != 0 {
			t.Errorf("a rejected message was requeued %d times", st.requeues)
		}
		if n := calls.Load(); n != 1 {
			t.Errorf("handler called %d times, want 1", n)
		}
		if v := metricValue(t, m.Registry, "svckit_messages_dead_lettered_total", map[string]string{"topic": topic, "reason": "rejected"}); v != 1 {
			t.Errorf("dead-lettered{reason=rejected} = %v", v)
		}
	})

	t.Run("MaxAttemptsDeadLetters", func(t *testing.T) {
		const topic, channel, maxAttempts = "ps-exhaust", "c", 3
		m := metrics.New("pubsubtest", "")
		p := e.producer(t, m)
		dead := deadLetters(t, nsqd.TCPAddr, topic)
		var calls atomic.Int64
		createTopic(t, nsqd, topic)
		e.startConsumer(t, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error {
			calls.Add(1)
			return errors.New("boom")
		}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(10), Retry: pubsub.RetryOptions{MaxAttempts: maxAttempts,
			Delay: 10 * time.Millisecond, MaxDelay: 100 * time.Millisecond}, DeadLetters: sinkOf(t, p, nil, 0, m), Metrics: m})
		body := envBody(t, "s", 9)
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := p.Publish(ctx, topic, body); err != nil {
			t.Fatal(err)
		}
		dl := receiveDeadLetter(t, dead)
		if want := fmt.Sprintf("handler failed %d times: boom", maxAttempts); dl.Reason != want {
			t.Errorf("reason = %q, want %q", dl.Reason, want)
		}
		if dl.Attempts != maxAttempts || !bytes.Equal(dl.Original, body) {
			t.Errorf("dead letter = %+v", dl)
		}
		st := waitDrained(t, nsqd, topic, channel)
		if st.requeues != maxAttempts-1 {
			t.Errorf("nsqd requeues = %d, want %d", st.requeues, maxAttempts-1)
		}
		if n := calls.Load(); n != maxAttempts {
			t.Errorf("handler called %d times, want %d", n, maxAttempts)
		}
		if v := metricValue(t, m.Registry, "svckit_messages_dead_lettered_total", map[string]string{"topic": topic, "reason": "handler"}); v != 1 {
			t.Errorf("dead-lettered{reason=handler} = %v", v)
		}
	})

	t.Run("GracefulStopWaitsForHandler", func(t *testing.T) {
		const topic, channel = "ps-stop", "c"
		p := e.producer(t, nil)
		entered := make(chan struct{}, 1)
		release := make(chan struct{})
		ctxErrAtRelease := make(chan error, 1)
		createTopic(t, nsqd, topic)
		c, err := pubsub.NewConsumer(e.lookupds, e.nsqds, pubsub.HandlerFunc(func(ctx context.Context, _ *pubsub.Message) error {
			entered <- struct{}{}
			<-release
			ctxErrAtRelease <- ctx.Err()
			return nil
		}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(1), Concurrency: 1, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := c.Start(ctx); err != nil {
			t.Fatal(err)
		}
		released := false
		t.Cleanup(func() {
			if !released {
				close(release)
			}
			_ = c.Stop(context.Background())
		})
		if err := p.Publish(ctx, topic, envBody(t, "s", 1)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-entered:
		case <-time.After(waitLong):
			t.Fatal("handler not called")
		}
		stopErr := make(chan error, 1)
		go func() { stopErr <- c.Stop(ctx) }()
		// Stop must wait for the handler: it has not returned while the
		// handler is blocked (observed over a short window).
		select {
		case err := <-stopErr:
			t.Fatalf("Stop returned (%v) while a handler was still running", err)
		case <-time.After(500 * time.Millisecond):
		}
		if st := channelState(t, nsqd, topic, channel); st.inFlight != 1 {
			t.Fatalf("nsqd in-flight = %d during Stop, want 1", st.inFlight)
		}
		released = true
		close(release)
		select {
		case err := <-stopErr:
			if err != nil {
				t.Fatalf("Stop: %v", err)
			}
		case <-time.After(waitLong):
			t.Fatal("Stop did not return after the handler finished")
		}
		if err := <-ctxErrAtRelease; err != nil {
			t.Errorf("handler context cancelled while Stop was waiting for it: %v", err)
		}
		st := waitDrained(t, nsqd, topic, channel)
		if st.messages != 1 || st.requeues != 0 || st.tmouts != 0 {
			t.Errorf("nsqd channel after Stop: %+v; want the message finished (no requeue/timeout)", st)
		}
		waitClients(t, nsqd, topic, channel, 0)
	})

	t.Run("AsyncCompletion", func(t *testing.T) {
		const topic, channel = "ps-async", "c"
		m := metrics.New("pubsubtest", "")
		p := e.producer(t, m)
		type pending struct {
			attempts uint16
			done     func(error)
		}
		pend := make(chan pending, 10)
		var returned atomic.Int64
		createTopic(t, nsqd, topic)
		e.startConsumer(t, pubsub.HandlerFunc(func(_ context.Context, msg *pubsub.Message) error {
			done := msg.Async()
			pend <- pending{msg.Attempts(), done}
			returned.Add(1)
			return nil
		}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(10),
			Retry: pubsub.RetryOptions{Delay: 10 * time.Millisecond}, Metrics: m})
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := p.Publish(ctx, topic, envBody(t, "s", 1)); err != nil {
			t.Fatal(err)
		}
		next := func() pending {
			t.Helper()
			select {
			case pd := <-pend:
				return pd
			case <-time.After(waitLong):
				t.Fatal("no delivery")
				return pending{}
			}
		}
		first := next()
		if first.attempts != 1 {
			t.Fatalf("first delivery attempts = %d", first.attempts)
		}
		testenv.WaitFor(t, waitLong, "handler to return", func() bool { return returned.Load() == 1 })
		// The handler returned but the message is still in flight at nsqd.
		if st := channelState(t, nsqd, topic, channel); st.inFlight != 1 || st.depth != 0 {
			t.Fatalf("after the async handler returned: %+v, want 1 in flight", st)
		}
		// Completed with an error from another goroutine: requeued, redelivered.
		go first.done(errors.New("downstream publish failed"))
		second := next()
		if second.attempts != 2 {
			t.Fatalf("redelivery attempts = %d, want 2", second.attempts)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			second.done(nil)
			second.done(errors.New("ignored: second call")) // exactly once wins
		}()
		<-done
		st := waitDrained(t, nsqd, topic, channel)
		if st.requeues != 1 || st.messages != 1 {
			t.Errorf("nsqd channel: %+v, want 1 message, 1 requeue", st)
		}
		lbl := map[string]string{"topic": topic}
		if v := metricValue(t, m.Registry, "svckit_messages_consumed_total", lbl); v != 1 {
			t.Errorf("consumed = %v, want 1", v)
		}
		if v := metricValue(t, m.Registry, "svckit_messages_requeued_total", lbl); v != 1 {
			t.Errorf("requeued = %v, want 1", v)
		}
		select {
		case pd := <-pend:
			t.Fatalf("unexpected delivery (attempt %d) after async success", pd.attempts)
		default:
		}
	})
}

// The consumer follows what nsqlookupd knows: an nsqd that appears later
// (only in lookupd, then also in Consul) is consumed from without a restart.
func TestConsumerFollowsLookupd(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t)
	e := newEnv(t, stack, 1)
	const topic, channel, stream = "follow", "c", "stream-follow"
	got := newSeqSet()
	var mu sync.Mutex
	from := map[uint64]string{}
	createTopic(t, stack.NSQD, topic)
	e.startConsumer(t, pubsub.HandlerFunc(func(_ context.Context, msg *pubsub.Message) error {
		mu.Lock()
		from[msg.Envelope.Seq] = msg.NSQ.NSQDAddress
		mu.Unlock()
		got.add(msg.Envelope.Seq)
		return nil
	}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(10)})
	waitClients(t, stack.NSQD, topic, channel, 1)

	// An nsqd that only nsqlookupd knows about.
	n2 := testenv.StartNSQD(t, testenv.NSQDOptions{LookupdTCPAddrs: []string{stack.Lookupd.TCPAddr}})
	stack.Lookupd.WaitProducer(t, n2.TCPAddr)
	n2.Publish(t, topic, envBody(t, stream, 1))
	got.waitAll(t, 1, "message published on an nsqd known only to nsqlookupd")

	// An nsqd registered with nsqlookupd and in Consul.
	n3 := testenv.StartNSQD(t, testenv.NSQDOptions{LookupdTCPAddrs: []string{stack.Lookupd.TCPAddr}})
	testenv.RegisterNSQD(t, stack.Consul, n3)
	testenv.WaitPassing(t, stack.Consul, "nsqd", 2)
	n3.Publish(t, topic, envBody(t, stream, 2))
	got.waitAll(t, 2, "message published on an nsqd added to lookupd and Consul")

	mu.Lock()
	defer mu.Unlock()
	if from[1] != n2.TCPAddr || from[2] != n3.TCPAddr {
		t.Errorf("messages came from %v; want 1 from %s, 2 from %s", from, n2.TCPAddr, n3.TCPAddr)
	}
	waitDrained(t, n2, topic, channel)
	waitDrained(t, n3, topic, channel)
}

// With two nsqds in Consul, stopping the one the producer uses does not stop
// publishing: it moves to the other.
func TestProducerFailover(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t)
	n2 := testenv.StartNSQD(t, testenv.NSQDOptions{LookupdTCPAddrs: []string{stack.Lookupd.TCPAddr}})
	testenv.RegisterNSQD(t, stack.Consul, n2)
	testenv.WaitPassing(t, stack.Consul, "nsqd", 2)
	stack.Lookupd.WaitProducer(t, n2.TCPAddr)
	e := newEnv(t, stack, 2)

	const topic, channel, stream = "failover", "c", "stream-failover"
	m := metrics.New("pubsubtest", "")
	p := e.producer(t, m)
	createTopic(t, stack.NSQD, topic)
	createTopic(t, n2, topic)
	got := newSeqSet()
	e.startConsumer(t, pubsub.HandlerFunc(func(_ context.Context, msg *pubsub.Message) error {
		got.add(msg.Envelope.Seq)
		return nil
	}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(50), DeadLetters: sinkOf(t, p, nil, 0, nil)})
	waitClients(t, stack.NSQD, topic, channel, 1)
	waitClients(t, n2, topic, channel, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 2*waitLong)
	defer cancel()
	const before, after = 50, 150
	for seq := uint64(1); seq <= before; seq++ {
		if err := p.Publish(ctx, topic, envBody(t, stream, seq)); err != nil {
			t.Fatal(err)
		}
	}
	got.waitAll(t, before, "messages before the failover")
	used := p.Addr()
	nsqds := map[string]*testenv.NSQD{stack.NSQD.TCPAddr: stack.NSQD, n2.TCPAddr: n2}
	victim, ok := nsqds[used]
	if !ok {
		t.Fatalf("producer Addr() = %q, not one of %v", used, slices.Collect(func(yield func(string) bool) {
			for a := range nsqds {
				if !yield(a) {
					return
				}
			}
		}))
	}
	delete(nsqds, used)
	var other *testenv.NSQD
	for _, n := range nsqds {
		other = n
	}
	t.Logf("producer used %s; stopping it, expecting %s", used, other.TCPAddr)
	if err := victim.Stop(); err != nil {
		t.Logf("nsqd stop: %v", err)
	}

	start := time.Now()
	for seq := uint64(before + 1); seq <= after; seq++ {
		pctx, pcancel := context.WithTimeout(ctx, 30*time.Second)
		err := p.Publish(pctx, topic, envBody(t, stream, seq))
		pcancel()
		if err != nil {
			t.Fatalf("publish %d after stopping %s: %v", seq, used, err)
		}
	}
	t.Logf("published %d messages after the failover in %s", after-before, time.Since(start).Round(time.Millisecond))
	if p.Addr() != other.TCPAddr {
		t.Fatalf("producer Addr() = %q after failover, want %q", p.Addr(), other.TCPAddr)
	}
	got.waitAll(t, after, "messages before and after the failover")
	if v := metricValue(t, m.Registry, "svckit_messages_published_total", map[string]string{"topic": topic}); v != after {
		t.Errorf("published metric = %v, want %d", v, after)
	}
	_, msgs, _ := mustStats(t, other).TopicDepth(topic)
	if msgs < after-before {
		t.Errorf("nsqd %s got %d messages of topic %s, want >= %d", other.TCPAddr, msgs, topic, after-before)
	}
}

func mustStats(t *testing.T, n *testenv.NSQD) *testenv.NSQDStats {
	t.Helper()
	st, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A durable consumer started before its topic exists anywhere creates the
// topic and its channel on every nsqd in Consul and connects at once, so the
// channel collects every message published from then on, even while other
// channels of the topic are being served.
func TestConsumerStartCreatesTopicAndChannel(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t)
	e := newEnv(t, stack, 1)
	const topic, channel = "fresh", "durable"
	c := e.startConsumer(t, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error { return nil }),
		pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(10)})
	// LookupdPollInterval is 1s but nsqlookupd does not know the topic: only
	// the consumer's own preparation can create the channel and connect.
	testenv.WaitFor(t, 20*time.Second, "the durable channel to exist with the consumer connected", func() bool {
		st := channelState(t, stack.NSQD, topic, channel)
		return st.found && st.clients == 1
	})
	if err := c.Ready(); err != nil {
		t.Fatalf("Ready: %v", err)
	}
}

// TestConsumerNamesNSQDSlowFlush: IDENTIFY carries whole milliseconds, so
// a consumer asking for a flush below 1ms (svckit's default, 100µs) gets
// nsqd's own --output-buffer-timeout (250ms in stock nsqd). Against an
// nsqd flushing later than asked it still consumes, and its connection
// says which flag makes nsqd flush in time; against one that flushes in
// time it says nothing. Both are decided at IDENTIFY, before any message.
func TestConsumerNamesNSQDSlowFlush(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, nsqdFlush string
		warns           bool
	}{{"stock", "250ms", true}, {"in time", "100us", false}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			stack := testenv.StartStackWith(t, testenv.NSQDOptions{ExtraArgs: []string{"--output-buffer-timeout=" + c.nsqdFlush}})
			e := newEnv(t, stack, 1)
			cfg := nsqConfig(10)
			cfg.OutputBufferSize = 16384
			cfg.OutputBufferTimeout = 100 * time.Microsecond
			var logs testenv.SyncBuffer
			got := make(chan struct{}, 1)
			cons := e.startConsumer(t, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error {
				select {
				case got <- struct{}{}:
				default:
				}
				return nil
			}), pubsub.ConsumerOptions{Topic: "flush", Channel: "c", NSQ: cfg, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			testenv.WaitFor(t, 20*time.Second, "the consumer to connect", func() bool { return cons.Ready() == nil })
			ctx, cancel := context.WithTimeout(context.Background(), waitLong)
			defer cancel()
			if err := e.producer(t, nil).Publish(ctx, "flush", envBody(t, "flush", 1)); err != nil {
				t.Fatalf("publish: %v", err)
			}
			select {
			case <-got:
			case <-ctx.Done():
				t.Fatal("no message reached the consumer")
			}
			// The message came over a connection past IDENTIFY.
			const fix = "start nsqd with --output-buffer-timeout=100us"
			if named := strings.Contains(logs.String(), fix); named != c.warns {
				t.Fatalf("nsqd flushing after %s named: %v, want %v; log:\n%s", c.nsqdFlush, named, c.warns, logs.String())
			}
		})
	}
}

// TestConsumerNamesNSQDOutputBufferFloor: a stock nsqd refuses output buffer
// timeouts below its --min-output-buffer-timeout (25ms); a consumer asking
// for 1ms must say which flag to change instead of only failing to connect.
func TestConsumerNamesNSQDOutputBufferFloor(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStackWith(t, testenv.NSQDOptions{ExtraArgs: []string{"--min-output-buffer-timeout=25ms"}})
	e := newEnv(t, stack, 1)
	cfg := nsqConfig(10)
	cfg.OutputBufferSize = 16384
	cfg.OutputBufferTimeout = time.Millisecond
	c := e.startConsumer(t, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error { return nil }),
		pubsub.ConsumerOptions{Topic: "floor", Channel: "c", NSQ: cfg})
	var err error
	testenv.WaitFor(t, 20*time.Second, "Ready to name nsqd's --min-output-buffer-timeout", func() bool {
		err = c.Ready()
		return err != nil && strings.Contains(err.Error(), "--min-output-buffer-timeout is 25ms")
	})
	t.Logf("Ready: %v", err)

	// A producer given the same configuration is not refused: output
	// buffering concerns consumers only.
	p := pubsub.NewProducer(e.nsqds, pubsub.ProducerOptions{NSQ: cfg, Logger: testLogger(t)})
	t.Cleanup(p.Stop)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := p.Publish(ctx, "floor", envBody(t, "floor", 1)); err != nil {
		t.Fatalf("producer with a 1ms output buffer timeout against nsqd's 25ms floor: %v", err)
	}

	// At nsqd's floor the same consumer connects.
	cfg.OutputBufferTimeout = 25 * time.Millisecond
	ok := e.startConsumer(t, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error { return nil }),
		pubsub.ConsumerOptions{Topic: "floor", Channel: "c", NSQ: cfg})
	testenv.WaitFor(t, 20*time.Second, "a consumer at nsqd's floor to connect", func() bool { return ok.Ready() == nil })
}

// TestConsumerCoalescesFINs checks the go-nsq patch in third_party/go-nsq: a
// consumer finishing a backlog writes many FINs per write(2), not one each.
// The process's write system calls (/proc/self/io syscw) are counted while
// it drains; not parallel, so no other test's writes are counted.
func TestConsumerCoalescesFINs(t *testing.T) {
	stack := testenv.StartStack(t)
	e := newEnv(t, stack, 1)
	const topic, channel, stream, n = "fins", "c", "stream-fins", 20000
	p := e.producer(t, nil)
	bodies := make([][]byte, 0, 500)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	for seq := uint64(1); seq <= n; seq++ {
		bodies = append(bodies, envBody(t, stream, seq))
		if len(bodies) == cap(bodies) {
			if err := p.MultiPublish(ctx, topic, bodies); err != nil {
				t.Fatal(err)
			}
			bodies = bodies[:0]
		}
	}
	got := newSeqSet()
	before := writeSyscalls(t)
	e.startConsumer(t, pubsub.HandlerFunc(func(_ context.Context, msg *pubsub.Message) error {
		got.add(msg.Envelope.Seq)
		return nil
	}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(2500), Concurrency: 4})
	got.waitAll(t, n, "consumer")
	waitDrained(t, stack.NSQD, topic, channel) // every FIN reached nsqd
	writes := writeSyscalls(t) - before
	t.Logf("%d write(2) calls for %d FINs", writes, n)
	if writes > n/2 {
		t.Errorf("%d write(2) calls while finishing %d messages: FINs are not coalesced (is the go-nsq replace in go.mod?)", writes, n)
	}
}

func writeSyscalls(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		skip.CannotRun(t, "no /proc/self/io: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "syscw: "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("parsing /proc/self/io %q: %v", l, err)
			}
			return n
		}
	}
	skip.CannotRun(t, "/proc/self/io has no syscw")
	return 0
}

// sinkOf is the dead-letter sink a consumer gets from svckit/service: p
// publishes to "<topic>.dead", store keeps what nsqd does not take.
func sinkOf(t *testing.T, p *pubsub.Producer, store *deadletter.Store, maxMsgSize int, m *metrics.Metrics) *deadletter.Sink {
	t.Helper()
	o := deadletter.Options{Publisher: p, MaxMsgSize: maxMsgSize}
	if store != nil {
		o.Store = store
	}
	if m != nil {
		o.Registry = m.Registry
	}
	s, err := deadletter.NewSink(o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
