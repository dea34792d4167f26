package replay

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"time"
)

// What the tracker reports: every stream's status (GET /streams), and
// whether it is ready. Its Prometheus collectors are Metrics (metrics.go),
// counted where things happen.

// StreamStatus is a stream's entry in the consumer's GET /streams.
type StreamStatus struct {
	Stream         string      `json:"stream"`
	LastContiguous uint64      `json:"last_contiguous"`
	Applied        uint64      `json:"applied"`
	Duplicates     uint64      `json:"duplicates"`
	Gaps           [][2]uint64 `json:"gaps"`
	// OwnerLast is the last sequence the owner reported: gaps never reach
	// beyond it.
	OwnerLast uint64 `json:"owner_last"`
	// DeadLettered are sequences handled by dead-lettering, not applied.
	DeadLettered [][2]uint64 `json:"dead_lettered"`
	// LagMessages is how many sequences the contiguous position is behind
	// the highest known to exist; LagSeconds how long ago the message at
	// the position was created (an upper bound, by at most the time
	// between two messages), while it is behind: 0 otherwise.
	LagMessages uint64  `json:"lag_messages"`
	LagSeconds  float64 `json:"lag_seconds"`
	// Replay is the recovery in progress, if one is.
	Replay *ReplayProgress `json:"replay,omitempty"`
	// Snapshots counts recoveries through the upstream's snapshot (since
	// this process started).
	Snapshots uint64 `json:"snapshots"`
	// LastError is the last recovery's failure, "" once one succeeded.
	LastError string `json:"last_error,omitempty"`
}

// ReplayProgress is a recovery in progress: of Requested missing
// sequences (the gaps open past the grace when it started), Received came.
type ReplayProgress struct {
	Requested uint64 `json:"requested"`
	Received  uint64 `json:"received"`
}

// status is the core's StreamStatus.
func (c *streamCore) status() StreamStatus {
	gaps := c.applied.Gaps()
	if gaps == nil {
		gaps = [][2]uint64{}
	}
	parked := c.parked.Intervals()
	if parked == nil {
		parked = [][2]uint64{}
	}
	return StreamStatus{Stream: c.id, LastContiguous: c.applied.Contiguous(), Applied: c.applied.Count() - c.parked.Count(),
		Duplicates: c.duplicates, Gaps: gaps, OwnerLast: c.ownerLast, DeadLettered: parked}
}

// Status reports every stream (sorted by id).
func (t *Tracker) Status() []StreamStatus {
	t.mu.RLock()
	ids := slices.Sorted(maps.Keys(t.streams))
	ss := make([]*trackedStream, len(ids))
	for i, id := range ids {
		ss[i] = t.streams[id]
	}
	t.mu.RUnlock()
	out := make([]StreamStatus, len(ss))
	now := time.Now()
	for i, s := range ss {
		s.mu.Lock()
		out[i] = s.fullStatus(now)
		s.mu.Unlock()
	}
	return out
}

// fullStatus is the core's status with what the tracker adds: lag,
// recovery, last error. Called with s.mu held.
func (s *trackedStream) fullStatus(now time.Time) StreamStatus {
	st := s.status()
	st.LagMessages, st.LagSeconds = s.lag(now)
	st.Snapshots = s.snapshots
	if s.fetching && s.replayRequested > 0 {
		st.Replay = &ReplayProgress{Requested: s.replayRequested, Received: min(s.replayReceived, s.replayRequested)}
	}
	if s.lastErr != nil {
		st.LastError = s.lastErr.Error()
	}
	return st
}

// Ready is nil unless a stream cannot be made complete (it needs a
// snapshot its upstream does not offer) or the checkpoint cannot be
// written (a readiness check).
func (t *Tracker) Ready() error {
	t.mu.RLock()
	ss := slices.Collect(maps.Values(t.streams))
	t.mu.RUnlock()
	var errs []error
	t.saveMu.Lock()
	if t.saveErr != nil {
		errs = append(errs, fmt.Errorf("checkpoint not saved (state kept in memory, retried): %w", t.saveErr))
	}
	t.saveMu.Unlock()
	for _, s := range ss {
		s.mu.Lock()
		if s.noSnapshot != nil {
			errs = append(errs, fmt.Errorf("stream %s: %w", s.id, s.noSnapshot))
		}
		s.mu.Unlock()
	}
	return errors.Join(errs...)
}

// ServeStreams is the consumer's GET /streams handler.
func (t *Tracker) ServeStreams(w http.ResponseWriter, _ *http.Request) { writeJSON(w, t.Status()) }
