package service

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/ownership"
	"github.com/svckit/svckit/svckit/replay"
)

// StreamOptions configures Service.OpenStream. Stream and Topic are
// required; zero values in Owner take replay.OwnerOptions' defaults.
type StreamOptions struct {
	// Stream is the stream's id (stable across restarts).
	Stream string
	// Topic is the NSQ topic the stream is published to.
	Topic string
	// Owner is everything else about the owner: ContentType, Fold, the
	// retained log's options (Log), SnapshotInterval, MaxInFlight.
	// OpenStream fills in Stream, Dir, Fence, Logger and Metrics.
	Owner replay.OwnerOptions
}

// OpenStream makes this service the owner of a replayable stream: it takes
// the stream's claim in Consul (a second process that claims it is refused,
// see package ownership), opens the owner in <data-dir>/streams/<stream>
// with its own batching publisher to o.Topic, serves /streams, /replay and
// /snapshot for it, tags the instance stream=<id>, and runs the owner's
// pump and the claim's renewal until shutdown, when it saves the owner's
// state and releases the claim. Publish on the returned owner.
//
// A claim held by another live process, or naming another data directory,
// is a UsageError (exit 2): it is a mistake in how the service was started.
func (s *Service) OpenStream(ctx context.Context, o StreamOptions) (*replay.Owner, error) {
	if !replay.ValidStreamID(o.Stream) {
		return nil, UsageError{fmt.Errorf("stream id %q: want 1-255 of [A-Za-z0-9._-]", o.Stream)}
	}
	dir := filepath.Join(s.Config.DataDir, "streams", o.Stream)
	fsys := durable.Or(o.Owner.FS)
	if err := durable.MkdirAll(fsys, dir); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	dataID, err := durable.ReadOrCreateID(fsys, filepath.Join(dir, "data.id"))
	if err != nil {
		return nil, err
	}
	lease, err := ownership.Acquire(ctx, ownership.Options{
		Client: s.Consul, Stream: o.Stream, Instance: s.Config.InstanceID, Node: s.Node,
		DataID: dataID, Logger: s.Log,
	})
	var held *ownership.HeldError
	if errors.As(err, &held) || errors.Is(err, ownership.ErrOtherData) {
		return nil, UsageError{err}
	}
	if err != nil {
		return nil, err
	}
	pub, err := s.Batcher(o.Topic)
	if err != nil {
		lease.Release(ctx)
		return nil, err
	}
	oo := o.Owner
	oo.Stream, oo.Dir, oo.Fence, oo.FS = o.Stream, dir, lease, fsys
	oo.Logger, oo.Metrics = s.Log, s.replayMetrics()
	oo.Tracer, oo.Topic = s.Tracer, o.Topic
	owner, err := replay.OpenOwner(oo, pub)
	if err != nil {
		lease.Release(ctx)
		return nil, err
	}
	s.replayServer().Add(owner)
	s.AddTags(replay.OwnerTag(o.Stream), replay.PublishesTag(o.Topic))
	s.HTTP.AddCheck("stream "+o.Stream, lease.Held)
	// A full disk is a state, not a crash: /ready says why no message is
	// taken, until an append succeeds again.
	s.HTTP.AddCheck("stream "+o.Stream+" log", owner.Accepting)
	// Damage the disk did is kept and served around: worth knowing, not a
	// reason to stop routing to this instance.
	s.HTTP.AddDetail("stream "+o.Stream+" log", owner.DamageSummary)
	s.Go(func(ctx context.Context) { lease.Run(ctx) })
	s.Go(func(ctx context.Context) { _ = owner.Run(ctx) })
	// Hooks run in order: the owner saves what nsqd acknowledged, then
	// the claim goes, so that a restart takes the stream at once.
	s.OnStop(owner.Close)
	s.OnStop(lease.Release)
	return owner, nil
}

// replayMetrics is the service's one set of replay collectors.
func (s *Service) replayMetrics() *replay.Metrics {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rmetrics == nil {
		s.rmetrics = replay.NewMetrics(s.Metrics.Registry)
	}
	return s.rmetrics
}

// replayServer is the service's replay server, registered on its HTTP
// server on first use.
func (s *Service) replayServer() *replay.Server {
	m := s.replayMetrics()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rserver == nil {
		s.rserver = replay.NewServer(s.Config.ReplaySecret, m)
		// Requests signed for another service are refused.
		s.rserver.SetAudience(s.Config.Name)
		s.rserver.Register(s.HTTP)
	}
	return s.rserver
}

// ReplayMetrics returns the service's replay collectors (for a Tracker).
func (s *Service) ReplayMetrics() *replay.Metrics { return s.replayMetrics() }
