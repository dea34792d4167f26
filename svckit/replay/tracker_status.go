package replay

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
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
	for i, s := range ss {
		s.mu.Lock()
		out[i] = s.status()
		s.mu.Unlock()
	}
	return out
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
