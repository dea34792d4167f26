package replay

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/svckit/svckit/svckit/durable"
)

// The tracker's checkpoint: per stream, the core's applied set, parts,
// parked sequences and owner's last answer, with the Applier's state,
// written together and atomically (durable.WriteFileAtomic) so that a crash
// never leaves one without the other.

// checkpoint is the file format of the consumer's checkpoint.
type checkpoint struct {
	Version int                         `json:"version"`
	Streams map[string]streamCheckpoint `json:"streams"`
}

type partialCheckpoint struct {
	Parts uint32      `json:"parts"`
	Got   [][2]uint64 `json:"got"`
	Dead  [][2]uint64 `json:"dead,omitempty"`
}

type streamCheckpoint struct {
	Applied [][2]uint64 `json:"applied"`
	Parked  [][2]uint64 `json:"dead_lettered,omitempty"`
	// Partial: split sequences with some parts applied (seq → parts and
	// the applied part indices + 1).
	Partial    map[uint64]partialCheckpoint `json:"partial,omitempty"`
	Duplicates uint64                       `json:"duplicates"`
	State      json.RawMessage              `json:"state"`
	// OwnerLast is the owner's last answer: the bound of live sequences
	// must not start again from 0 after a restart.
	OwnerLast uint64 `json:"owner_last,omitempty"`
}

// checkpoint is the core's part of the stream's checkpoint, with state
// (the Applier's, taken under the same lock).
func (c *streamCore) checkpoint(state json.RawMessage) streamCheckpoint {
	sc := streamCheckpoint{Applied: c.applied.Intervals(), Parked: c.parked.Intervals(), Duplicates: c.duplicates, State: state, OwnerLast: c.ownerLast}
	for seq, p := range c.partial {
		if sc.Partial == nil {
			sc.Partial = map[uint64]partialCheckpoint{}
		}
		sc.Partial[seq] = partialCheckpoint{Parts: p.parts, Got: p.got.Intervals(), Dead: p.dead.Intervals()}
	}
	return sc
}

// restore sets the core from its checkpoint (sc.State is the Applier's).
func (c *streamCore) restore(sc streamCheckpoint) {
	c.applied.SetIntervals(sc.Applied)
	c.parked.SetIntervals(sc.Parked)
	c.ownerLast = sc.OwnerLast
	for seq, p := range sc.Partial {
		ps := &partialSeq{parts: p.Parts}
		ps.got.SetIntervals(p.Got)
		ps.dead.SetIntervals(p.Dead)
		c.partial[seq] = ps
	}
	c.duplicates = sc.Duplicates
}

// Save writes the checkpoint: per stream, the applied set and the state,
// taken together under the stream's lock. A failure (a full disk) loses
// nothing: the state stays in memory, the previous checkpoint on disk,
// Ready reports it and the next Save tries again.
func (t *Tracker) Save() error {
	err := t.save()
	t.saveMu.Lock()
	switch {
	case err != nil && t.saveErr == nil:
		t.o.Logger.Error("the checkpoint cannot be written; keeping the state in memory and trying again", "err", err)
	case err == nil && t.saveErr != nil:
		t.o.Logger.Info("the checkpoint is written again")
	}
	t.saveErr = err
	t.saveMu.Unlock()
	return err
}

func (t *Tracker) save() error {
	if t.o.CheckpointPath == "" {
		return nil
	}
	t.mu.RLock()
	ss := slices.Collect(maps.Values(t.streams))
	t.mu.RUnlock()
	cp := checkpoint{Version: 1, Streams: make(map[string]streamCheckpoint, len(ss))}
	for _, s := range ss {
		s.mu.Lock()
		state, err := t.a.ExportState(s.id)
		sc := s.checkpoint(state)
		s.mu.Unlock()
		if err != nil {
			return fmt.Errorf("exporting state of stream %s: %w", s.id, err)
		}
		cp.Streams[s.id] = sc
	}
	b, err := json.Marshal(cp)
	if err != nil {
		return fmt.Errorf("encoding checkpoint: %w", err)
	}
	return durable.WriteFileAtomic(t.o.FS, t.o.CheckpointPath, b)
}

func (t *Tracker) load() error {
	if t.o.CheckpointPath == "" {
		return nil
	}
	b, err := durable.ReadFile(t.o.FS, t.o.CheckpointPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading checkpoint %s: %w", t.o.CheckpointPath, err)
	}
	var cp checkpoint
	if err := json.Unmarshal(b, &cp); err != nil {
		return fmt.Errorf("decoding checkpoint %s: %w", t.o.CheckpointPath, err)
	}
	if cp.Version != 1 {
		return fmt.Errorf("checkpoint %s: unknown version %d", t.o.CheckpointPath, cp.Version)
	}
	for id, sc := range cp.Streams {
		s := t.newStream(id) // the lookup map is published once, below: not a copy per stream
		t.streams[id] = s
		s.restore(sc)
		if err := t.a.ImportState(id, sc.State); err != nil {
			return fmt.Errorf("restoring stream %s from checkpoint %s: %w", id, t.o.CheckpointPath, err)
		}
	}
	byID := maps.Clone(t.streams)
	t.byID.Store(&byID)
	t.o.Logger.Info("checkpoint loaded", "path", t.o.CheckpointPath, "streams", len(cp.Streams))
	return nil
}
