package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/retainlog"
)

// Fold is the owner's running summary of its whole stream, offered to
// consumers as a snapshot when the log no longer reaches back far enough.
type Fold interface {
	// Apply folds in one published message. payload is only valid during
	// the call (a restart refolds records read into a reused buffer).
	Apply(seq uint64, payload []byte) error
	// State encodes the fold (covering 1..the highest seq applied) as JSON
	// (or nil): it is the snapshot's "state" and is saved inside JSON.
	State() []byte
	// Restore replaces the fold with an encoded state ("null" for nil).
	Restore(state []byte) error
}

// PumpPublisher is what an owner's pump hands messages to: a *pubsub.Batcher
// of its own. The owner closes it (Close), so give it one nothing else
// publishes through.
type PumpPublisher interface {
	// PublishAsync queues body; done is called once with nsqd's answer.
	// ctx bounds only the wait for room in the queue.
	PublishAsync(ctx context.Context, body []byte, done func(error))
	// Close gives up on what is unanswered when ctx ends.
	Close(ctx context.Context) error
}

// Fence decides whether this process may assign sequence numbers of the
// stream: one owner per stream, enforced outside the process (a Consul
// lease, package ownership). Hold returns nil while the stream is held and
// otherwise waits until it is again or ctx ends.
type Fence interface {
	Hold(ctx context.Context) error
}

// OwnerOptions configures an Owner. Stream is required; other zero values
// take the defaults named on each field.
type OwnerOptions struct {
	Stream string // stable id; must survive restarts
	Dir    string // holds log/, snapshot.json and published.seq
	// Log configures the retained log (start from retainlog.DefaultOptions);
	// its Dir, Logger and FS are set from the fields here.
	Log         retainlog.Options
	ContentType string
	// Fold, if set, makes the owner offer snapshots. It is persisted to
	// Dir/snapshot.json every SnapshotInterval and on Close.
	Fold             Fold
	SnapshotInterval time.Duration // default 1s
	// Fence, if set, is asked before every sequence number is assigned.
	Fence Fence
	// MaxInFlight bounds the messages handed to the publisher and not yet
	// answered; the rest wait in the log, not in memory. Default 4096.
	MaxInFlight int
	// CloseGrace is how long Close lets answers from nsqd arrive before it
	// gives up on them (they stay in the log and go out on the next start).
	// Default 1s; Close's context may cut it shorter.
	CloseGrace time.Duration
	Logger     *slog.Logger // nil = discard
	Metrics    *Metrics     // nil = NewMetrics on a registry of its own (not exported)
	// FS holds Dir; nil is the OS's (tests cut the power with crashfs).
	FS durable.FS
}

// Owner is a replayable publisher of one stream.
//
// Publish assigns sequence numbers and appends to the retained log, which
// is the only record of what is to be published: a pump (Run) reads the
// log from the oldest message nsqd has not acknowledged and hands what is
// durable to the publisher, at most MaxInFlight at a time. nsqd being away
// costs nothing but time: the log holds everything until it is back, and
// shutdown does not wait for it.
type Owner struct {
	o   OwnerOptions
	log *retainlog.Log
	pub PumpPublisher

	mu      sync.Mutex
	seq     uint64 // last assigned
	foldSeq uint64 // highest seq folded in
	failed  error  // sticky: the fold failed, the owner refuses to publish
	buf     []byte // envelopes of the batch being appended
	recs    []retainlog.Record
	// acked holds the sequences nsqd acknowledged (or refused for good:
	// those are served by replay only); it starts as [1, published.seq].
	acked   SeqSet
	closed  bool
	resend  bool // a publish failed: the pump resends what is unacked
	pumping bool

	// after is the sequence an empty log continues after (a log moved
	// aside next to a snapshot or watermark): shown until the log has
	// records of its own.
	after uint64

	inflight atomic.Int64
	wake     chan struct{} // cap 1: the pump has something to look at
	stopPump context.CancelFunc
	pumpDone chan struct{}

	// opened is the log once OpenOwner has it: the log's OnDamage may run
	// (from its scrubber) before OpenOwner returns.
	opened atomic.Pointer[retainlog.Log]

	// notAccepting is why the last append failed (a full disk); nil once
	// one succeeds. Under mu.
	notAccepting error

	saveMu    sync.Mutex // one save at a time (Run's ticker, Close)
	savedMark uint64     // under saveMu
	savedDur  uint64     // under saveMu: what durable.seq says
	savedSnap uint64     // under saveMu: the seq snapshot.json covers
}

