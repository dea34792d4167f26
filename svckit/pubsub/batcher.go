package pubsub

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/tracing"
)

// ErrBatcherClosed is returned by a publish after Close.
var ErrBatcherClosed = errors.New("batching publisher closed")

// BatcherOptions configures a Batcher. Zero values take the defaults
// named on each field.
type BatcherOptions struct {
	MaxBatch int           // largest MPUB in messages; default 200
	MaxDelay time.Duration // longest wait to fill the batch taking the last in-flight slot; default 1ms
	Queue    int           // publish calls buffered ahead of the publishing goroutine (a group of envelopes is one); default 4*MaxBatch
	// MaxBytes is the largest MPUB body; default DefaultMaxBatchBytes.
	// nsqd refuses a larger one as a whole (E_BAD_BODY, past its
	// --max-body-size), which would fail every message in it for good, so
	// a batch that would exceed it goes as several MPUBs.
	MaxBytes int
	// MaxMsgSize is the largest message nsqd takes; default
	// DefaultMaxMsgSize. nsqd answers a larger one with a fatal error and
	// closes the connection (failing every command pipelined behind it), so
	// the batcher fails such a message alone, before sending it.
	MaxMsgSize int
	// InFlight is how many batches may await nsqd's acknowledgement at
	// once; default 4. go-nsq pipelines them over one connection, so a
	// publisher is not limited to one batch per round trip.
	InFlight int
	// Tracer, if set, makes a send span of every PublishEnvelopeAsync and
	// PublishEnvelopesAsync call (a child of the span in its ctx: a
	// stage's process span), ended by nsqd's answer; an envelope without
	// a trace context gets the span's (svckit/tracing).
	Tracer *tracing.Tracer
}

// batchItem is one publish call's messages: a body, an envelope, or a
// group of envelopes that travels in one MPUB.
type batchItem struct {
	env  envelope.Envelope   // kindEnv: encoded into the batch's arena; kindBody: the body is env.Payload
	envs []envelope.Envelope // kindEnvs: at most MaxBatch
	done func(error)
	kind itemKind
}

type itemKind uint8

const (
	kindBody itemKind = iota
	kindEnv
	kindEnvs
)

// msgs is how many messages the item adds to an MPUB.
func (it *batchItem) msgs() int {
	if it.kind == kindEnvs {
		return len(it.envs)
	}
	return 1
}

type batchBufs struct {
	items []batchItem
	arena []byte // the batch's MPUB body
}

// DefaultMaxBatchBytes is nsqd's default --max-body-size (5 MiB).
const DefaultMaxBatchBytes = 5 << 20

// DefaultMaxMsgSize is nsqd's default --max-msg-size (1 MiB).
const DefaultMaxMsgSize = 1 << 20

// maxKeptArena bounds the encoding buffer a batch keeps for reuse: a batch
// of huge envelopes should not pin their memory.
const maxKeptArena = 1 << 20

// Batcher turns many concurrent single publishes to one topic into MPUB
// batches. Each publish learns the outcome of its own batch, so a caller can
// acknowledge its input only after its output was accepted by nsqd.
//
// Batching costs no latency below saturation: a batch is sent at once while
// a slot for it is free; MaxDelay only applies to the batch that takes the
// last free slot.
type Batcher struct {
	p     *Producer
	topic string
	o     BatcherOptions
	ctx   context.Context // bounds retries; cancelled by Close after the drain timeout
	stop  context.CancelFunc

	// closing is closed first by Close, so that publishers waiting for
	// room in a full queue (holding mu's read lock) give up and let Close
	// take the write lock: with nsqd away the queue stays full, and a
	// Close that waited for them never returned (SIGTERM hung).
	closing   chan struct{}
	closeOnce sync.Once
	mu        sync.RWMutex
	closed    bool
	in        chan batchItem
	done      chan struct{}
	spans     *tracing.Destination // nil: tracing off
}

// NewBatcher starts a batching publisher for topic.
func (p *Producer) NewBatcher(topic string, o BatcherOptions) *Batcher {
	if o.MaxBatch <= 0 {
		o.MaxBatch = 200
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = time.Millisecond
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBatchBytes
	}
	if o.MaxMsgSize <= 0 {
		o.MaxMsgSize = DefaultMaxMsgSize
	}
	if o.Queue <= 0 {
		o.Queue = 4 * o.MaxBatch
	}
	if o.InFlight <= 0 {
		o.InFlight = 4
	}
	ctx, stop := context.WithCancel(context.Background())
	b := &Batcher{p: p, topic: topic, o: o, ctx: ctx, stop: stop, closing: make(chan struct{}),
		in: make(chan batchItem, o.Queue), done: make(chan struct{}), spans: o.Tracer.Topic(topic, "")}
	go b.run()
	return b
}

