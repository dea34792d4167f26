package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/service"
	"github.com/urfave/cli/v2"
)

// Settings are the tracker's own flags (config.Config has those of every
// service), each declared once in its tags (see config.FlagsOf).
type Settings struct {
	Topic    string `flag:"topic" usage:"topic to consume"`
	Channel  string `flag:"channel" usage:"channel base name (this instance's id is appended)"`
	Upstream string `flag:"upstream" usage:"Consul service that publishes --topic: missed messages are replayed from it"`
}

// DefaultSettings is the value of each of the tracker's flags when neither
// the command line nor the environment gives one.
func DefaultSettings() Settings {
	return Settings{Topic: "results", Channel: "tracker", Upstream: "worker"}
}

// Spec is the tracker for service.Main.
func Spec(version string) service.Spec {
	return service.Spec{
		Name:    "tracker",
		Usage:   "count messages and payload bytes per stream, each (stream, seq) exactly once",
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
	st := &State{streams: map[string]*Counts{}}
	// Each (stream, seq) applied to st once, restarts included; gaps
	// recovered from the upstream; GET /streams, /ready, the checkpoint
	// (service.Track says how).
	if _, err := s.Track(st, service.TrackOptions{
		Topic: set.Topic, Channel: set.Channel, Upstream: set.Upstream,
	}); err != nil {
		return nil, err
	}
	s.HTTP.Handle("GET /state", replay.RequireSecret(s.Config.ReplaySecret, s.Config.Name, http.HandlerFunc(st.ServeState)))
	return nil, nil
}

// Counts is one stream's state.
type Counts struct {
	// Messages applied. A split message counts once per part.
	Messages uint64 `json:"messages"`
	// Bytes of payload applied since SnapshotSeq.
	Bytes uint64 `json:"bytes"`
	// SnapshotSeq is the sequence of the upstream snapshot the stream was
	// last restored from (0: never): Messages includes the snapshot's
	// count, Bytes only what came after it (see ApplySnapshot).
	SnapshotSeq uint64 `json:"snapshot_seq,omitempty"`
}

// State is the tracker's state: a replay.Applier. The tracker calls its
// methods with the stream's lock held, so per stream they never run
// concurrently; mu guards the map against other streams and /state.
type State struct {
	mu      sync.Mutex
	streams map[string]*Counts
}

func (s *State) counts(stream string) *Counts {
	c := s.streams[stream]
	if c == nil {
		c = &Counts{}
		s.streams[stream] = c
	}
	return c
}

// Apply applies one message: at most once per (stream, seq), or per part
// of it, over the tracker's life, restarts included.
func (s *State) Apply(stream string, env envelope.Envelope) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.counts(stream)
	c.Messages++
	c.Bytes += uint64(len(env.Payload))
	return nil
}

// ApplySnapshot replaces the stream's state with the upstream's snapshot
// over sequences 1..seq, taken when the upstream's log no longer reaches
// back to what this tracker misses. A snapshot is the upstream's own
// format: this one reads its "count" (the reference pipeline's totals
// and the producer example's fold have one), and counts bytes from there.
func (s *State) ApplySnapshot(stream string, seq uint64, state []byte) error {
	var snap struct {
		Count *uint64 `json:"count"`
	}
	if err := json.Unmarshal(state, &snap); err != nil || snap.Count == nil {
		return fmt.Errorf("snapshot of %s at %d: want a JSON object with a count (%v): %.100s", stream, seq, err, state)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	*s.counts(stream) = Counts{Messages: *snap.Count, SnapshotSeq: seq}
	return nil
}

// ExportState encodes the stream's state for the checkpoint.
func (s *State) ExportState(stream string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return json.Marshal(s.counts(stream))
}

// ImportState restores the stream's state from the checkpoint.
func (s *State) ImportState(stream string, b []byte) error {
	var c Counts
	if err := json.Unmarshal(b, &c); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	*s.counts(stream) = c
	return nil
}

// ServeState serves GET /state: stream → counts.
func (s *State) ServeState(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	out := make(map[string]Counts, len(s.streams))
	for k, v := range s.streams {
		out[k] = *v
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}
