// Package app is the reference pipeline's collector: it consumes results,
// applies each (stream, seq) exactly once through a replay.Tracker, keeps
// per-stream state (count, sum of values, sum of results), recovers what it
// missed from its upstream (the workers, which relay to the sensors and
// compute the results again: the app contains no worker logic), logs a
// summary and serves its state over HTTP.
package app

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/pipeline"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/metrics"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/service"
	"github.com/urfave/cli/v2"
)

// Settings are the app's own flags (config.Config has the common ones),
// each declared once in its tags (see config.FlagsOf).
type Settings struct {
	Topic              string        `flag:"topic" usage:"topic of results"`
	Channel            string        `flag:"channel" usage:"channel base name (the instance id is appended when --ephemeral)"`
	Ephemeral          bool          `flag:"ephemeral" usage:"per-instance ephemeral channel (replay recovers what it misses while away)"`
	Checkpoint         string        `flag:"checkpoint" usage:"checkpoint file (default <data-dir>/checkpoint.json)"`
	CheckpointInterval time.Duration `flag:"checkpoint-interval" min:"1ns" usage:"how often state and checkpoint are saved"`
	Upstream           string        `flag:"upstream" usage:"Consul service that publishes the results (a stage relays replay requests to its own upstream)"`
	ReplayGapGrace     time.Duration `flag:"replay-gap-grace" min:"1ns" usage:"a gap is requested once it stayed open this long"`
	ReplayMaxBatch     int           `flag:"replay-max-batch" min:"1" usage:"most sequences per replay request"`
	ReplayTailInterval time.Duration `flag:"replay-tail-interval" min:"1ns" usage:"how often owners are asked for their latest sequence"`
	ReplayMaxAhead     uint64        `flag:"replay-max-ahead" min:"1" usage:"a live message more than this past the owner's last known sequence is checked with the owner first, and refused (dead-lettered) if the owner never published it"`
	SummaryInterval    time.Duration `flag:"summary-interval" usage:"how often the state summary is logged (0 = never)"`
}

// DefaultSettings is the value of each of the app's flags when neither the
// command line nor the environment gives one.
func DefaultSettings() Settings {
	return Settings{
		Topic:              pipeline.ResultsTopic,
		Channel:            pipeline.AppChannel,
		Ephemeral:          true,
		CheckpointInterval: time.Second,
		Upstream:           "worker",
		ReplayGapGrace:     2 * time.Second,
		ReplayMaxBatch:     10000,
		ReplayTailInterval: 5 * time.Second,
		ReplayMaxAhead:     1_000_000,
		SummaryInterval:    10 * time.Second,
	}
}

// Spec is the app service for service.Main.
func Spec(version string) service.Spec {
	return service.Spec{
		Name:    "app",
		Usage:   "collect results into per-stream state, recovering anything missed",
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
	if err := config.CheckMin(set); err != nil {
		return nil, service.UsageError{Err: err}
	}
	st := NewState(s.Metrics)
	tr, err := s.Track(st, service.TrackOptions{
		Topic: set.Topic, Channel: set.Channel, Shared: !set.Ephemeral, Upstream: set.Upstream,
		Accept: func(m *pubsub.Message) error {
			// A marker (a stage made nothing of a reading) has no content
			// type: the tracker counts it, nothing is applied.
			if !m.Envelope.Marker && m.Envelope.ContentType != pipeline.ResultType {
				return fmt.Errorf("content type %q, want %q", m.Envelope.ContentType, pipeline.ResultType)
			}
			st.observeLatency(m.Envelope.Created)
			return nil
		},
		Tracker: replay.TrackerOptions{
			CheckpointPath: set.Checkpoint, CheckpointInterval: set.CheckpointInterval,
			GapGrace: set.ReplayGapGrace, MaxBatch: set.ReplayMaxBatch,
			TailInterval: set.ReplayTailInterval, MaxAhead: set.ReplayMaxAhead,
		},
	})
	if err != nil {
		return nil, err
	}
	// The state is the pipeline's data: with a replay secret, only its
	// holders read it.
	s.HTTP.Handle("GET /state", replay.RequireSecret(s.Config.ReplaySecret, s.Config.Name, http.HandlerFunc(st.ServeState)))
	every := set.SummaryInterval
	return func(ctx context.Context) error {
		if every <= 0 {
			<-ctx.Done()
			return nil
		}
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				logSummary(s.Log, st, tr)
			}
		}
	}, nil
}

func logSummary(log *slog.Logger, st *State, tr *replay.Tracker) {
	for _, x := range tr.Status() {
		a := st.Get(x.Stream)
		log.Info("summary", "stream", x.Stream, "count", a.Count, "sum", a.Sum, "sum_results", a.SumResults, "last", a.Last,
			"last_contiguous", x.LastContiguous, "duplicates", x.Duplicates, "gaps", len(x.Gaps))
	}
}

// State is the app's per-stream state: pipeline.Totals over results
// (count, sum of values, sum of results, last value). It is a
// replay.Applier.
type State struct {
	mu      sync.RWMutex
	streams map[string]*pipeline.Totals
	latency prometheus.Histogram
}

// NewState registers the end-to-end latency histogram in m.
func NewState(m *metrics.Metrics) *State {
	h := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: metrics.Namespace, Name: "pipeline_latency_seconds",
		Help:    "From a reading's creation at the sensor to its result reaching the app.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 2, 18),
	})
	m.Registry.MustRegister(h)
	return &State{streams: map[string]*pipeline.Totals{}, latency: h}
}

func (s *State) observeLatency(created time.Time) {
	if !created.IsZero() {
		s.latency.Observe(time.Since(created).Seconds())
	}
}

// totals returns the stream's totals; call with s.mu held for writing.
func (s *State) totals(stream string) *pipeline.Totals {
	t := s.streams[stream]
	if t == nil {
		t = &pipeline.Totals{}
		s.streams[stream] = t
	}
	return t
}

// Apply implements replay.Applier (called under the tracker's stream lock;
// s.mu guards the map and values against concurrent readers of /state).
func (s *State) Apply(stream string, env envelope.Envelope) error {
	r, err := pipeline.UnmarshalResult(env.Payload)
	if err != nil {
		return pubsub.Reject(err)
	}
	s.mu.Lock()
	s.totals(stream).Add(env.Seq, r)
	s.mu.Unlock()
	return nil
}

// ApplySnapshot implements replay.Applier: the workers map the sensor's
// fold onto the app's totals (with the factor only they know).
func (s *State) ApplySnapshot(stream string, _ uint64, state []byte) error {
	t, err := pipeline.UnmarshalTotals(state)
	if err != nil {
		return err
	}
	s.mu.Lock()
	*s.totals(stream) = t
	s.mu.Unlock()
	return nil
}

// ExportState implements replay.Applier.
func (s *State) ExportState(stream string) ([]byte, error) { return s.Get(stream).Marshal(), nil }

// ImportState implements replay.Applier.
func (s *State) ImportState(stream string, b []byte) error { return s.ApplySnapshot(stream, 0, b) }

// Get returns a copy of a stream's state.
func (s *State) Get(stream string) pipeline.Totals {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if t := s.streams[stream]; t != nil {
		return *t
	}
	return pipeline.Totals{}
}

// ServeState serves GET /state: stream → totals.
func (s *State) ServeState(w http.ResponseWriter, _ *http.Request) {
	s.mu.RLock()
	out := make(map[string]pipeline.Totals, len(s.streams))
	for k, v := range s.streams {
		out[k] = *v
	}
	s.mu.RUnlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}