// PublishAsync queues body; done is called exactly once with the outcome, from
// the publishing goroutine (keep it short). body must not change until then.
// ctx bounds the wait for room in the queue (done gets ctx's error); once
// queued, the message's batch is retried until acknowledged or Close gives
// up.
func (b *Batcher) PublishAsync(ctx context.Context, body []byte, done func(error)) {
	b.enqueue(ctx, batchItem{env: envelope.Envelope{Payload: body}, kind: kindBody, done: done})
}

// PublishEnvelopeAsync is PublishAsync for an envelope: the batcher encodes
// it into a buffer it reuses for every batch, where PublishAsync needs a
// body allocated per message. done is called exactly once, with the
// encoding error if the envelope cannot be encoded. env's Payload must not
// change until then.
func (b *Batcher) PublishEnvelopeAsync(ctx context.Context, env envelope.Envelope, done func(error)) {
	if b.spans != nil {
		var span tracing.Span
		ctx, span = b.spans.Send(ctx)
		span.Created(&env)
		span.Messages(env.Stream, env.Seq, env.Seq)
		done = endSpan(span, done)
	}
	b.enqueue(ctx, batchItem{env: env, kind: kindEnv, done: done})
}

// Traces reports whether the batcher makes send spans (a Tracer was
// given): a stage then leaves its outputs' creation context to them.
func (b *Batcher) Traces() bool { return b.spans != nil }

// endSpan is done, ending span first.
func endSpan(span tracing.Span, done func(error)) func(error) {
	return func(err error) {
		span.End(err)
		done(err)
	}
}

// PublishEnvelopesAsync is PublishEnvelopeAsync for envelopes produced
// together: they are queued as one unit (one hand-over to the publishing
// goroutine, not one per envelope) and travel in the same MPUB, or in
// consecutive MPUBs if they are more than MaxBatch or MaxBytes. done is called
// exactly once: nil when nsqd acknowledged all of them, else the first
// error (an envelope that cannot be encoded fails its whole MPUB's share,
// which is then not sent). envs and their payloads must not change until
// then. With a Tracer, an envelope without a trace context is published
// with the send span's (envs itself is not written).
func (b *Batcher) PublishEnvelopesAsync(ctx context.Context, envs []envelope.Envelope, done func(error)) {
	if len(envs) == 0 {
		done(nil)
		return
	}
	if b.spans != nil {
		var span tracing.Span
		ctx, span = b.spans.Send(ctx)
		// A copy gets the contexts: the caller's envelopes are only read
		// (the same slice may go to several topics).
		envs = slices.Clone(envs)
		for i := range envs {
			span.Created(&envs[i])
		}
		if len(envs) == 1 {
			span.Messages(envs[0].Stream, envs[0].Seq, envs[0].Seq)
		} else {
			span.Batch(len(envs))
		}
		done = endSpan(span, done)
	}
	chunks := b.chunks(envs)
	chunkDone := done
	if len(chunks) > 1 {
		chunkDone = joinDone(len(chunks), done)
	}
	for _, c := range chunks {
		b.enqueue(ctx, batchItem{envs: c, kind: kindEnvs, done: chunkDone})
	}
}

// enqueue hands it to the publishing goroutine, or answers it at once when
// the batcher is closed or ctx ends while the queue is full.
func (b *Batcher) enqueue(ctx context.Context, it batchItem) {
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		it.done(ErrBatcherClosed)
		return
	}
	select {
	case b.in <- it:
		b.mu.RUnlock()
	case <-b.closing:
		b.mu.RUnlock()
		it.done(ErrBatcherClosed)
	case <-ctx.Done():
		b.mu.RUnlock()
		it.done(fmt.Errorf("queueing a publish to %s: %w", b.topic, context.Cause(ctx)))
	}
}

// chunks splits envs into groups of at most MaxBatch envelopes that fit an
// MPUB body of MaxBytes. Sizes are bounded from above without encoding
// (Envelope.MaxEncodedLen), so a group may be cut a little early, never too
// late.
func (b *Batcher) chunks(envs []envelope.Envelope) [][]envelope.Envelope {
	var out [][]envelope.Envelope
	start, size := 0, 4 // MPUB's count
	for i := range envs {
		l := 4 + envs[i].MaxEncodedLen()
		if i > start && (i-start == b.o.MaxBatch || size+l > b.o.MaxBytes) {
			out = append(out, envs[start:i:i])
			start, size = i, 4
		}
		size += l
	}
	return append(out, envs[start:len(envs):len(envs)])
}

