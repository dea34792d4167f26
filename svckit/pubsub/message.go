package pubsub

import (
	"context"
	"fmt"
	"time"

	"sync/atomic"

	"github.com/svckit/svckit/svckit/envelope"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// Message is one delivery handed to a Handler.
type Message struct {
	Envelope envelope.Envelope
	NSQ      *nsq.Message

	route *route
	// start is when the delivery began, on the consumer's monotonic
	// clock: 8 bytes where a time.Time takes 24 (one Message is allocated
	// per delivery, and a small one keeps the hop's allocation as it was).
	start time.Duration
	// state is the phase (its low bits) and the async and completed
	// flags, in one word (a Message is allocated per delivery: three
	// separate atomics moved it up a size class).
	//
	// The phase orders an Async completion against the return of the
	// handler chain: the OnOutcome layers register (later) as the chain
	// returns, and a completion that comes first (the handler's publish
	// was acknowledged at once) waits in early until it has. completed
	// guards the completion func against a second call, and is set when a
	// returned error decided the outcome instead. An early completion's
	// error is boxed (nil for success, the usual case): 8 bytes here where
	// an error takes 16 kept a Message in its size class when the envelope
	// grew its trace context.
	state atomic.Uint32
	early *error
	// wait holds what runs when the message is answered: the OnOutcome
	// layers waiting for an Async completion, and cleanups. Made by the
	// first to need it, so a message answered on return allocates nothing
	// more.
	wait *waiting
}

// waiting is a message's deferred work; written by the handler chain's
// goroutine before the chain returns, read by settle after it.
type waiting struct {
	// hooks, innermost first: the consumer's own three (count, Retry,
	// DeadLetter) and one more fit without a further allocation.
	hooks    [4]outcomeHook
	nhooks   int
	more     []outcomeHook
	cleanups []func()
}

type outcomeHook struct {
	ctx context.Context
	f   func(context.Context, *Message, error) error
}

const (
	phaseRunning  = iota // the handler chain has not returned
	phaseReturned        // it returned; the Async completion settles
	phaseEarly           // the Async completion came first; the chain's return settles
	phaseSettled         // answered

	phaseMask     = 3
	asyncFlag     = 4 // the handler went Async
	completedFlag = 8 // the completion was called, or a returned error decided
)

func (m *Message) isAsync() bool { return m.state.Load()&asyncFlag != 0 }

// setFlag sets flag and reports whether it was clear.
func (m *Message) setFlag(flag uint32) bool { return m.state.Or(flag)&flag == 0 }

// movePhase moves the phase from one value to another and reports whether
// it was from.
func (m *Message) movePhase(from, to uint32) bool {
	for {
		old := m.state.Load()
		if old&phaseMask != from {
			return false
		}
		if m.state.CompareAndSwap(old, old&^phaseMask|to) {
			return true
		}
	}
}

// route is what the messages of one consumer share.
type route struct {
	topic, channel string
	respond        func(*Message, error)
}

// NewMessage is a delivery of env in nm from topic/channel, for running a
// Handler or Middleware outside a Consumer (in tests: give nm a Delegate
// that records what was answered). Deliver hands it to a handler as a
// Consumer would.
func NewMessage(topic, channel string, nm *nsq.Message, env envelope.Envelope) *Message {
	return &Message{Envelope: env, NSQ: nm, route: &route{topic: topic, channel: channel, respond: respondPlain}}
}

// Deliver runs h on m as the Consumer does and answers m.NSQ from the
// outcome (see Middleware): at once, or when a handler that went Async
// completes.
func Deliver(ctx context.Context, h Handler, m *Message) {
	err := h.HandleMessage(ctx, m)
	if err != nil || !m.isAsync() {
		m.setFlag(completedFlag) // a late completion does nothing
		m.settle(err, false)
		return
	}
	if m.movePhase(phaseRunning, phaseReturned) {
		return // the completion settles
	}
	var early error // err is nil here: the chain returned nil
	if m.early != nil {
		early = *m.early
	}
	m.settle(early, true)
}

// respondPlain answers nsqd from an outcome without a consumer's metrics.
func respondPlain(m *Message, err error) {
	if err == nil || isFinish(err) {
		m.NSQ.Finish()
		return
	}
	m.NSQ.RequeueWithoutBackoff(requeueDelay(err))
}

// isFinish and requeueDelay read an outcome at the top level only: a
// Finish or Requeue wrapped in another error is an error like any other
// (a wrapped Finish must not drop a message quietly).
func isFinish(err error) bool {
	_, ok := err.(*finishError)
	return ok
}

// requeueDelay is a Requeue outcome's delay, else go-nsq's default
// (DefaultRequeueDelay × attempts, at most MaxRequeueDelay), which go-nsq
// takes a delay of exactly -1 to mean.
func requeueDelay(err error) time.Duration {
	if rq, ok := err.(*requeueError); ok {
		return rq.Delay
	}
	return -1
}

// Topic is the topic the message was consumed from ("" for a Message not
// made by a Consumer or NewMessage).
func (m *Message) Topic() string {
	if m.route == nil {
		return ""
	}
	return m.route.topic
}

// Channel is the channel the message was consumed from (with #ephemeral).
func (m *Message) Channel() string {
	if m.route == nil {
		return ""
	}
	return m.route.channel
}

// Attempts is the delivery attempt (1 on first delivery).
func (m *Message) Attempts() uint16 { return m.NSQ.Attempts }

// Touch resets nsqd's timeout for this message (long-running handlers).
func (m *Message) Touch() { m.NSQ.Touch() }

// LogAttrs are the attributes identifying the message in log records.
func (m *Message) LogAttrs() []any {
	a := []any{"stream", m.Envelope.Stream, "seq", m.Envelope.Seq}
	if m.NSQ != nil {
		a = append(a, "nsq_id", string(m.NSQ.ID[:]))
	}
	if m.Envelope.ID != (envelope.ID{}) {
		a = append(a, "msg_id", m.Envelope.ID.String())
	}
	if m.Envelope.CorrelationID != "" {
		a = append(a, "correlation_id", m.Envelope.CorrelationID)
	}
	return a
}

// Async takes the response over from the handler: the consumer will not
// answer nsqd when the handler returns nil, and the returned func must be
// called once, from any goroutine: its error is the message's outcome,
// seen by every OnOutcome layer (Retry, DeadLetter, ...) as if the handler
// had returned it. A handler that returns an error after Async has its
// outcome decided by that error, and the later call does nothing. Call
// Async at most once per message. The worker uses this to finish a
// reading only when the result's batch was acknowledged, without holding
// a handler goroutine per message.
func (m *Message) Async() func(error) {
	m.setFlag(asyncFlag)
	return m.complete
}

func (m *Message) complete(err error) {
	if !m.setFlag(completedFlag) {
		return
	}
	if err != nil {
		e := err // a copy: boxing the parameter itself would move it to the heap on every call
		m.early = &e
	}
	if m.movePhase(phaseRunning, phaseEarly) {
		return // the chain has not returned: Deliver settles
	}
	m.settle(err, true)
}

// returned is what a layer does when the handler inside it returned err:
// a returned error overrides Async (the outcome is known now, and a later
// completion does nothing).
func (m *Message) returned(err error) {
	if err != nil {
		m.state.And(^uint32(asyncFlag))
		m.setFlag(completedFlag)
	}
}

func (m *Message) deferred() *waiting {
	if m.wait == nil {
		m.wait = &waiting{}
	}
	return m.wait
}

// later registers an OnOutcome layer for the Async completion.
func (m *Message) later(ctx context.Context, f func(context.Context, *Message, error) error) {
	w := m.deferred()
	if w.nhooks < len(w.hooks) {
		w.hooks[w.nhooks] = outcomeHook{ctx, f}
		w.nhooks++
		return
	}
	w.more = append(w.more, outcomeHook{ctx, f})
}

// onAnswer registers f to run once the message is answered, however that
// comes about (AutoTouch stops touching then).
func (m *Message) onAnswer(f func()) {
	w := m.deferred()
	w.cleanups = append(w.cleanups, f)
}

// settle answers nsqd once: from the chain's return, or (viaHooks) from
// the Async completion passed through the waiting OnOutcome layers.
func (m *Message) settle(err error, viaHooks bool) {
	if m.state.Or(phaseSettled)&phaseMask == phaseSettled {
		return
	}
	if w := m.wait; w != nil {
		if viaHooks {
			for _, h := range w.hooks[:w.nhooks] {
				err = runHook(h, m, err)
			}
			for _, h := range w.more {
				err = runHook(h, m, err)
			}
		}
		for _, f := range w.cleanups {
			f()
		}
	}
	if m.route != nil && m.route.respond != nil {
		m.route.respond(m, err)
	}
}

// runHook runs an OnOutcome layer after an Async completion, on the
// completing goroutine, where no Recover is: a panic there is a failure of
// the message, not of the process.
func runHook(h outcomeHook, m *Message, err error) (out error) {
	defer func() {
		if r := recover(); r != nil {
			out = fmt.Errorf("outcome hook panicked: %v (outcome was: %v)", r, err)
		}
	}()
	return h.f(h.ctx, m, err)
}

// Handler handles one message. What its error means is decided by the
// Middleware around it: in a Consumer, nil finishes the message, an error
// requeues it with a delay growing per attempt, and after MaxAttempts
// moves it to the dead-letter topic; a permanent error (see Reject) moves
// it there at once.
type Handler interface {
	HandleMessage(ctx context.Context, m *Message) error
}

// HandlerFunc adapts a func to Handler.
type HandlerFunc func(ctx context.Context, m *Message) error

// HandleMessage calls f.
func (f HandlerFunc) HandleMessage(ctx context.Context, m *Message) error { return f(ctx, m) }
