package pubsub_test

// The delivery policy, without nsqd: each middleware runs on messages
// whose go-nsq delegate records what nsqd would have been told.

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// answer records a message's FIN, REQ and TOUCH.
type answer struct {
	mu       sync.Mutex
	finished int
	requeues []time.Duration
	touches  atomic.Int64
	done     chan struct{} // closed at the first FIN or REQ
}

func (a *answer) OnFinish(*nsq.Message) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.finished++
	a.closeDone()
}

func (a *answer) OnRequeue(_ *nsq.Message, d time.Duration, _ bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.requeues = append(a.requeues, d)
	a.closeDone()
}

func (a *answer) OnTouch(*nsq.Message) { a.touches.Add(1) }

func (a *answer) closeDone() {
	select {
	case <-a.done:
	default:
		close(a.done)
	}
}

// wait returns what nsqd was told: FINs and REQ delays.
func (a *answer) wait(t *testing.T) (int, []time.Duration) {
	t.Helper()
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the message was never answered")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.finished, append([]time.Duration(nil), a.requeues...)
}

// message is attempt n of a delivery from orders/svc.
func message(attempt uint16, body string) (*pubsub.Message, *answer) {
	a := &answer{done: make(chan struct{})}
	nm := nsq.NewMessage(nsq.MessageID{'m', '1'}, []byte(body))
	nm.Attempts = attempt
	nm.Delegate = a
	return pubsub.NewMessage("orders", "svc", nm, envelope.Envelope{Stream: "s", Seq: 7, Payload: []byte(body)}), a
}

// letters records what a dead-letter sink published.
type letters struct {
	mu   sync.Mutex
	got  []deadletter.Letter
	fail error
}

func (l *letters) Publish(_ context.Context, topic string, body []byte) error {
	if l.fail != nil {
		return l.fail
	}
	d, err := deadletter.Decode(body)
	if err != nil {
		return err
	}
	if topic != "orders.dead" {
		return errors.New("published to " + topic)
	}
	l.mu.Lock()
	l.got = append(l.got, d)
	l.mu.Unlock()
	return nil
}

func (l *letters) all() []deadletter.Letter {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]deadletter.Letter(nil), l.got...)
}