// joinDone returns a callback to be called n times that calls done once,
// after the n-th call, with the first error.
func joinDone(n int, done func(error)) func(error) {
	var mu sync.Mutex
	var first error
	return func(err error) {
		mu.Lock()
		n--
		if first == nil {
			first = err
		}
		last, err := n == 0, first
		mu.Unlock()
		if last {
			done(err)
		}
	}
}

// Publish queues body and waits until its batch was acknowledged or ctx ended.
func (b *Batcher) Publish(ctx context.Context, body []byte) error {
	return await(ctx, func(done func(error)) { b.PublishAsync(ctx, body, done) })
}

func (b *Batcher) run() {
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		close(b.done)
	}()
	slots := make(chan struct{}, b.o.InFlight)
	// Batches' slices are reused: at most InFlight+1 exist at once, and a
	// fresh pair per batch was most of the batcher's garbage.
	free := make(chan *batchBufs, b.o.InFlight+1)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	// A group of envelopes that did not fit in the batch being filled
	// starts the next one.
	var carry batchItem
	hasCarry := false
	for {
		var it batchItem
		if hasCarry {
			it, hasCarry = carry, false
		} else {
			var ok bool
			if it, ok = <-b.in; !ok {
				return
			}
		}
		var bufs *batchBufs
		select {
		case bufs = <-free:
		default:
			bufs = &batchBufs{items: make([]batchItem, 0, b.o.MaxBatch)}
		}
		items, msgs := append(bufs.items[:0], it), it.msgs()
		items, msgs = b.take(items, msgs, &carry, &hasCarry)
		// Linger to fill a partial batch only when it would take the last
		// free slot: the publisher is then saturated anyway, and fewer,
		// larger MPUBs cost nsqd and this process fewer system calls.
		// Otherwise a batch goes at once, so batching costs no latency
		// below saturation.
		if msgs < b.o.MaxBatch && !hasCarry && len(slots) >= b.o.InFlight-1 {
			timer.Reset(b.o.MaxDelay)
		fill:
			for msgs < b.o.MaxBatch {
				select {
				case it, ok := <-b.in:
					if !ok {
						break fill
					}
					if msgs+it.msgs() > b.o.MaxBatch {
						carry, hasCarry = it, true
						break fill
					}
					items, msgs = append(items, it), msgs+it.msgs()
				case <-timer.C:
					break fill
				}
			}
			timer.Stop()
		}
		slots <- struct{}{} // at most InFlight batches awaiting nsqd
		// What queued while waiting for a slot rides along.
		items, _ = b.take(items, msgs, &carry, &hasCarry)
		wg.Add(1)
		go func() {
			defer func() { <-slots; wg.Done() }()
			arena := bufs.arena[:0]
			// Usually one MPUB; more if the batch's bytes exceed MaxBytes.
			for rest := items; len(rest) > 0; {
				var n, used int
				arena, n, used = b.encode(arena[:0], rest)
				var err error
				if n > 0 {
					err = b.p.multiPublishEncoded(b.ctx, b.topic, n, arena)
				}
				if used > 1 && isPermanentErr(err) {
					// nsqd refused the MPUB as a whole for something one
					// message did: publish each item on its own, so that
					// only the items at fault fail and the rest (other
					// callers' inputs) go through.
					arena = b.publishEach(arena, rest[:used])
				} else {
					for _, it := range rest[:used] {
						if it.done != nil {
							it.done(err)
						}
					}
				}
				rest = rest[used:]
			}
			// Drop the references so the bodies can be collected while
			// the slice waits for reuse.
			clear(items)
			bufs.items = items[:0]
			if cap(arena) <= maxKeptArena {
				bufs.arena = arena[:0]
			}
			select {
			case free <- bufs:
			default:
			}
		}()
	}
}

// publishEach publishes every item as an MPUB of its own and answers each
// with its own outcome; it returns the arena for reuse.
func (b *Batcher) publishEach(arena []byte, items []batchItem) []byte {
	for i := range items {
		if items[i].done == nil {
			continue // answered already, when the batch was encoded
		}
		var n int
		arena, n, _ = b.encode(arena[:0], items[i:i+1])
		var err error
		if n > 0 {
			err = b.p.multiPublishEncoded(b.ctx, b.topic, n, arena)
		}
		if items[i].done != nil {
			items[i].done(err)
		}
	}
	return arena
}

