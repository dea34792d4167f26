package pubsub_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/durable/crashfs"
	"github.com/svckit/svckit/svckit/metrics"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/testenv"
)

// bigBody is n bytes that are not an envelope (and not valid UTF-8, so no
// text encoding could carry them unchanged by accident).
func bigBody(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	b[0] = 0xff
	return b
}

// TestDeadLetters: what cannot be handled is kept, whole, and not dropped
// by default. Each subtest uses its own topic on one shared stack (nsqd
// with its default --max-msg-size of 1 MiB).
func TestDeadLetters(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t)
	e := newEnv(t, stack, 1)
	nsqd := stack.NSQD

	// A 900 KB body that is not an envelope: its dead letter used to be
	// 1.23 MB of JSON, which nsqd refused (closing the connection), and the
	// message was requeued forever. Now the dead letter is the original
	// plus a small header, and it lands in <topic>.dead byte for byte.
	t.Run("LargeBodyLandsInDeadTopicUnchanged", func(t *testing.T) {
		const topic, channel = "dl-large", "c"
		m := metrics.New("pubsubtest", "")
		p := e.producer(t, m)
		store, err := deadletter.NewStore(deadletter.StoreOptions{Dir: filepath.Join(t.TempDir(), "deadletters")})
		if err != nil {
			t.Fatal(err)
		}
		dead := deadLetters(t, nsqd.TCPAddr, topic)
		var calls atomic.Int64
		createTopic(t, nsqd, topic)
		e.startConsumer(t, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error {
			calls.Add(1)
			return nil
		}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(10), DeadLetters: sinkOf(t, p, store, 0, m),
			Metrics: m})
		body := bigBody(900_000)
		nsqd.Publish(t, topic, body) // nsqd's own HTTP /pub
		dl := receiveDeadLetter(t, dead)
		if !bytes.Equal(dl.Original, body) {
			t.Fatalf("dead letter's original: %d bytes, equal %v; want the %d bytes published", len(dl.Original), bytes.Equal(dl.Original, body), len(body))
		}
		if !strings.HasPrefix(dl.Reason, "decode") || dl.Topic != topic || dl.Channel != channel || dl.Attempts != 1 || dl.NSQID == "" {
			t.Errorf("dead letter %+v", dl.Meta)
		}
		st := waitDrained(t, nsqd, topic, channel)
		if st.requeues != 0 || st.messages != 1 {
			t.Errorf("nsqd channel: %d messages, %d requeues; want 1, 0", st.messages, st.requeues)
		}
		if list, _ := store.List(""); len(list) != 0 {
			t.Errorf("the local store holds %d letters; this one fits nsqd", len(list))
		}
		if n := calls.Load(); n != 0 {
			t.Errorf("handler called %d times", n)
		}
		if v := metricValue(t, m.Registry, "svckit_dead_letters_total", map[string]string{"topic": topic, "stored": "nsqd"}); v != 1 {
			t.Errorf("svckit_dead_letters_total{stored=nsqd} = %v", v)
		}
	})

	// A consumer given no dead-letter destination does not drop: it
	// publishes to <topic>.dead through a producer of its own over the nsqd
	// watcher.
	t.Run("NoDestinationStillDeadLetters", func(t *testing.T) {
		const topic, channel = "dl-default", "c"
		m := metrics.New("pubsubtest", "")
		dead := deadLetters(t, nsqd.TCPAddr, topic)
		createTopic(t, nsqd, topic)
		e.startConsumer(t, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error { return nil }),
			pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(10), Metrics: m})
		nsqd.Publish(t, topic, []byte("not an envelope"))
		dl := receiveDeadLetter(t, dead)
		if string(dl.Original) != "not an envelope" || dl.Topic != topic || !strings.HasPrefix(dl.Reason, "decode") {
			t.Errorf("dead letter %+v, original %q", dl.Meta, dl.Original)
		}
		st := waitDrained(t, nsqd, topic, channel)
		if st.requeues != 0 || st.messages != 1 {
			t.Errorf("nsqd channel: %d messages, %d requeues; want 1, 0", st.messages, st.requeues)
		}
		if v := metricValue(t, m.Registry, "svckit_messages_dead_lettered_total", map[string]string{"topic": topic, "reason": "decode"}); v != 1 {
			t.Errorf("dead-lettered{reason=decode} = %v", v)
		}
	})

	// Only when even the local store fails is the message requeued, with
	// the longest delay; once the store works again, the next delivery is
	// kept and finished.
	t.Run("StoreFailureRequeuesWithMaxDelay", func(t *testing.T) {
		const topic, channel = "dl-storefail", "c"
		m := metrics.New("pubsubtest", "")
		p := e.producer(t, m)
		cfs := crashfs.New()
		store, err := deadletter.NewStore(deadletter.StoreOptions{Dir: "/data/deadletters", FS: cfs})
		if err != nil {
			t.Fatal(err)
		}
		cfs.StopAfter(0) // the disk refuses every write
		createTopic(t, nsqd, topic)
		e.startConsumer(t, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error { return nil }),
			pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(10), DeadLetters: sinkOf(t, p, store, 1024, m),
				Retry: pubsub.RetryOptions{MaxDelay: 2 * time.Second}, Metrics: m})
		body := bigBody(2000) // fits nsqd; its dead letter is above the consumer's MaxMsgSize
		nsqd.Publish(t, topic, body)
		lbl := map[string]string{"topic": topic}
		testenv.WaitFor(t, waitLong, "the message requeued after the store failed", func() bool {
			return metricValue(t, m.Registry, "svckit_messages_requeued_total", lbl) == 1
		})
		if v := metricValue(t, m.Registry, "svckit_dead_letter_failures_total", lbl); v != 1 {
			t.Errorf("svckit_dead_letter_failures_total = %v, want 1", v)
		}
		if c := channelState(t, nsqd, topic, channel); c.deferred != 1 {
			t.Errorf("nsqd channel: %d deferred, want the message deferred by MaxRequeueDelay", c.deferred)
		}
		cfs.StopAfter(-1) // the disk is back
		testenv.WaitFor(t, waitLong, "the dead letter kept locally on the next delivery", func() bool {
			l, _ := store.List(topic)
			return len(l) == 1
		})
		st := waitDrained(t, nsqd, topic, channel)
		if st.requeues != 1 {
			t.Errorf("nsqd requeues = %d, want 1", st.requeues)
		}
		l, _ := store.List(topic)
		enc, err := store.Get(topic, l[0].ID)
		if err != nil {
			t.Fatal(err)
		}
		if dl, err := deadletter.Decode(enc); err != nil || !bytes.Equal(dl.Original, body) || dl.Attempts != 2 {
			t.Errorf("kept letter: attempts %d, original equal %v, err %v", dl.Attempts, bytes.Equal(dl.Original, body), err)
		}
	})

	// Dropping must be asked for by name; without an nsqd watcher, a
	// producer or a store, there is nowhere to keep dead letters, and the
	// consumer is refused rather than made to drop.
	t.Run("DroppingIsOptIn", func(t *testing.T) {
		h := pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error { return nil })
		if _, err := pubsub.NewConsumer(e.lookupds, nil, h, pubsub.ConsumerOptions{Topic: "dl-none", Channel: "c"}); err == nil ||
			!strings.Contains(err.Error(), "DropDeadLetters") {
			t.Errorf("NewConsumer with nowhere to dead-letter: err %v, want one naming DropDeadLetters", err)
		}
		c, err := pubsub.NewConsumer(e.lookupds, nil, h, pubsub.ConsumerOptions{Topic: "dl-none", Channel: "c", DropDeadLetters: true})
		if err != nil {
			t.Fatalf("NewConsumer with DropDeadLetters: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitLong)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
}
