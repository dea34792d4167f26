package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/retainlog"
)

// Fold is the owner's running summary of its whole stream, offered to
// consumers as a snapshot when the log no longer reaches back far enough.
type Fold interface {
	// Apply folds in one published message.
	Apply(seq uint64, payload []byte) error
	// State encodes the fold (covering 1..the highest seq applied).
	State() []byte
	// Restore replaces the fold with an encoded state.
	Restore(state []byte) error
}

// AsyncPublisher is what the owner publishes through (pubsub.Batcher).
type AsyncPublisher interface {
	PublishAsync(body []byte, done func(error))
}

// OwnerOptions configures an Owner.
type OwnerOptions struct {
	Stream      string // stable id; must survive restarts
	Dir         string // holds log/, snapshot.json and published.seq
	Log         retainlog.Options
	ContentType string
	// Fold, if set, makes the owner offer snapshots. It is persisted to
	// Dir/snapshot.json every SnapshotInterval and on Close.
	Fold             Fold
	SnapshotInterval time.Duration
	Logger           *slog.Logger
	Metrics          *Metrics
}

// Owner is a replayable publisher of one stream.
type Owner struct {
	o   OwnerOptions
	log *retainlog.Log
	pub AsyncPublisher

	mu        sync.Mutex
	seq       uint64
	foldSeq   uint64 // highest seq folded in
	buf       []byte
	acked     SeqSet // sequences nsqd acknowledged (starts as [1, watermark])
	savedMark uint64
	resumeTo  uint64 // last seq at open: Run republishes (watermark, resumeTo] only
	closed    bool
	wg        sync.WaitGroup
	stop      chan struct{}
}

// Status is an owner's entry in GET /streams.
type Status struct {
	Stream        string `json:"stream"`
	LastSeq       uint64 `json:"last_seq"`
	RetainedFirst uint64 `json:"retained_first"`
	RetainedLast  uint64 `json:"retained_last"`
}

func streamIDOK(s string) bool {
	if s == "" || len(s) > envelope.MaxFieldLen {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-", r)) {
			return false
		}
	}
	return true
}

// ValidStreamID reports whether s can be a stream id ([A-Za-z0-9._-], 1-255).
func ValidStreamID(s string) bool { return streamIDOK(s) }

