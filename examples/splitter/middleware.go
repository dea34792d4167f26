package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/svckit/svckit/svckit/pubsub"
)

// SlowLog is a middleware of the splitter's own: it logs every input whose
// outcome took longer than limit, from delivery until the outputs were
// acknowledged (the stage answers asynchronously, so OnOutcome, not the
// handler's return, is when it is done). svckit runs it inside its
// delivery policy: it sees decoded envelopes, and what it returns is what
// Retry and DeadLetter see.
func SlowLog(limit time.Duration, log *slog.Logger) pubsub.Middleware {
	return func(next pubsub.Handler) pubsub.Handler {
		return pubsub.HandlerFunc(func(ctx context.Context, m *pubsub.Message) error {
			start := time.Now()
			return pubsub.OnOutcome(func(_ context.Context, m *pubsub.Message, err error) error {
				if took := time.Since(start); took > limit {
					log.Warn("slow input", append(m.LogAttrs(), "took", took, "err", err)...)
				}
				return err
			})(next).HandleMessage(ctx, m)
		})
	}
}
