package service

import (
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/stage"
)

// StageOptions configures Service.Stage. InTopic, Channel, OutTopic and
// Transform (or Append) are required; the other zero values mean none.
type StageOptions struct {
	InTopic  string // the topic consumed
	Channel  string // its channel, shared by the stage's instances
	OutTopic string // where the outputs go
	// Upstream is the Consul service that produces InTopic (a stream's
	// owner, or another stage): replay requests for this stage's outputs
	// are relayed to it.
	Upstream  string
	Transform stage.Transform
	// Append, if set instead of Transform, is the transform in its
	// allocation-free form (stage.AppendTransform).
	Append stage.AppendTransform
	// Snapshot, if set, maps the upstream's snapshots for downstream.
	Snapshot stage.SnapshotMapper
	// Middleware wraps the stage inside svckit's delivery policy (see
	// pubsub.Middleware).
	Middleware []pubsub.Middleware
}

// Stage runs a stage in this service: it consumes InTopic on Channel, runs
// Transform on every input, publishes the outputs to OutTopic (finishing
// the input once they were all acknowledged), and serves /streams,
// /replay and /snapshot for its outputs by relaying to Upstream. The
// instance is tagged replay-relay and publishes=<OutTopic> in Consul, so
// that downstream consumers (and `svckit replay --publish`) find it.
func (s *Service) Stage(o StageOptions) (*stage.Stage, error) {
	out, err := s.Batcher(o.OutTopic)
	if err != nil {
		return nil, err
	}
	var up replay.Instances
	if o.Upstream != "" {
		up = s.Discovery.Watch(o.Upstream)
	}
	st, err := stage.New(stage.Options{
		Name: s.Config.Name, Transform: o.Transform, Append: o.Append, Snapshot: o.Snapshot, Out: out,
		Upstream: up, Secret: s.Config.ReplaySecret, Logger: s.Log,
	})
	if err != nil {
		return nil, UsageError{err}
	}
	if _, err := s.Consumer(pubsub.ConsumerOptions{Topic: o.InTopic, Channel: o.Channel, Middleware: o.Middleware}, st); err != nil {
		return nil, UsageError{err}
	}
	s.replayServer().SetRelay(st)
	s.AddTags(replay.RelayTag, replay.PublishesTag(o.OutTopic), replay.ConsumesTag(o.InTopic))
	return st, nil
}
