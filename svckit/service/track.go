package service

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"

	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
)

// TrackOptions configures Service.Track. Topic, Channel and Upstream are
// required; zero values in Tracker take the tracker's defaults.
type TrackOptions struct {
	Topic string // the topic consumed
	// Channel is the channel's base name. Each instance gets an ephemeral
	// channel of its own (the name with its instance id appended), so that
	// every instance sees every message and nsqd keeps nothing for an
	// instance that is away: replay is what recovers its messages.
	Channel string
	// Shared makes Channel a durable channel shared by the instances
	// instead (each message to one of them).
	Shared bool
	// Upstream is the Consul service that publishes Topic (a stream's
	// owner, or a stage): missed messages are replayed from it.
	Upstream string
	// Accept, if set, sees every live message before the tracker: an
	// error rejects it (a dead letter, pubsub.Reject's way); a content
	// type check, say, or a latency measurement returning nil.
	Accept func(*pubsub.Message) error
	// Middleware wraps the tracker inside svckit's delivery policy (see
	// pubsub.Middleware). It sees live messages only: what the tracker
	// recovers by replay is applied without it, so a middleware must not
	// change what is applied (a check or a measurement, as Accept is).
	Middleware []pubsub.Middleware
	// Tracker tunes the tracker (CheckpointInterval, GapGrace, MaxBatch,
	// TailInterval, MaxAhead; zero values are the defaults). Track sets
	// what the service knows: the upstream, the replay secret, the dead
	// letters, the logger, the metrics, and the checkpoint, which is
	// <data dir>/checkpoint.json unless CheckpointPath says otherwise.
	Tracker replay.TrackerOptions
}

// Track runs a tracking consumer in this service: it consumes Topic on its
// channel and applies each (stream, seq) to a exactly once, restarts
// included (the state and what was applied are checkpointed together).
// It notices gaps, recovers them from Upstream (a replay, or a snapshot
// when the upstream no longer has them), keeps what cannot be applied as a
// dead letter of Topic and the channel, serves the streams' positions on
// GET /streams (behind the replay secret), says on /ready when a stream
// cannot be completed, and saves the checkpoint when the service stops.
// The tracker is returned for what else the service shows of it.
func (s *Service) Track(a replay.Applier, o TrackOptions) (*replay.Tracker, error) {
	switch {
	case o.Topic == "":
		return nil, UsageError{errors.New("a tracking consumer needs a topic")}
	case o.Channel == "":
		return nil, UsageError{errors.New("a tracking consumer needs a channel")}
	case o.Upstream == "":
		return nil, UsageError{errors.New("a tracking consumer needs its upstream: the Consul service that publishes " + o.Topic)}
	}
	channel := o.Channel
	if !o.Shared {
		channel = pubsub.InstanceChannel(channel, s.Config.InstanceID)
	}
	// A replayed message the tracker cannot apply is a dead letter of this
	// topic and channel, kept like the consumer's and listed with them.
	deadLetter, err := s.TrackerDeadLetter(o.Topic, channel)
	if err != nil {
		return nil, err
	}
	to := o.Tracker
	if to.CheckpointPath == "" {
		to.CheckpointPath = filepath.Join(s.Config.DataDir, "checkpoint.json")
	}
	to.Owners = s.Discovery.Watch(o.Upstream)
	to.Tracer, to.Topic, to.Channel = s.Tracer, o.Topic, channel
	to.Secret = s.Config.ReplaySecret
	to.DeadLetter = deadLetter
	to.Logger = s.Log
	to.Metrics = s.ReplayMetrics()
	tr, err := replay.NewTracker(a, to)
	if err != nil {
		return nil, err
	}
	h := pubsub.HandlerFunc(func(ctx context.Context, m *pubsub.Message) error {
		if o.Accept != nil {
			if err := o.Accept(m); err != nil {
				return pubsub.Reject(err)
			}
		}
		// An error requeues the message (it comes again).
		_, err := tr.Deliver(ctx, m.Envelope)
		return err
	})
	if _, err := s.Consumer(pubsub.ConsumerOptions{Topic: o.Topic, Channel: channel, Ephemeral: !o.Shared, Middleware: o.Middleware}, h); err != nil {
		return nil, UsageError{err}
	}
	// The streams' positions are the pipeline's data: with a replay
	// secret, only its holders read them.
	s.HTTP.Handle("GET /streams", replay.RequireSecret(s.Config.ReplaySecret, s.Config.Name, http.HandlerFunc(tr.ServeStreams)))
	s.HTTP.AddCheck("replay", tr.Ready)
	s.AddTags(replay.TrackerTag, replay.ConsumesTag(o.Topic))
	s.Go(tr.Run) // gap detection, recovery, checkpoints
	// After the consumer drained at shutdown: the last checkpoint.
	s.OnStop(func(context.Context) error { return tr.Save() })
	return tr, nil
}