// OpenOwner opens (or creates) the stream's log, restores its fold and
// sequence, and queues for republishing what nsqd had not acknowledged before
// the last stop.
func OpenOwner(o OwnerOptions, pub AsyncPublisher) (*Owner, error) {
	if !ValidStreamID(o.Stream) {
		return nil, fmt.Errorf("stream id %q: want 1-255 of [A-Za-z0-9._-]", o.Stream)
	}
	if o.SnapshotInterval <= 0 {
		o.SnapshotInterval = time.Second
	}
	if o.Logger == nil {
		o.Logger = logging.Discard()
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	o.Logger = o.Logger.With("stream", o.Stream)
	o.Log.Dir = filepath.Join(o.Dir, "log")
	o.Log.Logger = o.Logger
	l, err := retainlog.Open(o.Log)
	if err != nil {
		return nil, fmt.Errorf("opening retained log of stream %s: %w", o.Stream, err)
	}
	if rec := l.Recovery(); rec.TruncatedBytes > 0 {
		o.Metrics.LogTruncations.Inc()
		o.Logger.Warn("retained log had a torn or corrupt tail; truncated", "segment", rec.Segment, "bytes", rec.TruncatedBytes, "reason", rec.Reason)
	}
	w := &Owner{o: o, log: l, pub: pub, stop: make(chan struct{})}
	w.seq = l.LastSeq()
	if o.Fold != nil {
		if err := w.restoreFold(); err != nil {
			l.Close()
			return nil, err
		}
	}
	mark, err := readUint(filepath.Join(o.Dir, "published.seq"))
	if err != nil {
		l.Close()
		return nil, err
	}
	mark = min(mark, w.seq)
	w.acked.Reset(mark)
	w.savedMark = mark
	w.resumeTo = w.seq
	return w, nil
}

// restoreFold loads snapshot.json and folds in the log records after it, so
// the fold is exact even after a SIGKILL between two snapshot saves.
func (w *Owner) restoreFold() error {
	path := filepath.Join(w.o.Dir, "snapshot.json")
	b, err := os.ReadFile(path)
	var snap snapshotFile
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("reading %s: %w", path, err)
	default:
		if err := json.Unmarshal(b, &snap); err != nil {
			return fmt.Errorf("decoding %s: %w", path, err)
		}
		if err := w.o.Fold.Restore(snap.State); err != nil {
			return fmt.Errorf("restoring fold from %s: %w", path, err)
		}
	}
	w.foldSeq = snap.Seq
	if last := w.log.LastSeq(); snap.Seq > last && last > 0 {
		// The log lost records the snapshot already covers (a power loss
		// within the fsync interval). It cannot continue past a hole, and a
		// sequence number must never be reused (consumers may have applied
		// it): start a new, empty log after the snapshot. Older ranges are
		// answered 410, so consumers that miss them use the snapshot.
		w.o.Logger.Warn("retained log ends before the snapshot; starting a new log after it", "log_last", last, "snapshot_seq", snap.Seq)
		if err := w.log.Close(); err != nil {
			return fmt.Errorf("closing retained log: %w", err)
		}
		if err := os.RemoveAll(w.o.Log.Dir); err != nil {
			return fmt.Errorf("removing retained log %s: %w", w.o.Log.Dir, err)
		}
		l, err := retainlog.Open(w.o.Log)
		if err != nil {
			return fmt.Errorf("reopening retained log of stream %s: %w", w.o.Stream, err)
		}
		w.log = l
	}
	if snap.Seq > w.seq {
		// Never reuse a sequence number.
		w.seq = snap.Seq
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

// Stream is the stream id.
func (w *Owner) Stream() string { return w.o.Stream }

// Status reports the stream's positions.
func (w *Owner) Status() Status {
	w.mu.Lock()
	seq := w.seq
	w.mu.Unlock()
	return Status{Stream: w.o.Stream, LastSeq: seq, RetainedFirst: w.log.FirstSeq(), RetainedLast: w.log.LastSeq()}
}

// Publish assigns the next sequence number, appends the message to the
// retained log (it reaches the kernel before Publish returns), folds it, and
// hands it to the publisher. It returns the sequence number; nsqd's
// acknowledgement arrives later (a message not acknowledged before a stop is
// republished from the log on the next start).
func (w *Owner) Publish(payload []byte, correlationID string) (uint64, error) {
	return w.publishBatch([][]byte{payload}, correlationID)
}

// PublishBatch is Publish for several messages at once: they get contiguous
// sequence numbers (the last is returned) and reach the retained log in one
// write, which is what a publisher producing faster than one message per
// system call wants.
func (w *Owner) PublishBatch(payloads [][]byte) (uint64, error) {
	return w.publishBatch(payloads, "")
}

func (w *Owner) publishBatch(payloads [][]byte, correlationID string) (uint64, error) {
	if len(payloads) == 0 {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.seq, nil
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return 0, errors.New("owner closed")
	}
	now := time.Now()
	first := w.seq + 1
	recs := make([]retainlog.Record, len(payloads))
	for i, payload := range payloads {
		seq := first + uint64(i)
		// No message id: (stream, seq) identifies the message.
		env := envelope.Envelope{Stream: w.o.Stream, Seq: seq, Created: now,
			ContentType: w.o.ContentType, CorrelationID: correlationID, Payload: payload}
		body, err := env.Append(make([]byte, 0, env.EncodedLen()))
		if err != nil {
			w.mu.Unlock()
			return 0, fmt.Errorf("encoding message %d of stream %s: %w", seq, w.o.Stream, err)
		}
		recs[i] = retainlog.Record{Seq: seq, Time: now, Data: body}
	}
	last := first + uint64(len(payloads)) - 1
	if err := w.log.Append(recs...); err != nil {
		w.mu.Unlock()
		return 0, fmt.Errorf("appending messages %d-%d to the retained log of %s: %w", first, last, w.o.Stream, err)
	}
	w.seq = last
	if w.o.Fold != nil {
		for i, payload := range payloads {
			seq := first + uint64(i)
			if err := w.o.Fold.Apply(seq, payload); err != nil {
				// In the log but not published: the next start republishes
				// it, consumers that notice the gap replay it.
				w.mu.Unlock()
				return 0, fmt.Errorf("folding message %d of stream %s: %w", seq, w.o.Stream, err)
			}
			w.foldSeq = seq
		}
	}
	w.mu.Unlock()
	for _, r := range recs {
		w.publish(r.Seq, r.Data)
	}
	return last, nil
}

func (w *Owner) publish(seq uint64, body []byte) {
	w.wg.Add(1)
	w.pub.PublishAsync(body, func(err error) {
		defer w.wg.Done()
		if err != nil {
			// Still in the log: republished on the next start, or replayed
			// to any consumer that notices the gap.
			w.o.Logger.Warn("message not acknowledged by nsqd; kept in the retained log", "seq", seq, "err", err)
			return
		}
		w.mu.Lock()
		w.acked.Add(seq)
		w.mu.Unlock()
	})
}

// Run republishes what was not acknowledged before the last stop, then saves
// the snapshot and the published watermark periodically until ctx ends.
func (w *Owner) Run(ctx context.Context) error {
	// Only what existed at open: messages published since are on their way.
	w.mu.Lock()
	from, to := w.acked.Contiguous()+1, w.resumeTo
	w.mu.Unlock()
	from = max(from, w.log.FirstSeq()) // older ones are gone; consumers recover them from a snapshot
	if from <= to && to > 0 {
		w.o.Logger.Info("republishing messages not acknowledged before the last stop", "from", from, "to", to)
		err := w.log.Read(ctx, from, to, func(r retainlog.Record) error {
			w.publish(r.Seq, append([]byte(nil), r.Data...))
			return nil
		})
		if err != nil && ctx.Err() == nil {
			w.o.Logger.Error("republishing from the retained log", "err", err)
		}
	}
	t := time.NewTicker(w.o.SnapshotInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := w.save(); err != nil {
				w.o.Logger.Error("saving stream state", "err", err)
			}
		}
	}
}

// save persists the fold and the published watermark (each atomically).
func (w *Owner) save() error {
	w.mu.Lock()
	mark := w.acked.Contiguous()
	var snap *snapshotFile
	if w.o.Fold != nil {
		snap = &snapshotFile{Stream: w.o.Stream, Seq: w.foldSeq, State: w.o.Fold.State()}
	}
	w.mu.Unlock()
	if snap != nil {
		b, _ := json.Marshal(snap)
		if err := WriteFileAtomic(filepath.Join(w.o.Dir, "snapshot.json"), b); err != nil {
			return err
		}
	}
	if mark != w.savedMark {
		if err := WriteFileAtomic(filepath.Join(w.o.Dir, "published.seq"), []byte(strconv.FormatUint(mark, 10)+"\n")); err != nil {
			return err
		}
		w.savedMark = mark
	}
	return nil
}

// Snapshot returns the fold and the sequence it covers.
func (w *Owner) Snapshot() (uint64, []byte, bool) {
	if w.o.Fold == nil {
		return 0, nil, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.foldSeq, w.o.Fold.State(), true
}

// Log is the retained log (read-only use: replay serving, status).
func (w *Owner) Log() *retainlog.Log { return w.log }

// Close waits (bounded by ctx) for outstanding publishes, saves state, and
// closes the log. Call it after the publisher was flushed.
func (w *Owner) Close(ctx context.Context) error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return errors.Join(w.save(), w.log.Close())
}

// WriteFileAtomic writes b to path through a temporary file, fsync and
// rename, so a crash leaves either the old or the new content.
func WriteFileAtomic(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating directory for %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	_, err = tmp.Write(b)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

func readUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
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