func sink(t *testing.T, pub deadletter.TopicPublisher) *deadletter.Sink {
	t.Helper()
	s, err := deadletter.NewSink(deadletter.Options{Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// policy is the consumer's order: DeadLetter outside Retry outside the rest.
func policy(dead *deadletter.Sink, h pubsub.Handler, inner ...pubsub.Middleware) pubsub.Handler {
	return pubsub.Chain(h, append([]pubsub.Middleware{
		pubsub.DeadLetter(pubsub.DeadLetterOptions{Sink: dead, RequeueDelay: time.Hour}),
		pubsub.Retry(pubsub.RetryOptions{MaxAttempts: 4, Delay: 10 * time.Millisecond, MaxDelay: 25 * time.Millisecond}),
		pubsub.Recover(),
	}, inner...)...)
}

var errFlaky = errors.New("flaky")

func failing(context.Context, *pubsub.Message) error { return errFlaky }

// Retry requeues with a delay doubling per attempt up to MaxDelay; the
// last attempt's failure is dead-lettered and finished.
func TestRetryThenDeadLetter(t *testing.T) {
	dead := &letters{}
	h := policy(sink(t, dead), pubsub.HandlerFunc(failing))
	for attempt, want := range map[uint16]time.Duration{1: 10 * time.Millisecond, 2: 20 * time.Millisecond, 3: 25 * time.Millisecond} {
		m, a := message(attempt, "x")
		pubsub.Deliver(context.Background(), h, m)
		if fin, req := a.wait(t); fin != 0 || len(req) != 1 || req[0] != want {
			t.Errorf("attempt %d: %d FIN, REQ %v; want one REQ of %s", attempt, fin, req, want)
		}
	}
	if got := dead.all(); len(got) != 0 {
		t.Fatalf("dead-lettered before the last attempt: %+v", got)
	}
	m, a := message(4, "x")
	pubsub.Deliver(context.Background(), h, m)
	if fin, req := a.wait(t); fin != 1 || len(req) != 0 {
		t.Fatalf("last attempt: %d FIN, REQ %v; want FIN", fin, req)
	}
	got := dead.all()
	if len(got) != 1 || got[0].Reason != "handler failed 4 times: flaky" || got[0].Topic != "orders" || got[0].Channel != "svc" ||
		got[0].Stream != "s" || got[0].Seq != 7 || string(got[0].Original) != "x" || got[0].Attempts != 4 {
		t.Fatalf("dead letters %+v, want one for orders/svc s/7 after 4 attempts", got)
	}
}

// A permanent error is not retried: dead-lettered on the first attempt.
func TestRejectDeadLettersAtOnce(t *testing.T) {
	dead := &letters{}
	h := policy(sink(t, dead), pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error {
		return pubsub.Reject(errors.New("not a reading"))
	}))
	m, a := message(1, "x")
	pubsub.Deliver(context.Background(), h, m)
	if fin, req := a.wait(t); fin != 1 || len(req) != 0 {
		t.Fatalf("%d FIN, REQ %v; want FIN", fin, req)
	}
	if got := dead.all(); len(got) != 1 || got[0].Reason != "rejected: not a reading" {
		t.Fatalf("dead letters %+v, want one rejected", got)
	}
}

// When the sink keeps nothing, the message is not lost: it is requeued
// with DeadLetterOptions.RequeueDelay.
func TestDeadLetterKeptNowhereRequeues(t *testing.T) {
	h := policy(sink(t, &letters{fail: errors.New("nsqd down")}), pubsub.HandlerFunc(failing))
	m, a := message(4, "x")
	pubsub.Deliver(context.Background(), h, m)
	if fin, req := a.wait(t); fin != 0 || len(req) != 1 || req[0] != time.Hour {
		t.Fatalf("%d FIN, REQ %v; want one REQ of 1h", fin, req)
	}
}

// Without a sink, DeadLetter keeps the message in nsqd (a requeue) unless
// told to drop it (the opt-in DropDeadLetters).
func TestDeadLetterWithoutSinkDropsOnlyIfTold(t *testing.T) {
	m, a := message(4, "x")
	pubsub.Deliver(context.Background(), policy(nil, pubsub.HandlerFunc(failing)), m)
	if fin, req := a.wait(t); fin != 0 || len(req) != 1 || req[0] != time.Hour {
		t.Fatalf("no sink: %d FIN, REQ %v; want one REQ of 1h", fin, req)
	}
	m, a = message(4, "x")
	pubsub.Deliver(context.Background(), pubsub.Chain(pubsub.HandlerFunc(failing),
		pubsub.DeadLetter(pubsub.DeadLetterOptions{Drop: true}), pubsub.Retry(pubsub.RetryOptions{MaxAttempts: 4})), m)
	if fin, req := a.wait(t); fin != 1 || len(req) != 0 {
		t.Fatalf("Drop: %d FIN, REQ %v; want FIN", fin, req)
	}
}

// Outcomes count at the top level only: a Finish wrapped in an error is a
// failure (retried), not a quiet drop; a negative Requeue delay is 0
// (nsqd closes the connection on a negative one).
func TestOutcomesOnlyAtTopLevel(t *testing.T) {
	m, a := message(1, "x")
	pubsub.Deliver(context.Background(), policy(nil, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error {
		return errors.Join(errors.New("db down"), pubsub.Finish(errors.New("x")))
	})), m)
	if fin, req := a.wait(t); fin != 0 || len(req) != 1 || req[0] != 10*time.Millisecond {
		t.Fatalf("wrapped Finish: %d FIN, REQ %v; want Retry's REQ of 10ms", fin, req)
	}
	m, a = message(1, "x")
	pubsub.Deliver(context.Background(), pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error {
		return pubsub.Requeue(errFlaky, -5*time.Second)
	}), m)
	if fin, req := a.wait(t); fin != 0 || len(req) != 1 || req[0] != 0 {
		t.Fatalf("negative Requeue: %d FIN, REQ %v; want REQ 0", fin, req)
	}
}

// A middleware that swallows the error a handler returned after Async
// decides the outcome (here: handled); the message is answered once, at
// once, and the handler's later completion does nothing.
func TestReturnedErrorAfterAsyncIsFinal(t *testing.T) {
	dead := &letters{}
	c, err := pubsub.NewConsumer(nil, nil, pubsub.HandlerFunc(func(_ context.Context, m *pubsub.Message) error {
		done := m.Async()
		go done(errFlaky)
		return errFlaky
	}), pubsub.ConsumerOptions{Topic: "orders", Channel: "svc", DeadLetters: sink(t, dead), Middleware: []pubsub.Middleware{
		func(next pubsub.Handler) pubsub.Handler {
			return pubsub.HandlerFunc(func(ctx context.Context, m *pubsub.Message) error {
				_ = next.HandleMessage(ctx, m)
				return nil
			})
		}}})
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		body, _ := (&envelope.Envelope{Stream: "s", Seq: 1}).Marshal()
		_, a := message(1, "")
		nm := nsq.NewMessage(nsq.MessageID{'a'}, body)
		nm.Attempts, nm.Delegate = 1, a
		if err := c.HandleMessage(nm); err != nil {
			t.Fatal(err)
		}
		if fin, req := a.wait(t); fin != 1 || len(req) != 0 {
			t.Fatalf("%d FIN, REQ %v; want the swallowing middleware's FIN", fin, req)
		}
	}
}

