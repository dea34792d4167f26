package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

type finished chan struct{}

func (f finished) OnFinish(*nsq.Message)                       { close(f) }
func (f finished) OnRequeue(*nsq.Message, time.Duration, bool) { close(f) }
func (finished) OnTouch(*nsq.Message)                          {}

// SlowLog, without nsqd: an input answered asynchronously after the limit
// is logged once it is answered, a fast one is not.
func TestSlowLog(t *testing.T) {
	var logged bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logged, nil))
	release := make(chan struct{})
	h := pubsub.Chain(pubsub.HandlerFunc(func(_ context.Context, m *pubsub.Message) error {
		if m.Envelope.Seq == 1 {
			return nil // fast
		}
		done := m.Async()
		go func() { <-release; done(nil) }()
		return nil
	}), SlowLog(time.Millisecond, log))
	deliver := func(seq uint64) finished {
		nm := nsq.NewMessage(nsq.MessageID{}, nil)
		f := make(finished)
		nm.Delegate = f
		pubsub.Deliver(context.Background(), h, pubsub.NewMessage("results", "splitter", nm, envelope.Envelope{Stream: "s", Seq: seq}))
		return f
	}
	<-deliver(1)
	slow := deliver(2)
	deadline := time.Now().Add(10 * time.Second)
	start := time.Now()
	for time.Since(start) <= time.Millisecond { // past the limit, then answer
		if time.Now().After(deadline) {
			t.Fatal("clock stuck")
		}
	}
	close(release)
	<-slow
	out := logged.String()
	if strings.Count(out, "slow input") != 1 || !strings.Contains(out, "seq=2") {
		t.Fatalf("log %q, want one slow input, seq 2", out)
	}
}