func isPermanentErr(err error) bool {
	var pe PermanentError
	return errors.As(err, &pe)
}

// encode appends items to arena as an MPUB body (a big-endian u32 count,
// then each message as a u32 length and its bytes) and returns it with the
// count of messages and of items used: items stop before the one that
// would take the body past MaxBytes (but at least one message goes). An
// envelope that cannot be encoded is answered at once and left out (its
// done set to nil).
func (b *Batcher) encode(arena []byte, items []batchItem) ([]byte, int, int) {
	arena = append(arena, 0, 0, 0, 0)
	n := 0
	for i := range items {
		it := &items[i]
		start := len(arena)
		var err error
		switch it.kind {
		case kindBody:
			arena = appendMessage(arena, it.env.Payload)
		case kindEnv:
			arena, err = appendEnvelope(arena, &it.env)
		case kindEnvs:
			for j := 0; j < len(it.envs) && err == nil; j++ {
				arena, err = appendEnvelope(arena, &it.envs[j])
			}
		}
		if err != nil {
			err = PermanentError{fmt.Errorf("encoding an envelope for %s: %w", b.topic, err)}
		}
		if err == nil {
			err = b.checkSizes(arena[start:])
		}
		if err != nil {
			arena = arena[:start]
			it.done(err)
			it.done = nil // answered: not part of the batch
			continue
		}
		if b.o.MaxBytes > 0 && len(arena) > b.o.MaxBytes && n > 0 {
			arena = arena[:start] // the next MPUB's first
			binary.BigEndian.PutUint32(arena, uint32(n))
			return arena, n, i
		}
		n += it.msgs()
	}
	binary.BigEndian.PutUint32(arena, uint32(n))
	return arena, n, len(items)
}

// checkSizes fails an item (its messages in MPUB layout) with a message
// larger than MaxMsgSize: nsqd would refuse it with a fatal error.
func (b *Batcher) checkSizes(msgs []byte) error {
	for b.o.MaxMsgSize > 0 && len(msgs) >= 4 {
		n := int(binary.BigEndian.Uint32(msgs))
		if n > b.o.MaxMsgSize {
			return PermanentError{fmt.Errorf("publishing to %s: a message of %d bytes exceeds nsqd's --max-msg-size of %d", b.topic, n, b.o.MaxMsgSize)}
		}
		msgs = msgs[4+n:]
	}
	return nil
}

// appendMessage appends one MPUB message: a u32 length and the body.
func appendMessage(arena, body []byte) []byte {
	arena = binary.BigEndian.AppendUint32(arena, uint32(len(body)))
	return append(arena, body...)
}

// appendEnvelope appends env encoded as one MPUB message.
func appendEnvelope(arena []byte, env *envelope.Envelope) ([]byte, error) {
	at := len(arena)
	arena, err := env.Append(append(arena, 0, 0, 0, 0))
	if err != nil {
		return arena[:at], err
	}
	binary.BigEndian.PutUint32(arena[at:], uint32(len(arena)-at-4))
	return arena, nil
}

// take appends what is already queued, without waiting, up to MaxBatch
// messages (msgs are in items already). An item that would overflow the
// batch goes to *carry, and taking stops.
func (b *Batcher) take(items []batchItem, msgs int, carry *batchItem, hasCarry *bool) ([]batchItem, int) {
	for !*hasCarry && msgs < b.o.MaxBatch {
		select {
		case it, ok := <-b.in:
			if !ok {
				return items, msgs
			}
			if msgs+it.msgs() > b.o.MaxBatch {
				*carry, *hasCarry = it, true
				return items, msgs
			}
			items, msgs = append(items, it), msgs+it.msgs()
		default:
			return items, msgs
		}
	}
	return items, msgs
}

// Close publishes what is queued (retrying until ctx ends, then failing the
// rest) and stops the batcher.
func (b *Batcher) Close(ctx context.Context) error {
	b.closeOnce.Do(func() { close(b.closing) })
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.in)
	}
	b.mu.Unlock()
	select {
	case <-b.done:
		b.stop()
		return nil
	case <-ctx.Done():
		b.stop() // fail the retries in progress
		<-b.done
		return context.Cause(ctx)
	}
}
