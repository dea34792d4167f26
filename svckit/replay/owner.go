package replay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/envelope"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/svckit/svckit/svckit/tracing"
)

// The publisher side of the protocol, the Owner, by job:
//
//   - owner.go: the type, its options and the interfaces it is given,
//     OpenOwner (restoring the sequence from the log and the state files)
//     and Close;
//   - owner_publish.go: Publish, appending to the retained log and folding;
//   - owner_pump.go: Run and the pump, which hands what is durable and
//     unacknowledged to the publisher and settles nsqd's answers;
//   - owner_state.go: the state files (snapshot.json, published.seq,
//     durable.seq), saving them behind the log, and the fold's snapshot;
//   - owner_status.go: Status, Accepting and the damage the log holds.
//
// server.go serves an owner's streams, replays and snapshots over HTTP.

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
	// Tracer, if set, makes a send span of every Publish, covering the
	// wait for the durable append; its context is written into the
	// messages' envelopes (svckit/tracing). Topic names the span's
	// destination (the topic the pump publishes to).
	Tracer *tracing.Tracer
	Topic  string
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
	o OwnerOptions
	// unpublished is the stream's gauge, looked up once: nsqd's answer
	// to every message sets it, and WithLabelValues hashes its labels.
	unpublished prometheus.Gauge
	log         *retainlog.Log
	pub         PumpPublisher
	spans       *tracing.Destination // nil: tracing off

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
	w := &Owner{o: o, pub: pub, wake: make(chan struct{}, 1), spans: o.Tracer.Topic(o.Topic, "")}
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
	w.unpublished = o.Metrics.Unpublished.WithLabelValues(o.Stream)
	w.unpublished.Set(float64(w.seq - mark))
	return w, nil
}

// Stream is the stream id.
func (w *Owner) Stream() string { return w.o.Stream }

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
