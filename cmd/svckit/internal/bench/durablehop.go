package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// svckit's durable hop: one replay.Owner (its retained log with the
// default fsync policy, always: a record is fsynced before it is
// published) publishing through its own Batcher to nsqd, and one tracking
// consumer (a svckit Consumer handing every envelope to a replay.Tracker),
// with a service's default NSQ settings. It is the unit JetStream's one
// hop with sync_interval: always is compared with (peer.go): a message is
// on a disk before anyone is told it was published, and consumed with an
// acknowledgement per message. Both sides run their clients in this
// process, and their server (nsqd, nats-server) as a program.

// durablePublishMax is the most readings one PublishBatch takes, as the
// sensor's (pipeline/sensor publishBatchMax): what is due goes to the log
// in one write and one fsync.
const durablePublishMax = 1000

// durableHop is one owner and one tracking consumer on a topic of their
// own.
type durableHop struct {
	owner   *replay.Owner
	closeFn func()
}

// openDurableHop opens an owner of stream in a new directory (under the
// run's data directory, on the filesystem the disk figures are from) and
// a consumer of topic whose tracker passes every envelope it applies to
// onMsg. It returns once the consumer is connected to nsqd. close stops
// both and deletes the topic.
func (r *runner) openDurableHop(ctx context.Context, stream, topic string, onMsg func(envelope.Envelope)) *durableHop {
	def := config.DefaultConfig().NSQ
	tr, err := replay.NewTracker(nopApplier{}, replay.TrackerOptions{})
	r.env.check(err)
	h := pubsub.HandlerFunc(func(hctx context.Context, m *pubsub.Message) error {
		applied, err := tr.Deliver(hctx, m.Envelope)
		if err != nil {
			return fmt.Errorf("tracking %s/%d: %w", m.Envelope.Stream, m.Envelope.Seq, err)
		}
		if applied {
			onMsg(m.Envelope)
		}
		return nil
	})
	cfg := nsq.NewConfig()
	// A service's defaults (svckit/config), as Service.NSQConfig sets them.
	cfg.MaxInFlight = def.MaxInFlight
	cfg.LookupdPollInterval = time.Second // the bench's services run with --nsq-lookupd-poll-interval=1s
	cfg.MsgTimeout = def.MsgTimeout
	cfg.OutputBufferSize = def.OutputBufferSize
	cfg.OutputBufferTimeout = def.OutputBufferTimeout
	c, err := pubsub.NewConsumer(r.disco.Watch("nsqlookupd"), r.disco.Watch("nsqd"), h, pubsub.ConsumerOptions{
		Topic: topic, Channel: "bench", NSQ: cfg, Concurrency: def.Concurrency, Logger: logging.Discard(),
	})
	if err != nil {
		r.fail("durable hop: consumer of %s: %v", topic, err)
	}
	if err := c.Start(ctx); err != nil {
		r.fail("durable hop: starting the consumer of %s: %v", topic, err)
	}
	prod := pubsub.NewProducer(r.disco.Watch("nsqd"), pubsub.ProducerOptions{Logger: logging.Discard()})
	b := prod.NewBatcher(topic, pubsub.BatcherOptions{MaxBatch: def.BatchSize, MaxBytes: def.BatchBytes, MaxDelay: def.BatchDelay})
	// The retained log's defaults: FsyncAlways, group commit.
	owner, err := replay.OpenOwner(replay.OwnerOptions{Stream: stream, Dir: r.env.TempDir(),
		Log: retainlog.DefaultOptions(""), ContentType: "application/octet-stream"}, b)
	if err != nil {
		c.Stop(context.Background())
		prod.Stop()
		r.fail("durable hop: opening the owner of %s: %v", stream, err)
	}
	runCtx, stop := context.WithCancel(ctx)
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		// An error of the pump shows as readings the consumer never gets,
		// which fails the run with a count.
		_ = owner.Run(runCtx)
	}()
	d := &durableHop{owner: owner}
	d.closeFn = func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = owner.Close(cctx) // stops the pump and closes the batcher, the owner's own
		stop()
		<-pumped
		prod.Stop()
		c.Stop(cctx)
		_ = r.st.NSQD.DeleteTopic(topic)
	}
	// As Hop does: the clock starts once the consumer is connected, not
	// while its first lookup races the topic's registration.
	if err := waitConnected(ctx, c); err != nil {
		d.closeFn()
		r.fail("durable hop: %v", err)
	}
	return d
}

func (d *durableHop) close() { d.closeFn() }

