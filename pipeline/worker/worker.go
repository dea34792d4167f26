// Package worker is the reference pipeline's worker: a stage that consumes
// readings on a channel shared by every worker (NSQ balances the load
// between them) and publishes factor × value² as the result, with the
// reading's stream and sequence. It serves replay for its results by
// relaying to the sensor, so the app recovers what it missed from the
// workers, never computing a result itself.
package worker

import (
	"context"
	"fmt"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/service"
	"github.com/svckit/svckit/svckit/stage"
	"github.com/urfave/cli/v2"
)

// MaxFactor bounds --factor: results must fit int64 sums.
const MaxFactor = 1_000_000

// Spec is the worker service for service.Main.
func Spec(version string) service.Spec {
	return service.Spec{
		Name:    "worker",
		Usage:   "compute factor × value² of readings into results (several instances share one channel)",
		Version: version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "in-topic", Value: pipeline.ReadingsTopic, Usage: "topic of readings", EnvVars: config.Env("in-topic")},
			&cli.StringFlag{Name: "channel", Value: pipeline.WorkersChannel, Usage: "channel shared by all workers", EnvVars: config.Env("channel")},
			&cli.StringFlag{Name: "out-topic", Value: pipeline.ResultsTopic, Usage: "topic of results", EnvVars: config.Env("out-topic")},
			&cli.StringFlag{Name: "upstream", Value: "sensor", Usage: "Consul service that publishes the readings (replay requests are relayed to it)", EnvVars: config.Env("upstream")},
			&cli.Int64Flag{Name: "factor", Value: 1, Usage: fmt.Sprintf("a result is factor × value² (1..%d)", MaxFactor), EnvVars: config.Env("factor")},
		},
		Setup: setup,
	}
}

func setup(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
	factor := c.Int64("factor")
	if factor < 1 || factor > MaxFactor {
		return nil, service.UsageError{Err: fmt.Errorf("--factor %d: want 1..%d", factor, MaxFactor)}
	}
	_, err := s.Stage(service.StageOptions{
		InTopic: c.String("in-topic"), Channel: c.String("channel"), OutTopic: c.String("out-topic"),
		Upstream: c.String("upstream"), Append: AppendTransform(factor), Snapshot: Snapshot(factor),
	})
	return nil, err
}

// AppendTransform is the worker's stage, one result per reading, in the
// allocation-free form (stage.AppendTransform): a relayed replay computes
// every result again, and one small allocation per result cost the
// relaying worker about a third of its CPU in garbage collection.
func AppendTransform(factor int64) stage.AppendTransform {
	return func(_ context.Context, in envelope.Envelope, outs []stage.Output, buf []byte) ([]stage.Output, []byte, error) {
		if in.ContentType != pipeline.ReadingType {
			return outs, buf, pubsub.Reject(fmt.Errorf("content type %q, want %q", in.ContentType, pipeline.ReadingType))
		}
		r, err := pipeline.UnmarshalReading(in.Payload)
		if err != nil {
			return outs, buf, pubsub.Reject(err)
		}
		start := len(buf)
		buf = pipeline.AppendResult(buf, pipeline.Compute(r, factor))
		return append(outs, stage.Output{ContentType: pipeline.ResultType, Payload: buf[start:]}), buf, nil
	}
}

// Snapshot maps the sensor's fold (pipeline.Aggregate) onto the app's
// state (pipeline.Totals) with the worker's factor.
func Snapshot(factor int64) stage.SnapshotMapper {
	return func(_ string, _ uint64, upstream []byte) ([]byte, error) {
		a, err := pipeline.UnmarshalAggregate(upstream)
		if err != nil {
			return nil, err
		}
		return pipeline.TotalsOf(a, factor).Marshal(), nil
	}
}
