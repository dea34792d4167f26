// Package worker is the reference pipeline's worker: it consumes readings on a
// channel shared by every worker (NSQ balances the load between them),
// computes the result and publishes it with the reading's stream and
// sequence, so the app can track each reading end to end.
package worker

import (
	"context"
	"fmt"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/service"
	"github.com/urfave/cli/v2"
)

// Spec is the worker service for service.Main.
func Spec(version string) service.Spec {
	return service.Spec{
		Name:    "worker",
		Usage:   "square readings into results (several instances share one channel)",
		Version: version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "in-topic", Value: pipeline.ReadingsTopic, Usage: "topic of readings", EnvVars: config.Env("in-topic")},
			&cli.StringFlag{Name: "channel", Value: pipeline.WorkersChannel, Usage: "channel shared by all workers", EnvVars: config.Env("channel")},
			&cli.StringFlag{Name: "out-topic", Value: pipeline.ResultsTopic, Usage: "topic of results", EnvVars: config.Env("out-topic")},
		},
		Setup: setup,
	}
}

func setup(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
	out, err := s.Batcher(c.String("out-topic"))
	if err != nil {
		return nil, err
	}
	h := &Handler{Out: out}
	if _, err := s.Consumer(pubsub.ConsumerOptions{Topic: c.String("in-topic"), Channel: c.String("channel")}, h); err != nil {
		return nil, service.UsageError{Err: err}
	}
	return nil, nil
}

// Handler computes results and publishes them asynchronously: the reading is
// finished only when nsqd acknowledged the result's batch, so a worker that
// dies mid-way causes redelivery, never loss.
type Handler struct {
	Out interface {
		PublishEnvelopeAsync(ctx context.Context, env envelope.Envelope, done func(error))
	}
}

// HandleMessage implements pubsub.Handler.
func (h *Handler) HandleMessage(ctx context.Context, m *pubsub.Message) error {
	in := m.Envelope
	if in.ContentType != pipeline.ReadingType {
		return pubsub.Reject(fmt.Errorf("content type %q, want %q", in.ContentType, pipeline.ReadingType))
	}
	r, err := pipeline.UnmarshalReading(in.Payload)
	if err != nil {
		return pubsub.Reject(err)
	}
	// The batcher encodes the result into its reused buffer; an envelope it
	// cannot encode comes back through done as an error (requeue, then the
	// dead-letter topic).
	h.Out.PublishEnvelopeAsync(ctx, ResultEnvelope(in, pipeline.Compute(r)), m.Async())
	return nil
}

// ResultEnvelope is the result derived from the reading envelope in: the
// same stream and sequence, which identify the reading it came from (the
// app deduplicates and detects gaps by them), and the same creation time
// (so end-to-end latency is measurable). A correlation id the reading
// carried is passed on.
func ResultEnvelope(in envelope.Envelope, res pipeline.Result) envelope.Envelope {
	return envelope.Envelope{
		ID: in.ID, Stream: in.Stream, Seq: in.Seq, Created: in.Created,
		ContentType: pipeline.ResultType, CorrelationID: in.CorrelationID,
		Payload: pipeline.MarshalResult(res),
	}
}
