package pubsub_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/testenv"
)

// The producer pipelines commands on one connection and matches nsqd's
// answers to them in order. nsqd closes a connection after a fatal error
// (a message over --max-msg-size), so a rejected batch among batches in
// flight must fail alone and permanently, while the batches behind it are
// published on a new connection; and within the rejected batch only the
// message at fault fails: the batcher publishes the batch's items one by
// one, so the other inputs of the batch are not dead-lettered for it. Nothing acknowledged may be lost and
// nothing rejected published. A batch may arrive twice: nsqd closes with
// our next commands unread, the kernel then resets the connection, and an
// answer nsqd had sent can be lost with it, so its batch is retried.
func TestProducerRejectedBatchAmongPipelined(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStackWith(t, testenv.NSQDOptions{ExtraArgs: []string{"--max-msg-size=2048"}})
	e := newEnv(t, stack, 1)
	const topic, channel, stream, n, bad, maxBatch = "pipelined", "c", "stream-pipelined", 5000, 2500, 50
	delivered := newSeqSet()
	e.startConsumer(t, pubsub.HandlerFunc(func(_ context.Context, m *pubsub.Message) error {
		delivered.add(m.Envelope.Seq)
		return nil
	}), pubsub.ConsumerOptions{Topic: topic, Channel: channel, NSQ: nsqConfig(200)})
	waitClients(t, stack.NSQD, topic, channel, 1)
	p := e.producer(t, nil)
	b := p.NewBatcher(topic, pubsub.BatcherOptions{MaxBatch: maxBatch, InFlight: 4})

	results := make([]error, n+1)
	var wg sync.WaitGroup
	wg.Add(n)
	small, big := make([]byte, 200), make([]byte, 4096)
	for seq := 1; seq <= n; seq++ {
		payload := small
		if seq == bad {
			payload = big
		}
		b.PublishEnvelopeAsync(context.Background(), envelope.Envelope{ID: ids.Next(), Stream: stream, Seq: uint64(seq), Payload: payload},
			func(err error) { results[seq] = err; wg.Done() })
	}
	waitGroup(t, &wg, "every done callback")
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	var ok, failed int
	acked := map[uint64]bool{}
	for seq := 1; seq <= n; seq++ {
		err := results[seq]
		if err == nil {
			ok++
			acked[uint64(seq)] = true
			continue
		}
		failed++
		var perm pubsub.PermanentError
		if !errors.As(err, &perm) {
			t.Errorf("seq %d: %v, want a PermanentError (only the rejected batch may fail)", seq, err)
		}
	}
	if results[bad] == nil {
		t.Errorf("the %d-byte message was accepted by an nsqd with --max-msg-size=2048", len(big))
	}
	if failed != 1 {
		t.Errorf("%d messages failed; only the one over --max-msg-size should", failed)
	}
	testenv.WaitFor(t, waitLong, "every acknowledged message delivered", func() bool { return delivered.len() >= ok })
	st := waitDrained(t, stack.NSQD, topic, channel)
	for _, seq := range delivered.keys() {
		if !acked[seq] {
			t.Errorf("seq %d was delivered but its publish failed", seq)
		}
	}
	for seq := range acked {
		if !delivered.has(seq) {
			t.Errorf("seq %d was acknowledged but never delivered", seq)
		}
	}
	t.Logf("%d acknowledged, %d in the rejected batch; nsqd delivered %d messages (%d again after a lost answer)",
		ok, failed, st.messages, int(st.messages)-ok)

	// A single PUB over the limit fails permanently too, and the producer
	// carries on with a new connection.
	err := p.Publish(ctx, topic, big)
	var perm pubsub.PermanentError
	if !errors.As(err, &perm) {
		t.Fatalf("oversized PUB: %v, want a PermanentError", err)
	}
	if err := p.Publish(ctx, topic, envBody(t, stream, n+1)); err != nil {
		t.Fatalf("publish after the rejection: %v", err)
	}
}

