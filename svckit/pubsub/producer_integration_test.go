package pubsub_test

import (
	"context"
	"errors"
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
// published exactly once on a new connection.
func TestProducerRejectedBatchAmongPipelined(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStackWith(t, testenv.NSQDOptions{ExtraArgs: []string{"--max-msg-size=2048"}})
	e := newEnv(t, stack, 1)
	const topic, stream, n, bad, maxBatch = "pipelined", "stream-pipelined", 5000, 2500, 50
	createTopic(t, stack.NSQD, topic)
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
		b.PublishEnvelopeAsync(envelope.Envelope{ID: ids.Next(), Stream: stream, Seq: uint64(seq), Payload: payload},
			func(err error) { results[seq] = err; wg.Done() })
	}
	waitGroup(t, &wg, "every done callback")
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	var ok, failed int
	for seq := 1; seq <= n; seq++ {
		err := results[seq]
		if err == nil {
			ok++
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
	if failed > maxBatch {
		t.Errorf("%d messages failed; only the rejected batch (at most %d) should", failed, maxBatch)
	}
	st := mustStats(t, stack.NSQD)
	if _, msgs, _ := st.TopicDepth(topic); msgs != uint64(ok) {
		t.Errorf("nsqd has %d messages of %s; %d publishes were acknowledged (want exactly those, once)", msgs, topic, ok)
	}
	t.Logf("%d acknowledged, %d in the rejected batch", ok, failed)

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