// A panicking handler's message is answered (retried), and AutoTouch stops
// touching it: nothing is left running for it.
func TestAutoTouchStopsOnPanic(t *testing.T) {
	c, err := pubsub.NewConsumer(nil, nil, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error { panic("boom") }),
		pubsub.ConsumerOptions{Topic: "orders", Channel: "svc", DropDeadLetters: true, AutoTouch: true,
			NSQ: func() *nsq.Config { cfg := nsq.NewConfig(); cfg.MsgTimeout = 2 * time.Millisecond; return cfg }()})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := (&envelope.Envelope{Stream: "s", Seq: 1}).Marshal()
	_, a := message(1, "")
	nm := nsq.NewMessage(nsq.MessageID{'p'}, body)
	nm.Attempts, nm.Delegate = 1, a
	if err := c.HandleMessage(nm); err != nil {
		t.Fatal(err)
	}
	if fin, req := a.wait(t); fin != 0 || len(req) != 1 {
		t.Fatalf("%d FIN, REQ %v; want a REQ", fin, req)
	}
	after := a.touches.Load()
	time.Sleep(50 * time.Millisecond) // absence cannot be polled for: 50 intervals
	if n := a.touches.Load(); n > after+1 {
		t.Fatalf("%d touches after the panicking message was answered", n-after)
	}
}

// A panic is a failure like any other: retried, the process alive.
func TestRecoverTurnsPanicIntoRetry(t *testing.T) {
	h := policy(nil, pubsub.HandlerFunc(func(context.Context, *pubsub.Message) error { panic("boom") }))
	m, a := message(1, "x")
	pubsub.Deliver(context.Background(), h, m)
	if fin, req := a.wait(t); fin != 0 || len(req) != 1 {
		t.Fatalf("%d FIN, REQ %v; want a REQ", fin, req)
	}
}

// An Async handler's failure goes through the same policy as a returned
// one, whether it completes after the chain returned or before.
func TestAsyncOutcomeGoesThroughPolicy(t *testing.T) {
	for _, early := range []bool{false, true} {
		dead := &letters{}
		var done func(error)
		h := policy(sink(t, dead), pubsub.HandlerFunc(func(_ context.Context, m *pubsub.Message) error {
			done = m.Async()
			if early {
				done(pubsub.Reject(errors.New("bad")))
			}
			return nil
		}))
		m, a := message(1, "x")
		pubsub.Deliver(context.Background(), h, m)
		if !early {
			select {
			case <-a.done:
				t.Fatal("answered before the Async completion")
			default:
			}
			go done(pubsub.Reject(errors.New("bad")))
		}
		if fin, req := a.wait(t); fin != 1 || len(req) != 0 {
			t.Fatalf("early=%v: %d FIN, REQ %v; want FIN", early, fin, req)
		}
		if got := dead.all(); len(got) != 1 || got[0].Reason != "rejected: bad" {
			t.Fatalf("early=%v: dead letters %+v, want one rejected", early, got)
		}
		done(nil) // a second call does nothing
		if fin, req := a.wait(t); fin != 1 || len(req) != 0 {
			t.Fatalf("after a second completion: %d FIN, REQ %v", fin, req)
		}
	}

	// Async, then a returned error: the error decides, the completion is ignored.
	m, a := message(1, "x")
	var done func(error)
	pubsub.Deliver(context.Background(), policy(nil, pubsub.HandlerFunc(func(_ context.Context, m *pubsub.Message) error {
		done = m.Async()
		return errFlaky
	})), m)
	done(nil)
	if fin, req := a.wait(t); fin != 0 || len(req) != 1 {
		t.Fatalf("Async then an error: %d FIN, REQ %v; want the error's REQ", fin, req)
	}
}

// AutoTouch touches until the message is answered, Async included, and
// then stops.
func TestAutoTouchUntilAnswered(t *testing.T) {
	var done func(error)
	h := policy(nil, pubsub.HandlerFunc(func(_ context.Context, m *pubsub.Message) error {
		done = m.Async()
		return nil
	}), pubsub.AutoTouch(time.Millisecond))
	m, a := message(1, "x")
	pubsub.Deliver(context.Background(), h, m)
	deadline := time.Now().Add(10 * time.Second)
	for a.touches.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%d touches in 10s while the message was in flight", a.touches.Load())
		}
		time.Sleep(time.Millisecond)
	}
	done(nil)
	a.wait(t)
	after := a.touches.Load()
	// Absence cannot be polled for: watch 50 intervals.
	time.Sleep(50 * time.Millisecond)
	if n := a.touches.Load(); n > after+1 { // one tick may race the stop
		t.Fatalf("%d touches after the message was finished", n-after)
	}
}

