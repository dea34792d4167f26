package main

import (
	"context"
	"fmt"
	"time"

	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/service"
	"github.com/svckit/svckit/svckit/stage"
	"github.com/urfave/cli/v2"
)

// Settings are the splitter's own flags (config.Config has those of every
// service), each declared once in its tags (see config.FlagsOf).
type Settings struct {
	InTopic string `flag:"in-topic" usage:"topic of results"`
	// A channel shared by every splitter: NSQ spreads the results among
	// them, each result to one instance.
	Channel  string        `flag:"channel" usage:"channel shared by all splitters"`
	OutTopic string        `flag:"out-topic" usage:"topic of the parts"`
	Slow     time.Duration `flag:"slow" min:"1ns" usage:"log inputs whose outputs took longer than this to be acknowledged"`
	Upstream string        `flag:"upstream" usage:"Consul service that publishes --in-topic (replay and snapshot requests are relayed to it)"`
}

// DefaultSettings is the value of each of the splitter's flags when
// neither the command line nor the environment gives one.
func DefaultSettings() Settings {
	return Settings{
		InTopic:  pipeline.ResultsTopic,
		Channel:  "splitter",
		OutTopic: "split-results",
		Slow:     time.Second,
		Upstream: "worker",
	}
}

// Spec is the splitter for service.Main.
func Spec(version string) service.Spec {
	return service.Spec{
		Name:    "splitter",
		Usage:   "split each result in two parts, dropping results of a reading of 0",
		Version: version,
		Flags:   config.FlagsOf(DefaultSettings()),
		Setup: func(c *cli.Context, s *service.Service) (func(context.Context) error, error) {
			set := DefaultSettings()
			if err := config.Load(c, &set); err != nil {
				return nil, service.UsageError{Err: err}
			}
			if err := config.CheckMin(set); err != nil {
				return nil, service.UsageError{Err: err}
			}
			// Service.Stage does the rest: consume, run Transform, publish
			// the outputs and finish the input only once nsqd has them all;
			// serve /streams, /replay and /snapshot for the outputs by
			// asking --upstream and running the same Transform (so an app
			// that missed parts recovers them from here, and the splitter
			// keeps no state); tag the instance so that consumers of
			// --out-topic find it.
			_, err := s.Stage(service.StageOptions{
				InTopic: set.InTopic, Channel: set.Channel, OutTopic: set.OutTopic,
				Upstream: set.Upstream, Transform: Transform, Snapshot: MapSnapshot,
				Middleware: []pubsub.Middleware{SlowLog(set.Slow, s.Log)},
			})
			return nil, err // nil loop: the stage only reacts to messages
		},
	}
}

// Transform splits a result r in two parts, or none when r.Value is 0:
//
//	part 0: Result{Value: r.Value, Result: r.Result - r.Result/2}
//	part 1: Result{Value: 0,       Result: r.Result/2}
//
// The parts add up to r (Value and Result), so a consumer's sums do not
// change; its count does. The stage publishes both parts with the input's
// (stream, seq), as parts 0 and 1 of 2, and for a filtered-out input a
// marker: either way a consumer downstream knows that (stream, seq) is
// complete, and still detects gaps exactly.
//
// A transform must depend on its input alone: a replay runs it again and
// must get the same outputs.
func Transform(_ context.Context, in envelope.Envelope) ([]stage.Output, error) {
	if in.ContentType != pipeline.ResultType {
		// Reject: retrying cannot help; the input is dead-lettered and
		// downstream gets a marker with the reason.
		return nil, pubsub.Reject(fmt.Errorf("content type %q, want %q", in.ContentType, pipeline.ResultType))
	}
	r, err := pipeline.UnmarshalResult(in.Payload)
	if err != nil {
		return nil, pubsub.Reject(err)
	}
	if r.Value == 0 {
		return nil, nil // filtered out: the stage publishes a marker
	}
	half := r.Result / 2
	return []stage.Output{
		{ContentType: pipeline.ResultType, Payload: pipeline.MarshalResult(pipeline.Result{Value: r.Value, Result: r.Result - half})},
		{ContentType: pipeline.ResultType, Payload: pipeline.MarshalResult(pipeline.Result{Value: 0, Result: half})},
	}, nil
}

// MapSnapshot maps the upstream's snapshot of a stream (the workers serve
// pipeline.Totals: what an app applying every result would hold) onto the
// totals an app applying this splitter's outputs would hold. A consumer
// that fell behind further than the sensor's retained log reaches starts
// from it.
//
// Every result of a reading other than 0 becomes two parts, of which the
// second has value 0; results of a reading of 0 become nothing. So:
//
//	Count      = 2 × (in.Count − in.Zeros)
//	Sum        = in.Sum         (the parts' values add up to the result's)
//	SumResults = in.SumResults  (and so do their results)
//	Zeros      = in.Count − in.Zeros (one part of value 0 per result kept)
//
// Last and LastSeq are not meaningful downstream of a split: an app sets
// Last to the value of whichever part of its highest sequence it applied
// last (either part may come first), and never sees a filtered-out
// sequence. The mapping sets Last to 0 and LastSeq to the upstream's.
// Compare Count, Sum, SumResults and Zeros.
func MapSnapshot(_ string, _ uint64, upstream []byte) ([]byte, error) {
	in, err := pipeline.UnmarshalTotals(upstream)
	if err != nil {
		return nil, err
	}
	kept := in.Count - in.Zeros
	return pipeline.Totals{
		Count: 2 * kept, Sum: in.Sum, SumResults: in.SumResults, Zeros: kept,
		Last: 0, LastSeq: in.LastSeq,
	}.Marshal(), nil
}