// durableHopThroughput publishes n readings of payloadSize bytes as fast
// as the owner takes them (batches of up to durablePublishMax, each
// waiting for its fsync, as the sensor with --rate 0) and returns the rate
// from the first publish to the last reading consumed and finished in nsqd
// (the channel empty, nothing in flight: every FIN arrived).
func (r *runner) durableHopThroughput(ctx context.Context, tag string, n int) float64 {
	var got atomic.Int64
	done := make(chan struct{})
	topic := "durable-hop-" + tag
	d := r.openDurableHop(ctx, topic, topic, func(envelope.Envelope) {
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	defer d.close()
	batch := payloads(durablePublishMax)
	start := time.Now()
	for sent := 0; sent < n; {
		k := min(durablePublishMax, n-sent)
		if _, err := d.owner.PublishBatch(ctx, batch[:k]); err != nil {
			r.fail("durable hop: publishing: %v", err)
		}
		sent += k
	}
	select {
	case <-done:
	case <-ctx.Done():
		r.fail("durable hop: interrupted")
	case <-time.After(5 * time.Minute):
		r.fail("durable hop: %d of %d consumed after 5 minutes", got.Load(), n)
	}
	r.waitFinished(topic, "bench")
	return float64(n) / time.Since(start).Seconds()
}

// waitFinished waits until nsqd's channel of topic holds nothing and has
// nothing in flight: every FIN of the consumer has arrived.
func (r *runner) waitFinished(topic, channel string) {
	r.env.WaitFor(time.Minute, "nsqd to have every FIN of "+topic+"/"+channel, func() bool {
		st, err := r.st.NSQD.Stats()
		if err != nil {
			return false
		}
		for _, t := range st.Topics {
			if t.TopicName != topic {
				continue
			}
			for _, c := range t.Channels {
				if c.ChannelName == channel {
					return c.Depth == 0 && c.InFlightCount == 0 && c.DeferredCount == 0
				}
			}
		}
		return false
	})
}

// durableHopLatency publishes at rate readings per second for a warm-up
// second and then d, as the sensor paces them, and returns the latency
// from the owner's stamp (Created, taken before the append and its fsync)
// to the tracking consumer's handler, over the readings published after
// the warm-up.
func (r *runner) durableHopLatency(ctx context.Context, rate int, d time.Duration) *latencies {
	lat := newLatencies()
	topic := fmt.Sprintf("durable-hop-lat-%d", rate)
	h := r.openDurableHop(ctx, topic, topic, func(env envelope.Envelope) { lat.add(env.Created, time.Now()) })
	defer h.close()
	batch := payloads(durablePublishMax)
	var published int
	lat.countFrom(time.Now().Add(time.Second))
	err := paced(ctx, rate, time.Second+d, func(n int) error {
		for n > 0 {
			k := min(n, durablePublishMax)
			if _, err := h.owner.PublishBatch(ctx, batch[:k]); err != nil {
				return fmt.Errorf("publishing: %w", err)
			}
			published += k
			n -= k
		}
		return nil
	})
	if err != nil {
		r.fail("durable hop at %d/s: %v", rate, err)
	}
	r.env.WaitFor(30*time.Second, "the durable hop's consumer to get every reading", func() bool { return lat.received() >= int64(published) })
	return lat
}

// payloads is n payloads of payloadSize bytes (one buffer: the bench
// measures the hop, not the making of readings).
func payloads(n int) [][]byte {
	p := make([]byte, payloadSize)
	b := make([][]byte, n)
	for i := range b {
		b[i] = p
	}
	return b
}

// paced calls publish with the number of messages due at rate per second
// from now until d has passed or ctx ends, as the sensor paces its
// readings (pipeline/sensor publishLoop): by the time elapsed, on a ticker
// of 1/rate (at least 1 ms), so a slow tick catches up instead of
// drifting, but never more than 100 ms worth at once after a stall (those
// are skipped). It returns publish's first error, or nil.
func paced(ctx context.Context, rate int, d time.Duration, publish func(n int) error) error {
	if rate <= 0 {
		return errors.New("paced: the rate must be positive")
	}
	period := max(time.Second/time.Duration(rate), time.Millisecond)
	tick := time.NewTicker(period)
	defer tick.Stop()
	start := time.Now()
	end := start.Add(d)
	sent, skipped := 0, 0
	for {
		now := time.Now()
		if !now.Before(end) {
			return nil
		}
		due := int(now.Sub(start).Seconds()*float64(rate)) + 1 - skipped
		if burst := rate/10 + 1; due > sent+burst {
			skipped += due - sent - burst
			due = sent + burst
		}
		if due > sent {
			if err := publish(due - sent); err != nil {
				return err
			}
			sent = due
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// latencies collects one latency per message received after a moment
// (the end of a warm-up), from any goroutine.
type latencies struct {
	from  atomic.Int64 // Unix ns: messages received before are not counted
	count atomic.Int64 // every message received
	mu    sync.Mutex
	ms    []float64
}

func newLatencies() *latencies {
	l := &latencies{}
	l.from.Store(math.MaxInt64)
	return l
}

// countFrom counts the messages received from t on.
func (l *latencies) countFrom(t time.Time) { l.from.Store(t.UnixNano()) }

// add records a message sent at sent and received at got.
func (l *latencies) add(sent, got time.Time) {
	l.count.Add(1)
	if got.UnixNano() < l.from.Load() {
		return
	}
	l.mu.Lock()
	l.ms = append(l.ms, ms(got.Sub(sent)))
	l.mu.Unlock()
}

func (l *latencies) received() int64 { return l.count.Load() }

// samples is a copy of what was counted.
func (l *latencies) samples() []float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]float64(nil), l.ms...)
}
