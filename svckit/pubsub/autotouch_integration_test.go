package pubsub_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/testenv"
)

// AutoTouch keeps touching a message until it is responded to, not until
// its handler returns: a handler that takes the response over (Async) and
// completes four message timeouts later must not see its message time out
// in nsqd and come again.
func TestAutoTouchUntilAsyncCompletes(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t)
	e := newEnv(t, stack, 1)
	const topic, channel = "touch", "c"
	var deliveries atomic.Int64
	done := make(chan struct{})
	cfg := nsqConfig(10)
	cfg.MsgTimeout = time.Second
	e.startConsumer(t, pubsub.HandlerFunc(func(_ context.Context, m *pubsub.Message) error {
		deliveries.Add(1)
		complete := m.Async()
		go func() {
			<-time.After(4 * time.Second) // the slow work: four message timeouts
			complete(nil)
			close(done)
		}()
		return nil
	}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: cfg, AutoTouch: true})
	waitClients(t, stack.NSQD, topic, channel, 1)
	stack.NSQD.Publish(t, topic, envBody(t, "touch", 1))
	select {
	case <-done:
	case <-time.After(waitLong):
		t.Fatal("the handler never completed")
	}
	st := waitDrained(t, stack.NSQD, topic, channel)
	if st.tmouts != 0 || deliveries.Load() != 1 {
		t.Fatalf("%d deliveries, %d timeouts in nsqd: the message was not touched while its async work ran", deliveries.Load(), st.tmouts)
	}
}