// Status is an owner's entry in GET /streams.
type Status struct {
	Stream        string `json:"stream"`
	LastSeq       uint64 `json:"last_seq"`
	RetainedFirst uint64 `json:"retained_first"`
	RetainedLast  uint64 `json:"retained_last"`
	// Damaged are the retained sequences whose records the disk damaged
	// (kept in quarantine, never served; consumers that need them recover
	// through the snapshot), as [first, last] ranges.
	Damaged [][2]uint64 `json:"damaged,omitempty"`
	// NotAccepting says why the owner takes no new messages (its log
	// cannot be written: a full disk); empty while it does.
	NotAccepting string `json:"not_accepting,omitempty"`
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

// ErrOwnerClosed is returned by Publish after Close.
var ErrOwnerClosed = errors.New("owner closed")

// ErrNotAccepting is returned (wrapped, with the cause) by Publish while
// the owner's retained log cannot be written, a full disk above all: the
// message was not taken. The owner keeps serving replay and publishing
// what it has, and takes messages again as soon as an append succeeds, with
// no restart; a producer pauses and tries again.
var ErrNotAccepting = errors.New("not accepting messages: the retained log cannot be written")

// OpenOwner opens (or creates) the stream's log and restores its fold and
// sequence. Run publishes what nsqd had not acknowledged before the last
// stop, then everything published since.
func OpenOwner(o OwnerOptions, pub PumpPublisher) (*Owner, error) {
	if !ValidStreamID(o.Stream) {
		return nil, fmt.Errorf("stream id %q: want 1-255 of [A-Za-z0-9._-]", o.Stream)
	}
	if o.SnapshotInterval <= 0 {
		o.SnapshotInterval = time.Second
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 4096
	}
	if o.CloseGrace <= 0 {
		o.CloseGrace = time.Second
	}
	if o.Logger == nil {
		o.Logger = logging.Discard()
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics(prometheus.NewRegistry())
	}
	o.Logger = o.Logger.With("stream", o.Stream)
	o.FS = durable.Or(o.FS)
	o.Log.Dir = filepath.Join(o.Dir, "log")
	o.Log.Logger = o.Logger
	o.Log.FS = o.FS
	// The state files first: retention, which runs inside retainlog.Open,
	// must already keep what nsqd has not acknowledged and what the
	// snapshot does not cover.
	mark, err := readUint(o.FS, filepath.Join(o.Dir, "published.seq"))
	if err != nil {
		return nil, err
	}
	var snap *snapshotFile
	o.Log.Floor = mark + 1
	if o.Fold != nil {
		if snap, err = readSnapshot(o.FS, filepath.Join(o.Dir, "snapshot.json")); err != nil {
			return nil, err
		}
		o.Log.Floor = min(o.Log.Floor, snap.Seq+1)
	}
	// What the state files cover was durable (durable.seq is the log's
	// last fsync as of the last save): a bad record there is damage
	// (kept, reported), never a torn tail to cut, and the stream goes on
	// after it whatever the disk did to the log.
	dur, err := readUint(o.FS, filepath.Join(o.Dir, "durable.seq"))
	if err != nil {
		return nil, err
	}
	o.Log.Durable = max(o.Log.Durable, mark, dur)
	if snap != nil {
		o.Log.Durable = max(o.Log.Durable, snap.Seq)
	}
	w := &Owner{o: o, pub: pub, wake: make(chan struct{}, 1)}
	userOnDamage := o.Log.OnDamage
	o.Log.OnDamage = func(d retainlog.Damage) {
		w.damageFound(d)
		if userOnDamage != nil {
			userOnDamage(d)
		}
	}
	l, err := retainlog.Open(o.Log)
	if err != nil {
		return nil, fmt.Errorf("opening retained log of stream %s: %w", o.Stream, err)
	}
	w.log = l
	w.opened.Store(l)
	if rec := l.Recovery(); rec.TruncatedBytes > 0 {
		o.Metrics.LogTruncations.Inc()
		o.Logger.Warn("retained log had a torn tail (a write no fsync had covered); cut, a copy kept", "segment", rec.Segment, "bytes", rec.TruncatedBytes, "reason", rec.Reason, "copy", rec.Copy)
	}
	w.updateDamaged()
	w.seq = l.LastSeq()
	if o.Fold != nil {
		if err := w.restoreFold(snap); err != nil {
			l.Close()
			return nil, err
		}
	}
	switch {
	case dur > w.seq && l.LastSeq() > 0 && dur > mark:
		l.Close()
		return nil, fmt.Errorf("stream %s: durable.seq says %d was fsynced but the retained log in %s ends at %d: the log lost durable records; refusing to reuse sequence numbers (move the log directory aside to start a new log after %d)", o.Stream, dur, o.Log.Dir, w.seq, dur)
	case mark > w.seq && l.LastSeq() > 0:
		// save makes the log durable before it writes the watermark, so
		// this means the disk lost fsynced data (or files were copied by
		// hand). Continuing would hand out sequence numbers nsqd already
		// acknowledged: refuse, and delete nothing.
		l.Close()
		return nil, fmt.Errorf("stream %s: published.seq says %d was acknowledged but the retained log in %s ends at %d: the log lost durable records; refusing to reuse sequence numbers (move the log directory aside to start a new log after %d)", o.Stream, mark, o.Log.Dir, w.seq, mark)
	case max(mark, dur) > w.seq:
		o.Logger.Warn("the retained log is empty; continuing after the published watermark (older sequences are not retained)", "published", mark, "durable", dur)
		w.seq, w.after = max(mark, dur), max(mark, dur)
	}
	// An empty log continuing after `after`: nothing up to it is left to
	// publish, so the watermark (and retention) start there.
	w.acked.Reset(max(mark, w.after))
	w.savedMark, w.savedDur = mark, dur
	if snap != nil {
		w.savedSnap = snap.Seq
	}
	o.Metrics.Unpublished.WithLabelValues(o.Stream).Set(float64(w.seq - mark))
	return w, nil
}

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

// Stream is the stream id.
func (w *Owner) Stream() string { return w.o.Stream }

// Status reports the stream's positions. LastSeq is the last message that
// may be shown to anyone (durable; see retainlog.VisibleSeq): consumers
// treat it as the end of the stream.
func (w *Owner) Status() Status {
	visible := w.log.VisibleSeq()
	st := Status{Stream: w.o.Stream, LastSeq: max(visible, w.after), RetainedFirst: w.log.FirstSeq(), RetainedLast: visible,
		Damaged: w.log.DamagedRanges()}
	if err := w.Accepting(); err != nil {
		st.NotAccepting = err.Error()
	}
	return st
}

// Accepting returns why the owner takes no new messages (its log cannot be
// written: the last append failed, or an fsync did, which is final until a
// restart), nil while it does: a readiness check.
func (w *Owner) Accepting() error {
	if err := w.log.Err(); err != nil {
		return fmt.Errorf("stream %s: the retained log failed (restart needed): %w", w.o.Stream, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.notAccepting != nil {
		return fmt.Errorf("stream %s: %w: %v", w.o.Stream, ErrNotAccepting, w.notAccepting)
	}
	return nil
}

// DamageSummary says which records of the log the disk damaged ("" when
// none): a readiness detail.
func (w *Owner) DamageSummary() string {
	rs := w.log.DamagedRanges()
	if len(rs) == 0 {
		return ""
	}
	var n uint64
	for _, r := range rs {
		n += r[1] - r[0] + 1
	}
	return fmt.Sprintf("%d damaged records (%s) kept in %s, served only through the snapshot",
		n, retainlog.FormatRanges(rs), filepath.Join(w.o.Log.Dir, "quarantine"))
}

// damageFound is the log's OnDamage: the log has logged the damage; the
// gauge follows (during OpenOwner, once the log is open).
func (w *Owner) damageFound(retainlog.Damage) {
	if w.opened.Load() != nil {
		w.updateDamaged()
	}
}

// updateDamaged sets the damaged-records gauge from the retained segments
// (retention may have deleted damaged ones).
func (w *Owner) updateDamaged() {
	var n uint64
	for _, r := range w.opened.Load().DamagedRanges() {
		n += r[1] - r[0] + 1
	}
	w.o.Metrics.DamagedRecords.WithLabelValues(w.o.Stream).Set(float64(n))
}

// Publish assigns the next sequence number, appends the message to the
// retained log and folds it. It returns the sequence number once the
// message is durable (the log's fsync policy; concurrent publishers share
// an fsync): from then on it survives a crash or a power loss, and the
// pump publishes it to nsqd as soon as nsqd takes it.
//
// An error with sequence 0 means nothing was published. An error with a
// sequence means the message is in the log and will be published anyway
// (its fold failed, or its fsync): do not publish it again.
func (w *Owner) Publish(ctx context.Context, payload []byte, correlationID string) (uint64, error) {
	return w.publishBatch(ctx, [][]byte{payload}, correlationID)
}

// PublishBatch is Publish for several messages at once: they get contiguous
// sequence numbers (the last is returned) and reach the retained log in one
// write, which is what a publisher producing faster than one message per
// system call wants.
func (w *Owner) PublishBatch(ctx context.Context, payloads [][]byte) (uint64, error) {
	return w.publishBatch(ctx, payloads, "")
}

func (w *Owner) publishBatch(ctx context.Context, payloads [][]byte, correlationID string) (uint64, error) {
	if len(payloads) == 0 {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.seq, nil
	}
	if w.o.Fence != nil {
		if err := w.o.Fence.Hold(ctx); err != nil {
			return 0, fmt.Errorf("stream %s: not assigning sequence numbers: %w", w.o.Stream, err)
		}
	}
	first, last, appended, err := w.append(payloads, correlationID)
	if !appended {
		return 0, err
	}
	w.signal()
	// Once appended the messages will be published whatever happens: the
	// wait for their fsync is not cut short by ctx (it is bounded by the
	// fsync policy), so that an error here never means "not published".
	if werr := w.log.WaitDurable(context.WithoutCancel(ctx), last); werr != nil {
		err = errors.Join(err, fmt.Errorf("making messages %d-%d of stream %s durable: %w", first, last, w.o.Stream, werr))
	}
	if err != nil {
		return last, err
	}
	return last, nil
}

// append appends under mu; appended reports whether the messages are in
// the log (then they will be published, even with an error).
func (w *Owner) append(payloads [][]byte, correlationID string) (first, last uint64, appended bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock() // a panic below must not leave the owner locked
	before := w.seq
	first, last, err = w.appendLocked(payloads, correlationID)
	return first, last, w.seq > before, err
}

// appendLocked encodes, appends and folds one batch. Caller holds mu.
func (w *Owner) appendLocked(payloads [][]byte, correlationID string) (first, last uint64, err error) {
	switch {
	case w.closed:
		return 0, 0, ErrOwnerClosed
	case w.failed != nil:
		return 0, 0, w.failed
	}
	now := time.Now()
	first = w.seq + 1
	last = first + uint64(len(payloads)) - 1
	// Envelopes go into one buffer the owner reuses (the log copies them
	// into its write buffer): no allocation per message.
	buf := w.buf[:0]
	recs := w.recs[:0]
	for i, payload := range payloads {
		seq := first + uint64(i)
		// No message id: (stream, seq) identifies the message.
		env := envelope.Envelope{Stream: w.o.Stream, Seq: seq, Created: now,
			ContentType: w.o.ContentType, CorrelationID: correlationID, Payload: payload}
		start := len(buf)
		if buf, err = env.Append(buf); err != nil {
			return 0, 0, fmt.Errorf("encoding message %d of stream %s: %w", seq, w.o.Stream, err)
		}
		recs = append(recs, retainlog.Record{Seq: seq, Time: now, Data: buf[start:]})
	}
	err = w.log.AppendNoWait(recs...)
	clear(recs) // the records alias buf; keep neither reachable through recs
	w.recs = recs[:0]
	if cap(buf) <= 1<<20 {
		w.buf = buf
	}
	if err != nil {
		if errors.Is(err, retainlog.ErrWrite) && w.log.Err() == nil {
			// A write that failed (a full disk) and was undone: nothing
			// was taken, and the next append tries again.
			if w.notAccepting == nil {
				w.o.Logger.Error("the retained log cannot be written; not accepting messages until it can", "err", err)
			}
			w.notAccepting = err
			w.o.Metrics.WriteFailures.WithLabelValues(w.o.Stream).Inc()
			return 0, 0, fmt.Errorf("stream %s: %w: %w", w.o.Stream, ErrNotAccepting, err)
		}
		return 0, 0, fmt.Errorf("appending messages %d-%d to the retained log of %s: %w", first, last, w.o.Stream, err)
	}
	if w.notAccepting != nil {
		w.o.Logger.Info("the retained log can be written again; accepting messages", "seq", first)
		w.notAccepting = nil
	}
	w.seq = last
	if w.o.Fold != nil {
		for i, payload := range payloads {
			seq := first + uint64(i)
			if err := w.o.Fold.Apply(seq, payload); err != nil {
				// The message is in the log and will be published, but
				// the fold no longer matches the log: a snapshot taken
				// now would be wrong. Refuse to publish more; a restart
				// rebuilds the fold from the log (and names the message
				// if it fails again).
				w.failed = fmt.Errorf("stream %s: folding message %d failed, publishing stopped until a restart rebuilds the fold from the log: %w", w.o.Stream, seq, err)
				w.o.Logger.Error("fold failed; refusing to publish more", "seq", seq, "err", err)
				return first, last, w.failed
			}
			w.foldSeq = seq
		}
	}
	return first, last, nil
}

// signal wakes the pump.
func (w *Owner) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run publishes what is in the log and not yet acknowledged (from the
// last stop, then everything published), and saves the snapshot and the
// published watermark periodically, until ctx ends or Close.
func (w *Owner) Run(ctx context.Context) error {
	w.mu.Lock()
	if w.closed || w.pumping {
		w.mu.Unlock()
		return ErrOwnerClosed
	}
	pctx, stop := context.WithCancel(ctx)
	w.stopPump, w.pumpDone, w.pumping = stop, make(chan struct{}), true
	w.mu.Unlock()
	go func() {
		defer close(w.pumpDone)
		w.pump(pctx)
	}()
	t := time.NewTicker(w.o.SnapshotInterval)
	defer t.Stop()
	for {
		select {
		case <-pctx.Done():
			return nil
		case <-t.C:
			if err := w.save(); err != nil {
				w.o.Logger.Error("saving stream state", "err", err)
			}
		}
	}
}

// pump hands the log's unacknowledged, durable records to the publisher,
// oldest first, keeping at most MaxInFlight unanswered.
func (w *Owner) pump(ctx context.Context) {
	w.mu.Lock()
	next := w.acked.Contiguous() + 1
	w.mu.Unlock()
	if n := w.log.LastSeq() - (next - 1); n > 0 {
		w.o.Logger.Info("publishing messages not acknowledged before the last stop", "from", next, "to", w.log.LastSeq())
	}
	retryDelay := 100 * time.Millisecond
	for ctx.Err() == nil {
		w.mu.Lock()
		if w.resend && w.inflight.Load() == 0 {
			// Every answer is in: start again from the oldest
			// unacknowledged message (acknowledged ones are skipped).
			w.resend = false
			next = w.acked.Contiguous() + 1
		}
		resending := w.resend
		w.mu.Unlock()
		last := w.log.LastSeq()
		room := int64(w.o.MaxInFlight) - w.inflight.Load()
		if resending || next > last || room <= 0 {
			select {
			case <-ctx.Done():
			case <-w.wake:
			}
			continue
		}
		if first := w.log.FirstSeq(); next < first {
			// Only a log restored by hand gets here (retention keeps
			// what is unacknowledged): consumers recover the rest from a
			// snapshot.
			w.o.Logger.Warn("messages never acknowledged are no longer in the log; skipping them", "from", next, "to", first-1)
			w.mu.Lock()
			w.acked.AddRange(next, first-1) // settled: the watermark moves past them
			w.mu.Unlock()
			next = first
		}
		upTo := min(last, next+uint64(room)-1)
		// Nobody sees a message before it is durable: one a consumer
		// applied and a power loss then took would have its sequence
		// number given to another message.
		if err := w.log.WaitDurable(ctx, upTo); err != nil {
			if ctx.Err() == nil {
				w.o.Logger.Error("waiting for the retained log to become durable", "err", err)
				w.sleep(ctx, &retryDelay)
			}
			continue
		}
		n, err := w.handOver(ctx, next, upTo)
		var damaged *retainlog.DamagedError
		if errors.As(err, &damaged) {
			// Every intact record was handed over; the damaged ones can
			// never be: consumers recover them through the snapshot.
			w.skipDamaged(damaged.Ranges)
			n, err = upTo-next+1, nil
		}
		next += n
		if err != nil && ctx.Err() == nil {
			w.o.Logger.Error("reading the retained log to publish it", "from", next, "err", err)
			w.sleep(ctx, &retryDelay)
			continue
		}
		retryDelay = 100 * time.Millisecond
	}
}

// handOver reads [from, to] and hands each record not yet acknowledged to
// the publisher; it returns how many sequences it covered.
func (w *Owner) handOver(ctx context.Context, from, to uint64) (uint64, error) {
	// The bodies go into one arena per call: the publisher keeps a body
	// until it answers, and an arena is one allocation for many messages.
	arena := make([]byte, 0, 64<<10)
	var n uint64
	err := w.log.Read(ctx, from, to, func(r retainlog.Record) error {
		n++
		w.mu.Lock()
		skip := w.acked.Contains(r.Seq)
		w.mu.Unlock()
		if skip {
			return nil
		}
		start := len(arena)
		arena = append(arena, r.Data...)
		body := arena[start:len(arena):len(arena)]
		seq := r.Seq
		w.inflight.Add(1)
		w.pub.PublishAsync(ctx, body, func(err error) { w.settle(seq, err) })
		return nil
	})
	return n, err
}

// skipDamaged counts damaged sequences as settled: nsqd can never have
// them, and the watermark (and retention) must move past them.
func (w *Owner) skipDamaged(ranges [][2]uint64) {
	w.mu.Lock()
	for _, r := range ranges {
		w.acked.AddRange(r[0], r[1])
	}
	unpublished := w.seq - w.acked.Contiguous()
	w.mu.Unlock()
	w.o.Metrics.Unpublished.WithLabelValues(w.o.Stream).Set(float64(unpublished))
	w.o.Logger.Error("damaged records are not published; consumers that need them recover through the snapshot", "damaged", retainlog.FormatRanges(ranges))
	w.signal()
}

// settle records nsqd's answer for seq.
func (w *Owner) settle(seq uint64, err error) {
	w.mu.Lock()
	switch {
	case err == nil:
		w.acked.Add(seq)
	case isPermanent(err):
		// nsqd will never take it (too large for its --max-msg-size, say).
		// It stays in the log: consumers that notice the gap replay it.
		// Counting it as settled lets the watermark, and retention, move on.
		w.acked.Add(seq)
		w.o.Metrics.Unpublishable.WithLabelValues(w.o.Stream).Inc()
		w.o.Logger.Error("nsqd refuses the message for good; consumers get it by replay only", "seq", seq, "err", err)
	default:
		if !w.closed && !w.resend {
			w.o.Logger.Warn("message not acknowledged by nsqd; publishing again from the retained log", "seq", seq, "err", err)
		}
		w.resend = true
	}
	unpublished := w.seq - w.acked.Contiguous()
	w.mu.Unlock()
	w.o.Metrics.Unpublished.WithLabelValues(w.o.Stream).Set(float64(unpublished))
	w.inflight.Add(-1)
	w.signal()
}

// isPermanent reports whether err says retrying cannot help: an error type
// with a Permanent method (pubsub.PermanentError) that returns true.
func isPermanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}

func (w *Owner) sleep(ctx context.Context, delay *time.Duration) {
	t := time.NewTimer(*delay/2 + rand.N(*delay/2+1))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	*delay = min(*delay*2, 5*time.Second)
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

// Log is the retained log (read-only use: replay serving, status).
func (w *Owner) Log() *retainlog.Log { return w.log }

// closeSaveGrace is the least Close waits for its save.
const closeSaveGrace = time.Second

// Close stops the pump, lets answers already on their way arrive for at
// most CloseGrace (bounded by ctx), closes the publisher, saves state and
// closes the log. It never waits for nsqd beyond that: what nsqd did not
// acknowledge stays in the log and is published on the next start. It
// returns by ctx's end (or a second after Close began, if later) even on a
// disk that does not answer.
func (w *Owner) Close(ctx context.Context) error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return ErrOwnerClosed
	}
	w.closed = true
	stop, done := w.stopPump, w.pumpDone
	w.mu.Unlock()
	if stop != nil {
		stop()
		select {
		case <-done:
		case <-ctx.Done(): // the pump is stuck (a hung disk): do not hang with it
		}
	}
	var errs []error
	if w.pub != nil {
		gctx, cancel := context.WithTimeout(ctx, w.o.CloseGrace)
		if err := w.pub.Close(gctx); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
			errs = append(errs, fmt.Errorf("closing the publisher of stream %s: %w", w.o.Stream, err))
		}
		cancel()
	}
	// Saving syncs the log and writes state files: on a disk that does not
	// answer it would never return. Stop waiting at ctx's end, but not
	// before closeSaveGrace (ctx may have been used up by a publisher
	// waiting for a hung nsqd; a healthy disk saves in far less). The state
	// files then stay behind the log, which OpenOwner accepts, and the save
	// finishes by itself if the disk answers before the process ends.
	finished := make(chan error, 1)
	go func() { finished <- errors.Join(w.save(), w.log.Close()) }()
	grace := time.NewTimer(closeSaveGrace)
	defer grace.Stop()
	select {
	case err := <-finished:
		errs = append(errs, err)
	case <-ctx.Done():
		select {
		case err := <-finished:
			errs = append(errs, err)
		case <-grace.C:
			errs = append(errs, fmt.Errorf("stream %s: saving state and closing the retained log did not finish in time (does the disk answer?): %w", w.o.Stream, ctx.Err()))
		}
	}
	return errors.Join(errs...)
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
