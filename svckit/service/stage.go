package service

import (
	"errors"
	"net/http"
	"slices"
	"time"

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
	// TailInterval is how often the stage asks Upstream for its streams'
	// last sequences, for its lag; default 5s, a tracking consumer's
	// (replay.TrackerOptions.TailInterval).
	TailInterval time.Duration
}

// Stage runs a stage in this service: it consumes InTopic on Channel, runs
// Transform on every input, publishes the outputs to OutTopic (finishing
// the input once they were all acknowledged), and serves /streams,
// /replay and /snapshot for its outputs by relaying to Upstream. The
// instance is tagged replay-relay and publishes=<OutTopic> in Consul, so
// that downstream consumers (and `svckit replay --publish`) find it.
//
// It keeps the stage's lag in every stream it sees (its position: the
// point up to which every input is finished, just before the lowest it
// holds unfinished; against Upstream's last sequence, asked every
// TailInterval), exported as svckit_stream_lag_messages and
// svckit_stream_lag_seconds, as a tracking consumer's, and served on GET
// /stage (stage.StatusPath) behind the replay secret. A service runs one
// stage: its relay and GET /stage are the service's.
func (s *Service) Stage(o StageOptions) (*stage.Stage, error) {
	// The replay server relays for one stage, and GET /stage is one
	// route: a second stage would take the first one's relay over (and
	// the HTTP server would panic on the route). The relay tag is what a
	// stage leaves on its service.
	if slices.Contains(s.tags, replay.RelayTag) {
		return nil, UsageError{errors.New("this service already runs a stage (tag " + replay.RelayTag + "): run another stage as a service of its own")}
	}
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
		// The service's one set of replay collectors: a tracker, an owner
		// or the replay server of the same service write the same ones,
		// registered once.
		Metrics: s.ReplayMetrics(), TailInterval: o.TailInterval,
	})
	if err != nil {
		return nil, UsageError{err}
	}
	if _, err := s.Consumer(pubsub.ConsumerOptions{Topic: o.InTopic, Channel: o.Channel, Middleware: o.Middleware}, st); err != nil {
		return nil, UsageError{err}
	}
	s.replayServer().SetRelay(st)
	// The stage's lag in its streams shows the pipeline's data, as a
	// tracker's /streams does: with a replay secret, only its holders
	// read it (the console signs its requests with it).
	s.HTTP.Handle("GET "+stage.StatusPath, replay.RequireSecret(s.Config.ReplaySecret, s.Config.Name, http.HandlerFunc(st.ServeStatus)))
	s.Go(st.Run) // the upstream's last sequences, the lag gauges
	s.AddTags(replay.RelayTag, replay.PublishesTag(o.OutTopic), replay.ConsumesTag(o.InTopic))
	return st, nil
}
