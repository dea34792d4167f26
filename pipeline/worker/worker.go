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

// Settings are the worker's own flags (config.Config has the common ones),
// each declared once in its tags (see config.FlagsOf).
type Settings struct {
	InTopic  string `flag:"in-topic" usage:"topic of readings"`
	Channel  string `flag:"channel" usage:"channel shared by all workers"`
	OutTopic string `flag:"out-topic" usage:"topic of results"`
	Upstream string `flag:"upstream" usage:"Consul service that publishes the readings (replay requests are relayed to it)"`
	// A tag is a constant: its 1000000 is MaxFactor (a test keeps them
	// equal).
	Factor int64 `flag:"factor" usage:"a result is factor × value² (1..1000000)"`
}

// DefaultSettings is the value of each of the worker's flags when neither
// the command line nor the environment gives one.
func DefaultSettings() Settings {
	return Settings{
		InTopic:  pipeline.ReadingsTopic,
		Channel:  pipeline.WorkersChannel,
		OutTopic: pipeline.ResultsTopic,
		Upstream: "sensor",
		Factor:   1,
	}
}

// Spec is the worker service for service.Main.
func Spec(version string) service.Spec {
	return service.Spec{
		Name:    "worker",
		Usage:   "compute factor × value² of readings into results (several instances share one channel)",
		Version: version,
		Flags:   config.FlagsOf(DefaultSettings()),
		Setup:   setup,
	}
}

func setup(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
	set := DefaultSettings()
	if err := config.Load(c, &set); err != nil {
		return nil, service.UsageError{Err: err}
	}
	if set.Factor < 1 || set.Factor > MaxFactor {
		return nil, service.UsageError{Err: fmt.Errorf("--factor %d: want 1..%d", set.Factor, MaxFactor)}
	}
	_, err := s.Stage(service.StageOptions{
		InTopic: set.InTopic, Channel: set.Channel, OutTopic: set.OutTopic,
		Upstream: set.Upstream, Append: AppendTransform(set.Factor), Snapshot: Snapshot(set.Factor),
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