// A user's middleware runs inside the policy, in the order given, and an
// outcome it returns (here Requeue) is what nsqd is told.
func TestUserMiddlewareOrderAndOutcome(t *testing.T) {
	var order []string
	mark := func(name string) pubsub.Middleware {
		return func(next pubsub.Handler) pubsub.Handler {
			return pubsub.HandlerFunc(func(ctx context.Context, m *pubsub.Message) error {
				order = append(order, name)
				return next.HandleMessage(ctx, m)
			})
		}
	}
	throttle := pubsub.OnOutcome(func(_ context.Context, _ *pubsub.Message, err error) error {
		if errors.Is(err, errFlaky) {
			return pubsub.Requeue(err, 3*time.Second)
		}
		return err
	})
	dead := &letters{}
	h := policy(sink(t, dead), pubsub.HandlerFunc(failing), mark("a"), mark("b"), throttle)
	m, a := message(1, "x")
	pubsub.Deliver(context.Background(), h, m)
	if fin, req := a.wait(t); fin != 0 || len(req) != 1 || req[0] != 3*time.Second {
		t.Fatalf("%d FIN, REQ %v; want the middleware's REQ of 3s", fin, req)
	}
	if strings.Join(order, ",") != "a,b" {
		t.Fatalf("order %v, want a,b", order)
	}
	// Retry bounds a requeue asked for inside: the last attempt's is
	// dead-lettered, so nothing cycles for ever.
	m, a = message(4, "x")
	pubsub.Deliver(context.Background(), h, m)
	if fin, req := a.wait(t); fin != 1 || len(req) != 0 {
		t.Fatalf("last attempt: %d FIN, REQ %v; want FIN after dead-lettering", fin, req)
	}
	if got := dead.all(); len(got) != 1 || got[0].Reason != "handler failed 4 times: flaky" {
		t.Fatalf("dead letters %+v, want the exhausted one", got)
	}
}

// The consumer's own chain, without nsqd: a body that is not an envelope
// is dead-lettered (reason "decode: …") and never reaches the handler; a
// valid one reaches it decoded.
func TestConsumerChainDecodes(t *testing.T) {
	dead := &letters{}
	var handled []uint64
	c, err := pubsub.NewConsumer(nil, nil, pubsub.HandlerFunc(func(_ context.Context, m *pubsub.Message) error {
		handled = append(handled, m.Envelope.Seq)
		return nil
	}), pubsub.ConsumerOptions{Topic: "orders", Channel: "svc", DeadLetters: sink(t, dead)})
	if err != nil {
		t.Fatal(err)
	}
	_, a := message(1, "")
	garbage := nsq.NewMessage(nsq.MessageID{'g'}, []byte("not an envelope"))
	garbage.Attempts, garbage.Delegate = 1, a
	if err := c.HandleMessage(garbage); err != nil {
		t.Fatal(err)
	}
	if fin, req := a.wait(t); fin != 1 || len(req) != 0 {
		t.Fatalf("garbage: %d FIN, REQ %v; want FIN", fin, req)
	}
	if got := dead.all(); len(got) != 1 || !strings.HasPrefix(got[0].Reason, "decode: ") || string(got[0].Original) != "not an envelope" {
		t.Fatalf("dead letters %+v, want the garbage, for decode", got)
	}
	body, err := (&envelope.Envelope{Stream: "s", Seq: 9, Payload: []byte("p")}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	_, a = message(1, "")
	good := nsq.NewMessage(nsq.MessageID{'o'}, body)
	good.Attempts, good.Delegate = 1, a
	if err := c.HandleMessage(good); err != nil {
		t.Fatal(err)
	}
	if fin, _ := a.wait(t); fin != 1 || len(handled) != 1 || handled[0] != 9 {
		t.Fatalf("a valid envelope: %d FIN, handled %v; want FIN after handling seq 9", fin, handled)
	}
}

// An Async completion racing the chain's return (from another goroutine,
// before, during or after it) answers each message exactly once, with the
// completion's outcome passed through the policy.
func TestAsyncCompletionRacesReturn(t *testing.T) {
	dead := &letters{}
	h := policy(sink(t, dead), pubsub.HandlerFunc(func(_ context.Context, m *pubsub.Message) error {
		done := m.Async()
		outcome := error(nil)
		if m.Envelope.Seq%2 == 1 {
			outcome = pubsub.Reject(errors.New("odd"))
		}
		go done(outcome)
		return nil
	}))
	const n = 2000
	for i := range n {
		m, a := message(1, "x")
		m.Envelope.Seq = uint64(i)
		pubsub.Deliver(context.Background(), h, m)
		if fin, req := a.wait(t); fin != 1 || len(req) != 0 {
			t.Fatalf("message %d: %d FIN, REQ %v; want one FIN", i, fin, req)
		}
	}
	if got := len(dead.all()); got != n/2 {
		t.Fatalf("%d dead letters, want %d (the odd ones)", got, n/2)
	}
}