// A publish waiting for an nsqd that stopped answering returns when its
// context ends; the unanswered command stays matched to its answer, so when
// nsqd answers again, later publishes get their own answers.
func TestProducerPublishHonoursContext(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t)
	e := newEnv(t, stack, 1)
	const topic, stream = "hung", "stream-hung"
	createTopic(t, stack.NSQD, topic)
	p := e.producer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := p.Publish(ctx, topic, envBody(t, stream, 1)); err != nil {
		t.Fatal(err)
	}

	pid := stack.NSQD.Proc.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// kill(2) returns before every thread has stopped: a publish sent at
	// once can still be answered.
	testenv.WaitFor(t, 10*time.Second, "nsqd's threads stopped", func() bool { return allThreadsStopped(pid) })
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
				t.Error(err)
			}
		}
	}
	defer resume()
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	start := time.Now()
	err := p.Publish(short, topic, envBody(t, stream, 2))
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("publish to a stopped nsqd: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("publish returned %s after its 300ms context ended", d)
	}
	resume()

	for seq := uint64(3); seq <= 10; seq++ {
		if err := p.Publish(ctx, topic, envBody(t, stream, seq)); err != nil {
			t.Fatalf("publish %d after nsqd resumed: %v", seq, err)
		}
	}
	// Message 2 was sent before the context ended, so nsqd has it too.
	if _, msgs, _ := mustStats(t, stack.NSQD).TopicDepth(topic); msgs != 10 {
		t.Errorf("nsqd has %d messages of %s, want 10", msgs, topic)
	}

	// After Stop a publish fails at once instead of retrying until its
	// context ends.
	p.Stop()
	start = time.Now()
	if err := p.Publish(ctx, topic, envBody(t, stream, 11)); !errors.Is(err, pubsub.ErrProducerStopped) {
		t.Errorf("publish after Stop: %v, want ErrProducerStopped", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("publish after Stop took %s", d)
	}
}

// allThreadsStopped reads each thread's state from /proc: T is stopped.
func allThreadsStopped(pid int) bool {
	stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(stats) == 0 {
		return false
	}
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			return false
		}
		// "pid (comm) S ...": the state follows the last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || b[i+2] != 'T' {
			return false
		}
	}
	return true
}

func waitGroup(t *testing.T, wg *sync.WaitGroup, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitLong):
		t.Fatalf("%s: not within %s", what, waitLong)
	}
}

// SIGTERM during an nsqd outage used to hang: publishers blocked on a full
// queue held the batcher's lock and Close waited for it forever. Now Close
// returns when its context ends, every publish is answered, and a publish
// waiting for room gives up when its own context ends.
func TestBatcherCloseWithNSQDHungAndQueueFull(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t)
	e := newEnv(t, stack, 1)
	p := e.producer(t, nil)
	b := p.NewBatcher("hung", pubsub.BatcherOptions{MaxBatch: 10, Queue: 5, InFlight: 1})
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := b.Publish(ctx, envBody(t, "s", 1)); err != nil {
		t.Fatal(err)
	}
	pid := stack.NSQD.Proc.Pid()
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT)
	testenv.WaitFor(t, 10*time.Second, "nsqd's threads stopped", func() bool { return allThreadsStopped(pid) })

	const n = 100
	var wg sync.WaitGroup
	wg.Add(n)
	for seq := 2; seq < 2+n; seq++ {
		go b.PublishAsync(context.Background(), envBody(t, "s", uint64(seq)), func(error) { wg.Done() })
	}
	// A publish with a context of its own gives up waiting for room.
	short, cancelShort := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancelShort()
	if err := b.Publish(short, envBody(t, "s", 1000)); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("publish into a full queue with nsqd hung: %v, want context.DeadlineExceeded", err)
	}
	closeCtx, cancelClose := context.WithTimeout(context.Background(), time.Second)
	defer cancelClose()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- b.Close(closeCtx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Close with nsqd hung: %v, want its context's error", err)
		}
	case <-time.After(waitLong):
		t.Fatal("Close did not return with nsqd hung and publishers blocked on a full queue")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Close took %s with a 1s context", d)
	}
	waitGroup(t, &wg, "every blocked publish answered")
}
