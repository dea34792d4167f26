package service_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/service"
	"github.com/svckit/svckit/svckit/testenv"
)

// counterSum sums every series of the counter name in reg.
func counterSum(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// A body just under nsqd's --max-msg-size that cannot be decoded makes a
// dead letter just over it. The service's consumer does not send it (nsqd
// would close the producer's connection and fail every publish in flight
// on it): it keeps it in <data-dir>/deadletters, finishes the message (no
// requeue, nothing cycles), and the service's other publishes, on the same
// producer and going on all along, see no error at all.
func TestServiceKeepsOversizedDeadLetterLocally(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t) // nsqd's default --max-msg-size: 1 MiB
	const name, topic, channel, other = "svcdead", "svc-dead", "c", "svc-dead-other"
	cfg := testConfig(t, name, stack.Consul.HTTPAddr)
	if cfg.NSQ.MaxMsgSize != 1<<20 {
		t.Fatalf("--nsq-max-msg-size defaults to %d, want nsqd's 1 MiB", cfg.NSQ.MaxMsgSize)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := service.New(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	createTopic(t, stack.NSQD, topic)
	createTopic(t, stack.NSQD, other)
	var calls atomic.Int64
	if _, err := s.Consumer(pubsub.ConsumerOptions{Topic: topic, Channel: channel}, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error {
		calls.Add(1)
		return nil
	})); err != nil {
		t.Fatalf("Consumer: %v", err)
	}
	prod, err := s.Producer()
	if err != nil {
		t.Fatal(err)
	}
	runErr := run(s, ctx, nil)
	testenv.WaitFor(t, waitLong, "the service's consumer to connect", func() bool {
		return channelState(stack.NSQD, topic, channel).clients == 1
	})
	// The CLI finds the services keeping dead letters by this meta key.
	entries := testenv.WaitPassing(t, stack.Consul, name, 1)
	if v := entries[0].Service.Meta[deadletter.MetaKey]; v != deadletter.MetaValue {
		t.Errorf("Consul meta %s = %q, want %q", deadletter.MetaKey, v, deadletter.MetaValue)
	}

	// Publishers on the service's producer, running before, during and
	// after the dead-lettering.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var published atomic.Int64
	var pubErrs sync.Map
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				pctx, cancel := context.WithTimeout(ctx, waitLong)
				err := prod.Publish(pctx, other, []byte(fmt.Sprintf("other-%d-%d", g, i)))
				cancel()
				if err != nil {
					pubErrs.Store(err.Error(), true)
				}
				published.Add(1)
			}
		}()
	}
	testenv.WaitFor(t, waitLong, "the other publishes to start", func() bool { return published.Load() >= 100 })

	body := bytes.Repeat([]byte{0xfe, 0x00, 'x'}, (cfg.NSQ.MaxMsgSize-64)/3)
	stack.NSQD.Publish(t, topic, body) // not an envelope: dead-lettered at once
	store := s.DeadLetterStore()
	var list []deadletter.Info
	testenv.WaitFor(t, waitLong, "the dead letter in the local store", func() bool {
		list, _ = store.List(topic)
		return len(list) == 1
	})
	before := published.Load()
	testenv.WaitFor(t, waitLong, "more publishes after the dead letter", func() bool { return published.Load() >= before+100 })
	close(stop)
	wg.Wait()

	pubErrs.Range(func(k, _ any) bool { t.Errorf("a publish on the service's producer failed: %s", k); return true })
	if v := counterSum(t, s.Metrics.Registry, "svckit_publish_errors_total", nil); v != 0 {
		t.Errorf("svckit_publish_errors_total = %v: the producer's connection was disturbed", v)
	}
	in := list[0]
	if in.Stored != deadletter.StoredLocal || in.Size != len(body) || in.Topic != topic || in.Channel != channel ||
		!strings.HasPrefix(in.Reason, "decode") || in.Attempts != 1 {
		t.Errorf("local dead letter %+v", in)
	}
	enc, err := store.Get(topic, in.ID)
	if err != nil {
		t.Fatal(err)
	}
	l, err := deadletter.Decode(enc)
	if err != nil || !bytes.Equal(l.Original, body) {
		t.Fatalf("the stored original differs from the body published (decode error %v)", err)
	}
	if len(enc) <= cfg.NSQ.MaxMsgSize {
		t.Fatalf("the test's dead letter is %d bytes, not above --max-msg-size %d", len(enc), cfg.NSQ.MaxMsgSize)
	}
	// Finished, once: nothing requeued, nothing in flight or deferred.
	testenv.WaitFor(t, waitLong, "the channel to drain", func() bool {
		c := channelState(stack.NSQD, topic, channel)
		return c.found && c.depth == 0 && c.inFlight == 0 && c.deferred == 0
	})
	if c := channelState(stack.NSQD, topic, channel); c.messages != 1 || c.requeues != 0 || c.tmouts != 0 {
		t.Errorf("nsqd channel: %d messages, %d requeues, %d timeouts; want 1, 0, 0", c.messages, c.requeues, c.tmouts)
	}
	lbl := map[string]string{"topic": topic}
	for metric, want := range map[string]float64{
		"svckit_messages_requeued_total":      0,
		"svckit_messages_dead_lettered_total": 1,
		"svckit_dead_letters_total":           1,
		"svckit_dead_letter_failures_total":   0,
	} {
		if got := counterSum(t, s.Metrics.Registry, metric, lbl); got != want {
			t.Errorf("%s = %v, want %v", metric, got, want)
		}
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("handler called %d times", n)
	}
	if st, err := stack.NSQD.Stats(); err == nil {
		if _, n, ok := st.TopicDepth(pubsub.DeadLetterTopic(topic)); ok && n != 0 {
			t.Errorf("%d message(s) reached %s", n, pubsub.DeadLetterTopic(topic))
		}
	}
	// The service serves its store on its HTTP port.
	code, out := get(t, "http://127.0.0.1:"+strconv.Itoa(s.Port)+deadletter.PathPrefix+"?topic="+topic)
	var served []deadletter.Info
	if code != http.StatusOK || json.Unmarshal([]byte(out), &served) != nil || len(served) != 1 || served[0].ID != in.ID {
		t.Errorf("GET %s?topic=%s = %d %s", deadletter.PathPrefix, topic, code, out)
	}

	// A tracker's dead letters take the same path: nsqd when they fit,
	// else the local store.
	trackerDL, err := s.TrackerDeadLetter(topic, channel)
	if err != nil {
		t.Fatal(err)
	}
	if err := trackerDL(ctx, "stream-t", 7, []byte("replayed frame"), "cannot apply"); err != nil {
		t.Fatalf("tracker dead letter: %v", err)
	}
	testenv.WaitFor(t, waitLong, "the tracker's dead letter in "+pubsub.DeadLetterTopic(topic), func() bool {
		st, err := stack.NSQD.Stats()
		if err != nil {
			return false
		}
		_, n, _ := st.TopicDepth(pubsub.DeadLetterTopic(topic))
		return n == 1
	})
	if err := trackerDL(ctx, "stream-t", 8, body, "cannot apply"); err != nil {
		t.Fatalf("tracker dead letter: %v", err)
	}
	if list, _ = store.List(topic); len(list) != 2 || list[1].Stream != "stream-t" || list[1].Seq != 8 || list[1].Size != len(body) {
		t.Errorf("local store after a large tracker dead letter: %+v", list)
	}

	cancel()
	if err := waitRun(t, runErr); err != nil {
		t.Fatalf("Run: %v", err)
	}
}
