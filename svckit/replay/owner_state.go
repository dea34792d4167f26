package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/retainlog"
)

// The owner's state files next to its log: snapshot.json (the fold),
// published.seq (the acknowledged watermark) and durable.seq (the log's
// last fsync). save writes them only after the log records they describe
// are durable, so after a power loss they never point past the log; at
// open the fold is restored from snapshot.json and the records after it.

// readSnapshot reads an owner's snapshot.json; a missing one is the empty
// fold at 0.
func readSnapshot(fsys durable.FS, path string) (*snapshotFile, error) {
	snap := &snapshotFile{}
	b, err := durable.ReadFile(fsys, path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return snap, nil
	case err != nil:
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if err := json.Unmarshal(b, snap); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", path, err)
	}
	return snap, nil
}

// restoreFold restores the fold from the snapshot and folds in the log
// records after it, so the fold is exact even after a SIGKILL between two
// snapshot saves.
func (w *Owner) restoreFold(snap *snapshotFile) error {
	if snap.State != nil {
		if err := w.o.Fold.Restore(snap.State); err != nil {
			return fmt.Errorf("restoring fold of stream %s from its snapshot: %w", w.o.Stream, err)
		}
	}
	w.foldSeq = snap.Seq
	if last := w.log.LastSeq(); snap.Seq > last && last > 0 {
		// save makes the log durable before the snapshot, so the disk lost
		// durable records (or files were copied by hand). Nothing is
		// deleted: an operator decides.
		return fmt.Errorf("stream %s: snapshot.json covers up to %d but the retained log in %s ends at %d: the log lost durable records; refusing to start (move the log directory aside to start a new log after the snapshot)", w.o.Stream, snap.Seq, w.o.Log.Dir, last)
	}
	if snap.Seq > w.seq {
		// An empty log next to a snapshot: the log was moved aside. Never
		// reuse a sequence number: continue after the snapshot.
		w.o.Logger.Warn("the retained log is empty; continuing after the snapshot (older sequences are not retained)", "snapshot_seq", snap.Seq)
		w.seq, w.after = snap.Seq, snap.Seq
	}
	if w.log.LastSeq() > snap.Seq {
		from := snap.Seq + 1
		if first := w.log.FirstSeq(); from < first {
			return fmt.Errorf("stream %s: snapshot at %d but log starts at %d: the fold cannot be rebuilt (snapshot lost?)", w.o.Stream, snap.Seq, first)
		}
		dec := envelope.Decoder{}
		err := w.log.Read(context.Background(), from, w.log.LastSeq(), func(r retainlog.Record) error {
			env, err := dec.Decode(r.Data)
			if err != nil {
				return fmt.Errorf("seq %d: %w", r.Seq, err)
			}
			w.foldSeq = r.Seq
			return w.o.Fold.Apply(r.Seq, env.Payload)
		})
		var damaged *retainlog.DamagedError
		if errors.As(err, &damaged) {
			// The fold cannot hold what the disk destroyed. It goes on
			// without those records and covers their sequences, so that
			// a consumer that needs them takes a snapshot past them
			// instead of asking for them for ever.
			w.o.Logger.Error("rebuilding the fold without damaged records: snapshots lack their effect", "damaged", retainlog.FormatRanges(damaged.Ranges))
			w.foldSeq = w.log.LastSeq()
			err = nil
		}
		if err != nil {
			return fmt.Errorf("rebuilding fold of stream %s from its log: %w", w.o.Stream, err)
		}
	}
	return nil
}

type snapshotFile struct {
	Stream string          `json:"stream"`
	Seq    uint64          `json:"seq"`
	State  json.RawMessage `json:"state"`
}

// save persists the fold, the published watermark and the log's last fsync
// (each atomically), after the log records they describe: metadata is never durable ahead of
// its data, so after a power loss the snapshot and the watermark never
// point past the log.
func (w *Owner) save() error {
	w.saveMu.Lock()
	defer w.saveMu.Unlock()
	w.mu.Lock()
	mark := w.acked.Contiguous()
	var snap *snapshotFile
	if w.o.Fold != nil && w.failed == nil { // a failed fold is not saved
		snap = &snapshotFile{Stream: w.o.Stream, Seq: w.foldSeq, State: w.o.Fold.State()}
	}
	w.mu.Unlock()
	upTo := mark
	if snap != nil {
		upTo = max(upTo, snap.Seq)
	}
	if upTo > 0 {
		if err := w.log.SyncTo(upTo); err != nil {
			return fmt.Errorf("making the retained log durable up to %d before saving state: %w", upTo, err)
		}
	}
	if snap != nil {
		b, err := json.Marshal(snap)
		if err != nil {
			return fmt.Errorf("encoding the snapshot of %s: %w", w.o.Stream, err)
		}
		if err := durable.WriteFileAtomic(w.o.FS, filepath.Join(w.o.Dir, "snapshot.json"), b); err != nil {
			return err
		}
		w.savedSnap = snap.Seq
	}
	if mark != w.savedMark {
		if err := durable.WriteFileAtomic(w.o.FS, filepath.Join(w.o.Dir, "published.seq"), []byte(strconv.FormatUint(mark, 10)+"\n")); err != nil {
			return err
		}
		w.savedMark = mark
	}
	// The log's last fsync, so that a restart knows what was durable
	// (Options.Durable) even while nsqd acknowledges nothing and there is
	// no fold: a bad record there is damage, not a torn tail to cut.
	if dur := w.log.DurableSeq(); dur > w.savedDur {
		if err := durable.WriteFileAtomic(w.o.FS, filepath.Join(w.o.Dir, "durable.seq"), []byte(strconv.FormatUint(dur, 10)+"\n")); err != nil {
			return err
		}
		w.savedDur = dur
	}
	// Retention keeps what is not yet acknowledged (the pump publishes it
	// after a restart) and what the durable snapshot does not cover (the
	// fold is rebuilt from it).
	floor := mark + 1
	if w.o.Fold != nil {
		floor = min(floor, w.savedSnap+1)
	}
	w.log.SetFloor(floor)
	w.updateDamaged() // retention may have deleted damaged segments
	return nil
}

// Snapshot returns the fold and the sequence it covers, once the records
// it covers are durable (a consumer that takes it has applied them). It
// fails with ErrNoSnapshot when the owner has no Fold.
func (w *Owner) Snapshot() (uint64, []byte, error) {
	if w.o.Fold == nil {
		return 0, nil, fmt.Errorf("stream %s: %w (the owner has no Fold)", w.o.Stream, ErrNoSnapshot)
	}
	w.mu.Lock()
	if w.failed != nil {
		err := w.failed
		w.mu.Unlock()
		return 0, nil, err
	}
	seq, state := w.foldSeq, w.o.Fold.State()
	w.mu.Unlock()
	if seq > 0 {
		if err := w.log.SyncTo(seq); err != nil {
			return 0, nil, fmt.Errorf("stream %s: making the records the snapshot covers durable: %w", w.o.Stream, err)
		}
	}
	return seq, state, nil
}

// WriteFileAtomic is durable.WriteFileAtomic on the OS's filesystem: a
// crash or power loss leaves either the old or the new content.
func WriteFileAtomic(path string, b []byte) error {
	return durable.WriteFileAtomic(durable.OS(), path, b)
}

func readUint(fsys durable.FS, path string) (uint64, error) {
	b, err := durable.ReadFile(fsys, path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("decoding %s: %w", path, err)
	}
	return n, nil
}
