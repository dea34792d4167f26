package pubsub_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
)

// A consumer without svckit/service around it (a service gets one with
// its settings from Service.Consumer). It finds nsqlookupd and nsqd in
// Consul, decodes each message's envelope for the handler, and
// dead-letters what cannot be handled: through a producer of its own to
// "<topic>.dead" unless told otherwise.
//
// (Not run here: it needs Consul and NSQ.)
func ExampleNewConsumer() {
	client, err := api.NewClient(api.DefaultConfig()) // CONSUL_HTTP_ADDR, or 127.0.0.1:8500
	if err != nil {
		log.Fatal(err)
	}
	disco := discovery.New(client, discovery.Options{})
	defer disco.Stop()

	h := pubsub.HandlerFunc(func(ctx context.Context, m *pubsub.Message) error {
		fmt.Printf("%s/%d: %s\n", m.Envelope.Stream, m.Envelope.Seq, m.Envelope.Payload)
		return nil // finish; an error requeues, pubsub.Reject(err) dead-letters at once
	})
	c, err := pubsub.NewConsumer(disco.Watch("nsqlookupd"), disco.Watch("nsqd"), h, pubsub.ConsumerOptions{
		Topic: "ticks", Channel: "printer", Ephemeral: true,
		Concurrency: 4,                                   // handler goroutines
		Retry:       pubsub.RetryOptions{MaxAttempts: 5}, // then the message is a dead letter
	})
	if err != nil {
		log.Fatal(err) // an invalid topic or channel name
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := c.Start(ctx); err != nil { // waits for Consul's first answer
		log.Fatal(err)
	}
	<-ctx.Done()
	// Stop takes no new messages and waits for those in flight.
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := c.Stop(sctx); err != nil {
		log.Print(err)
	}
}

// A Batcher turns many publishes to one topic into MPUBs: one write, and
// one answer from nsqd, for many messages, with no added latency below
// saturation (a batch goes at once while MPUBs are free). Each publish
// learns its own outcome through done. A service gets one flushed at
// shutdown from Service.Batcher; a replay.Owner publishes through one.
//
// (Not run here: it needs Consul and NSQ.)
func ExampleProducer_NewBatcher() {
	client, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		log.Fatal(err)
	}
	disco := discovery.New(client, discovery.Options{})
	defer disco.Stop()
	// The producer publishes to one of the passing nsqd instances, and
	// moves to another when it fails.
	p := pubsub.NewProducer(disco.Watch("nsqd"), pubsub.ProducerOptions{})
	defer p.Stop()
	b := p.NewBatcher("ticks", pubsub.BatcherOptions{MaxBatch: 200, MaxDelay: time.Millisecond})

	ctx := context.Background()
	// Envelopes handed over as a group: one hand-over, one answer.
	envs := make([]envelope.Envelope, 100)
	for i := range envs {
		envs[i] = envelope.Envelope{Stream: "ticker-1", Seq: uint64(i + 1), Created: time.Now(),
			ContentType: "text/plain", Payload: []byte("tick")}
	}
	b.PublishEnvelopesAsync(ctx, envs, func(err error) {
		if err != nil {
			log.Printf("the group was not published: %v", err) // a retry is yours to make
		}
	})
	// Or one raw body, waiting for nsqd's answer.
	if err := b.Publish(ctx, []byte("a body that is no envelope")); err != nil {
		log.Print(err)
	}
	// Close publishes what is queued, and gives up on it when ctx ends.
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := b.Close(cctx); err != nil {
		log.Print(err)
	}
}
